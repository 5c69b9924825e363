//! A throwaway Postgres cluster for tests: `initdb` into a temporary directory, a postmaster
//! on a free local port, one fresh database per store, and `pg_ctl stop` on drop.
//!
//! Invariants:
//! - The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`, the
//!   newest version wins); `tools/check` installs it. Without it the tests fail, never skip.
//! - `initdb` refuses to run as root, so as root every Postgres binary runs as the
//!   `postgres` system user, who owns the temporary directory.
//! - The cluster listens on 127.0.0.1 only, trusts local connections and never touches the
//!   package's own cluster (a different port and socket directory).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{PoolSettings, PostgresStore};
use metadata::schema::MigrationRun;
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

pub struct Cluster {
    bin: PathBuf,
    as_root: bool,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    databases: AtomicU32,
    // Dropped last (fields drop in order), after `Drop::drop` stopped the server.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Initialises and starts a new cluster, failing the test with Postgres' own words if it
    /// cannot.
    pub fn start() -> Cluster {
        let bin = binaries();
        let as_root = running_as_root();
        let dir = tempfile::tempdir().expect("temp dir");
        if as_root {
            run_checked(
                Command::new("chown")
                    .arg(format!("{SYSTEM_USER}:"))
                    .arg(dir.path()),
            );
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut cluster = Cluster {
            bin,
            as_root,
            data,
            log,
            port: 0,
            databases: AtomicU32::new(0),
            _dir: dir,
        };
        let data = cluster.data.clone();
        let mut initdb = cluster.postgres_command("initdb");
        run_checked(
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .args(["-E", "UTF8", "--locale=C.UTF-8"]),
        );
        // A port found free may be taken before the postmaster binds it; try a few.
        let mut last_failure = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                cluster.port,
                cluster._dir.path().display()
            );
            let mut pg_ctl = cluster.postgres_command("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&cluster.log)
                .args(["-o", &options, "-w", "-t", "60", "start"]);
            let output = pg_ctl.output().expect("run pg_ctl start");
            if output.status.success() {
                return cluster;
            }
            last_failure =
                describe(&output) + &std::fs::read_to_string(&cluster.log).unwrap_or_default();
        }
        panic!("the test Postgres cluster did not start:\n{last_failure}");
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

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
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

    /// Stops the server now (a store using it then finds it unavailable).
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
