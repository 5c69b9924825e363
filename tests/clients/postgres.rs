//! bulwark with its metadata in Postgres (a throwaway cluster the test starts), migrated with
//! `bulwark migrate` as an operator would: skopeo pushes an image, a user made through the
//! admin API logs in, and after a restart the server still serves the image and knows the
//! user, because everything but the bytes lives in Postgres. `serve` refuses a database that
//! was never migrated. While Postgres is down every surface answers 503 with `Retry-After`,
//! and when it returns the same server carries on, with every acknowledged push intact.

use metadata_postgres::testing::Cluster;

use crate::support::clients::{path_str, Clients};
use crate::support::http::{Auth, Http, Reply};
use crate::support::layout::{self, Image};
use crate::support::server::{self, admin_creds, creds, Server};
use crate::support::sha256_digest;

/// A cluster with one empty database, and that database's URL.
fn database() -> (Cluster, String) {
    let cluster = Cluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let url = runtime.block_on(cluster.create_database());
    (cluster, url)
}

#[test]
fn skopeo_pushes_and_pulls_with_metadata_in_postgres_across_a_restart() {
    let (_cluster, url) = database();
    server::migrate(&["--postgres-url", &url]);
    let mut server = Server::start_with(&["--postgres-url", &url]);
    assert!(
        server.log().contains("metadata in Postgres"),
        "{}",
        server.log()
    );
    assert!(
        !server.log().contains(&url),
        "the database URL must not be logged"
    );
    assert!(
        !server.data_dir().join("metadata.db").exists(),
        "no SQLite database next to Postgres"
    );

    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let (layout, image) = layout::single_image(&clients.scratch("pg"), "team-pg", "v1");
    let remote = format!("docker://{}/team/pg:v1", server.host());
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &admin_creds(),
        &layout.reference("v1"),
        &remote,
    ]);
    let http = Http::new(&server);
    let created = http.send_json(
        reqwest::Method::POST,
        "/api/v1/users",
        &serde_json::json!({ "name": "pat", "password": "a password kept in postgres" }),
    );
    assert_eq!(created.status, 201, "create a user through the admin API");

    server.restart();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let raw = clients
        .skopeo([
            "inspect",
            "--raw",
            "--cert-dir",
            certs,
            "--creds",
            &admin_creds(),
            &format!("docker://{}/team/pg:v1", server.host()),
        ])
        .stdout;
    assert_eq!(
        sha256_digest(&raw),
        image.descriptor.digest,
        "served after the restart"
    );
    let login = Clients::new().skopeo_failing([
        "inspect",
        "--raw",
        "--cert-dir",
        certs,
        "--creds",
        &creds("pat", "a password kept in postgres"),
        &format!("docker://{}/team/pg:v1", server.host()),
    ]);
    let said = String::from_utf8_lossy(&login.stderr);
    assert!(
        said.contains("denied") || said.contains("403"),
        "pat exists after the restart (authenticated, but not a member of team): {said}"
    );
}

#[test]
fn serve_refuses_an_unmigrated_postgres_database_until_bulwark_migrate() {
    let (_cluster, url) = database();
    let migrations = metadata_postgres::migrations();
    assert!(!migrations.is_empty());

    let (status, log) = Server::refused(&["--postgres-url", &url]);
    assert!(!status.success(), "serve exited with {status}:\n{log}");
    assert!(
        log.contains("run `bulwark migrate`") || log.contains("Run `bulwark migrate`"),
        "the refusal tells the operator what to do:\n{log}"
    );
    for migration in &migrations {
        assert!(
            log.contains(&migration.to_string()),
            "the refusal names the missing migration {migration}:\n{log}"
        );
    }
    assert!(!log.contains(&url), "the database URL must not be printed");

    let printed = server::migrate(&["--postgres-url", &url]);
    for migration in &migrations {
        assert!(
            printed.contains(&format!("applied {migration}")),
            "migrate reports {migration}:\n{printed}"
        );
    }
    let server = Server::start_with(&["--postgres-url", &url]);
    assert_eq!(Http::new(&server).get("/v2/").status, 200);
    let again = server::migrate(&["--postgres-url", &url]);
    assert!(
        again.contains("nothing to apply") && !again.contains("applied "),
        "a second migrate applies nothing:\n{again}"
    );
}

