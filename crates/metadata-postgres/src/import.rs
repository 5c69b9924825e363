//! Moving a single node's metadata (its SQLite database) into Postgres, for the step from one
//! node to several replicas.
//!
//! Invariants:
//! - Both schemas are at the same migration version, and the destination holds no records:
//!   an import never merges two registries.
//! - The whole import is one Postgres transaction: a failure leaves the destination empty.
//! - Tables are copied column by column as Postgres names them, each value converted by the
//!   Postgres column's type (SQLite keeps booleans as integers and UUIDs as text), so a new
//!   migration needs no change here as long as both dialects name its columns alike.
//! - Upload sessions are not copied: their bytes are staged on the old node's disk; clients
//!   restart those uploads.

use std::path::Path;

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use crate::{backend, PostgresStore};
use metadata::Error;

/// Every table with records, parents before children (foreign keys are checked per row).
const TABLES: &[&str] = &[
    "repositories",
    "blobs",
    "repository_blobs",
    "manifests",
    "manifest_references",
    "tags",
    "users",
    "projects",
    "project_members",
    "robots",
    "access_tokens",
    "signing_keys",
    "revocations",
    "refresh_tokens",
    "audit_events",
];

/// How many records of each table an import copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub tables: Vec<(&'static str, u64)>,
}

fn sqlite(err: sqlx::Error) -> Error {
    Error::Internal(format!("reading the SQLite database: {err}"))
}

async fn schema_version_sqlite(pool: &SqlitePool) -> Result<i64, Error> {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM _sqlx_migrations WHERE success = 1",
    )
    .fetch_one(pool)
    .await
    .map_err(sqlite)
    .map(Option::unwrap_or_default)
}

impl PostgresStore {
    /// Copies every record of the single-node database at `path` into this (empty, migrated)
    /// database.
    pub async fn import_sqlite(&self, path: &Path) -> Result<Imported, Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false);
        let source = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(sqlite)?;
        let result = self.import_from(&source).await;
        source.close().await;
        result
    }

    async fn import_from(&self, source: &SqlitePool) -> Result<Imported, Error> {
        let from = schema_version_sqlite(source).await?;
        let to = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?
        .unwrap_or_default();
        if from != to {
            return Err(Error::Conflict(format!(
                "the SQLite database is at schema version {from} and Postgres at {to}: start \
                 the single node once with this release (it migrates), and run `bulwark \
                 migrate` on Postgres, then import"
            )));
        }
        let mut tx = self.write().await?;
        for table in TABLES {
            let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            if count > 0 {
                return Err(Error::Conflict(format!(
                    "the Postgres database already holds records ({count} in {table}); import \
                     into an empty, migrated database"
                )));
            }
        }
        let mut tables = Vec::new();
        for table in TABLES {
            let copied = copy_table(source, &mut tx, table).await?;
            tables.push((*table, copied));
        }
        tx.commit().await.map_err(backend)?;
        Ok(Imported { tables })
    }
}

/// A Postgres column and how to carry a SQLite value into it.
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Boolean,
    Text,
    Bytes,
    Uuid,
}

async fn columns(tx: &mut sqlx::PgConnection, table: &str) -> Result<Vec<Column>, Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    rows.into_iter()
        .map(|(name, data_type)| {
            let kind = match data_type.as_str() {
                "bigint" | "integer" | "smallint" => Kind::Integer,
                "boolean" => Kind::Boolean,
                "text" | "character varying" => Kind::Text,
                "bytea" => Kind::Bytes,
                "uuid" => Kind::Uuid,
                other => {
                    return Err(Error::Internal(format!(
                        "{table}.{name} has type {other}, which the import does not convert"
                    )))
                }
            };
            Ok(Column { name, kind })
        })
        .collect()
}

async fn copy_table(
    source: &SqlitePool,
    tx: &mut sqlx::PgConnection,
    table: &str,
) -> Result<u64, Error> {
    let columns = columns(tx, table).await?;
    let names = columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let placeholders = columns
        .iter()
        .enumerate()
        .map(|(n, c)| match c.kind {
            Kind::Uuid => format!("${}::uuid", n + 1),
            _ => format!("${}", n + 1),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!("INSERT INTO {table} ({names}) VALUES ({placeholders})");
    // Rows stream in primary-key order (manifests may be large; none is held for long).
    let select = format!("SELECT {names} FROM {table} ORDER BY 1");
    let mut rows = sqlx::query(&select).fetch(source);
    let mut copied = 0u64;
    while let Some(row) = rows.try_next().await.map_err(sqlite)? {
        let mut query = sqlx::query(&insert);
        for (n, column) in columns.iter().enumerate() {
            query = match column.kind {
                Kind::Integer => query.bind(row.try_get::<Option<i64>, _>(n).map_err(sqlite)?),
                Kind::Boolean => query.bind(
                    row.try_get::<Option<i64>, _>(n)
                        .map_err(sqlite)?
                        .map(|v| v != 0),
                ),
                Kind::Text | Kind::Uuid => {
                    query.bind(row.try_get::<Option<String>, _>(n).map_err(sqlite)?)
                }
                Kind::Bytes => query.bind(row.try_get::<Option<Vec<u8>>, _>(n).map_err(sqlite)?),
            };
        }
        query.execute(&mut *tx).await.map_err(backend)?;
        copied += 1;
    }
    if columns
        .iter()
        .any(|c| c.name == "id" && matches!(c.kind, Kind::Integer))
    {
        // Serial ids continue after the copied ones.
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    Ok(copied)
}
