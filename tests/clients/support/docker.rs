//! A Docker engine of the test's own, and what makes it verify TLS for real.
//!
//! dockerd treats every registry that resolves into 127.0.0.0/8 as insecure (it neither checks
//! the certificate nor insists on HTTPS), so the registry is given a name that does not resolve
//! (`registry.test`, one of the server certificate's names) and dockerd reaches it through an
//! HTTP CONNECT proxy on loopback (`ConnectProxy`) that maps `registry.test:PORT` to
//! `127.0.0.1:PORT`. dockerd then trusts the registry only once
//! `/etc/docker/certs.d/registry.test:PORT/ca.crt` exists (`TrustedCa`).
//!
//! Invariants:
//! - dockerd keeps everything (data root, exec root, pid file, socket, the CLI's config) under
//!   the guard's temporary directory; it creates no bridge and touches no iptables rules.
//! - Dropping `Dockerd` stops it (SIGTERM, then SIGKILL), ends any process still running from
//!   its directory (the containerd it started), unmounts what is left mounted under it and
//!   removes it, whether the test passed or not. Dropping `TrustedCa` removes the CA it added.
//! - The proxy connects only to the one name and port it maps, and records what was asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::clients::{describe, output_with_input, printed, require};

/// dockerd is ready in about two seconds here; a slow CI machine gets more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Where dockerd looks for the CA of a registry `HOST:PORT`.
const DOCKER_CERTS: &str = "/etc/docker/certs.d";

