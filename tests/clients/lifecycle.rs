//! The server's process lifecycle, driven at the protocol level where no client can: an
//! upload that survives `kill -9` and a restart, and a SIGTERM that closes the listener at once
//! but lets a request in flight finish before the process exits successfully.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support::http::{Auth, Http};
use crate::support::server::Server;
use crate::support::{random_bytes, sha256_digest};

#[test]
fn an_upload_resumes_after_kill_9_and_a_restart() {
    let mut server = Server::start();
    let blob = random_bytes(3 * 1024 * 1024 + 17);
    let digest = sha256_digest(&blob);
    let half = blob.len() / 2;
    let http = Http::new(&server);
    let location = http.start_upload("team/resume");

    let first = http.patch_upload(&location, 0, &blob[..half]);
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.header("range"), format!("0-{}", half - 1));

    let ca_before = server.ca_pem();
    server.kill_9();
    server.restart();
    // Clients that trusted the generated CA keep working: a restart reuses it.
    let http =
        Http::trusting(&format!("https://{}", server.host()), &ca_before).with_auth(Auth::admin());

    let status = http.get(&location);
    assert_eq!(
        status.status, 204,
        "upload status after the restart: {status:?}"
    );
    assert_eq!(
        status.header("range"),
        format!("0-{}", half - 1),
        "the restarted server remembers the first half"
    );
    let second = http.patch_upload(&location, half, &blob[half..]);
    assert_eq!(second.status, 202, "{second:?}");
    assert_eq!(second.header("range"), format!("0-{}", blob.len() - 1));

    let finished = http.finish_upload(&location, &digest);
    assert_eq!(finished.status, 201, "{finished:?}");
    assert_eq!(finished.header("docker-content-digest"), digest);
    let fetched = http.blob("team/resume", &digest);
    assert_eq!(fetched.len(), blob.len());
    assert!(fetched == blob, "the blob is served with other bytes");
}

#[test]
fn sigterm_closes_the_listener_but_lets_a_request_in_flight_finish() {
    const CHUNKS: usize = 8;
    const CHUNK_BYTES: usize = 64 * 1024;
    const SPACING: Duration = Duration::from_millis(300);

    let mut server = Server::start_with(&["--shutdown-grace", "30s"]);
    let port = server.port();
    let http = Http::new(&server);
    let location = http.start_upload("team/drain");
    let blob: Vec<u8> = (0..CHUNKS * CHUNK_BYTES).map(|n| (n % 251) as u8).collect();

    // The body arrives a chunk every 300ms; the test hears when the second chunk is asked
    // for, by which time the request's headers and first chunk are on the wire.
    let (streaming, streaming_heard) = std::sync::mpsc::channel();
    let chunks: Vec<Vec<u8>> = blob.chunks(CHUNK_BYTES).map(<[u8]>::to_vec).collect();
    let body = futures_util::stream::unfold(0usize, move |n| {
        let streaming = streaming.clone();
        let chunk = chunks.get(n).cloned();
        async move {
            let chunk = chunk?;
            if n > 0 {
                let _ = streaming.send(());
                tokio::time::sleep(SPACING).await;
            }
            Some((Ok::<_, std::io::Error>(chunk), n + 1))
        }
    });
    let request = http
        .request(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body));
    let in_flight = http.runtime().spawn(async move {
        let response = request.send().await?;
        let range = response
            .headers()
            .get("range")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok::<_, reqwest::Error>((response.status().as_u16(), range))
    });
    streaming_heard
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow upload started streaming");
    std::thread::sleep(Duration::from_millis(100));

    server.sigterm();
    let signalled = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            // A handshake caught in the backlog as the listener closes is reset, not refused.
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(err) => panic!("connecting after SIGTERM failed oddly: {err}"),
            Ok(_) => assert!(
                signalled.elapsed() < Duration::from_secs(2),
                "the server still accepts connections 2s after SIGTERM"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !in_flight.is_finished(),
        "the listener closed while the upload was still streaming (the test must overlap them)"
    );

    let (status, range) = http
        .runtime()
        .block_on(in_flight)
        .expect("the request task")
        .expect("the PATCH in flight completes despite SIGTERM");
    assert_eq!(status, 202);
    assert_eq!(range, Some(format!("0-{}", blob.len() - 1)));
    let exit = server.wait_exit(Duration::from_secs(20));
    assert!(
        exit.success(),
        "bulwark exits successfully after draining, not {exit}; log:\n{}",
        server.log()
    );
    assert!(server.log().contains("all connections drained"));

    // What the drained request wrote was kept: a new process finishes the upload.
    server.restart();
    let http = Http::new(&server);
    let finished = http.finish_upload(&location, &sha256_digest(&blob));
    assert_eq!(finished.status, 201, "{finished:?}");
    assert!(http.blob("team/drain", &sha256_digest(&blob)) == blob);
}

/// A first start listens while argon2 still hashes the admin's password: a login the moment
/// the server listens succeeds, with the real binary. Whether the login had to wait depends on
/// timing; the in-process test (`crates/api/tests/http/access.rs`) holds the account back to
/// prove the wait.
#[test]
fn the_admin_logs_in_the_moment_a_first_start_listens() {
    let server = Server::start();
    let http = Http::new(&server);
    let token = http.get("/auth/token?service=bulwark&scope=repository:team/first:pull,push");
    assert_eq!(token.status, 200, "{}", token.text());
    assert!(token.json()["token"].is_string(), "{}", token.text());
    let base = http.get("/v2/");
    assert_eq!(base.status, 200, "{}", base.text());
    assert!(
        server.wait_for_log("created the admin account", Duration::from_secs(10)),
        "{}",
        server.log()
    );
}
