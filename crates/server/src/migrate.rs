//! `bulwark migrate`: brings the configured metadata database's schema up to this release and
//! prints each migration it applied. It loads configuration exactly like `serve`, so the same
//! flags, variables and file name the same database.
//!
//! Invariants:
//! - `serve` on Postgres never migrates. Replicas of a release share one database, so its
//!   schema changes once, when an operator (or a deploy job) runs `bulwark migrate`, not as a
//!   side effect of whichever replica starts first; a replica refuses to start on a schema
//!   that is not exactly its own and says why (`refusal`).
//! - `serve` on embedded SQLite migrates at start: one process owns the data directory, and a
//!   single node must stay one command (`bulwark serve`, nothing else).
//! - Neither migrates a database that a newer or different release migrated.

use anyhow::Context;
use metadata::schema::{MigrationRun, SchemaCheck};

use crate::config::Config;

/// Applies the pending migrations of the configured metadata database and prints them.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (database, run) = match &config.metadata.postgres_url {
        Some(url) => {
            let store = metadata_postgres::PostgresStore::connect(
                url.expose(),
                crate::serve::pool_settings(&config),
            )
            .await
            .context("connecting to the Postgres metadata database")?;
            let run = store.migrate().await.context("migrating Postgres")?;
            store.close().await;
            ("the Postgres database".to_owned(), run)
        }
        None => {
            let path = config.data_dir.join("metadata.db");
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
            let store = metadata_sqlite::SqliteStore::connect(&path)
                .await
                .context("opening the SQLite metadata database")?;
            let run = store.migrate().await.context("migrating SQLite")?;
            store.close().await;
            (format!("the SQLite database {}", path.display()), run)
        }
    };
    match run {
        MigrationRun::Applied(applied) if applied.is_empty() => {
            println!("{database} is up to date: nothing to apply");
        }
        MigrationRun::Applied(applied) => {
            for migration in &applied {
                println!("applied {migration}");
            }
            println!("{database} is up to date");
        }
        MigrationRun::Refused(check) => {
            anyhow::bail!(
                "refusing to migrate {database}: {check}. It was migrated by another release; \
                 run that release, or a newer one"
            )
        }
    }
    Ok(())
}

/// Why `serve` (or `import-node`) will not use a Postgres schema that is not exactly this
/// release's, and what the operator does about it.
pub fn refusal(check: &SchemaCheck) -> anyhow::Error {
    if check.is_migratable() {
        anyhow::anyhow!(
            "the Postgres schema is behind this release ({check}). Run `bulwark migrate` with \
             the same configuration first"
        )
    } else {
        anyhow::anyhow!(
            "the Postgres schema does not match this release ({check}). It was migrated by \
             another release; run that release, or a newer one"
        )
    }
}
