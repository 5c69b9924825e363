//! The Postgres metadata store: the scale-out backend every replica shares.
//!
//! It shows the same behaviour as the SQLite store (both pass `metadata::behaviour`), but
//! where SQLite gets its guarantees from a single writer, this one takes them explicitly,
//! because several replicas write at once:
//! - Transactions run at Postgres' default READ COMMITTED. A check that a later write depends
//!   on locks the rows it read (`FOR SHARE` / `FOR KEY SHARE`), so a concurrent delete waits
//!   for the commit instead of slipping between the check and the write.
//! - Upserts are single `INSERT ... ON CONFLICT` statements, never "read, then insert".
//! - An upload advances only with `UPDATE ... WHERE byte_offset = $expected` (compare and
//!   swap), so two replicas cannot both append to one upload; it is claimed for ending the
//!   same way (`UPDATE ... WHERE byte_offset = $offset AND <not claimed by another>`), so two
//!   replicas cannot both finish it.
//! - `add_first_signing_key` holds a table lock for its transaction, so replicas starting
//!   together agree on one key.
//! - Losing the database (refused connection, pool timeout, server shutting down) is
//!   `Error::Unavailable`, which the API answers with 503; a unique violation is
//!   `Error::Conflict`; anything else is `Error::Internal`.
//! - The schema is `migrations/postgres` (same versions as `migrations/sqlite`). `connect`
//!   never changes it: `migrate` applies what is pending (`bulwark migrate`), under sqlx's
//!   advisory lock so concurrent runs apply each migration once, and refuses a database that a
//!   newer or different release migrated; `schema` only reads, so `serve` can refuse a schema
//!   that is not exactly its own.
//! - Names, tags and digests are `COLLATE "C"`: listings order bytewise, like SQLite.

mod identity;
mod import;
/// A throwaway cluster for tests of this crate and of the binary (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing;

pub use import::Imported;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use metadata::schema::{AppliedMigration, Migration, MigrationRun, SchemaCheck};
use metadata::{
    Error, ManifestCommit, ManifestRecord, MetadataStore, PageRequest, Referrer, Timestamp,
    UploadId, UploadLimits, UploadRecord,
};
use oci::{Digest, RepositoryName, Tag};
use sqlx::migrate::{Migrate, MigrateError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// How many connections a replica keeps, and how long a request waits for one before the
/// store reports itself unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

/// SQLSTATE classes and codes that mean "the server is not there right now": connection
/// exceptions (08), insufficient resources (53), operator intervention such as a shutdown or
/// a server still starting (57P01..57P03).
fn is_unavailable_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
}

pub(crate) fn backend(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Error::Unavailable(err.to_string()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::Conflict("a record with that key exists already".into())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|code| is_unavailable_state(&code)) => {
            Error::Unavailable(err.to_string())
        }
        _ => Error::Internal(err.to_string()),
    }
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("stored {what} {value:?} does not parse"))
}

fn parse_digest(text: &str) -> Result<Digest, Error> {
    text.parse().map_err(|_| corrupt("digest", text))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn migration_failed(err: MigrateError) -> Error {
    match err {
        MigrateError::Execute(err) => match backend(err) {
            Error::Unavailable(reason) => Error::Unavailable(reason),
            other => Error::Internal(format!("applying migrations: {other}")),
        },
        other => Error::Internal(format!("applying migrations: {other}")),
    }
}

/// The migrations this binary carries, in version order.
pub fn migrations() -> Vec<Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
            checksum: m.checksum.to_vec(),
        })
        .collect()
}

