//! The `bulwark` binary under test, run as a child process and owned by a guard.
//!
//! The binary is `$BULWARK_BIN` (set by `tools/check`) or `target/debug/bulwark` of this
//! workspace. It is never built from here: a test that builds it would race the other tests.
//!
//! Invariants:
//! - A server listens on `127.0.0.1` at a port the kernel picked, read from the
//!   `listening on https://…` line it logs; nothing guesses or reserves ports.
//! - Its stderr is read for as long as it runs, into a buffer tests can search, so a chatty
//!   server never blocks on a full pipe.
//! - Dropping the guard kills the process; a failing test prints the server's log.
//! - The data directory outlives restarts of the process, and is removed with the guard.
//! - Every server has the admin account `ADMIN_USER` with password `ADMIN_PASSWORD`, created
//!   on first start from `BULWARK_ADMIN_PASSWORD`; no other `BULWARK_*` variable of the
//!   developer's environment reaches it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take from spawn to `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin account every server under test creates on first start.
pub const ADMIN_USER: &str = "admin";
/// Its password (the server wants at least 12 characters).
pub const ADMIN_PASSWORD: &str = "blackbox-admin-pw";

/// `USER:PASSWORD`, as the containers tools' `--creds` and curl's `-u` take credentials.
pub fn creds(user: &str, password: &str) -> String {
    format!("{user}:{password}")
}

/// The admin's `--creds`.
pub fn admin_creds() -> String {
    creds(ADMIN_USER, ADMIN_PASSWORD)
}

/// The path of the binary under test.
pub fn binary() -> PathBuf {
    let path = match std::env::var_os("BULWARK_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bulwark"),
    };
    assert!(
        path.is_file(),
        "no bulwark binary at {}: build it first: cargo build --bin bulwark \
         (or point BULWARK_BIN at one)",
        path.display()
    );
    path
}

/// A `bulwark` command with none of the developer's `BULWARK_*` settings, and the test admin's
/// password.
pub fn command() -> Command {
    let mut command = Command::new(binary());
    // Plain text keeps the log readable when a failing test prints it.
    command.env("NO_COLOR", "1").stdin(Stdio::null());
    // A developer's own BULWARK_* settings must not leak into the server under test.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BULWARK_") {
            command.env_remove(key);
        }
    }
    command.env("BULWARK_ADMIN_PASSWORD", ADMIN_PASSWORD);
    command
}

/// `bulwark serve` on `data_dir`, listening on a port the kernel picks.
fn serve_command(data_dir: &Path, extra_args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = command();
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .stdout(Stdio::null());
    command
}

/// Runs `bulwark migrate` with `args` (e.g. `["--postgres-url", URL]`), which must succeed,
/// and returns what it printed.
pub fn migrate(args: &[&str]) -> String {
    let output = command()
        .arg("migrate")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {} migrate: {err}", binary().display()));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bulwark migrate failed ({}):\n{printed}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

/// A running `bulwark serve`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    data: TempDir,
    extra_args: Vec<String>,
    log: Arc<Mutex<String>>,
    port: u16,
}

impl Server {
    /// Starts a server with a fresh data directory and a generated certificate.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra `serve` flags, e.g. `["--shutdown-grace", "30s"]`.
    pub fn start_with(extra_args: &[&str]) -> Server {
        let data = tempfile::Builder::new()
            .prefix("bulwark-data-")
            .tempdir()
            .expect("creating a data directory");
        let mut server = Server {
            child: None,
            data,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            log: Arc::default(),
            port: 0,
        };
        server.spawn();
        server
    }

    /// Runs `bulwark serve` with `extra_args` on a fresh data directory, expecting it to
    /// refuse to start: returns how it exited and what it wrote to stderr. Fails the test if
    /// it starts listening instead.
    pub fn refused(extra_args: &[&str]) -> (ExitStatus, String) {
        let data = tempfile::Builder::new()
            .prefix("bulwark-data-")
            .tempdir()
            .expect("creating a data directory");
        let mut command = serve_command(data.path(), extra_args);
        // A file, not a pipe: nothing has to read it while the process runs.
        let stderr = tempfile::NamedTempFile::new().expect("a file for stderr");
        command.stderr(Stdio::from(stderr.reopen().expect("reopening stderr")));
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary().display()));
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("checking the server process") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bulwark serve did not exit within {START_TIMEOUT:?}; its log:\n{}",
                    std::fs::read_to_string(stderr.path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(stderr.path()).expect("reading stderr");
        assert!(
            listening_port(&log).is_none(),
            "bulwark serve started listening:\n{log}"
        );
        (status, log)
    }

    fn spawn(&mut self) {
        let mut command = serve_command(self.data.path(), &self.extra_args);
        command.stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary().display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (port_sender, port_receiver) = mpsc::channel();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&text);
                if let Some(port) = listening_port(&text) {
                    // The receiver is gone after startup; later lines only go to the log.
                    let _ = port_sender.send(port);
                }
            }
        });
        match port_receiver.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                self.port = port;
                self.child = Some(child);
            }
            Err(err) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "bulwark did not log `listening on https://…` ({err}; exit: {status:?}); its log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// The port the current process listens on (it changes on restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `localhost:PORT`, the registry host clients are given.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The PEM of the CA the server generated on first start.
    pub fn ca_pem(&self) -> Vec<u8> {
        let path = self.data_dir().join("tls/ca.crt");
        std::fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
    }

    /// A fresh directory holding only `ca.crt`: what `--cert-dir` of the containers tools wants.
    pub fn certs_dir(&self) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-certs-")
            .tempdir()
            .expect("creating a certs directory");
        std::fs::write(dir.path().join("ca.crt"), self.ca_pem()).expect("writing ca.crt");
        dir
    }

    /// Everything the server has written to stderr so far, across restarts.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the log contains `needle`; the log is read by another thread, so a line
    /// written just before a response may arrive here a moment after it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bytes each established connection to the server has received so far, by peer
    /// address, as the kernel counts them (`ss`): what a request is sending right now, even
    /// before the server answers it.
    pub fn received_by_connection(&self) -> HashMap<String, u64> {
        let output = Command::new("ss")
            .args(["-tnHi", "state", "established"])
            .arg(format!("sport = :{}", self.port))
            .output()
            .expect("running ss (iproute2)");
        assert!(output.status.success(), "ss failed: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut received = HashMap::new();
        let mut peer = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // A socket's line (`Recv-Q Send-Q Local Peer`) is followed by its details line.
            if fields.len() == 4 && fields[2].ends_with(&format!(":{}", self.port)) {
                peer = Some(fields[3].to_owned());
            } else if let Some(peer) = peer.take() {
                let bytes = fields
                    .iter()
                    .find_map(|field| field.strip_prefix("bytes_received:"))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                received.insert(peer, bytes);
            }
        }
        received
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("sending SIGKILL");
        child.wait().expect("reaping the killed server");
    }

    /// Sends SIGTERM, as an orchestrator stopping the server would; does not wait.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits for the process to exit by itself and returns how it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the server is running");
        loop {
            if let Some(status) = child.try_wait().expect("checking the server process") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bulwark did not exit within {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same data directory (and flags), killing the
    /// current one first if it still runs. The port is new.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill_9();
        }
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str("---- restarted by the test ----\n");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- bulwark log (port {}) ----\n{}", self.port, self.log());
        }
    }
}

/// The port in a `listening on https://127.0.0.1:PORT` log line.
fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on https://")? + "listening on https://".len()..];
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    address
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|address| address.port())
}
