//! A real load balancer (HAProxy, Debian's `haproxy` package) in front of several replicas, as
//! operators run them: it terminates TLS with the replicas' certificate, balances every HTTP
//! request on its own (round robin, no stickiness), re-encrypts to the replicas verifying them
//! against the registry's CA, and takes a replica out of rotation when it stops answering.
//!
//! Invariants:
//! - HAProxy runs in the foreground from the guard's temporary directory, listening only on a
//!   loopback port; dropping `Balancer` kills it.
//! - Its log has one line per request, `SERVER METHOD URI STATUS {LOCATION}`, read by `served`:
//!   which replica answered what is recorded by the balancer, not guessed by the test.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::clients::{path_str, require};
use super::server::Server;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One request as the balancer logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The replica's name in the balancer: `r0`, `r1`, … in the order given to `start`, or
    /// `<NOSRV>` when no replica took the request.
    pub server: String,
    pub method: String,
    /// The request path, without its query.
    pub path: String,
    /// The replica's status code, or -1 when the request ended without an answer.
    pub status: i32,
    /// The `Location` the replica answered with, if any.
    pub location: String,
}

pub struct Balancer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Balancer {
    /// Starts HAProxy in front of `replicas`, serving `cert_pem` + `key_pem` (the replicas'
    /// certificate chain and key) and trusting `ca_pem` for the connections to them.
    pub fn start(replicas: &[&Server], cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Balancer {
        require("haproxy");
        let dir = tempfile::Builder::new()
            .prefix("bulwark-balancer-")
            .tempdir()
            .expect("creating the balancer's directory");
        let bundle = dir.path().join("frontend.pem");
        let mut pem = cert_pem.to_vec();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key_pem);
        std::fs::write(&bundle, pem).expect("writing the balancer's certificate");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, ca_pem).expect("writing the CA");
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(n, replica)| {
                format!(
                    "    server r{n} 127.0.0.1:{port} ssl verify required ca-file {ca} verifyhost localhost check inter 200ms fall 1 rise 2\n",
                    port = replica.port(),
                    ca = path_str(&ca),
                )
            })
            .collect();
        let log = dir.path().join("haproxy.log");
        let port = localport::free_port();
        // Requests are balanced one by one (no `prefer-last-server`, no persistence); a request
        // that cannot connect is retried on another replica (`redispatch`); bodies stream.
        let config = format!(
            "global\n    log stderr format raw local0\n    maxconn 512\n\
             defaults\n    mode http\n    log global\n    option httplog\n\
             \x20   log-format \"%s %HM %HU %ST %hs\"\n    option redispatch\n    retries 3\n\
             \x20   timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n\
             frontend registry\n    bind 127.0.0.1:{port} ssl crt {bundle}\n\
             \x20   capture response header Location len 512\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n{servers}",
            bundle = path_str(&bundle),
        );
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("writing haproxy.cfg");
        let log_file = std::fs::File::create(&log).expect("creating the balancer's log");
        let mut child = Command::new("haproxy")
            .args(["-db", "-f", path_str(&config_path)])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("sharing the log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting haproxy");
        wait_until_listening(&mut child, port, &log);
        Balancer {
            child: Some(child),
            port,
            log,
            _dir: dir,
        }
    }

    /// `localhost:PORT`, the one registry name clients are given.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Everything HAProxy has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request the balancer has finished, in order.
    pub fn served(&self) -> Vec<Served> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let server = fields.next()?;
                let method = fields.next()?;
                let uri = fields.next()?;
                let status = fields.next()?.parse().ok()?;
                let location = fields.next()?.strip_prefix('{')?.strip_suffix('}')?;
                if fields.next().is_some() || !uri.starts_with('/') {
                    return None;
                }
                Some(Served {
                    server: server.to_owned(),
                    method: method.to_owned(),
                    path: uri.split('?').next().unwrap_or_default().to_owned(),
                    status,
                    location: location.to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "---- haproxy log ----\n{}",
                self.log_text()
            );
        }
    }
}

/// Waits until `child` (HAProxy) is the process listening on `port`, as the kernel reports it
/// (`ss`), not merely until something accepts connections there; panics with its log if it
/// exits first or does not listen in time.
fn wait_until_listening(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let owner = format!("pid={},", child.id());
    loop {
        if let Some(status) = child.try_wait().expect("checking haproxy") {
            panic!(
                "haproxy exited with {status} before listening on port {port}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let sockets = Command::new("ss")
            .args(["-ltnpH"])
            .arg(format!("sport = :{port}"))
            .output()
            .expect("running ss (iproute2)");
        if String::from_utf8_lossy(&sockets.stdout).contains(&owner) {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "haproxy did not listen within {READY_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
