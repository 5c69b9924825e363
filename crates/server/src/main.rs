//! `bulwark`: the registry server, and the client of its admin API.
//!
//! `bulwark serve` (or plain `bulwark`) runs the registry with zero configuration: SQLite and
//! blobs in `./bulwark-data`, HTTPS on port 5000 with a generated certificate. `bulwark
//! migrate` brings the metadata database's schema up to this release (`migrate`); `bulwark
//! import-node` moves a single node to Postgres and an object store (`import`). `bulwark
//! login`, `user`, `project`, `member`, `robot`, `token`, `audit` and `whoami` manage a running
//! registry over its REST API (`cli`).

mod admission;
mod cli;
mod config;
mod import;
mod linger;
mod migrate;
mod serve;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulwark", version, about = "A secure OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// `bulwark` with no command: serve, with settings from `BULWARK_*` variables only.
#[derive(Parser)]
struct ServeDefaults {
    #[command(flatten)]
    overrides: config::Overrides,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (the default when no command is given).
    Serve(Box<config::Overrides>),
    /// Apply the metadata database's pending migrations, with the configuration `serve`
    /// would use, and print them. Run it before starting a new release on Postgres.
    Migrate(Box<config::Overrides>),
    /// Copy a single node's blobs and metadata into an object store and Postgres.
    ImportNode(Box<import::ImportArgs>),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = match cli.command {
        Some(Command::Serve(overrides)) => *overrides,
        Some(Command::Migrate(overrides)) => {
            let config = match load(&overrides) {
                Ok(config) => config,
                Err(exit) => return exit,
            };
            return block_on(
                tokio::runtime::Builder::new_current_thread(),
                migrate::run(config),
            );
        }
        Some(Command::Client(command)) => return run_client(command),
        Some(Command::ImportNode(args)) => {
            return block_on(
                tokio::runtime::Builder::new_multi_thread(),
                import::run(*args),
            )
        }
        None => ServeDefaults::parse_from(["bulwark"]).overrides,
    };
    let config = match load(&overrides) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    serve::init_logging(&config.log);
    block_on(
        tokio::runtime::Builder::new_multi_thread(),
        serve::run(config),
    )
}

/// The configuration, or the exit of a command that cannot have one.
fn load(overrides: &config::Overrides) -> Result<config::Config, std::process::ExitCode> {
    config::Config::load(overrides).map_err(|err| {
        eprintln!("bulwark: {err:#}");
        std::process::ExitCode::from(2)
    })
}

/// Runs a client command on a single-threaded runtime: it makes one request at a time.
fn run_client(command: cli::Command) -> std::process::ExitCode {
    block_on(
        tokio::runtime::Builder::new_current_thread(),
        cli::run(command),
    )
}

/// Runs `work` to completion on a runtime from `builder`; its error, if any, is the exit.
fn block_on(
    mut builder: tokio::runtime::Builder,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bulwark: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bulwark: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
