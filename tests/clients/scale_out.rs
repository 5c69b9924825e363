//! Two `bulwark serve` replicas sharing one Postgres database and one S3-compatible store
//! (SeaweedFS), with nothing else shared, as behind a load balancer: an upload moves between
//! them, survives the replica it started on being killed, a tag moved on one is seen on the
//! other at once, real clients push through one and pull through the other, skopeo pushes
//! through a real load balancer (HAProxy) spreading every request, with a replica killed under
//! it, a user disabled through one replica loses its tokens on the other within seconds, and an
//! object store outage answers 503 until the store is back. A single node moves to that setup
//! with `bulwark import-node`. The same replicas run on Azure (Azurite) too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blobstore::testing::{AzuriteServer, S3Server, StoreServer};
use blobstore::{Backend, RemoteSettings};
use metadata_postgres::testing::Cluster;
use reqwest::Method;

use crate::support::balancer::{Balancer, Served};
use crate::support::clients::{path_str, printed, run, run_failing, stdout_text, Clients, Running};
use crate::support::http::{Auth, Http};
use crate::support::layout::{self, Image, Layout};
use crate::support::server::{self, admin_creds, binary, Server};
use crate::support::{random_bytes, sha256_digest};

const MIB: usize = 1024 * 1024;

/// A configuration file putting blobs in the test's bucket or container (credentials in the
/// file, as an operator would keep them out of the process list).
fn storage_config(dir: &Path, name: &str, settings: &RemoteSettings, extra: &str) -> PathBuf {
    let prefix = settings.prefix.as_deref().unwrap_or_default();
    let text = match &settings.backend {
        Backend::S3(s3) => format!(
            "[storage]\nbackend = \"s3\"\nprefix = \"{prefix}\"\n{extra}\n\
             [storage.s3]\nbucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\nregion = \"{region}\"\n\
             access_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\n\
             path_style = true\nallow_http = true\n",
            bucket = s3.bucket,
            endpoint = s3.endpoint.as_deref().unwrap_or_default(),
            region = s3.region.as_deref().unwrap_or_default(),
            key = s3.access_key_id.as_deref().unwrap_or_default(),
            secret = s3.secret_access_key.as_deref().unwrap_or_default(),
        ),
        Backend::Azure(azure) => format!(
            "[storage]\nbackend = \"azure\"\nprefix = \"{prefix}\"\n{extra}\n\
             [storage.azure]\naccount = \"{account}\"\ncontainer = \"{container}\"\n\
             access_key = \"{key}\"\nendpoint = \"{endpoint}\"\nallow_http = true\n",
            account = azure.account,
            container = azure.container,
            key = azure.access_key.as_deref().unwrap_or_default(),
            endpoint = azure.endpoint.as_deref().unwrap_or_default(),
        ),
        Backend::Gcs(_) => panic!("no GCS store runs in the tests"),
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write the configuration");
    path
}

struct Replicas {
    a: Server,
    b: Server,
    ca: Vec<u8>,
    /// B answers blob GETs with presigned URLs (where the store signs them: S3).
    redirects: bool,
}

impl Replicas {
    /// Starts A (which generates the TLS certificate), then B serving the same certificate,
    /// as replicas behind one name do. On S3, B redirects blob GETs to presigned URLs.
    fn start(url: &str, store: &impl StoreServer, dir: &Path) -> Replicas {
        let settings = store.settings();
        let (redirects, described, secret) = match &settings.backend {
            Backend::S3(_) => (true, "blobs in S3 bucket", blobstore::testing::SECRET_KEY),
            Backend::Azure(_) => (
                false,
                "blobs in Azure container",
                blobstore::testing::AZURE_ACCESS_KEY,
            ),
            Backend::Gcs(_) => panic!("no GCS store runs in the tests"),
        };
        let plain = storage_config(dir, "streaming", &settings, "");
        let redirect = if redirects { "redirect = \"1m\"" } else { "" };
        let redirecting = storage_config(dir, "redirecting", &settings, redirect);
        let a = Server::start_with(&["--postgres-url", url, "--config", path_str(&plain)]);
        let tls = a.data_dir().join("tls");
        let cert = tls.join("server.crt");
        let key = tls.join("server.key");
        let b = Server::start_with(&[
            "--postgres-url",
            url,
            "--config",
            path_str(&redirecting),
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
        ]);
        for server in [&a, &b] {
            assert!(server.log().contains(described), "{}", server.log());
            assert!(
                !server.log().contains(secret),
                "the store's secret must not be logged"
            );
        }
        let ca = a.ca_pem();
        Replicas {
            a,
            b,
            ca,
            redirects,
        }
    }

    fn http(&self, server: &Server) -> Http {
        Http::trusting(&format!("https://{}", server.host()), &self.ca).with_auth(Auth::admin())
    }
}

#[test]
fn two_replicas_on_postgres_and_s3_act_as_one_registry() {
    let cluster = Cluster::start();
    let mut s3 = S3Server::start();
    let url = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(cluster.create_database());
    // As an operator does before starting the replicas: they never migrate Postgres.
    server::migrate(&["--postgres-url", &url]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = Replicas::start(&url, &s3, dir.path());

    an_upload_moves_between_replicas(&replicas);
    a_user_disabled_on_one_replica_loses_its_tokens_on_the_other(&replicas);
    an_upload_survives_its_replica_being_killed(&mut replicas);
    clients_push_through_one_replica_and_pull_through_the_other(&replicas);
    clients_push_through_a_load_balancer_while_a_replica_dies(&mut replicas);
    an_object_store_outage_answers_503_until_it_is_back(&replicas, &mut s3);
}

/// The same registry with its blobs on Azure (Azurite): chunks alternating between the replicas,
/// an upload surviving its replica being killed, skopeo pushing through one replica and pulling
/// through the other, and an outage. Azure signs no URLs here, so neither replica redirects.
#[test]
fn two_replicas_on_postgres_and_azurite_act_as_one_registry() {
    let cluster = Cluster::start();
    let mut azure = AzuriteServer::start();
    let url = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(cluster.create_database());
    server::migrate(&["--postgres-url", &url]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = Replicas::start(&url, &azure, dir.path());

    an_upload_moves_between_replicas(&replicas);
    an_upload_survives_its_replica_being_killed(&mut replicas);
    clients_push_through_one_replica_and_pull_through_the_other(&replicas);
    an_object_store_outage_answers_503_until_it_is_back(&replicas, &mut azure);
}

fn an_upload_moves_between_replicas(replicas: &Replicas) {
    let on_a = replicas.http(&replicas.a);
    let on_b = replicas.http(&replicas.b);
    let blob = random_bytes(13 * MIB + 5);
    let digest = sha256_digest(&blob);
    let location = on_a.start_upload("team/shared");
    let cuts = [0, 6 * MIB, 10 * MIB, 13 * MIB, blob.len()];
    for (n, window) in cuts.windows(2).enumerate() {
        // Chunks alternate between the replicas: A, B, A, B.
        let http = if n % 2 == 0 { &on_a } else { &on_b };
        let reply = http.patch_upload(&location, window[0], &blob[window[0]..window[1]]);
        assert_eq!(reply.status, 202, "chunk {n}: {reply:?}");
        let status = if n % 2 == 0 { &on_b } else { &on_a }.get(&location);
        assert_eq!(
            status.header("range"),
            format!("0-{}", window[1] - 1),
            "the other replica sees chunk {n} at once"
        );
    }
    let finished = on_a.finish_upload(&location, &digest);
    assert_eq!(finished.status, 201, "{finished:?}");
    assert!(
        on_a.blob("team/shared", &digest) == blob,
        "A serves the blob"
    );
    // B redirects to a presigned URL on the store; reqwest follows it, as clients do.
    assert!(
        on_b.blob("team/shared", &digest) == blob,
        "B serves the blob"
    );
    if !replicas.redirects {
        return;
    }
    let raw = on_b.runtime().block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&replicas.ca).expect("the CA parses"),
            )
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        client
            .get(on_b.url(&format!("/v2/team/shared/blobs/{digest}")))
            .basic_auth(
                crate::support::server::ADMIN_USER,
                Some(crate::support::server::ADMIN_PASSWORD),
            )
            .send()
            .await
            .expect("GET the blob without following redirects")
    });
    assert_eq!(raw.status().as_u16(), 307, "B answers with a redirect");
    let target = raw
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        target.contains("X-Amz-Signature=") && target.contains(&digest[7..]),
        "a presigned URL for the blob: {target}"
    );
}

