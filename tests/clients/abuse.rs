//! The server under abuse stays a registry for everyone else: a client network over its
//! connection limit is turned away while others connect, and with 1,000 idle TLS connections
//! and 200 uploads trickling a byte every few seconds, skopeo still pushes and pulls an image
//! and the server's memory stays bounded. The abuser is Python's `ssl` (OpenSSL), connecting
//! from other loopback addresses (127.0.0.2, 127.0.0.3) than the well-behaved client.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::postgres::{assert_pulls_intact, push};
use crate::support::clients::{run, stdout_text, Clients, Running};
use crate::support::server::{admin_creds, Server};

/// Opens connections and slow uploads as told, writes `ready` to the status file, keeps the
/// uploads trickling until the `done` file appears, then prints how many of each are still
/// open and exits.
const ABUSER: &str = r#"
import base64, os, socket, ssl, sys, time

port, cafile, credentials, idle_count, slow_count, status, done = sys.argv[1:8]
port, idle_count, slow_count = int(port), int(idle_count), int(slow_count)
context = ssl.create_default_context(cafile=cafile)
context.set_alpn_protocols(["http/1.1"])
auth = "Basic " + base64.b64encode(credentials.encode()).decode()

def connect(source):
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")

def head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the answer")
        data += chunk
    return data.decode("latin-1")

def still_open(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except OSError:
        return False

idle = []
for _ in range(idle_count):
    idle.append(connect("127.0.0.2"))
slow = []
for n in range(slow_count):
    sock = connect("127.0.0.3")
    sock.sendall(f"POST /v2/abuse/slow/blobs/uploads/ HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n".encode())
    answer = head(sock)
    location = [line.split(":", 1)[1].strip() for line in answer.split("\r\n") if line.lower().startswith("location:")][0]
    sock.sendall(f"PATCH {location} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\nx".encode())
    slow.append(sock)
with open(status, "w") as f:
    f.write("ready")
while not os.path.exists(done):
    for sock in slow:
        sock.sendall(b"x")
    time.sleep(2)
print(f"idle {sum(map(still_open, idle))} slow {sum(map(still_open, slow))}")
"#;

/// Starts the abuser against `server` and waits until its connections are open.
fn abuse(server: &Server, dir: &Path, idle: usize, slow: usize) -> Running {
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, server.ca_pem()).expect("writing the CA");
    let status = dir.join("status");
    let abuser = Running::start(
        Command::new("python3").args([
            "-c",
            ABUSER,
            &server.port().to_string(),
            ca.to_str().expect("a UTF-8 path"),
            &admin_creds(),
            &idle.to_string(),
            &slow.to_string(),
            status.to_str().expect("a UTF-8 path"),
            dir.join("done").to_str().expect("a UTF-8 path"),
        ]),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !status.exists() {
        assert!(
            Instant::now() < deadline,
            "the abuser did not open its connections within two minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    abuser
}

/// The server's resident and peak memory, in MiB.
fn memory_mib(server: &Server) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("reading the server's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).expect("writing the configuration");
    path.to_str().expect("a UTF-8 path").to_owned()
}

#[test]
fn a_client_over_its_connection_limit_is_turned_away_while_others_connect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), "[limits]\nmax_connections_per_client = 5\n");
    let server = Server::start_with(&["--config", &config]);
    let abuser = abuse(&server, dir.path(), 5, 0);
    // The sixth connection from 127.0.0.2 is closed before its handshake completes.
    let refused = run(Command::new("python3").args([
        "-c",
        "import socket, ssl, sys\n\
         context = ssl.create_default_context(cafile=sys.argv[2])\n\
         raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10, source_address=('127.0.0.2', 0))\n\
         try:\n    context.wrap_socket(raw, server_hostname='localhost'); print('admitted')\n\
         except (ssl.SSLError, OSError) as err:\n    print('refused')\n",
        &server.port().to_string(),
        dir.path().join("ca.crt").to_str().expect("a UTF-8 path"),
    ]));
    assert_eq!(stdout_text(&refused), "refused");
    // Everyone else still gets in.
    let reply = run(Command::new("curl").args([
        "-sS",
        "--cacert",
        dir.path().join("ca.crt").to_str().expect("a UTF-8 path"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://{}/v2/", server.host()),
    ]));
    assert_eq!(stdout_text(&reply), "401");
    std::fs::write(dir.path().join("done"), "").expect("telling the abuser to stop");
    let kept = abuser.finish();
    assert_eq!(
        stdout_text(&kept),
        "idle 5 slow 0",
        "the admitted connections stayed open"
    );
}

#[test]
fn a_thousand_idle_connections_and_two_hundred_slow_uploads_leave_pushes_and_pulls_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Idle connections are kept for the whole test: the worst case an operator can configure.
    let config = config(dir.path(), "[limits]\nheader_timeout = \"10m\"\n");
    let server = Server::start_with(&["--config", &config]);
    let clients = Clients::new();
    let abuser = abuse(&server, dir.path(), 1000, 200);
    let image = push(&server, &clients, "abuse/app", "v1", "abused");
    assert_pulls_intact(&server, &clients, "abuse/app", "v1", &image);
    let (rss, peak) = memory_mib(&server);
    std::fs::write(dir.path().join("done"), "").expect("telling the abuser to stop");
    let kept = abuser.finish();
    assert_eq!(
        stdout_text(&kept),
        "idle 1000 slow 200",
        "the abuse lasted the whole push and pull"
    );
    eprintln!("server memory under abuse: {rss} MiB resident, {peak} MiB peak");
    assert!(
        peak < 200,
        "peak resident memory {peak} MiB with 1,000 idle connections and 200 slow uploads"
    );
}
