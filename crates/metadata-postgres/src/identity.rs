//! `IdentityStore` on Postgres.
//!
//! Invariants, beyond the crate's:
//! - A membership or robot is written while the project (and user) rows it points at are
//!   locked `FOR KEY SHARE`, so a concurrent delete waits and `NotFound` stays accurate.
//! - `add_first_signing_key` locks `signing_keys` against every other writer for its
//!   transaction: of several replicas starting at once, exactly one key is stored.
//! - A revocation (`revoke`) locks `revocations` against every other writer until its
//!   transaction ends, after the rows it changes: epochs (one more than the highest) are
//!   handed out in commit order, so a replica that read epoch `n` never misses a lower one
//!   committed later.

use async_trait::async_trait;
use metadata::identity::{
    AccessTokenRecord, AuditEvent, AuditFilter, AuditRecord, IdentityStore, MemberRecord,
    ProjectRecord, RefreshTokenRecord, Revocation, RobotRecord, SecretOwner, SigningKeyRecord,
    UserRecord, UserUpdate,
};
use metadata::{Error, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{backend, PostgresStore};

fn conflict_on_unique(err: sqlx::Error, what: String) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict(what),
        _ => backend(err),
    }
}

/// Moves `subject`'s revocation epoch above every epoch before. SHARE ROW EXCLUSIVE
/// conflicts with itself and with plain writes, not with reads: the next revocation waits
/// for this transaction to end, and its statement (a new snapshot at READ COMMITTED) sees
/// this epoch.
async fn revoke(tx: &mut sqlx::PgConnection, subject: &str) -> Result<(), Error> {
    sqlx::query("LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query(
        "INSERT INTO revocations (subject, epoch) VALUES ($1, (SELECT COALESCE(MAX(epoch), 0) + 1 FROM revocations))
         ON CONFLICT (subject) DO UPDATE SET epoch = EXCLUDED.epoch",
    )
    .bind(subject)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Whether a user update ends the tokens the user holds: disabling, removing the admin role
/// (tokens carry what the role allowed), setting a password (the account may have been taken).
fn update_revokes(update: &UserUpdate) -> bool {
    update.disabled == Some(true) || update.admin == Some(false) || update.password_hash.is_some()
}

const REFRESH_COLUMNS: &str =
    "id, subject, credential, created_at, expires_at, last_used_at, revoked";

fn refresh_token(row: &PgRow) -> RefreshTokenRecord {
    RefreshTokenRecord {
        id: row.get("id"),
        subject: row.get("subject"),
        credential: row.get("credential"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        last_used_at: row.get("last_used_at"),
        revoked: row.get("revoked"),
    }
}

fn signing_key(row: &PgRow) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: row.get("kid"),
        pem: row.get("pem"),
        created_at: row.get("created_at"),
        retired_at: row.get("retired_at"),
    }
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";

fn user(row: &PgRow) -> UserRecord {
    UserRecord {
        name: row.get("name"),
        password_hash: row.get("password_hash"),
        admin: row.get("admin"),
        disabled: row.get("disabled"),
        created_at: row.get("created_at"),
    }
}

const PROJECT_COLUMNS: &str = "name, public, created_at";

fn project(row: &PgRow) -> ProjectRecord {
    ProjectRecord {
        name: row.get("name"),
        public: row.get("public"),
        created_at: row.get("created_at"),
    }
}

const ROBOT_COLUMNS: &str = "r.name, p.name AS project, r.description, r.grants, r.expires_at, r.revoked, r.created_at, r.last_used_at";

fn robot(row: &PgRow) -> RobotRecord {
    RobotRecord {
        name: row.get("name"),
        project: row.get("project"),
        description: row.get("description"),
        grants: row.get("grants"),
        expires_at: row.get("expires_at"),
        revoked: row.get("revoked"),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
    }
}

const TOKEN_COLUMNS: &str =
    "t.id, u.name AS user, t.description, t.expires_at, t.revoked, t.created_at, t.last_used_at";

fn access_token(row: &PgRow) -> AccessTokenRecord {
    AccessTokenRecord {
        id: row.get("id"),
        user: row.get("user"),
        description: row.get("description"),
        expires_at: row.get("expires_at"),
        revoked: row.get("revoked"),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
    }
}

/// The id of the named project, locked against deletion until the transaction ends.
async fn locked_project(tx: &mut sqlx::PgConnection, name: &str) -> Result<i64, Error> {
    let id: Option<i64> =
        sqlx::query_scalar("SELECT id FROM projects WHERE name = $1 FOR KEY SHARE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
    id.ok_or_else(|| Error::NotFound(format!("project {name}")))
}

#[async_trait]
impl IdentityStore for PostgresStore {
    async fn create_user(&self, record: &UserRecord) -> Result<(), Error> {
        sqlx::query("INSERT INTO users (name, password_hash, admin, disabled, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&record.name)
            .bind(&record.password_hash)
            .bind(record.admin)
            .bind(record.disabled)
            .bind(record.created_at)
            .execute(&self.pool)
            .await
            .map_err(|err| conflict_on_unique(err, format!("user {} exists already", record.name)))?;
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, Error> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(user))
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(user).collect())
    }

    async fn update_user(
        &self,
        name: &str,
        update: &UserUpdate,
    ) -> Result<Option<UserRecord>, Error> {
        let mut tx = self.write().await?;
        // One statement, so the record returned is exactly the one written.
        let row = sqlx::query(&format!(
            "UPDATE users SET password_hash = COALESCE($1, password_hash), admin = COALESCE($2, admin),
                 disabled = COALESCE($3, disabled)
             WHERE name = $4 RETURNING {USER_COLUMNS}"
        ))
        .bind(update.password_hash.as_deref())
        .bind(update.admin)
        .bind(update.disabled)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if row.is_some() && update_revokes(update) {
            revoke(&mut tx, &format!("user:{name}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(row.as_ref().map(user))
    }

    async fn delete_user(&self, name: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let deleted = result.rows_affected() > 0;
        if deleted {
            let subject = format!("user:{name}");
            sqlx::query("DELETE FROM refresh_tokens WHERE subject = $1")
                .bind(&subject)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            revoke(&mut tx, &subject).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(deleted)
    }

    async fn create_project(&self, record: &ProjectRecord) -> Result<(), Error> {
        sqlx::query("INSERT INTO projects (name, public, created_at) VALUES ($1, $2, $3)")
            .bind(&record.name)
            .bind(record.public)
            .bind(record.created_at)
            .execute(&self.pool)
            .await
            .map_err(|err| {
                conflict_on_unique(err, format!("project {} exists already", record.name))
            })?;
        Ok(())
    }

    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(project))
    }

    async fn list_projects(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(project).collect())
    }

    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool, Error> {
        let result = sqlx::query("UPDATE projects SET public = $1 WHERE name = $2")
            .bind(public)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_project(&self, name: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        // Lock the project first: a concurrent delete of the same project waits here.
        sqlx::query("SELECT 1 FROM projects WHERE name = $1 FOR UPDATE")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Repository names are `project/...` or exactly the project name.
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM repositories r WHERE (r.name = $1 OR starts_with(r.name, $2))
             AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
                  OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id)) LIMIT 1",
        )
        .bind(name)
        .bind(format!("{name}/"))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if held.is_some() {
            return Err(Error::Conflict(format!(
                "project {name} still holds repositories; delete them first"
            )));
        }
        // Its robots go with it: their tokens end, and a robot re-created under the same name
        // is not honoured with them.
        let robots: Vec<String> = sqlx::query_scalar(
            "SELECT r.name FROM robots r JOIN projects p ON p.id = r.project_id WHERE p.name = $1 ORDER BY r.name",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let result = sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for robot in robots {
            revoke(&mut tx, &format!("robot:{robot}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn project_policy(
        &self,
        name: &str,
    ) -> Result<Option<(ProjectRecord, Vec<MemberRecord>)>, Error> {
        let rows = sqlx::query(
            "SELECT p.name, p.public, p.created_at, u.name AS member, m.role
             FROM projects p
             LEFT JOIN project_members m ON m.project_id = p.id
             LEFT JOIN users u ON u.id = m.user_id
             WHERE p.name = $1 ORDER BY u.name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let members = rows
            .iter()
            .filter_map(|row| {
                let user: Option<String> = row.get("member");
                let role: Option<String> = row.get("role");
                Some(MemberRecord {
                    user: user?,
                    role: role?,
                })
            })
            .collect();
        Ok(Some((project(first), members)))
    }

    async fn set_member(&self, project: &str, user: &str, role: &str) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let project_id = locked_project(&mut tx, project).await?;
        let user_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM users WHERE name = $1 FOR KEY SHARE")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let user_id = user_id.ok_or_else(|| Error::NotFound(format!("user {user}")))?;
        sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(project_id)
        .bind(user_id)
        .bind(role)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn remove_member(&self, project: &str, user: &str) -> Result<bool, Error> {
        let result = sqlx::query(
            "DELETE FROM project_members
             WHERE project_id = (SELECT id FROM projects WHERE name = $1)
               AND user_id = (SELECT id FROM users WHERE name = $2)",
        )
        .bind(project)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_robot(&self, record: &RobotRecord, secret_hash: &str) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let project_id = match &record.project {
            Some(project) => Some(locked_project(&mut tx, project).await?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO robots (name, project_id, description, secret_hash, grants, expires_at, revoked, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7)",
        )
        .bind(&record.name)
        .bind(project_id)
        .bind(record.description.as_deref())
        .bind(secret_hash)
        .bind(&record.grants)
        .bind(record.expires_at)
        .bind(record.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict_on_unique(err, format!("robot {} exists already", record.name)))?;
        tx.commit().await.map_err(backend)
    }

    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>, Error> {
        let row = sqlx::query(&format!("SELECT {ROBOT_COLUMNS} FROM robots r LEFT JOIN projects p ON p.id = r.project_id WHERE r.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(robot))
    }

    async fn robot_secret_hash(&self, name: &str) -> Result<Option<String>, Error> {
        sqlx::query_scalar("SELECT secret_hash FROM robots WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn list_robots(&self, project: Option<&str>) -> Result<Vec<RobotRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {ROBOT_COLUMNS} FROM robots r LEFT JOIN projects p ON p.id = r.project_id
             WHERE ($1::TEXT IS NULL AND r.project_id IS NULL) OR p.name = $1 ORDER BY r.name"
        ))
        .bind(project)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(robot).collect())
    }

    async fn rotate_robot(
        &self,
        name: &str,
        secret_hash: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query("UPDATE robots SET secret_hash = $1, expires_at = COALESCE($2, expires_at) WHERE name = $3")
            .bind(secret_hash)
            .bind(expires_at)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let rotated = result.rows_affected() > 0;
        if rotated {
            revoke(&mut tx, &format!("robot:{name}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(rotated)
    }

    async fn revoke_robot(&self, name: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query("UPDATE robots SET revoked = TRUE WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let revoked = result.rows_affected() > 0;
        if revoked {
            revoke(&mut tx, &format!("robot:{name}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(revoked)
    }

    async fn create_access_token(
        &self,
        record: &AccessTokenRecord,
        secret_hash: &str,
    ) -> Result<(), Error> {
        let result = sqlx::query(
            "INSERT INTO access_tokens (id, user_id, description, secret_hash, expires_at, revoked, created_at)
             SELECT $1, id, $2, $3, $4, FALSE, $5 FROM users WHERE name = $6",
        )
        .bind(&record.id)
        .bind(&record.description)
        .bind(secret_hash)
        .bind(record.expires_at)
        .bind(record.created_at)
        .bind(&record.user)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            conflict_on_unique(err, format!("access token {} exists already", record.id))
        })?;
        if result.rows_affected() == 0 {
            return Err(Error::NotFound(format!("user {}", record.user)));
        }
        Ok(())
    }

    async fn list_access_tokens(&self, user: &str) -> Result<Vec<AccessTokenRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens t JOIN users u ON u.id = t.user_id WHERE u.name = $1 ORDER BY t.created_at, t.id"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(access_token).collect())
    }

    async fn revoke_access_token(&self, user: &str, id: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query("UPDATE access_tokens SET revoked = TRUE WHERE id = $1 AND user_id = (SELECT id FROM users WHERE name = $2)")
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let revoked = result.rows_affected() > 0;
        if revoked {
            revoke(&mut tx, &format!("token:{id}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(revoked)
    }

    async fn secret_owner(
        &self,
        secret_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SecretOwner>, Error> {
        // As on SQLite, the record returned is the one read before this use was recorded.
        let row = sqlx::query(&format!("SELECT {ROBOT_COLUMNS} FROM robots r LEFT JOIN projects p ON p.id = r.project_id WHERE r.secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        if let Some(row) = row {
            sqlx::query("UPDATE robots SET last_used_at = $1 WHERE secret_hash = $2")
                .bind(now)
                .bind(secret_hash)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            return Ok(Some(SecretOwner::Robot(robot(&row))));
        }
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS}, u.password_hash, u.admin, u.disabled, u.created_at AS user_created_at
             FROM access_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("UPDATE access_tokens SET last_used_at = $1 WHERE secret_hash = $2")
            .bind(now)
            .bind(secret_hash)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let token = access_token(&row);
        let owner = UserRecord {
            name: token.user.clone(),
            password_hash: row.get("password_hash"),
            admin: row.get("admin"),
            disabled: row.get("disabled"),
            created_at: row.get("user_created_at"),
        };
        Ok(Some(SecretOwner::AccessToken { token, user: owner }))
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, Error> {
        let rows = sqlx::query(
            "SELECT kid, pem, created_at, retired_at FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(signing_key).collect())
    }

    async fn add_first_signing_key(&self, key: &SigningKeyRecord) -> Result<(), Error> {
        let mut tx = self.write().await?;
        // SHARE ROW EXCLUSIVE conflicts with itself and with plain inserts: a second replica
        // waits here, then its INSERT (a new snapshot at READ COMMITTED) sees the first key.
        sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let result = sqlx::query("INSERT INTO signing_keys (kid, pem, created_at) SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)")
            .bind(&key.kid)
            .bind(&key.pem)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if result.rows_affected() > 0 {
            revoke(&mut tx, &format!("key:{}", key.kid)).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query("INSERT INTO signing_keys (kid, pem, created_at) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING")
            .bind(&key.kid)
            .bind(&key.pem)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Other replicas learn of the new key by its epoch, and load it to verify its tokens.
        if result.rows_affected() > 0 {
            revoke(&mut tx, &format!("key:{}", key.kid)).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn retire_signing_key(
        &self,
        kid: &str,
        now: Timestamp,
        replacement: Option<&SigningKeyRecord>,
    ) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
        )
        .bind(now)
        .bind(kid)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if result.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(key) = replacement {
            sqlx::query("INSERT INTO signing_keys (kid, pem, created_at) VALUES ($1, $2, $3)")
                .bind(&key.kid)
                .bind(&key.pem)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            revoke(&mut tx, &format!("key:{}", key.kid)).await?;
        }
        revoke(&mut tx, &format!("key:{kid}")).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn create_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, subject, credential, created_at, expires_at, last_used_at, revoked)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.subject)
        .bind(&token.credential)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.last_used_at)
        .bind(token.revoked)
        .execute(&self.pool)
        .await
        .map_err(|err| conflict_on_unique(err, format!("refresh token {} exists", token.id)))?;
        Ok(())
    }

    async fn use_refresh_token(
        &self,
        id: &str,
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<Option<RefreshTokenRecord>, Error> {
        let row = sqlx::query(&format!(
            "UPDATE refresh_tokens SET last_used_at = $1, expires_at = COALESCE($2, expires_at)
             WHERE id = $3 RETURNING {REFRESH_COLUMNS}"
        ))
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(refresh_token))
    }

    async fn list_refresh_tokens(&self, subject: &str) -> Result<Vec<RefreshTokenRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE subject = $1 ORDER BY created_at, id"
        ))
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(refresh_token).collect())
    }

    async fn revoke_refresh_token(&self, subject: &str, id: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let result =
            sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE id = $1 AND subject = $2")
                .bind(id)
                .bind(subject)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        let revoked = result.rows_affected() > 0;
        if revoked {
            revoke(&mut tx, &format!("refresh:{id}")).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(revoked)
    }

    async fn revocations_since(&self, epoch: i64) -> Result<Vec<Revocation>, Error> {
        let rows =
            sqlx::query("SELECT subject, epoch FROM revocations WHERE epoch > $1 ORDER BY epoch")
                .bind(epoch)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| Revocation {
                subject: row.get("subject"),
                epoch: row.get("epoch"),
            })
            .collect())
    }

    async fn revocation_epoch(&self) -> Result<i64, Error> {
        sqlx::query_scalar("SELECT COALESCE(MAX(epoch), 0)::BIGINT FROM revocations")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), Error> {
        sqlx::query("INSERT INTO audit_events (time, principal, action, target, result, reason, client) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(event.time)
            .bind(&event.principal)
            .bind(&event.action)
            .bind(&event.target)
            .bind(&event.result)
            .bind(event.reason.as_deref())
            .bind(event.client.as_deref())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, time, principal, action, target, result, reason, client FROM audit_events
             WHERE ($1::TEXT IS NULL OR principal = $1) AND ($2::TEXT IS NULL OR action = $2)
               AND ($3::TEXT IS NULL OR target = $3) AND ($4::TEXT IS NULL OR result = $4)
               AND ($5::BIGINT IS NULL OR time >= $5) AND ($6::BIGINT IS NULL OR time <= $6)
               AND ($7::BIGINT IS NULL OR id < $7)
             ORDER BY id DESC LIMIT $8",
        )
        .bind(filter.principal.as_deref())
        .bind(filter.action.as_deref())
        .bind(filter.target.as_deref())
        .bind(filter.result.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| AuditRecord {
                id: row.get("id"),
                event: AuditEvent {
                    time: row.get("time"),
                    principal: row.get("principal"),
                    action: row.get("action"),
                    target: row.get("target"),
                    result: row.get("result"),
                    reason: row.get("reason"),
                    client: row.get("client"),
                },
            })
            .collect())
    }
}