/// Pushes a one-image layout made unique by `marker` to `repository:tag`.
pub(crate) fn push(
    server: &Server,
    clients: &Clients,
    repository: &str,
    tag: &str,
    marker: &str,
) -> Image {
    let certs = server.certs_dir();
    let (layout, image) = layout::single_image(&clients.scratch(marker), marker, tag);
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        path_str(certs.path()),
        "--dest-creds",
        &admin_creds(),
        &layout.reference(tag),
        &format!("docker://{}/{repository}:{tag}", server.host()),
    ]);
    image
}

/// Copies `repository:tag` back out with skopeo and checks it is `image`, byte for byte.
pub(crate) fn assert_pulls_intact(
    server: &Server,
    clients: &Clients,
    repository: &str,
    tag: &str,
    image: &Image,
) {
    let certs = server.certs_dir();
    let pulled = clients.scratch(&format!("pulled-{tag}"));
    clients.skopeo([
        "copy",
        "--src-cert-dir",
        path_str(certs.path()),
        "--src-creds",
        &admin_creds(),
        &format!("docker://{}/{repository}:{tag}", server.host()),
        &format!("oci:{}:{tag}", pulled.display()),
    ]);
    let (descriptor, manifest) = layout::read_tagged(&pulled, tag);
    assert_eq!(
        descriptor.digest, image.descriptor.digest,
        "{repository}:{tag}"
    );
    let layers = layout::layer_digests(&manifest);
    let pushed: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, pushed, "{repository}:{tag}");
    for digest in &layers {
        // read_blob checks the bytes skopeo stored hash to their digest.
        layout::read_blob(&pulled, digest);
    }
}

const TOKEN_REQUEST: &str = "/auth/token?service=bulwark&scope=repository:team/outage:pull";

/// The requests of every surface that needs the metadata store: a manifest with Basic
/// credentials and with a token, a token, and an admin API call.
struct Probes {
    basic: Http,
    bearer: Http,
}

impl Probes {
    fn new(server: &Server) -> Probes {
        let basic = Http::new(server);
        let token = basic.get(TOKEN_REQUEST).json()["token"]
            .as_str()
            .expect("a token")
            .to_owned();
        Probes {
            basic,
            bearer: Http::anonymous(server).with_auth(Auth::Bearer(token)),
        }
    }

    /// Each probe's name and reply.
    fn run(&self) -> Vec<(&'static str, Reply)> {
        vec![
            (
                "manifest GET with Basic credentials",
                self.basic.manifest("team/outage", "v1"),
            ),
            (
                "manifest GET with a token",
                self.bearer.manifest("team/outage", "v1"),
            ),
            ("token request", self.basic.get(TOKEN_REQUEST)),
            ("admin API call", self.basic.get("/api/v1/users")),
        ]
    }
}

#[test]
fn postgres_going_away_is_503_with_retry_after_and_the_same_server_recovers() {
    let (cluster, url) = database();
    server::migrate(&["--postgres-url", &url]);
    let server = Server::start_with(&["--postgres-url", &url]);
    let clients = Clients::new();
    let first = push(&server, &clients, "team/outage", "v1", "outage-first");
    let probes = Probes::new(&server);
    let upload = Http::new(&server).start_upload("team/outage");

    cluster.stop();
    // A layer chunk sent whole before its answer is read (Python's http.client) still reads
    // the 503, though the server answers before reading the body.
    assert_eq!(
        crate::http_edges::python(&server, "big-patch", &[&upload]),
        vec!["503 UNKNOWN"; 10],
        "4 MiB PATCHes while Postgres is down"
    );
    let replies = probes.run();
    for (probe, reply) in &replies {
        assert_eq!(
            reply.status, 503,
            "{probe} while Postgres is down: {reply:?}"
        );
        let retry_after: u64 = reply
            .header("retry-after")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after > 0, "{probe}: Retry-After {retry_after}");
    }
    let (_, admin) = replies
        .iter()
        .find(|(probe, _)| *probe == "admin API call")
        .expect("the admin probe");
    assert_eq!(
        admin.header("content-type"),
        "application/problem+json",
        "the admin API answers with a problem"
    );
    assert_eq!(admin.json()["status"], 503);

    cluster.start_again();
    for (probe, reply) in probes.run() {
        assert_eq!(
            reply.status, 200,
            "{probe} once Postgres is back: {reply:?}"
        );
    }
    let second = push(&server, &clients, "team/outage", "v2", "outage-second");
    assert_pulls_intact(&server, &clients, "team/outage", "v1", &first);
    assert_pulls_intact(&server, &clients, "team/outage", "v2", &second);
    assert!(
        server.log().contains("backend unavailable"),
        "the outage is logged: {}",
        server.log()
    );
}