/// What the database recorded as applied. Only reads: a database never migrated has no
/// `_sqlx_migrations` table (sqlx's record of applied migrations), and checking does not
/// create one.
async fn applied_migrations(conn: &mut PgConnection) -> Result<Vec<AppliedMigration>, Error> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    if !recorded {
        return Ok(Vec::new());
    }
    let rows =
        sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|row| AppliedMigration {
            version: row.get("version"),
            checksum: row.get("checksum"),
            success: row.get("success"),
        })
        .collect())
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`,
    /// with `sslmode` and `sslrootcert` as libpq reads them) without touching its schema:
    /// see `schema` and `migrate`. The URL is never echoed in errors: it may hold a password.
    pub async fn connect(url: &str, settings: PoolSettings) -> Result<PostgresStore, Error> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| Error::Internal("the Postgres URL does not parse".into()))?
            .application_name("bulwark");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(PostgresStore { pool })
    }

    /// How the database's schema compares with this binary's migrations. Changes nothing.
    pub async fn schema(&self) -> Result<SchemaCheck, Error> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let applied = applied_migrations(&mut conn).await?;
        Ok(SchemaCheck::compare(&migrations(), &applied))
    }

    /// Applies the migrations the database lacks, each in its own transaction, and says which;
    /// refuses (applying nothing) when the database holds migrations this binary does not
    /// know, knows otherwise, or saw fail.
    ///
    /// The whole run holds sqlx's advisory lock, so of several runs at once (replicas, or an
    /// operator and a deploy job) each migration is applied by exactly one, and the others
    /// report that they applied nothing.
    pub async fn migrate(&self) -> Result<MigrationRun, Error> {
        // The lock belongs to the session: a detached connection is closed when dropped, so an
        // error below releases the lock instead of returning a locked connection to the pool.
        let mut conn = self.pool.acquire().await.map_err(backend)?.detach();
        conn.lock().await.map_err(migration_failed)?;
        conn.ensure_migrations_table()
            .await
            .map_err(migration_failed)?;
        let check = SchemaCheck::compare(&migrations(), &applied_migrations(&mut conn).await?);
        if !check.is_migratable() {
            return Ok(MigrationRun::Refused(check));
        }
        let mut applied = Vec::with_capacity(check.pending.len());
        for pending in check.pending {
            let Some(migration) = MIGRATOR
                .iter()
                .find(|m| m.version == pending.version && !m.migration_type.is_down_migration())
            else {
                return Err(Error::Internal(format!("migration {pending} vanished")));
            };
            conn.apply(migration).await.map_err(migration_failed)?;
            tracing::info!(version = pending.version, "applied migration {pending}");
            applied.push(pending);
        }
        conn.unlock().await.map_err(migration_failed)?;
        conn.close().await.map_err(backend)?;
        Ok(MigrationRun::Applied(applied))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
        self.pool.begin().await.map_err(backend)
    }
}

async fn ensure_repository(
    tx: &mut sqlx::PgConnection,
    repository: &RepositoryName,
    now: Timestamp,
) -> Result<i64, Error> {
    // At READ COMMITTED each statement sees rows committed before it started, so the SELECT
    // finds a repository a concurrent transaction created while the INSERT waited on it.
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(repository.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
        .bind(repository.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)
}

async fn link(
    tx: &mut sqlx::PgConnection,
    repository_id: i64,
    digest: &Digest,
    size: u64,
    now: Timestamp,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
        .bind(digest.to_string())
        .bind(to_i64(size))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query("INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(repository_id)
        .bind(digest.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The digests of `wanted` that the query (returning the held subset of `$2`) does not find,
/// in `wanted`'s order, without duplicates.
async fn missing_of(
    tx: &mut sqlx::PgConnection,
    query: &str,
    repository_id: i64,
    wanted: &[Digest],
) -> Result<Vec<Digest>, Error> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = wanted.iter().map(ToString::to_string).collect();
    let held: Vec<String> = sqlx::query_scalar(query)
        .bind(repository_id)
        .bind(&texts)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    let mut missing: Vec<Digest> = Vec::new();
    for (digest, text) in wanted.iter().zip(&texts) {
        if !held.contains(text) && !missing.contains(digest) {
            missing.push(digest.clone());
        }
    }
    Ok(missing)
}

fn manifest_record(row: &PgRow) -> Result<ManifestRecord, Error> {
    let digest: String = row.get("digest");
    let subject: Option<String> = row.get("subject");
    Ok(ManifestRecord {
        digest: parse_digest(&digest)?,
        media_type: row.get("media_type"),
        body: row.get("body"),
        subject: subject.as_deref().map(parse_digest).transpose()?,
    })
}

/// Qualified, so the claim's `UPDATE ... FROM` can return them too.
const UPLOAD_COLUMNS: &str = "uploads.id::text AS id, uploads.repository, uploads.byte_offset, \
     uploads.hash_state, uploads.storage_state, uploads.principal, uploads.created_at, \
     uploads.updated_at";

fn upload_record(row: &PgRow) -> Result<UploadRecord, Error> {
    let id: String = row.get("id");
    let repository: String = row.get("repository");
    Ok(UploadRecord {
        id: UploadId(uuid::Uuid::from_str(&id).map_err(|_| corrupt("upload id", &id))?),
        repository: repository
            .parse()
            .map_err(|_| corrupt("repository name", &repository))?,
        offset: to_u64(row.get("byte_offset")),
        hash_state: row.get("hash_state"),
        storage_state: row.get("storage_state"),
        principal: row.get("principal"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

const MANIFEST_COLUMNS: &str = "m.digest, m.media_type, m.body, m.subject";

const BLOB_SIZE: &str = "SELECT b.size FROM repositories r
     JOIN repository_blobs rb ON rb.repository_id = r.id
     JOIN blobs b ON b.digest = rb.digest
     WHERE r.name = $1 AND rb.digest = $2";

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn blob_size(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>, Error> {
        let size: Option<i64> = sqlx::query_scalar(BLOB_SIZE)
            .bind(repository.as_str())
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(size.map(to_u64))
    }

    async fn link_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let repository_id = ensure_repository(&mut tx, repository, now).await?;
        link(&mut tx, repository_id, digest, size, now).await?;
        tx.commit().await.map_err(backend)
    }

    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
        now: Timestamp,
    ) -> Result<Option<u64>, Error> {
        let mut tx = self.write().await?;
        // The source link stays locked until commit, so a concurrent unlink cannot race it.
        let size: Option<i64> = sqlx::query_scalar(&format!("{BLOB_SIZE} FOR SHARE OF rb"))
            .bind(from.as_str())
            .bind(digest.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(size) = size.map(to_u64) else {
            return Ok(None);
        };
        let repository_id = ensure_repository(&mut tx, repository, now).await?;
        link(&mut tx, repository_id, digest, size, now).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(size))
    }

    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let result = sqlx::query(
            "DELETE FROM repository_blobs
             WHERE repository_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2",
        )
        .bind(repository.as_str())
        .bind(digest.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn commit_manifest(&self, commit: ManifestCommit<'_>) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let repository_id = ensure_repository(&mut tx, commit.repository, commit.now).await?;
        // The referenced links and child manifests stay locked until commit: a concurrent
        // unlink or manifest delete waits rather than leaving this manifest dangling.
        let mut missing = missing_of(
            &mut tx,
            "SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest = ANY($2)
             FOR SHARE",
            repository_id,
            &commit.blobs,
        )
        .await?;
        for child in missing_of(
            &mut tx,
            "SELECT digest FROM manifests WHERE repository_id = $1 AND digest = ANY($2)
             FOR KEY SHARE",
            repository_id,
            &commit.children,
        )
        .await?
        {
            if !missing.contains(&child) {
                missing.push(child);
            }
        }
        if !missing.is_empty() {
            return Err(Error::UnknownReferences(missing));
        }
        let digest = commit.digest.to_string();
        // Re-pushing a manifest keeps the stored row (as `DO NOTHING` would) but locks it, so
        // a concurrent delete cannot remove it before the tag below points at it.
        sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = manifests.created_at",
        )
        .bind(repository_id)
        .bind(&digest)
        .bind(commit.media_type)
        .bind(commit.artifact_type)
        .bind(commit.subject.map(ToString::to_string))
        .bind(commit.annotations.as_deref())
        .bind(commit.body)
        .bind(commit.now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let references = commit
            .blobs
            .iter()
            .map(|d| (d, "blob"))
            .chain(commit.children.iter().map(|d| (d, "manifest")));
        for (target, kind) in references {
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, manifest_digest, target_digest, kind)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(repository_id)
            .bind(&digest)
            .bind(target.to_string())
            .bind(kind)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if let Some(tag) = commit.tag {
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository_id, name) DO UPDATE
                 SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
            )
            .bind(repository_id)
            .bind(tag.as_str())
            .bind(&digest)
            .bind(commit.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {MANIFEST_COLUMNS} FROM repositories r
             JOIN tags t ON t.repository_id = r.id
             JOIN manifests m ON m.repository_id = r.id AND m.digest = t.manifest_digest
             WHERE r.name = $1 AND t.name = $2"
        ))
        .bind(repository.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(manifest_record).transpose()
    }

    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {MANIFEST_COLUMNS} FROM repositories r
             JOIN manifests m ON m.repository_id = r.id
             WHERE r.name = $1 AND m.digest = $2"
        ))
        .bind(repository.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(manifest_record).transpose()
    }

    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        // Tags and references go with it through ON DELETE CASCADE, in the same statement.
        let result = sqlx::query(
            "DELETE FROM manifests
             WHERE repository_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2",
        )
        .bind(repository.as_str())
        .bind(digest.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_tag(&self, repository: &RepositoryName, tag: &Tag) -> Result<bool, Error> {
        let result = sqlx::query(
            "DELETE FROM tags
             WHERE repository_id = (SELECT id FROM repositories WHERE name = $1) AND name = $2",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn list_tags(
        &self,
        repository: &RepositoryName,
        page: &PageRequest,
    ) -> Result<Option<Vec<String>>, Error> {
        let repository_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
                .bind(repository.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        let Some(repository_id) = repository_id else {
            return Ok(None);
        };
        let tags = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(repository_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Some(tags))
    }

    async fn list_repositories(&self, page: &PageRequest) -> Result<Vec<String>, Error> {
        sqlx::query_scalar("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, Error> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, octet_length(m.body)::BIGINT AS size, m.artifact_type, m.annotations
             FROM repositories r JOIN manifests m ON m.repository_id = r.id
             WHERE r.name = $1 AND m.subject = $2 AND ($3::TEXT IS NULL OR m.artifact_type = $3)
             ORDER BY m.created_at, m.digest",
        )
        .bind(repository.as_str())
        .bind(subject.to_string())
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let digest: String = row.get("digest");
                Ok(Referrer {
                    digest: parse_digest(&digest)?,
                    media_type: row.get("media_type"),
                    size: to_u64(row.get("size")),
                    artifact_type: row.get("artifact_type"),
                    annotations: row.get("annotations"),
                })
            })
            .collect()
    }

    async fn create_upload(
        &self,
        upload: &UploadRecord,
        limits: UploadLimits,
    ) -> Result<bool, Error> {
        // The counts are read in the insert's own snapshot: concurrent starts may each see room
        // for one more, so a limit can be passed by a few, never by much.
        let result = sqlx::query("INSERT INTO uploads (id, repository, byte_offset, hash_state, storage_state, principal, created_at, updated_at) SELECT $1::uuid, $2, $3, $4, $5, $6, $7, $8 WHERE (SELECT count(*) FROM uploads WHERE principal = $6) < $9 AND (SELECT count(*) FROM uploads WHERE repository = $2) < $10")
            .bind(upload.id.to_string())
            .bind(upload.repository.as_str())
            .bind(to_i64(upload.offset))
            .bind(&upload.hash_state)
            .bind(&upload.storage_state)
            .bind(upload.principal.as_deref())
            .bind(upload.created_at)
            .bind(upload.updated_at)
            .bind(i64::from(limits.per_principal))
            .bind(i64::from(limits.per_repository))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn upload(&self, id: UploadId) -> Result<Option<UploadRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(upload_record).transpose()
    }

    async fn advance_upload(
        &self,
        id: UploadId,
        expected_offset: u64,
        offset: u64,
        hash_state: &[u8],
        storage_state: &[u8],
        now: Timestamp,
    ) -> Result<bool, Error> {
        // Compare and swap: of two replicas advancing from the same offset, the second finds
        // the row changed (READ COMMITTED re-checks the WHERE after waiting) and loses.
        let result = sqlx::query("UPDATE uploads SET byte_offset = $1, hash_state = $2, storage_state = $3, updated_at = $4, claimed_until = NULL, claimed_digest = NULL WHERE id = $5::uuid AND byte_offset = $6 AND (claimed_until IS NULL OR claimed_until <= $4)")
            .bind(to_i64(offset))
            .bind(hash_state)
            .bind(storage_state)
            .bind(now)
            .bind(id.to_string())
            .bind(to_i64(expected_offset))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn claim_upload(
        &self,
        id: UploadId,
        offset: u64,
        digest: Option<&Digest>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        // Compare and swap, like `advance_upload`: the second of two claims waits for the
        // first's commit, re-checks the WHERE on the claimed row and loses. A NULL digest (a
        // discard) equals no claim's digest, so it never shares one.
        let result = sqlx::query("UPDATE uploads SET claimed_until = $1, claimed_digest = $2, updated_at = $3 WHERE id = $4::uuid AND byte_offset = $5 AND (claimed_until IS NULL OR claimed_until <= $3 OR claimed_digest = $2)")
            .bind(until)
            .bind(digest.map(Digest::to_string))
            .bind(now)
            .bind(id.to_string())
            .bind(to_i64(offset))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_upload(&self, id: UploadId) -> Result<bool, Error> {
        let result = sqlx::query("DELETE FROM uploads WHERE id = $1::uuid")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn claim_stale_uploads(
        &self,
        before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<UploadRecord>, Error> {
        // SKIP LOCKED: replicas sweeping at once each take different rows instead of waiting.
        let rows = sqlx::query(&format!(
            "WITH claimed AS (SELECT id FROM uploads WHERE updated_at < $1 \
               AND (claimed_until IS NULL OR claimed_until <= $3) \
               ORDER BY updated_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE uploads SET updated_at = $3 FROM claimed WHERE uploads.id = claimed.id \
             RETURNING {UPLOAD_COLUMNS}"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut claimed = rows
            .iter()
            .map(upload_record)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|upload| upload.id.0);
        Ok(claimed)
    }
}
