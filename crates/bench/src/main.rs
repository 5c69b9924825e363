//! `bulwark-bench`: the benchmark harness of issue 5. It pushes and pulls through the
//! distribution API like registry clients do and measures throughput, request rates,
//! latencies, and the server's CPU and memory.
//!
//! - `compare` starts the release `bulwark` and Debian's `docker-registry` (CNCF Distribution)
//!   on loopback with the same certificate, runs every scenario against each, alternating,
//!   for several repetitions, and prints medians, spreads, ratios and issue 5's targets
//!   beside the machine's limits.
//! - `run` runs the scenarios once against any registry URL.
//! - `limits` measures only the machine's limits.
//!
//! Invariants:
//! - Nothing here asserts on timing; it measures and reports.
//! - Every process it starts is its own child, killed by its id when done.

mod client;
mod limits;
mod payload;
mod report;
mod scenarios;
mod server;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::client::{Client, Credentials, Target};
use crate::report::Run;
use crate::scenarios::{Blobs, Plan, Results, MIB};
use crate::server::{Certificates, Kind, Launch, Server, Usage};

#[derive(Parser)]
#[command(
    name = "bulwark-bench",
    about = "Benchmarks OCI registries side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bulwark against CNCF Distribution, alternating, on this machine.
    Compare(CompareArgs),
    /// The scenarios once against one registry.
    Run(RunArgs),
    /// Only the machine's limits.
    Limits(LimitsArgs),
}

#[derive(Args, Clone)]
struct PlanArgs {
    /// Size of the blob pushed three ways and pulled, in MiB.
    #[arg(long, default_value_t = 1024)]
    blob_mib: u64,
    /// Chunk size of the chunked push, in MiB.
    #[arg(long, default_value_t = 16)]
    chunk_mib: u64,
    /// Seconds each request-rate scenario runs.
    #[arg(long, default_value_t = 3.0)]
    rate_seconds: f64,
    /// Layers of the image pushed end to end.
    #[arg(long, default_value_t = 100)]
    layers: usize,
    /// Size of each of those layers, in KiB.
    #[arg(long, default_value_t = 100)]
    layer_kib: u64,
    /// Concurrent pushers.
    #[arg(long, default_value_t = 32)]
    pushers: usize,
    /// Blob size of each concurrent pusher, in MiB.
    #[arg(long, default_value_t = 10)]
    pusher_mib: u64,
    /// Run only these groups of scenarios (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<scenarios::Group>,
    /// Let TLS negotiate HTTP/2 (one multiplexed connection) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
}

impl PlanArgs {
    fn plan(&self) -> Plan {
        Plan {
            blob_size: self.blob_mib * MIB,
            chunk_size: self.chunk_mib.max(1) * MIB,
            rate_duration: Duration::from_secs_f64(self.rate_seconds),
            layers: self.layers,
            layer_size: self.layer_kib * 1024,
            pushers: self.pushers,
            pusher_size: self.pusher_mib * MIB,
            only: self.only.clone(),
        }
    }
}

#[derive(Args)]
struct CompareArgs {
    /// Repetitions; each starts both registries afresh, in alternating order.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// The `bulwark` binary. Default: build it with `cargo build --release --bin bulwark`
    /// (when run through cargo) and take it from beside this binary.
    #[arg(long)]
    bulwark: Option<PathBuf>,
    /// Where data directories, configs and logs go (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Skip measuring the machine's limits.
    #[arg(long)]
    skip_limits: bool,
    /// Also write every raw value as JSON here (rewritten after each registry run).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report here, rewritten after each registry run, so an interrupted
    /// comparison keeps what it measured.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    plan: PlanArgs,
}

/// Writes the report files asked for, from the runs so far.
fn save(
    args: &CompareArgs,
    machine: &[String],
    limits: &limits::Limits,
    runs: &[Run],
) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&report::raw_json(machine, limits, runs))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report::render(machine, limits, runs))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Args)]
struct RunArgs {
    /// The registry, e.g. https://registry.example:5000.
    #[arg(long)]
    url: String,
    /// PEM file of the CA that signed the registry's certificate.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    username: Option<String>,
    /// The environment variable holding the password.
    #[arg(long, default_value = "BENCH_PASSWORD")]
    password_env: String,
    /// The registry's process id on this machine, to record its CPU and memory.
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(Args)]
struct LimitsArgs {
    /// Where the disk test writes (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Compare(args) => compare(args).await,
            Command::Run(args) => run_one(args).await,
            Command::Limits(args) => {
                let work = work_dir(args.work_dir.as_deref())?;
                let certificates = Certificates::generate(work.path())?;
                let limits = limits::measure(work.path(), &certificates).await?;
                print!(
                    "{}",
                    report::render(&limits::describe_machine(), &limits, &[])
                );
                Ok(())
            }
        }
    })
}

fn work_dir(parent: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("bulwark-bench-");
        builder
    };
    Ok(match parent {
        Some(parent) => {
            std::fs::create_dir_all(parent)?;
            builder.tempdir_in(parent)?
        }
        None => builder.tempdir()?,
    })
}

