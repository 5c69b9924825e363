//! TLS as clients see it: an untrusted CA is refused by skopeo and curl (with valid
//! credentials, so the refusal is the certificate's) and a trusted one works; the generated certificate covers every local name and `--tls-san`; plaintext HTTP
//! on the TLS port gets a quick 400; an operator's certificate replaced on disk is served
//! to new connections without a restart, never paired with the wrong key; and independent
//! scanners (openssl probes, sslyze) find only TLS 1.2 and 1.3 with AEAD suites, no
//! compression, no renegotiation, and `h2` by ALPN.

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

/// What one `openssl s_client` handshake with `args` against `port` printed (stdout and
/// stderr), its stdin closed at once, so it ends after the handshake.
fn s_client(port: u16, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let result = output(
        Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-servername", "localhost"])
            .args(args),
    );
    printed(&result)
}

/// The protocol and cipher suite a handshake agreed on, from s_client's `New, TLSv1.2, Cipher
/// is X` line; `None` when the handshake failed (`New, (NONE), Cipher is (NONE)`).
fn negotiated(printed: &str) -> Option<(String, String)> {
    let line = printed.lines().find(|line| line.starts_with("New, "))?;
    let (protocol, cipher) = line.strip_prefix("New, ")?.split_once(", Cipher is ")?;
    (protocol != "(NONE)").then(|| (protocol.to_owned(), cipher.trim().to_owned()))
}

/// Asserts the server itself refused the handshake: it sent an alert (so openssl did offer
/// what `args` ask for, rather than refusing it locally).
fn assert_refused_by_the_server(port: u16, args: &[&str]) {
    let printed = s_client(port, args);
    assert_eq!(
        negotiated(&printed),
        None,
        "s_client {args:?} connected:\n{printed}"
    );
    assert!(
        printed.contains("alert handshake failure") || printed.contains("alert protocol version"),
        "s_client {args:?} should fail on the server's alert, not locally:\n{printed}"
    );
}

/// How many handshakes an `openssl s_client -tls1_2` session completes when the client asks
/// to renegotiate (`R` on its stdin) right after the first, waiting 3 s for the second.
fn handshakes_with_a_renegotiation(port: u16) -> usize {
    let connect = format!("127.0.0.1:{port}");
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &connect])
        .args(["-servername", "localhost", "-tls1_2", "-msg"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting openssl s_client");
    let mut stdin = child.stdin.take().expect("s_client's stdin");
    // s_client reads its commands only once the first handshake is done.
    stdin
        .write_all(b"R\n")
        .expect("asking s_client to renegotiate");
    std::thread::sleep(Duration::from_secs(3));
    drop(stdin);
    let result = child.wait_with_output().expect("waiting for s_client");
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("RENEGOTIATING"),
        "s_client did not start a renegotiation:\n{}",
        printed(&result)
    );
    // `-msg` traces every handshake message on stdout: one ServerHello per handshake.
    String::from_utf8_lossy(&result.stdout)
        .matches(", ServerHello\n")
        .count()
}

/// `openssl s_server` allowing client renegotiation, with the server's own key: the control
/// that shows the renegotiation probe sees a renegotiation when one happens.
struct RenegotiatingServer {
    child: std::process::Child,
    port: u16,
}

impl RenegotiatingServer {
    fn start(cert: &Path, key: &Path) -> RenegotiatingServer {
        let port = localport::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-client_renegotiation", "-tls1_2", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            // s_server stops when its stdin ends: the pipe stays open while the guard lives.
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        RenegotiatingServer { child, port }
    }
}

impl Drop for RenegotiatingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn openssl_finds_only_tls_1_2_and_1_3_with_aead_suites_alpn_and_no_renegotiation() {
    let server = Server::start();
    let port = server.port();

    // `@SECLEVEL=0`: this openssl would refuse TLS 1.0 and 1.1 itself, before the server could.
    for version in ["-tls1", "-tls1_1"] {
        assert_refused_by_the_server(port, &[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
    }
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let printed = s_client(port, &[version]);
        let (protocol, _) = negotiated(&printed)
            .unwrap_or_else(|| panic!("s_client {version} was refused:\n{printed}"));
        assert_eq!(protocol, name);
        assert!(printed.contains("Compression: NONE"), "{printed}");
    }

    // Every TLS 1.2 suite without an AEAD cipher (CBC with HMAC, NULL), as openssl
    // names them, for ECDSA (the generated key) and RSA certificates alike.
    for suite in [
        "AES128-SHA",
        "AES256-SHA",
        "AES128-SHA256",
        "AES256-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-ECDSA-NULL-SHA",
        "NULL-SHA256",
    ] {
        let cipher = format!("{suite}:@SECLEVEL=0");
        assert_refused_by_the_server(port, &["-tls1_2", "-cipher", &cipher]);
    }
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let printed = s_client(port, &["-tls1_2", "-cipher", suite]);
        assert_eq!(
            negotiated(&printed),
            Some(("TLSv1.2".to_owned(), suite.to_owned())),
            "{printed}"
        );
    }

