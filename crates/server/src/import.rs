//! `bulwark import-node`: the step from one node to several replicas. Copies a single node's
//! blobs (its data directory's `storage/`) into the configured object store, then its metadata
//! (`metadata.db`) into the configured Postgres database, which must be migrated and empty.
//!
//! Run it with the single node stopped. Blobs go first, so the imported metadata never names a
//! blob the store lacks; an interrupted run can be repeated (blobs already copied are skipped,
//! and the metadata import is one transaction). Upload sessions in progress are not carried
//! over: clients restart those uploads.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Config, Overrides};

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The single node's data directory (holding metadata.db and storage/).
    #[arg(long)]
    pub from: PathBuf,
    /// The destination: the Postgres URL and object store of the scale-out deployment, as
    /// `bulwark serve` takes them (flags, BULWARK_* variables or --config).
    #[command(flatten)]
    pub destination: Overrides,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.destination)?;
    let url = config.metadata.postgres_url.as_ref().context(
        "the destination needs a Postgres database: set metadata.postgres_url (--postgres-url)",
    )?;
    let remote = config.storage.remote()?.context(
        "the destination needs an object store: set storage.backend to s3, gcs or azure",
    )?;
    let database = args.from.join("metadata.db");
    let storage = args.from.join("storage");
    for path in [&database, &storage] {
        anyhow::ensure!(
            path.exists(),
            "{} does not exist: --from must name a single node's data directory",
            path.display()
        );
    }

    let source = blobstore::BlobStore::local(&storage).context("opening the node's blobs")?;
    let target = blobstore::BlobStore::remote(&remote).context("opening the object store")?;
    println!(
        "copying blobs from {} to {}",
        source.description(),
        target.description()
    );
    let (blobs, bytes) = source
        .copy_blobs_into(&target)
        .await
        .context("copying blobs")?;
    println!("copied {blobs} blobs ({bytes} bytes); blobs already there were skipped");

    let settings = metadata_postgres::PoolSettings {
        max_connections: 2,
        acquire_timeout: config.metadata.acquire_timeout.0,
    };
    let store = crate::serve::connect_current(url.expose(), settings).await?;
    let imported = store
        .import_sqlite(&database)
        .await
        .with_context(|| format!("importing {}", database.display()))?;
    store.close().await;
    for (table, rows) in &imported.tables {
        println!("imported {rows:>8} {table}");
    }
    println!("done: start the replicas with this configuration");
    Ok(())
}