/// Builds the release `bulwark` next to this binary when run through cargo, then finds it.
fn bulwark_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let here = std::env::current_exe()?;
    let beside = here.with_file_name("bulwark");
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("building the release bulwark binary (cargo build --release --bin bulwark)");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut command = std::process::Command::new(cargo);
        command
            .args(["build", "--release", "--bin", "bulwark"])
            .current_dir(workspace);
        // `cargo run` describes this package to it in variables that build scripts (ring's)
        // watch: passed on, they would make this build, and the next plain one, recompile.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("CARGO_PKG_")
                || matches!(
                    key_text.as_ref(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "OUT_DIR"
                )
            {
                command.env_remove(&key);
            }
        }
        let status = command.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release --bin bulwark failed ({status})");
        }
    }
    if !beside.is_file() {
        bail!(
            "no bulwark binary at {}: run `cargo build --release --bin bulwark` or pass --bulwark",
            beside.display()
        );
    }
    Ok(beside)
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let bulwark = bulwark_binary(args.bulwark.as_deref())?;
    server::ensure_distribution()?;
    let work = work_dir(args.work_dir.as_deref())?;
    let certificates = Certificates::generate(work.path())?;
    let plan = args.plan.plan();
    let machine = limits::describe_machine();
    for line in &machine {
        eprintln!("{line}");
    }

    let started = Instant::now();
    eprintln!("generating and hashing the payloads");
    let blobs = Blobs::prepare(&plan).await?;
    eprintln!("  done in {:.1}s", started.elapsed().as_secs_f64());

    let limits = if args.skip_limits {
        limits::Limits::new()
    } else {
        eprintln!(
            "measuring the machine's limits (load {})",
            limits::load_average()
        );
        let limits = limits::measure(work.path(), &certificates).await?;
        eprintln!("{}", report::render(&[], &limits, &[]).trim_end());
        limits
    };

    let mut runs = Vec::new();
    for repetition in 0..args.repetitions {
        let order = if repetition % 2 == 0 {
            [Kind::Bulwark, Kind::Distribution]
        } else {
            [Kind::Distribution, Kind::Bulwark]
        };
        for kind in order {
            let load_before = limits::load_average();
            eprintln!(
                "repetition {}/{}: {} (load {load_before})",
                repetition + 1,
                args.repetitions,
                kind.name()
            );
            let dir =
                work.path()
                    .join(format!("{}-{}", repetition + 1, kind.name().to_lowercase()));
            std::fs::create_dir_all(&dir)?;
            let launch = Launch {
                kind,
                bulwark: &bulwark,
                certificates: &certificates,
                dir: &dir,
            };
            let run_started = Instant::now();
            let results = measure_registry(&launch, &plan, &blobs, args.plan.http2)
                .await
                .with_context(|| format!("{} in repetition {}", kind.name(), repetition + 1))?;
            eprintln!("  done in {:.0}s", run_started.elapsed().as_secs_f64());
            // Remove the data before the other registry runs, so its writeback is not theirs.
            std::fs::remove_dir_all(&dir)?;
            let _ = std::process::Command::new("sync").status();
            runs.push(Run {
                kind,
                repetition,
                load_before,
                results,
            });
            save(&args, &machine, &limits, &runs)?;
        }
    }

    let text = report::render(&machine, &limits, &runs);
    println!("{text}");
    eprintln!(
        "the whole comparison took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts one registry afresh, runs everything against it, restarts it once, stops it.
async fn measure_registry(
    launch: &Launch<'_>,
    plan: &Plan,
    blobs: &Blobs,
    http2: bool,
) -> anyhow::Result<Results> {
    let mut results = Results::default();
    let server = Server::start(launch).await?;
    results.set("cold_start_ms", server.cold_start.as_secs_f64() * 1000.0);
    // Let start-up work (a runtime's first collections, a pool's first connections) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = Usage::of(server.pid())?;
    results.set("rss_idle_mib", idle.rss_bytes as f64 / MIB as f64);

    let target = Target {
        base: server.base_url(),
        ca_pem: launch.certificates.ca_pem.clone(),
        credentials: (launch.kind == Kind::Bulwark).then(|| Credentials {
            username: server::BULWARK_ADMIN.0.into(),
            password: server::BULWARK_ADMIN.1.into(),
        }),
        http2,
    };
    let client = Client::connect(&target, &scenarios::scopes()).await?;
    if launch.kind == Kind::Bulwark && !client.uses_tokens() {
        eprintln!("warning: Bulwark did not ask for a token; measuring without token auth");
    }
    if let Err(err) = scenarios::run(&client, plan, blobs, Some(server.pid()), &mut results).await {
        bail!(
            "{err:#}\n{} log:\n{}",
            launch.kind.name(),
            server.log_tail()
        );
    }
    drop(client);
    server.stop();

    let restarted = Server::start(launch).await?;
    results.set("restart_ms", restarted.cold_start.as_secs_f64() * 1000.0);
    restarted.stop();
    Ok(results)
}

async fn run_one(args: RunArgs) -> anyhow::Result<()> {
    let plan = args.plan.plan();
    let ca_pem =
        std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let credentials = match args.username {
        Some(username) => Some(Credentials {
            username,
            password: std::env::var(&args.password_env)
                .with_context(|| format!("the password goes in ${}", args.password_env))?,
        }),
        None => None,
    };
    let target = Target {
        base: args.url,
        ca_pem,
        credentials,
        http2: args.plan.http2,
    };
    eprintln!("generating and hashing the payloads");
    let blobs = Blobs::prepare(&plan).await?;
    let client = Client::connect(&target, &scenarios::scopes()).await?;
    let mut results = Results::default();
    scenarios::run(&client, &plan, &blobs, args.pid, &mut results).await?;
    let runs = [Run {
        kind: Kind::Bulwark,
        repetition: 0,
        load_before: limits::load_average(),
        results,
    }];
    // One registry: its figures appear in the first column.
    println!(
        "{}",
        report::render(&limits::describe_machine(), &limits::Limits::new(), &runs)
    );
    Ok(())
}