/// The revocation epochs reach B within `auth.revocation_refresh` (2 s by default); the bound
/// here is generous for a busy machine.
fn a_user_disabled_on_one_replica_loses_its_tokens_on_the_other(replicas: &Replicas) {
    let on_a = replicas.http(&replicas.a);
    let password = "a long enough password";
    let created = on_a.send_json(
        Method::POST,
        "/api/v1/users",
        &serde_json::json!({ "name": "leaver", "password": password, "admin": true }),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let anonymous_b = Http::trusting(&format!("https://{}", replicas.b.host()), &replicas.ca)
        .with_auth(Auth::basic("leaver", password));
    let granted = anonymous_b.get("/auth/token?service=bulwark&scope=repository:team/shared:pull");
    assert_eq!(granted.status, 200, "{granted:?}");
    let token = granted.json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let with_token = Http::trusting(&format!("https://{}", replicas.b.host()), &replicas.ca)
        .with_auth(Auth::Bearer(token));
    let tags = "/v2/team/shared/tags/list";
    let before = with_token.get(tags);
    assert_ne!(before.status, 401, "the token works on B: {before:?}");

    let disabled = on_a.send_json(
        Method::PATCH,
        "/api/v1/users/leaver",
        &serde_json::json!({ "disabled": true }),
    );
    assert_eq!(disabled.status, 200, "{disabled:?}");
    let start = Instant::now();
    loop {
        let reply = with_token.get(tags);
        if reply.status == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "B still honours the disabled user's token after {:?}: {reply:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "B refused the disabled user's token {:?} after A disabled it",
        start.elapsed()
    );
}

fn an_upload_survives_its_replica_being_killed(replicas: &mut Replicas) {
    const CHUNK: usize = 256 * 1024;
    let blob = random_bytes(9 * MIB + 3);
    let digest = sha256_digest(&blob);
    let acknowledged = 3 * MIB;
    let on_a = replicas.http(&replicas.a);
    let location = on_a.start_upload("team/killed");
    let first = on_a.patch_upload(&location, 0, &blob[..acknowledged]);
    assert_eq!(first.status, 202, "{first:?}");

    // The next chunk streams slowly into A; A dies half-way through it.
    let (streaming, streaming_heard) = std::sync::mpsc::channel();
    let chunks: Vec<Vec<u8>> = blob[acknowledged..]
        .chunks(CHUNK)
        .map(<[u8]>::to_vec)
        .collect();
    let body = futures_util::stream::unfold(0usize, move |n| {
        let streaming = streaming.clone();
        let chunk = chunks.get(n).cloned();
        async move {
            let chunk = chunk?;
            if n == 4 {
                let _ = streaming.send(());
            }
            if n >= 4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some((Ok::<_, std::io::Error>(chunk), n + 1))
        }
    });
    let request = on_a
        .request(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body));
    let in_flight = on_a.runtime().spawn(async move { request.send().await });
    streaming_heard
        .recv_timeout(Duration::from_secs(20))
        .expect("the chunk started streaming");
    replicas.a.kill_9();
    let outcome = on_a
        .runtime()
        .block_on(in_flight)
        .expect("the request task");
    assert!(
        outcome.is_err(),
        "the chunk in flight on the killed replica failed: {outcome:?}"
    );

    // The client carries on through B from the last acknowledged byte.
    let on_b = replicas.http(&replicas.b);
    let status = on_b.get(&location);
    assert_eq!(status.status, 204, "{status:?}");
    assert_eq!(status.header("range"), format!("0-{}", acknowledged - 1));
    let rest = on_b.patch_upload(&location, acknowledged, &blob[acknowledged..]);
    assert_eq!(rest.status, 202, "{rest:?}");
    let finished = on_b.finish_upload(&location, &digest);
    assert_eq!(finished.status, 201, "{finished:?}");
    assert!(on_b.blob("team/killed", &digest) == blob);

    replicas.a.restart();
    let on_a = replicas.http(&replicas.a);
    assert!(
        on_a.blob("team/killed", &digest) == blob,
        "A, back, serves it"
    );
}

