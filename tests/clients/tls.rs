//! TLS as clients see it: an untrusted CA is refused by skopeo and curl (with valid
//! credentials, so the refusal is the certificate's) and a trusted one works; the generated certificate covers every local name and `--tls-san`; plaintext HTTP
//! on the TLS port gets a quick 400; and an operator's certificate replaced on disk is served
//! to new connections without a restart, never paired with the wrong key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support::clients::{output, path_str, printed, run, stdout_text, Clients};
use crate::support::http::{Auth, Http};
use crate::support::layout;
use crate::support::server::{admin_creds, Server};
use crate::support::sha256_digest;

/// Fails the test if the host's configuration trusts something for the server's address: the
/// containers tools read these directories besides `--cert-dir` (a test of rejection would
/// then pass or fail by accident).
fn assert_host_trusts_nothing_for(server: &Server) {
    for base in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        for host in [server.host(), format!("127.0.0.1:{}", server.port())] {
            let dir = Path::new(base).join(&host);
            assert!(
                !dir.exists(),
                "{} exists: this machine trusts certificates for {host} outside the test",
                dir.display()
            );
        }
    }
}

#[test]
fn clients_refuse_the_registry_until_they_trust_its_ca() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let empty = tempfile::tempdir().expect("an empty cert dir");
    let clients = Clients::new();
    let (layout, image) = layout::single_image(&clients.scratch("tls"), "team-tls", "v1");
    let remote = format!("docker://{}/team/tls:v1", server.host());
    let creds = admin_creds();
    assert_host_trusts_nothing_for(&server);
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &creds,
        &layout.reference("v1"),
        &remote,
    ]);

    let refused = clients.skopeo_failing([
        "inspect",
        "--raw",
        "--cert-dir",
        path_str(empty.path()),
        "--creds",
        &creds,
        &remote,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("certificate signed by unknown authority"),
        "skopeo without the CA should fail verifying the certificate:\n{stderr}"
    );
    let trusted = clients.skopeo([
        "inspect",
        "--raw",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        &remote,
    ]);
    assert_eq!(sha256_digest(&trusted.stdout), image.descriptor.digest);

    // curl with the system's roots (this environment points CURL_CA_BUNDLE at them).
    let url = format!("https://{}/v2/", server.host());
    let refused = output(Command::new("curl").args(["-sS", "-o", "/dev/null", "-u", &creds, &url]));
    assert_eq!(
        refused.status.code(),
        Some(60),
        "curl should fail peer certificate verification (exit 60)\n{}",
        printed(&refused)
    );
    let ca = server.data_dir().join("tls/ca.crt");
    let trusted = run(Command::new("curl").args([
        "-sS",
        "--fail",
        "--cacert",
        path_str(&ca),
        "-u",
        &creds,
        &url,
    ]));
    assert_eq!(stdout_text(&trusted), "{}");
    // The same request without credentials passes TLS and is refused by the registry: what
    // failed above was the certificate, not the login.
    let anonymous = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        path_str(&ca),
        &url,
    ]));
    assert_eq!(stdout_text(&anonymous), "401", "anonymous GET /v2/");
}

#[test]
fn the_generated_certificate_covers_every_local_name_and_extra_sans() {
    let server = Server::start_with(&["--tls-san", "registry.test"]);
    let ca = server.data_dir().join("tls/ca.crt");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading the hostname")
        .trim()
        .to_owned();
    for name in ["localhost", "127.0.0.1", hostname.as_str(), "registry.test"] {
        // --resolve sends the name in SNI and checks it against the certificate, whatever DNS
        // says about it, while connecting to the loopback address the server listens on.
        let port = server.port();
        let reply = run(Command::new("curl").args([
            "-sS",
            "--fail",
            "--cacert",
            path_str(&ca),
            "-u",
            &admin_creds(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/v2/"),
        ]));
        assert_eq!(stdout_text(&reply), "{}", "GET /v2/ as {name}");
    }
}

#[test]
fn plaintext_http_on_the_tls_port_gets_a_quick_400() {
    let server = Server::start();
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("setting a read timeout");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        .expect("sending a plaintext request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the server answers and closes the connection within 5s");
    let elapsed = started.elapsed();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "a plaintext request gets a 400: {response:?}"
    );
    assert!(
        response.to_ascii_lowercase().contains("https"),
        "the answer says to use https: {response:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "the 400 took {elapsed:?}");

    let curl = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/v2/", server.host()),
    ]));
    assert_eq!(stdout_text(&curl), "400", "curl over plain http");
}

/// A self-signed certificate for localhost and 127.0.0.1, and its key, made by openssl.
/// `CA:FALSE` because that is what a server certificate is: openssl's default `CA:TRUE` makes
/// rustls (webpki) refuse it as `CaUsedAsEndEntity`, whatever the server does.
fn self_signed(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-days",
        "2",
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&cert),
    ]));
    let read = |path: &Path| std::fs::read(path).expect("reading what openssl wrote");
    (read(&cert), read(&key))
}

/// Replaces `path` atomically, as a careful operator (or cert-manager) does.
fn replace(path: &Path, contents: &[u8]) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).expect("writing the replacement");
    std::fs::rename(&staged, path).expect("renaming the replacement into place");
}

/// Whether a new client trusting only `cert` gets an answer from `/v2/`.
fn accepted_trusting(url: &str, cert: &[u8]) -> Result<(), String> {
    let http = Http::trusting(url, cert).with_auth(Auth::admin());
    match http.try_send(Method::GET, "/v2/", &[], Vec::new()) {
        Ok(reply) if reply.status == 200 => Ok(()),
        Ok(reply) => Err(format!("status {}", reply.status)),
        Err(err) => Err(format!("{err:?}")),
    }
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let keys = tempfile::tempdir().expect("a directory for keys");
    let (first_cert, first_key) = self_signed(keys.path(), "first");
    let (second_cert, second_key) = self_signed(keys.path(), "second");
    let live = keys.path().join("live");
    std::fs::create_dir(&live).expect("creating the live directory");
    let cert_path = live.join("tls.crt");
    let key_path = live.join("tls.key");
    std::fs::write(&cert_path, &first_cert).expect("writing the certificate");
    std::fs::write(&key_path, &first_key).expect("writing the key");
    let server = Server::start_with(&[
        "--tls-cert",
        path_str(&cert_path),
        "--tls-key",
        path_str(&key_path),
    ]);
    let url = format!("https://{}", server.host());

    accepted_trusting(&url, &first_cert).expect("a client trusting the first certificate");
    assert!(
        accepted_trusting(&url, &second_cert).is_err(),
        "a client trusting only the second certificate is refused before the swap"
    );

    // An operator copying the files one at a time: for a moment the new certificate sits
    // next to the old key. The server must keep serving the old pair, not a broken one.
    replace(&cert_path, &second_cert);
    assert!(
        server.wait_for_log(
            "keeping the current TLS certificate",
            Duration::from_secs(10)
        ),
        "a certificate that does not match its key is refused, and the refusal logged"
    );
    accepted_trusting(&url, &first_cert).expect("the first certificate is still served");

    replace(&key_path, &second_key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match accepted_trusting(&url, &second_cert) {
            Ok(()) => break,
            Err(err) => assert!(
                Instant::now() < deadline,
                "the replaced certificate was not served within 10s: {err}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        accepted_trusting(&url, &first_cert).is_err(),
        "after the swap, the first certificate is no longer served"
    );
    assert!(
        server.log().contains("reloaded the TLS certificate"),
        "the reload is logged"
    );
}
