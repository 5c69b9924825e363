//! The two registries under test, started by the harness on loopback: the release `bulwark`
//! binary and Debian's `docker-registry` (CNCF Distribution 2.8), each with a fresh data
//! directory, the same certificate, and its log in a file; and what `/proc` says about them.
//!
//! Invariants:
//! - A server is a child of this process, owned by a guard: dropping it kills that process
//!   (by its own id) and nothing else.
//! - Both registries get the same certificate, a free loopback port picked just before the
//!   start, and a data directory nobody else uses; none of the developer's `BULWARK_*` or
//!   `REGISTRY_*` variables reach them.
//! - Cold start is measured the same way for both: from spawning the process to the first
//!   HTTP answer (of any status) on `GET /v2/`, polling every 2 ms.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a registry may take to answer its first `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);
/// Where Debian's package puts CNCF Distribution.
pub const DISTRIBUTION_BINARY: &str = "/usr/bin/docker-registry";

/// The admin password the benchmark's Bulwark is created with (a throwaway on loopback).
pub const BULWARK_ADMIN: (&str, &str) = ("admin", "bench-admin-password");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bulwark,
    Distribution,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bulwark => "Bulwark",
            Kind::Distribution => "Distribution",
        }
    }
}

/// The certificate both registries present, and the CA the client trusts.
pub struct Certificates {
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    /// A CA and a server certificate for `127.0.0.1` and `localhost`, written into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Certificates> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bulwark-bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;

        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem()))?;
        std::fs::write(&key_path, key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
        Ok(Certificates {
            ca_pem: ca_cert.pem().into_bytes(),
            cert: cert_path,
            key: key_path,
        })
    }
}

/// A running registry, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// From spawn to the first answer on `/v2/`.
    pub cold_start: Duration,
}

/// What starting a registry needs.
pub struct Launch<'a> {
    pub kind: Kind,
    pub bulwark: &'a Path,
    pub certificates: &'a Certificates,
    /// A directory of its own: data, config and log go in here.
    pub dir: &'a Path,
}

impl Server {
    /// Starts the registry on a fresh port, waiting for its first answer on `/v2/`.
    pub async fn start(launch: &Launch<'_>) -> anyhow::Result<Server> {
        let port = localport::free_port();
        let data_dir = launch.dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log = launch.dir.join(format!("{}.log", port));
        let log_file = std::fs::File::create(&log)?;
        let mut command = match launch.kind {
            Kind::Bulwark => {
                let mut command = Command::new(launch.bulwark);
                command
                    .arg("serve")
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .arg("--tls-cert")
                    .arg(&launch.certificates.cert)
                    .arg("--tls-key")
                    .arg(&launch.certificates.key)
                    .env("BULWARK_ADMIN_PASSWORD", BULWARK_ADMIN.1);
                command
            }
            Kind::Distribution => {
                let config = launch.dir.join("config.yml");
                std::fs::write(
                    &config,
                    distribution_config(port, &data_dir, launch.certificates),
                )?;
                let mut command = Command::new(DISTRIBUTION_BINARY);
                command.arg("serve").arg(&config);
                command
            }
        };
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("BULWARK_") && key_text != "BULWARK_ADMIN_PASSWORD"
                || key_text.starts_with("REGISTRY_")
            {
                command.env_remove(&key);
            }
        }
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);

        let probe = crate::client::http_client(&launch.certificates.ca_pem, false)?;
        let url = format!("https://127.0.0.1:{port}/v2/");
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.kind.name()))?;
        let mut server = Server {
            child,
            port,
            log,
            cold_start: Duration::ZERO,
        };
        loop {
            if probe
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok()
            {
                server.cold_start = spawned.elapsed();
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before answering; its log:\n{}",
                    launch.kind.name(),
                    server.log_tail()
                );
            }
            if spawned.elapsed() > START_TIMEOUT {
                bail!(
                    "{} did not answer on {url} within {START_TIMEOUT:?}; its log:\n{}",
                    launch.kind.name(),
                    server.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the process and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CNCF Distribution's configuration: Debian's default (filesystem, in-memory blob descriptor
/// cache, `nosniff` header) with our data directory, TLS and port, and no auth.
fn distribution_config(port: u16, data_dir: &Path, certificates: &Certificates) -> String {
    format!(
        "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: bulwark-bench-not-a-secret
  headers:
    X-Content-Type-Options: [nosniff]
  tls:
    certificate: {cert}
    key: {key}
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
",
        data = data_dir.display(),
        cert = certificates.cert.display(),
        key = certificates.key.display(),
    )
}

/// Installs Debian's `docker-registry` when it is missing, and stops the service the package
/// starts, so that only the harness's own instance runs.
pub fn ensure_distribution() -> anyhow::Result<()> {
    if Path::new(DISTRIBUTION_BINARY).exists() {
        return Ok(());
    }
    eprintln!("installing Debian's docker-registry (CNCF Distribution) with apt-get");
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update}); install docker-registry by hand");
    }
    let install = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "docker-registry",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install docker-registry")?;
    if !install.success() {
        bail!("apt-get install docker-registry failed ({install})");
    }
    // The package enables and starts a system service on port 5000; the benchmark runs its own.
    let running = Command::new("service")
        .args(["docker-registry", "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if running {
        eprintln!("stopping the docker-registry service the package started");
        let _ = Command::new("service")
            .args(["docker-registry", "stop"])
            .status();
    }
    Ok(())
}

/// What `/proc` says about a process: CPU time so far and resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds of all its threads.
    pub cpu_seconds: f64,
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the most it was resident since start or since `reset_peak`.
    pub peak_bytes: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(Usage {
            cpu_seconds: cpu_ticks(&stat)
                .context("parsing /proc/PID/stat")?
                .as_secs_f64(clock_ticks()),
            rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
            peak_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
        })
    }

    /// The CPU seconds this process has used so far.
    pub fn own_cpu_seconds() -> f64 {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| cpu_ticks(&stat))
            .map_or(0.0, |ticks| ticks.as_secs_f64(clock_ticks()))
    }
}

/// Resets the process's `VmHWM` to its current RSS (Linux ≥ 4.0), so a later `VmHWM` is the
/// peak of what happened in between. Returns whether the kernel accepted it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// `utime + stime` from a `/proc/PID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks(pub u64);

impl Ticks {
    fn as_secs_f64(self, per_second: u64) -> f64 {
        self.0 as f64 / per_second as f64
    }
}

/// `utime` and `stime` are fields 14 and 15; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn cpu_ticks(stat: &str) -> Option<Ticks> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field N is index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(Ticks(utime + stime))
}

/// A `Name:   1234 kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on; `getconf` confirms it once.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(Ticks(175)));
    }

    #[test]
    fn a_truncated_stat_line_has_no_ticks() {
        assert_eq!(cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tbulwark\nVmHWM:\t   30512 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(20480));
        assert_eq!(status_kib(status, "VmHWM:"), Some(30512));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_usage() {
        let usage = Usage::of(std::process::id()).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(usage.peak_bytes >= usage.rss_bytes);
    }
}