    for (offered, expected) in [
        ("h2", "h2"),
        ("http/1.1", "http/1.1"),
        ("h2,http/1.1", "h2"),
    ] {
        let printed = s_client(port, &["-alpn", offered]);
        assert!(
            printed.contains(&format!("ALPN protocol: {expected}\n")),
            "offering {offered} should negotiate {expected}:\n{printed}"
        );
    }

    assert_eq!(
        handshakes_with_a_renegotiation(port),
        1,
        "the server must not renegotiate"
    );
    let tls = server.data_dir().join("tls");
    let control = RenegotiatingServer::start(&tls.join("server.crt"), &tls.join("server.key"));
    assert_eq!(
        handshakes_with_a_renegotiation(control.port),
        2,
        "the probe sees a renegotiation where one happens"
    );
}

/// Where `tools/check` installed sslyze (a `pip install --target` directory).
fn sslyze_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("BULWARK_SSLYZE").map(std::path::PathBuf::from);
    match dir {
        Some(dir) if dir.join("sslyze").is_dir() => dir,
        _ => panic!(
            "no sslyze in $BULWARK_SSLYZE: this test scans the server with it; install it with \
             `python3 -m pip install --target DIR sslyze==6.3.1` and set BULWARK_SSLYZE=DIR \
             (tools/check does)"
        ),
    }
}

/// The names of the cipher suites sslyze saw accepted for one protocol version.
fn accepted_suites(scan: &serde_json::Value, version: &str) -> Vec<String> {
    let result = &scan[version]["result"];
    let suites = result["accepted_cipher_suites"]
        .as_array()
        .unwrap_or_else(|| panic!("sslyze has no {version} result: {result}"));
    suites
        .iter()
        .map(|suite| {
            suite["cipher_suite"]["name"]
                .as_str()
                .expect("a suite name")
                .to_owned()
        })
        .collect()
}

#[test]
fn sslyze_finds_only_tls_1_2_and_1_3_aead_suites_no_compression_and_no_renegotiation() {
    let server = Server::start();
    let out = tempfile::tempdir().expect("a directory for the scan");
    let json = out.path().join("scan.json");
    let ca = server.data_dir().join("tls/ca.crt");
    run(Command::new("python3")
        .args(["-m", "sslyze", "--quiet", "--mozilla_config", "disable"])
        // Naming one scan runs only those named: every protocol, and the checks below.
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
        ])
        .args([
            "--compression",
            "--reneg",
            "--heartbleed",
            "--openssl_ccs",
            "--fallback",
        ])
        .arg("--certinfo")
        .env("PYTHONPATH", sslyze_dir())
        .arg("--json_out")
        .arg(&json)
        .arg("--certinfo_ca_file")
        .arg(&ca)
        .arg(format!("127.0.0.1:{}", server.port())));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("reading sslyze's report"))
            .expect("sslyze's report is JSON");
    let target = &report["server_scan_results"][0];
    assert_eq!(target["scan_status"], "COMPLETED", "{target}");
    let scan = &target["scan_result"];

    for version in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(
            accepted_suites(scan, version),
            Vec::<String>::new(),
            "{version}"
        );
    }
    let aead = |name: &str| name.contains("_GCM_") || name.contains("_CHACHA20_POLY1305_");
    for version in ["tls_1_2_cipher_suites", "tls_1_3_cipher_suites"] {
        let accepted = accepted_suites(scan, version);
        assert!(!accepted.is_empty(), "{version} is offered");
        assert!(
            accepted.iter().all(|name| aead(name)),
            "{version} accepts only AEAD suites: {accepted:?}"
        );
        let forward_secret = version == "tls_1_3_cipher_suites"
            || accepted.iter().all(|name| name.starts_with("TLS_ECDHE_"));
        assert!(forward_secret, "{version} key exchange: {accepted:?}");
    }

    let result = |scan_command: &str| &scan[scan_command]["result"];
    assert_eq!(result("tls_compression")["supports_compression"], false);
    let renegotiation = result("session_renegotiation");
    assert_eq!(
        renegotiation["is_vulnerable_to_client_renegotiation_dos"], false,
        "{renegotiation}"
    );
    assert_eq!(renegotiation["client_renegotiations_success_count"], 0);
    assert_eq!(result("heartbleed")["is_vulnerable_to_heartbleed"], false);
    assert_eq!(
        result("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"],
        false
    );
    assert_eq!(result("tls_fallback_scsv")["supports_fallback_scsv"], true);

    // With the generated CA as the trust store, the chain the server sends verifies.
    let deployments = result("certificate_info")["certificate_deployments"]
        .as_array()
        .expect("sslyze's certificate deployments")
        .clone();
    assert!(!deployments.is_empty());
    for deployment in deployments {
        let custom = deployment["path_validation_results"]
            .as_array()
            .expect("path validation results")
            .iter()
            .find(|store| store["trust_store"]["name"] == "Supplied CA file")
            .cloned()
            .expect("a result for the generated CA");
        assert!(
            custom["was_validation_successful"] == true,
            "the chain does not verify against the generated CA: {custom}"
        );
    }
}
