//! bulwark with its metadata in Postgres (a throwaway cluster the test starts), migrated with
//! `bulwark migrate` as an operator would: skopeo pushes an image, a user made through the
//! admin API logs in, and after a restart the server still serves the image and knows the
//! user, because everything but the bytes lives in Postgres. `serve` refuses a database that
//! was never migrated.

use metadata_postgres::testing::Cluster;

use crate::support::clients::{path_str, Clients};
use crate::support::http::Http;
use crate::support::layout;
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
