//! A throwaway Postgres cluster for tests: `initdb` into a temporary directory, a postmaster
//! on a free local port, one fresh database per store, and `pg_ctl stop` on drop. A test can
//! stop the server and start it again on the same data and port (an outage), or start a cluster
//! that only accepts TLS, with a server certificate from a CA generated for it.
//!
//! Invariants:
//! - The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`, the
//!   newest version wins); `tools/check` installs it. Without it the tests fail, never skip.
//! - `initdb` refuses to run as root, so as root every Postgres binary runs as the
//!   `postgres` system user, who owns the temporary directory and every file the server reads.
//! - The cluster listens on 127.0.0.1 only, trusts local connections and never touches the
//!   package's own cluster (a different port and socket directory).
//! - A TLS cluster refuses unencrypted TCP connections (`hostssl` only), so a client that
//!   reaches it at all has negotiated TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{PoolSettings, PostgresStore};
use metadata::schema::MigrationRun;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sqlx::Connection;

const SYSTEM_USER: &str = "postgres";

/// The directory holding `initdb`, `pg_ctl` and `postgres`, of the newest installed version.
fn binaries() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no Postgres server found under /usr/lib/postgresql/*/bin: these tests run a real \
             cluster; install Debian's `postgresql` package (tools/check does)"
        ),
    }
}

fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

pub struct Cluster {
    bin: PathBuf,
    as_root: bool,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    databases: AtomicU32,
    /// The CA that signed the server's certificate, when the cluster speaks TLS.
    ca: Option<PathBuf>,
    // Dropped last (fields drop in order), after `Drop::drop` stopped the server.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Initialises and starts a new cluster, failing the test with Postgres' own words if it
    /// cannot.
    pub fn start() -> Cluster {
        Cluster::init(false)
    }

    /// Like `start`, but the server only accepts TLS connections, presenting a certificate for
    /// `localhost` and `127.0.0.1` signed by a CA generated for this cluster
    /// (`ca_certificate`). `url` then asks for `sslmode=verify-full` with that CA.
    pub fn start_with_tls() -> Cluster {
        Cluster::init(true)
    }

    fn init(tls: bool) -> Cluster {
        let bin = binaries();
        let as_root = running_as_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut cluster = Cluster {
            bin,
            as_root,
            data,
            log,
            port: localport::free_port(),
            databases: AtomicU32::new(0),
            ca: None,
            _dir: dir,
        };
        cluster.give_to_postgres(cluster._dir.path());
        let data = cluster.data.clone();
        let mut initdb = cluster.postgres_command("initdb");
        run_checked(
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .args(["-E", "UTF8", "--locale=C.UTF-8"]),
        );
        if tls {
            cluster.ca = Some(cluster.write_certificates());
            // Local sockets (pg_ctl) stay trusted; TCP must be TLS.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("writing pg_hba.conf");
        }
        if let Err(failure) = cluster.launch() {
            panic!("the test Postgres cluster did not start:\n{failure}");
        }
        cluster
    }

    /// Writes a CA and a server certificate it signed into the cluster's directory, configures
    /// the server to present it, and returns the CA's path.
    fn write_certificates(&self) -> PathBuf {
        let dir = self._dir.path().join("tls");
        std::fs::create_dir(&dir).expect("creating the TLS directory");
        let (ca_pem, issuer) = certificate_authority("bulwark test Postgres CA");
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server certificate names");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("signing the server certificate");
        let ca = dir.join("ca.crt");
        let server_cert = dir.join("server.crt");
        let server_key = dir.join("server.key");
        std::fs::write(&ca, ca_pem).expect("writing ca.crt");
        std::fs::write(&server_cert, cert.pem()).expect("writing server.crt");
        std::fs::write(&server_key, key.serialize_pem()).expect("writing server.key");
        // Postgres refuses a key others may read.
        run_checked(Command::new("chmod").arg("0600").arg(&server_key));
        for path in [&dir, &ca, &server_cert, &server_key] {
            self.give_to_postgres(path);
        }
        let config = format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            server_cert.display(),
            server_key.display()
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("opening postgresql.conf");
        std::io::Write::write_all(&mut conf, config.as_bytes()).expect("configuring TLS");
        ca
    }

    /// Makes the `postgres` user own `path` when the Postgres binaries run as that user.
    fn give_to_postgres(&self, path: &Path) {
        if self.as_root {
            run_checked(
                Command::new("chown")
                    .arg(format!("{SYSTEM_USER}:"))
                    .arg(path),
            );
        }
    }

    /// Starts the postmaster on `self.port` and waits until it accepts connections.
    fn launch(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self._dir.path().display()
        );
        let mut pg_ctl = self.postgres_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        let output = pg_ctl.output().expect("run pg_ctl start");
        if output.status.success() {
            Ok(())
        } else {
            Err(describe(&output) + &std::fs::read_to_string(&self.log).unwrap_or_default())
        }
    }

    /// A command running the named Postgres binary, as the `postgres` user when we are root.
    fn postgres_command(&self, binary: &str) -> Command {
        let program = self.bin.join(binary);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", SYSTEM_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM file) a client must trust to verify a TLS cluster's server.
    pub fn ca_certificate(&self) -> &Path {
        self.ca
            .as_deref()
            .expect("a cluster started with start_with_tls")
    }

    /// The URL of `database` as a client should use it: on a TLS cluster, verifying the
    /// server's certificate and name against the cluster's CA.
    pub fn url(&self, database: &str) -> String {
        let url = format!("postgres://postgres@127.0.0.1:{}/{database}", self.port);
        match &self.ca {
            Some(ca) => format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
            None => url,
        }
    }

    /// The URL of a new, empty database of this cluster.
    pub async fn create_database(&self) -> String {
        let name = format!("bulwark_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        admin.close().await.expect("close");
        self.url(&name)
    }

    /// A store on a new, empty database, with its migrations applied.
    pub async fn store(&self) -> PostgresStore {
        let url = self.create_database().await;
        let store = PostgresStore::connect(&url, PoolSettings::default())
            .await
            .expect("connect to the Postgres store");
        match store.migrate().await.expect("migrate") {
            MigrationRun::Applied(_) => store,
            MigrationRun::Refused(check) => panic!("a new database refused migrations: {check}"),
        }
    }

    /// Stops the server now (a store using it then finds it unavailable). The data and the
    /// port stay, for `start_again`.
    pub fn stop(&self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        let mut pg_ctl = self.postgres_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        if let Ok(output) = pg_ctl.output() {
            if !output.status.success() {
                eprintln!("stopping the test Postgres cluster: {}", describe(&output));
            }
        }
    }

    /// Starts a stopped server again, with the same data on the same port, and waits until it
    /// accepts connections.
    pub fn start_again(&self) {
        if let Err(failure) = self.launch() {
            panic!(
                "the test Postgres cluster did not start again on port {}:\n{failure}",
                self.port
            );
        }
    }
}

/// A new self-signed CA: its certificate (PEM) and what signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signing the CA");
    (cert.pem(), Issuer::new(params, key))
}

/// Writes, at `path`, the certificate of a new CA that signed nothing any cluster presents:
/// what a client trusting the wrong CA holds.
pub fn write_unrelated_ca(path: &Path) {
    let (pem, _) = certificate_authority("an unrelated CA");
    std::fs::write(path, pem).expect("writing the unrelated CA");
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_checked(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        describe(&output)
    );
}
