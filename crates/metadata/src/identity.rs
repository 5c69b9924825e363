//! Identity records and the `IdentityStore` trait: users, projects and their members, robot
//! accounts, personal access tokens, refresh tokens, token-signing keys, revocation epochs
//! and the audit log.
//!
//! Invariants:
//! - Every change that must end tokens already issued (disabling or deleting a user, changing
//!   their password or removing their admin role; creating, rotating or revoking a robot,
//!   deleting the project that holds it; revoking an access or refresh token; adding or
//!   retiring a signing key) records a revocation in the same transaction: the subject's
//!   epoch moves above every epoch before (`revocations_since`). Epochs are handed out in
//!   commit order, so a reader that saw epoch `n` misses nothing by asking for what is
//!   above `n`.
//! - Secrets appear here only as hashes (`password_hash`, `secret_hash`); a record never holds
//!   a plaintext secret.
//! - Grants are stored as the JSON text the `registry` crate writes; this crate does not
//!   interpret them (it does not depend on `auth`).

use async_trait::async_trait;

use crate::{Error, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub password_hash: Option<String>,
    pub admin: Option<bool>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub name: String,
    pub public: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRecord {
    /// The full name clients log in with, e.g. `robot$team+ci`.
    pub name: String,
    pub project: Option<String>,
    pub description: Option<String>,
    /// JSON: `[{"pattern": "team/app-*", "actions": ["pull", "push"]}]`.
    pub grants: String,
    pub expires_at: Timestamp,
    pub revoked: bool,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRecord {
    pub id: String,
    pub user: String,
    pub description: String,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// Whoever a presented API secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOwner {
    Robot(RobotRecord),
    AccessToken {
        token: AccessTokenRecord,
        user: UserRecord,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub pem: String,
    pub created_at: Timestamp,
    /// When it stopped verifying; `None` while it is in use.
    pub retired_at: Option<Timestamp>,
}

/// A refresh token handed out by the token service, by its id (the token's `jti`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    pub id: String,
    /// `user:<name>` or `robot:<name>`.
    pub subject: String,
    /// The kind of credential it was obtained with: `password`, `token`, `robot`.
    pub credential: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked: bool,
}

/// One revocation (see the module's invariants): `subject` (`user:<name>`, `robot:<name>`,
/// `token:<id>`, `refresh:<id>`, `key:<kid>`) was last revoked at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub subject: String,
    pub epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time: Timestamp,
    /// `user:alice`, `robot:robot$team+ci`, `anonymous`.
    pub principal: String,
    /// What was attempted: `push`, `delete`, `login`, `user.create`, ...
    pub action: String,
    /// What it was attempted on: a repository, `repo@digest`, a user or project name.
    pub target: String,
    /// `allowed`, `denied` or `failed`.
    pub result: String,
    pub reason: Option<String>,
    pub client: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub event: AuditEvent,
}

/// Audit log query: every set field must match; newest first, before `before_id` if set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub principal: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub result: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// `Error::Conflict` when the name is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), Error>;
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, Error>;
    /// Users in name order after `after`.
    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRecord>, Error>;
    /// The updated user, or `None` when there is no such user.
    async fn update_user(
        &self,
        name: &str,
        update: &UserUpdate,
    ) -> Result<Option<UserRecord>, Error>;
    /// Deletes a user with their memberships and access tokens; false when there was none.
    async fn delete_user(&self, name: &str) -> Result<bool, Error>;

    async fn create_project(&self, project: &ProjectRecord) -> Result<(), Error>;
    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>, Error>;
    async fn list_projects(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectRecord>, Error>;
    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool, Error>;
    /// `Error::Conflict` while the project still holds repositories.
    async fn delete_project(&self, name: &str) -> Result<bool, Error>;
    /// The project and its members, in one read: what authorization needs.
    async fn project_policy(
        &self,
        name: &str,
    ) -> Result<Option<(ProjectRecord, Vec<MemberRecord>)>, Error>;

    /// Adds or changes a membership; `Error::NotFound` for an unknown user or project.
    async fn set_member(&self, project: &str, user: &str, role: &str) -> Result<(), Error>;
    async fn remove_member(&self, project: &str, user: &str) -> Result<bool, Error>;

    async fn create_robot(&self, robot: &RobotRecord, secret_hash: &str) -> Result<(), Error>;
    async fn robot(&self, name: &str) -> Result<Option<RobotRecord>, Error>;
    /// The hash of a robot's current secret (`None` when there is no such robot): what a
    /// refresh token obtained with the secret is bound to, so rotating it ends them.
    async fn robot_secret_hash(&self, name: &str) -> Result<Option<String>, Error>;
    /// Robots of one project, or system robots (`project = None`), in name order.
    async fn list_robots(&self, project: Option<&str>) -> Result<Vec<RobotRecord>, Error>;
    /// Replaces a robot's secret (and, if given, its expiry); false when there is no such robot.
    async fn rotate_robot(
        &self,
        name: &str,
        secret_hash: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<bool, Error>;
    async fn revoke_robot(&self, name: &str) -> Result<bool, Error>;

    async fn create_access_token(
        &self,
        token: &AccessTokenRecord,
        secret_hash: &str,
    ) -> Result<(), Error>;
    async fn list_access_tokens(&self, user: &str) -> Result<Vec<AccessTokenRecord>, Error>;
    async fn revoke_access_token(&self, user: &str, id: &str) -> Result<bool, Error>;

    /// Finds the robot or access token a secret hash belongs to, and records its use.
    async fn secret_owner(
        &self,
        secret_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SecretOwner>, Error>;

    /// Signing keys, retired ones included, oldest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, Error>;
    /// Stores `key` only if no key exists yet (so replicas starting together agree on one).
    async fn add_first_signing_key(&self, key: &SigningKeyRecord) -> Result<(), Error>;
    /// Stores a configured key unless a key with its `kid` exists (rotation by configuration).
    async fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), Error>;
    /// Retires a key in use at `now`, storing `replacement` (a new key) with it when given;
    /// false when there is no such key in use. Records revocations of both keys.
    async fn retire_signing_key(
        &self,
        kid: &str,
        now: Timestamp,
        replacement: Option<&SigningKeyRecord>,
    ) -> Result<bool, Error>;

    /// Records a refresh token handed out.
    async fn create_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), Error>;
    /// A refresh token by id, recording its use at `now`, with the expiry of the refresh token
    /// it is exchanged for when there is one (`expires_at`).
    async fn use_refresh_token(
        &self,
        id: &str,
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<Option<RefreshTokenRecord>, Error>;
    /// The refresh tokens of `subject`, oldest first.
    async fn list_refresh_tokens(&self, subject: &str) -> Result<Vec<RefreshTokenRecord>, Error>;
    /// Revokes one refresh token of `subject`; false when it has none with that id.
    async fn revoke_refresh_token(&self, subject: &str, id: &str) -> Result<bool, Error>;

    /// Revocations with an epoch above `epoch`, lowest first: one indexed read, what each
    /// replica polls.
    async fn revocations_since(&self, epoch: i64) -> Result<Vec<Revocation>, Error>;
    /// The highest epoch handed out (0 before any): what a token issued now carries.
    async fn revocation_epoch(&self) -> Result<i64, Error>;

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), Error>;
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error>;
}