fn clients_push_through_one_replica_and_pull_through_the_other(replicas: &Replicas) {
    let certs = tempfile::tempdir().expect("certs dir");
    std::fs::write(certs.path().join("ca.crt"), &replicas.ca).expect("write ca.crt");
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let (first, first_image) = layout::single_image(&clients.scratch("v1"), "scale-v1", "v1");
    let (second, second_image) = layout::single_image(&clients.scratch("v2"), "scale-v2", "v2");
    let on_a = format!("docker://{}/team/app:latest", replicas.a.host());
    let on_b = format!("docker://{}/team/app:latest", replicas.b.host());
    let inspect = |remote: &str| {
        let raw = clients
            .skopeo([
                "inspect",
                "--raw",
                "--cert-dir",
                certs,
                "--creds",
                &admin_creds(),
                remote,
            ])
            .stdout;
        sha256_digest(&raw)
    };

    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &admin_creds(),
        &first.reference("v1"),
        &on_a,
    ]);
    assert_eq!(
        inspect(&on_b),
        first_image.descriptor.digest,
        "pushed on A, seen on B"
    );
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &admin_creds(),
        &second.reference("v2"),
        &on_b,
    ]);
    assert_eq!(
        inspect(&on_a),
        second_image.descriptor.digest,
        "the tag moved on B is seen on A at once"
    );

    // A full pull through B (on S3, blobs redirected to the store) and through A (streamed);
    // skopeo checks every blob's digest as it copies.
    for (name, remote) in [("pull-b", &on_b), ("pull-a", &on_a)] {
        let target = clients.scratch(name);
        clients.skopeo([
            "copy",
            "--src-cert-dir",
            certs,
            "--src-creds",
            &admin_creds(),
            remote,
            &format!("dir:{}", path_str(&target)),
        ]);
        for layer in &second_image.layers {
            let file = target.join(&layer.digest[7..]);
            let bytes = std::fs::read(&file)
                .unwrap_or_else(|err| panic!("{name}: layer {}: {err}", file.display()));
            assert_eq!(sha256_digest(&bytes), layer.digest, "{name}");
        }
    }
}

