//! HTTP/1.1 edges as independent clients meet them: an answer given before the request body was
//! read (a manifest over the limit, a refused credential) reaches a client that is still
//! sending (Python's `http.client`, which sends the whole body before it reads) and one that
//! waits for `100 Continue` (curl, which then sends nothing); a request without exactly one
//! `Host` is refused.

use std::process::Command;

use crate::support::clients::{run, stdout_text};
use crate::support::server::{admin_creds, Server};

/// An HTTP/1.1 client that is not ours: Python's `http.client` over its `ssl` (OpenSSL),
/// trusting only the server's CA. Prints one line per request: the status and the first error
/// code, or the exception that ended it.
const PYTHON_CLIENT: &str = r#"
import base64, http.client, json, ssl, sys

port, cafile, credentials, case = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=cafile)
auth = "Basic " + base64.b64encode(credentials.encode()).decode()

def answer(response):
    body = response.read()
    try:
        code = json.loads(body)["errors"][0]["code"]
    except Exception:
        code = "-"
    return f"{response.status} {code}"

def send(method, path, body=None, headers=None, hosts=None):
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        if hosts is None:
            connection.request(method, path, body=body, headers=headers or {})
        else:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for host in hosts:
                connection.putheader("Host", host)
            connection.endheaders()
        return answer(connection.getresponse())
    except Exception as err:
        return f"failed {type(err).__name__}: {err}"
    finally:
        connection.close()

big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
if case == "oversized-manifest":
    for _ in range(5):
        print(send("PUT", "/v2/edges/app/manifests/big", big,
                   {"Authorization": auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
elif case == "refused-body":
    for _ in range(5):
        print(send("PATCH", "/v2/edges/app/blobs/uploads/00000000-0000-0000-0000-000000000001",
                   b"x" * (8 * 1024 * 1024), {"Content-Type": "application/octet-stream"}))
elif case == "big-patch":
    for _ in range(10):
        print(send("PATCH", sys.argv[5], b"x" * (4 * 1024 * 1024),
                   {"Authorization": auth, "Content-Type": "application/octet-stream"}))
elif case == "hosts":
    print(send("GET", "/v2/", hosts=[]))
    print(send("GET", "/v2/", hosts=["localhost", "elsewhere.example"]))
    print(send("GET", "/v2/", hosts=[f"localhost:{port}"], ))
"#;

/// The answers Python's `http.client` gets in `case` (with `extra` arguments), as the admin.
pub fn python(server: &Server, case: &str, extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, server.ca_pem()).expect("writing the CA");
    let output = run(Command::new("python3")
        .args([
            "-c",
            PYTHON_CLIENT,
            &server.port().to_string(),
            ca.to_str().expect("a UTF-8 path"),
            &admin_creds(),
            case,
        ])
        .args(extra));
    stdout_text(&output).lines().map(str::to_owned).collect()
}

#[test]
fn an_oversized_manifest_gets_its_413_while_the_client_is_still_sending() {
    let server = Server::start();
    let answers = python(&server, "oversized-manifest", &[]);
    assert_eq!(answers, vec!["413 SIZE_INVALID"; 5], "{}", server.log());
}

#[test]
fn a_refused_upload_body_gets_its_401_while_the_client_is_still_sending() {
    let server = Server::start();
    let answers = python(&server, "refused-body", &[]);
    assert_eq!(answers, vec!["401 UNAUTHORIZED"; 5], "{}", server.log());
}

#[test]
fn a_client_waiting_for_100_continue_is_answered_without_sending_the_body() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, server.ca_pem()).expect("writing the CA");
    let manifest = dir.path().join("big.json");
    std::fs::write(&manifest, vec![b' '; 5 * 1024 * 1024]).expect("writing the body");
    // curl asks for `100 Continue` before a body this large and sends it only when invited
    // (or after a second without an answer).
    let reply = run(Command::new("curl").args([
        "-sS",
        "--http1.1",
        "--cacert",
        ca.to_str().expect("a UTF-8 path"),
        "-u",
        &admin_creds(),
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "10",
        "--data-binary",
        &format!("@{}", manifest.display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload}",
        &format!("https://{}/v2/edges/app/manifests/big", server.host()),
    ]));
    assert_eq!(
        stdout_text(&reply),
        "413 0",
        "the 413 comes before any of the body is invited"
    );
}

#[test]
fn a_request_without_exactly_one_host_is_refused() {
    let server = Server::start();
    let answers = python(&server, "hosts", &[]);
    assert_eq!(
        answers,
        vec!["400 UNSUPPORTED", "400 UNSUPPORTED", "401 UNAUTHORIZED"],
        "no Host, two Host lines, then one"
    );
}