/// A loopback HTTP CONNECT proxy that reaches `name:port` at `127.0.0.1:port`, and refuses
/// every other destination.
pub struct ConnectProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    requested: Arc<Mutex<Vec<String>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    pub fn start(name: &str, port: u16) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let proxy_port = listener.local_addr().expect("the proxy's address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requested = Arc::new(Mutex::new(Vec::new()));
        let target = format!("{name}:{port}");
        let acceptor = {
            let stop = Arc::clone(&stop);
            let requested = Arc::clone(&requested);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let requested = Arc::clone(&requested);
                    let target = target.clone();
                    std::thread::spawn(move || tunnel(stream, &target, port, &requested));
                }
            })
        };
        ConnectProxy {
            port: proxy_port,
            stop,
            requested,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every `CONNECT` destination asked for so far, in order.
    pub fn requested(&self) -> Vec<String> {
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag; open tunnels end with their connections.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves one proxy connection: reads `CONNECT target HTTP/1.1` and its headers, then pipes
/// bytes both ways between the client and `127.0.0.1:port`.
fn tunnel(client: TcpStream, target: &str, port: u16, requested: &Mutex<Vec<String>>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(client);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, destination) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    requested
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(destination.to_owned());
    // Bytes the client sent after the headers (none, normally: it waits for our answer).
    let early = reader.buffer().to_vec();
    let mut client = reader.into_inner();
    if !method.eq_ignore_ascii_case("CONNECT") || destination != target {
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .is_err()
        || upstream.write_all(&early).is_err()
    {
        return;
    }
    let _ = client.set_read_timeout(None);
    let (Ok(mut client_reader), Ok(mut upstream_writer)) =
        (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let uploading = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = uploading.join();
}

/// `ca.crt` installed for one registry `HOST:PORT` under `/etc/docker/certs.d`; dropping it
/// removes the file and every directory the install created.
pub struct TrustedCa {
    dir: PathBuf,
    /// Directories that did not exist before, deepest first.
    created: Vec<PathBuf>,
}

impl TrustedCa {
    /// Fails the test if that directory exists already: it would not be this test's to remove.
    pub fn install(registry: &str, ca_pem: &[u8]) -> TrustedCa {
        let dir = Path::new(DOCKER_CERTS).join(registry);
        assert!(
            !dir.exists(),
            "{} exists already: this machine trusts something for {registry} outside the test",
            dir.display()
        );
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|ancestor| !ancestor.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        let trusted = TrustedCa { dir, created };
        std::fs::write(trusted.dir.join("ca.crt"), ca_pem).expect("writing ca.crt");
        trusted
    }
}

impl Drop for TrustedCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Only while empty: another test may have put its own CA next to ours meanwhile.
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A `dockerd` started for one test, and the `docker` CLI configured to use it.
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
    proxy: String,
    driver: &'static str,
}

impl Dockerd {
    /// Starts dockerd, reaching registries through `proxy`; overlay2 if this kernel and
    /// filesystem allow it, else vfs.
    pub fn start(proxy: &ConnectProxy) -> Dockerd {
        require("dockerd");
        require("docker");
        let dir = tempfile::Builder::new()
            .prefix("bwk-docker-")
            .tempdir()
            .expect("creating dockerd's directory");
        let mut dockerd = Dockerd {
            dir,
            child: None,
            proxy: proxy.url(),
            driver: "overlay2",
        };
        let mut failures = String::new();
        for driver in ["overlay2", "vfs"] {
            match dockerd.spawn(driver) {
                Ok(()) => return dockerd,
                Err(failure) => failures.push_str(&format!(
                    "---- with --storage-driver={driver} ----\n{failure}\n"
                )),
            }
        }
        panic!("dockerd did not start with any storage driver:\n{failures}");
    }

    fn exec_root(&self) -> PathBuf {
        self.dir.path().join("exec")
    }

    fn socket(&self) -> PathBuf {
        self.exec_root().join("docker.sock")
    }

    fn log_path(&self, driver: &str) -> PathBuf {
        self.dir.path().join(format!("dockerd-{driver}.log"))
    }

    /// Everything dockerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.driver)).unwrap_or_default()
    }

    /// Starts dockerd with `driver` and waits until it answers `/_ping`; on failure, stops it
    /// and returns its log.
    fn spawn(&mut self, driver: &'static str) -> Result<(), String> {
        let root = self.dir.path();
        let exec_root = self.exec_root();
        std::fs::create_dir_all(&exec_root).expect("creating the exec root");
        let log = std::fs::File::create(self.log_path(driver)).expect("creating dockerd's log");
        let mut command = Command::new("dockerd");
        command
            .arg("--data-root")
            .arg(root.join(format!("data-{driver}")))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver",
                driver,
            ]);
        self.proxy_env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .map_err(|err| format!("starting dockerd: {err}"))?;
        self.child = Some(child);
        self.driver = driver;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            let failure = match exited {
                Some(status) => Some(format!("dockerd exited ({status})")),
                None if Instant::now() > deadline => {
                    Some(format!("dockerd did not answer within {READY_TIMEOUT:?}"))
                }
                None => None,
            };
            if let Some(failure) = failure {
                let log = self.log();
                self.stop();
                return Err(format!("{failure}; its log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether dockerd answers `GET /_ping` on its socket.
    fn ping(&self) -> bool {
        let Ok(mut stream) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    /// Proxy settings of dockerd and the CLI: every HTTPS connection goes to the proxy; none
    /// of the host's proxy settings or exceptions apply.
    fn proxy_env(&self, command: &mut Command) {
        for key in [
            "NO_PROXY",
            "no_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            command.env_remove(key);
        }
        command
            .env("HTTPS_PROXY", &self.proxy)
            .env("https_proxy", &self.proxy);
    }

    /// The `docker` CLI, talking to this dockerd, with its configuration in the temp dir.
    pub fn command(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env("DOCKER_CLI_HINTS", "false")
            .env("TMPDIR", self.dir.path());
        self.proxy_env(&mut command);
        command
    }

    /// Writes `bytes` to a file `name` in the guard's directory, for commands that read files.
    pub fn scratch_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes)
            .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }

    /// Runs `docker ARGS` (with `input` on stdin); fails the test unless it succeeds.
    pub fn docker(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut command = self.command();
        command.args(args);
        let result = output_with_input(&mut command, input);
        assert!(
            result.status.success(),
            "`{}` failed ({})\n{}",
            describe(&command),
            result.status,
            printed(&result)
        );
        result
    }

    /// Runs `docker ARGS` (with `input` on stdin); fails the test unless it fails.
    pub fn docker_failing(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut command = self.command();
        command.args(args);
        let result = output_with_input(&mut command, input);
        assert!(
            !result.status.success(),
            "`{}` succeeded but was expected to fail\n{}",
            describe(&command),
            printed(&result)
        );
        result
    }

    /// `docker login REGISTRY -u USER --password-stdin`, which must succeed and say so.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> Output {
        let input = format!("{password}\n");
        let login = self.docker(
            &["login", registry, "-u", user, "--password-stdin"],
            Some(input.as_bytes()),
        );
        assert!(
            String::from_utf8_lossy(&login.stdout).contains("Login Succeeded"),
            "docker login as {user}\n{}",
            printed(&login)
        );
        login
    }

    /// `docker logout REGISTRY`, which must succeed and leave no credentials for it behind.
    pub fn logout(&self, registry: &str) {
        self.docker(&["logout", registry], None);
        let config = self.dir.path().join("config/config.json");
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        assert!(
            !text.contains(&format!("\"{registry}\"")),
            "docker logout left credentials for {registry} in {}:\n{text}",
            config.display()
        );
    }

    /// Stops dockerd and everything it left behind; safe to call more than once.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        // A dockerd killed before it could stop its containerd (or a container's shim) leaves
        // them running; they are ours because their command line names our directory.
        for pid in processes_mentioning(self.dir.path()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- dockerd log (storage driver {}) ----\n{}",
                self.driver,
                self.log()
            );
        }
        self.stop();
    }
}

/// The ids of running processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .collect()
}

/// Unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal; temp paths have none.
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let unmounted = Command::new("umount")
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount")
                .args(["--lazy", &point])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