/// Behind HAProxy balancing every request on its own: one skopeo push is served by both
/// replicas (its upload sessions move between them request by request), and a replica
/// SIGKILLed while it receives a layer from skopeo leaves the push to finish through the other
/// (the balancer takes the dead replica out of rotation), with every blob intact.
fn clients_push_through_a_load_balancer_while_a_replica_dies(replicas: &mut Replicas) {
    let tls = replicas.a.data_dir().join("tls");
    let read = |name: &str| {
        std::fs::read(tls.join(name)).unwrap_or_else(|err| panic!("reading {name}: {err}"))
    };
    let balancer = Balancer::start(
        &[&replicas.a, &replicas.b],
        &read("server.crt"),
        &read("server.key"),
        &replicas.ca,
    );
    let certs = tempfile::tempdir().expect("certs dir");
    std::fs::write(certs.path().join("ca.crt"), &replicas.ca).expect("write ca.crt");
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let remote = |tag: &str| format!("docker://{}/team/balanced:{tag}", balancer.host());
    let push = |layout: &Layout, tag: &str| {
        Running::start(
            clients
                .command("skopeo")
                .args(["copy", "--retry-times", "3", "--dest-cert-dir", certs])
                .args([
                    "--dest-creds",
                    &admin_creds(),
                    &layout.reference(tag),
                    &remote(tag),
                ]),
            None,
        )
    };
    let pulled_intact = |tag: &str, image: &Image| {
        let target = clients.scratch(&format!("balanced-{tag}"));
        clients.skopeo([
            "copy",
            "--src-cert-dir",
            certs,
            "--src-creds",
            &admin_creds(),
            &remote(tag),
            &format!("oci:{}:{tag}", path_str(&target)),
        ]);
        let (descriptor, _) = layout::read_tagged(&target, tag);
        assert_eq!(descriptor.digest, image.descriptor.digest, "{tag}");
        for layer in &image.layers {
            layout::read_blob(&target, &layer.digest);
        }
    };

    // One push, every request balanced on its own.
    let mut small = Layout::create(&clients.scratch("spread"));
    let spread = small.add_image("amd64", "balanced");
    small.tag("v1", &spread.descriptor);
    let output = push(&small, "v1").finish();
    assert!(output.status.success(), "{}", printed(&output));
    let served = balancer.served();
    let sessions = upload_sessions(&served);
    assert!(
        sessions.values().any(|servers| servers.len() == 2),
        "an upload session moved between the replicas: {sessions:?}"
    );
    for replica in ["r0", "r1"] {
        assert!(
            served.iter().any(|request| request.server == replica),
            "{replica} served part of the push"
        );
    }
    pulled_intact("v1", &spread);

    // A push whose big layer streams into one replica; that replica is killed under it.
    let mut big = Layout::create(&clients.scratch("killed"));
    let image = big.add_image_with_data("amd64", "balanced-big", &[96 * MIB]);
    big.tag("v2", &image.descriptor);
    let before = [
        replicas.a.received_by_connection(),
        replicas.b.received_by_connection(),
    ];
    let mark = balancer.served().len();
    let mut skopeo = push(&big, "v2");
    let deadline = Instant::now() + Duration::from_secs(120);
    // The replica with a connection that has taken 8 MiB more than before is receiving the
    // big layer's PATCH (every other request of the push is far smaller).
    let victim = loop {
        let receiving =
            [&replicas.a, &replicas.b]
                .iter()
                .zip(&before)
                .position(|(replica, before)| {
                    replica
                        .received_by_connection()
                        .iter()
                        .any(|(peer, bytes)| {
                            *bytes > before.get(peer).copied().unwrap_or(0) + 8 * MIB as u64
                        })
                });
        if let Some(receiving) = receiving {
            break receiving;
        }
        assert!(
            skopeo.running(),
            "the push ended before a replica was seen receiving the layer"
        );
        assert!(Instant::now() < deadline, "no replica received the layer");
        std::thread::sleep(Duration::from_millis(5));
    };
    let killed = if victim == 0 {
        &mut replicas.a
    } else {
        &mut replicas.b
    };
    killed.kill_9();
    let output = skopeo.finish();
    if !output.status.success() {
        // The request the dead replica held fails (the balancer closes it or answers 502).
        // skopeo 1.9.3 does not retry that by itself, so the push is run again, as a user or
        // a CI job would: it goes to the surviving replica and sends what is not there yet.
        let again = push(&big, "v2").finish();
        assert!(
            again.status.success(),
            "the push finished through the surviving replica: {}\nthe first attempt: {}",
            printed(&again),
            printed(&output)
        );
    }
    let (victim, survivor) = if victim == 0 {
        ("r0", "r1")
    } else {
        ("r1", "r0")
    };
    // Only what the balancer logged from the big push on: the small push before it had
    // uploads completed by both replicas.
    let served = balancer.served().split_off(mark);
    assert!(
        served.iter().any(|request| request.server == victim
            && request.method == "PATCH"
            && request.status != 202),
        "the killed replica's PATCH failed: {served:?}"
    );
    let failed: Vec<&Served> = served
        .iter()
        .filter(|request| request.status < 0 || request.status >= 500)
        .collect();
    assert!(
        failed.iter().all(|request| request.server == victim),
        "only requests held by the killed replica failed: {failed:?}"
    );
    assert!(
        served.iter().any(|request| request.server == survivor
            && request.method == "PUT"
            && request.path.contains("/blobs/uploads/")
            && request.status == 201),
        "the survivor completed an upload: {served:?}"
    );
    pulled_intact("v2", &image);
    killed.restart();
}

/// Which replicas served each upload session's `POST`, `PATCH` and `PUT` requests.
fn upload_sessions(served: &[Served]) -> HashMap<String, HashSet<String>> {
    let session = |path: &str| {
        let (_, id) = path.split_once("/blobs/uploads/")?;
        let id = id.split('?').next().unwrap_or_default();
        (!id.is_empty()).then(|| id.to_owned())
    };
    let mut sessions: HashMap<String, HashSet<String>> = HashMap::new();
    for request in served {
        let id = match request.method.as_str() {
            "POST" if request.status == 202 => session(&request.location),
            "PATCH" | "PUT" => session(&request.path),
            _ => None,
        };
        if let Some(id) = id {
            sessions
                .entry(id)
                .or_default()
                .insert(request.server.clone());
        }
    }
    sessions
}

fn an_object_store_outage_answers_503_until_it_is_back(
    replicas: &Replicas,
    store: &mut impl StoreServer,
) {
    let on_a = replicas.http(&replicas.a);
    let blob = random_bytes(64 * 1024);
    let digest = sha256_digest(&blob);
    let location = on_a.start_upload("team/outage");
    assert_eq!(
        on_a.send(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            &[("content-type", "application/octet-stream")],
            blob.clone(),
        )
        .status,
        201
    );

    store.stop();
    let down = on_a.get(&format!("/v2/team/outage/blobs/{digest}"));
    assert_eq!(down.status, 503, "{down:?}");
    assert!(!down.header("retry-after").is_empty(), "{down:?}");
    let push = on_a.start_upload("team/outage");
    let refused = on_a.send(
        Method::PUT,
        &format!("{push}?digest={}", sha256_digest(b"during the outage")),
        &[("content-type", "application/octet-stream")],
        b"during the outage".to_vec(),
    );
    assert_eq!(refused.status, 503, "a push during the outage: {refused:?}");
    // Metadata still answers: the manifest and tag APIs need no blob bytes.
    assert_eq!(on_a.get("/v2/team/app/tags/list").status, 200);

    store.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = on_a.get(&format!("/v2/team/outage/blobs/{digest}"));
        if reply.status == 200 {
            assert!(
                reply.body == blob,
                "the blob acknowledged before the outage is intact"
            );
            break;
        }
        assert_eq!(
            reply.status, 503,
            "only 503 while the store comes back: {reply:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the registry did not recover by itself"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_single_node_moves_to_postgres_and_s3_with_import_node() {
    let mut single = Server::start();
    let certs = single.certs_dir();
    let clients = Clients::new();
    let (layout, image) = layout::single_image(&clients.scratch("single"), "moving", "v1");
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        path_str(certs.path()),
        "--dest-creds",
        &admin_creds(),
        &layout.reference("v1"),
        &format!("docker://{}/team/moving:v1", single.host()),
    ]);
    let created = Http::new(&single).send_json(
        Method::POST,
        "/api/v1/users",
        &serde_json::json!({ "name": "pat", "password": "pat moves along" }),
    );
    assert_eq!(created.status, 201, "{created:?}");
    single.kill_9();

    let cluster = Cluster::start();
    let s3 = S3Server::start();
    let url = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(cluster.create_database());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = storage_config(dir.path(), "scale-out", &s3.settings(), "");
    server::migrate(&["--postgres-url", &url]);
    let import = |expect_success: bool| {
        let mut command = std::process::Command::new(binary());
        command
            .args(["import-node", "--from"])
            .arg(single.data_dir())
            .args(["--postgres-url", &url, "--config", path_str(&config)]);
        if expect_success {
            run(&mut command)
        } else {
            run_failing(&mut command)
        }
    };
    let said = stdout_text(&import(true));
    assert!(said.contains("copied") && said.contains("users"), "{said}");

    let replica = Server::start_with(&["--postgres-url", &url, "--config", path_str(&config)]);
    let certs = replica.certs_dir();
    let remote = format!("docker://{}/team/moving:v1", replica.host());
    let raw = clients
        .skopeo([
            "inspect",
            "--raw",
            "--cert-dir",
            path_str(certs.path()),
            "--creds",
            &admin_creds(),
            &remote,
        ])
        .stdout;
    assert_eq!(
        sha256_digest(&raw),
        image.descriptor.digest,
        "the image moved"
    );
    let pulled = clients.scratch("pulled");
    clients.skopeo([
        "copy",
        "--src-cert-dir",
        path_str(certs.path()),
        "--src-creds",
        &admin_creds(),
        &remote,
        &format!("dir:{}", path_str(&pulled)),
    ]);
    for layer in &image.layers {
        let bytes = std::fs::read(pulled.join(&layer.digest[7..])).expect("layer pulled");
        assert_eq!(sha256_digest(&bytes), layer.digest, "its blobs moved");
    }
    let token = Http::anonymous(&replica)
        .with_auth(Auth::basic("pat", "pat moves along"))
        .get("/auth/token?service=bulwark");
    assert_eq!(token.status, 200, "pat's password moved: {token:?}");

    let refused = import(false);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already holds"),
        "a second import never merges: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// The scale-out quick start (`docker-compose.yml`) as docker-compose reads it: valid, with
/// the five services the README describes, and refusing to start without an admin password.
/// (Running it needs its images, which are not reachable from here; the same topology runs
/// above with the real binary.)
#[test]
fn the_compose_file_is_what_docker_compose_accepts() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let compose = |password: Option<&str>| {
        let mut command = std::process::Command::new("docker-compose");
        command
            .args(["-f", path_str(&file), "config"])
            .env_remove("BULWARK_ADMIN_PASSWORD");
        if let Some(password) = password {
            command.env("BULWARK_ADMIN_PASSWORD", password);
        }
        command
    };
    let resolved = stdout_text(&run(&mut compose(Some("a-long-enough-admin-password"))));
    for service in ["postgres:", "s3:", "migrate:", "bulwark-a:", "bulwark-b:"] {
        assert!(
            resolved.lines().any(|line| line.trim() == service),
            "service {service} missing from:\n{resolved}"
        );
    }
    assert!(
        resolved.contains("a-long-enough-admin-password"),
        "the admin password reaches the services:\n{resolved}"
    );
    let refused = run_failing(&mut compose(None));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set BULWARK_ADMIN_PASSWORD"),
        "{}",
        printed(&refused)
    );
}
