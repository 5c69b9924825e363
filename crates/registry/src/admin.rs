//! Administration use cases behind `/api/v1`: users and their personal access and refresh
//! tokens, projects and their members, robot accounts, token-signing keys, the authorization
//! dry run, and the audit log.
//!
//! Every method takes the acting principal first, decides whether it may act, and only then
//! validates input and touches the store.
//!
//! Invariants:
//! - Robots may only ask who they are (`whoami`); anonymous and disabled callers nothing.
//! - Every change and every denial is audited as `<noun>.<verb>` with its target: a change
//!   as `allowed`, or `failed` with the reason when it was refused (a conflict, a missing
//!   record); a denial as `denied` with the rule's sentence. Input that fails validation
//!   changes nothing and is not audited.
//! - A private project is invisible outside its members: asking about it answers `NotFound`,
//!   exactly as for a project that does not exist (the denial is still audited).
//! - A new secret (robot secret, personal access token) leaves this module once, in the
//!   answer to the call that made it; the store keeps only its hash.
//! - What would make a credential the account (creating a personal access token, changing the
//!   password) needs a caller who proved itself with the account's password: a leaked access
//!   token, or a registry token obtained with one, must not outlive its own revocation.
//! - Passwords are hashed and verified on the blocking pool, never on the executor.
//! - A change that went through is followed by a read of the revocations, so what it revoked
//!   stops here at once (other replicas within their `revocation_refresh`).
//! - The key that signs is never retired alone: a new key replaces it in the same
//!   transaction, so there is always a key to sign with.

use std::collections::BTreeSet;
use std::net::IpAddr;

use auth::policy::{Action, Decision, Grant, Principal, ProjectPolicy, Role, Rule};
use auth::token::{CredentialKind, SigningKey, TokenError};
use metadata::identity::{
    AccessTokenRecord, AuditFilter, ProjectRecord, RefreshTokenRecord, RobotRecord,
    SigningKeyRecord, UserRecord, UserUpdate,
};
use metadata::Timestamp;
use oci::RepositoryName;

pub use metadata::identity::{AuditEvent, AuditRecord};

use crate::access::{grants_from_json, Access, AuthError, StoredGrant};
use crate::{now, Error};

/// Listing pages hold this many items unless the caller asks otherwise.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The most items one listing page may hold.
pub const MAX_PAGE_LIMIT: u32 = 1000;

const DAY: i64 = 86_400;
/// Robot secrets and access tokens expire after this long unless asked otherwise.
pub const DEFAULT_EXPIRY_SECS: i64 = 90 * DAY;
/// No robot secret or access token lives longer than this.
pub const MAX_EXPIRY_SECS: i64 = 365 * DAY;

const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 1024;
const MAX_GRANTS: usize = 32;
/// Projects read per store call while filtering what a non-admin may see.
const SCAN_BATCH: u32 = 200;

/// A plaintext secret on its way in (a password) or out (a new API secret, shown once).
/// Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which page of a listing: items after the cursor `after` (the previous page's `next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    /// 1..=`MAX_PAGE_LIMIT`; the edge refuses anything else.
    pub limit: u32,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            after: None,
            limit: DEFAULT_PAGE_LIMIT,
        }
    }
}

impl PageRequest {
    fn size(&self) -> usize {
        usize::try_from(self.bounded()).unwrap_or(100)
    }

    /// The limit within 1..=`MAX_PAGE_LIMIT`.
    fn bounded(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_LIMIT)
    }
}

/// One page of a listing, and the cursor of the next page when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Listing<T> {
    /// Cuts `items` (one more than a page, if there are more) to a page, with its cursor.
    fn cut(mut items: Vec<T>, size: usize, cursor: impl Fn(&T) -> String) -> Listing<T> {
        let next = if items.len() > size {
            items.truncate(size);
            items.last().map(cursor)
        } else {
            None
        };
        Listing { items, next }
    }

    /// A page of `items`, which are sorted by `key`, after the cursor.
    fn from_sorted(items: Vec<T>, page: &PageRequest, key: impl Fn(&T) -> String) -> Listing<T> {
        let rest: Vec<T> = items
            .into_iter()
            .filter(|item| page.after.as_ref().is_none_or(|after| key(item) > *after))
            .take(page.size() + 1)
            .collect();
        Listing::cut(rest, page.size(), key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
}

impl From<UserRecord> for UserView {
    fn from(record: UserRecord) -> Self {
        UserView {
            name: record.name,
            admin: record.admin,
            disabled: record.disabled,
            created_at: record.created_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub password: Secret,
    pub admin: bool,
}

/// Changes an admin makes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub password: Option<Secret>,
    pub admin: Option<bool>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectView {
    pub name: String,
    pub public: bool,
    pub created_at: Timestamp,
}

impl From<ProjectRecord> for ProjectView {
    fn from(record: ProjectRecord) -> Self {
        ProjectView {
            name: record.name,
            public: record.public,
            created_at: record.created_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProject {
    pub name: String,
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub user: String,
    pub role: Role,
}

/// A project and the caller's role in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub project: String,
    pub role: Role,
}

/// When a new secret stops working: `expires_in` ("30d", "12h") or `expires_at` (Unix
/// seconds), at most one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryRequest {
    pub expires_in: Option<String>,
    pub expires_at: Option<i64>,
}

/// A grant as asked for: a repository pattern and action names, both still unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub repositories: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRobot {
    /// The short name: `ci` becomes `robot$team+ci` in project `team`, `robot$ci` system-wide.
    pub name: String,
    pub description: Option<String>,
    pub grants: Vec<GrantRequest>,
    pub expiry: ExpiryRequest,
}

/// How every robot's login name starts; no user name can (`$` is not allowed in them).
pub const ROBOT_NAME_PREFIX: &str = "robot$";

/// Where a robot lives: in a project (managed by its owners) or system-wide (by admins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotScope<'a> {
    System,
    Project(&'a str),
}

impl RobotScope<'_> {
    fn project(self) -> Option<String> {
        match self {
            RobotScope::System => None,
            RobotScope::Project(project) => Some(project.to_owned()),
        }
    }

    /// The name robots log in with.
    pub fn full_name(self, short: &str) -> String {
        match self {
            RobotScope::System => format!("{ROBOT_NAME_PREFIX}{short}"),
            RobotScope::Project(project) => format!("{ROBOT_NAME_PREFIX}{project}+{short}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotView {
    pub name: String,
    pub project: Option<String>,
    pub description: Option<String>,
    pub grants: Vec<Grant>,
    pub expires_at: Timestamp,
    pub revoked: bool,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

impl From<RobotRecord> for RobotView {
    fn from(record: RobotRecord) -> Self {
        RobotView {
            grants: grants_from_json(&record.grants),
            name: record.name,
            project: record.project,
            description: record.description,
            expires_at: record.expires_at,
            revoked: record.revoked,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
        }
    }
}

/// A robot with its secret, shown this once.
#[derive(Debug, Clone)]
pub struct IssuedRobot {
    pub robot: RobotView,
    pub secret: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub description: String,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

impl From<AccessTokenRecord> for TokenView {
    fn from(record: AccessTokenRecord) -> Self {
        TokenView {
            id: record.id,
            user: record.user,
            description: record.description,
            expires_at: record.expires_at,
            revoked: record.revoked,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub description: String,
    pub expiry: ExpiryRequest,
}

/// A personal access token with its secret, shown this once.
#[derive(Debug, Clone)]
pub struct IssuedAccessToken {
    pub token: TokenView,
    pub secret: Secret,
}

/// A refresh token as its owner and admins see it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenView {
    pub id: String,
    /// The kind of credential it was obtained with: `password`, `token`, `robot`.
    pub credential: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked: bool,
}

impl From<RefreshTokenRecord> for RefreshTokenView {
    fn from(record: RefreshTokenRecord) -> Self {
        RefreshTokenView {
            id: record.id,
            credential: record.credential,
            created_at: record.created_at,
            expires_at: record.expires_at,
            last_used_at: record.last_used_at,
            revoked: record.revoked,
        }
    }
}

/// What a signing key is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// It signs new tokens here (and verifies).
    Signing,
    /// It verifies tokens it signed.
    Verifying,
    /// It neither signs nor verifies.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Signing => "signing",
            KeyState::Verifying => "verifying",
            KeyState::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyView {
    pub kid: String,
    pub state: KeyState,
    pub created_at: Timestamp,
    pub retired_at: Option<Timestamp>,
}

/// What retiring a key did: the key that signs now, a new one when the retired key signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    pub retired: String,
    pub signing: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    Robot,
    Anonymous,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Robot => "robot",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
}

/// Who the caller is, as the registry sees them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// `user:alice`, `robot:robot$team+ci`, `anonymous`.
    pub principal: String,
    pub kind: PrincipalKind,
    pub admin: bool,
    /// The projects a user is a member of, by name.
    pub projects: Vec<Membership>,
    /// A robot's own record: its project, grants and expiry.
    pub robot: Option<RobotView>,
}

/// An authorization question: may `principal` do `action` on `repository`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// `user:NAME`, `robot:NAME` or `anonymous`.
    pub principal: String,
    pub repository: String,
    pub action: String,
}

/// The answer of `auth::authorize`, with the rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub allowed: bool,
    /// A stable name of the rule, e.g. `project_role`, `robot_grant`.
    pub rule: &'static str,
    pub reason: String,
}

impl From<Decision> for CheckOutcome {
    fn from(decision: Decision) -> Self {
        CheckOutcome {
            allowed: decision.allowed,
            rule: rule_name(&decision.rule),
            reason: decision.reason(),
        }
    }
}

/// The stable, machine-readable name of a rule.
pub fn rule_name(rule: &Rule) -> &'static str {
    match rule {
        Rule::SystemAdmin => "system_admin",
        Rule::DisabledUser(_) => "disabled_user",
        Rule::RobotRevoked(_) => "robot_revoked",
        Rule::RobotExpired(_) => "robot_expired",
        Rule::RobotGrant { .. } => "robot_grant",
        Rule::RobotOutsideProject { .. } => "robot_outside_project",
        Rule::RobotNoGrant { .. } => "robot_no_grant",
        Rule::ProjectRole { .. } => "project_role",
        Rule::RoleTooWeak { .. } => "role_too_weak",
        Rule::PublicPull(_) => "public_pull",
        Rule::NotMember { .. } => "not_member",
        Rule::AnonymousPrivate(_) => "anonymous_private",
        Rule::ProjectUnknown { .. } => "project_unknown",
    }
}

/// Which audit events to read: every set field must match; newest first, before the
/// event id `before` (the previous page's `next`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub principal: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub result: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// The user acting on the admin API, once it is known that they may act at all.
struct Acting<'a> {
    principal: &'a Principal,
    name: &'a str,
    admin: bool,
    client: Option<IpAddr>,
}

/// What the acting user is to a project they can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Admin,
    Member(Role),
    /// Not a member of a public project.
    Visitor,
}

impl Standing {
    fn may_manage(self) -> bool {
        matches!(self, Standing::Admin | Standing::Member(Role::Owner))
    }
}

/// One audited admin change: what, on what, by whom.
struct Change<'a> {
    acting: &'a Acting<'a>,
    action: &'static str,
    target: String,
}

fn invalid(text: impl Into<String>) -> Error {
    Error::Invalid(text.into())
}

fn internal(err: impl std::fmt::Display) -> Error {
    Error::Internal(err.to_string())
}

/// `[a-z0-9]+([._-][a-z0-9]+)*`, at most 64 characters: user names and robots' short names.
fn valid_account_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    name.len() <= MAX_NAME_CHARS
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .windows(2)
            .all(|pair| alnum(&pair[0]) || alnum(&pair[1]))
        && bytes.iter().all(|b| alnum(b) || b".-_".contains(b))
}

fn check_account_name(kind: &str, name: &str) -> Result<(), Error> {
    if valid_account_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{kind} name {name:?} must match [a-z0-9]+([._-][a-z0-9]+)* and have at most {MAX_NAME_CHARS} characters"
        )))
    }
}

/// A project name is one component of a repository name.
fn check_project_name(name: &str) -> Result<(), Error> {
    let valid = !name.contains('/')
        && name.len() <= MAX_NAME_CHARS
        && name.parse::<RepositoryName>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "project name {name:?} must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)* and have at most {MAX_NAME_CHARS} characters"
        )))
    }
}

fn check_description(description: &str) -> Result<(), Error> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!(
            "descriptions have at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(())
}

/// Resolves an expiry request against `now`; `default` applies when neither field is set.
fn resolve_expiry(
    request: &ExpiryRequest,
    now: Timestamp,
    default: Option<i64>,
) -> Result<Option<Timestamp>, Error> {
    let limit = "at most 365 days ahead";
    match (&request.expires_in, request.expires_at) {
        (Some(_), Some(_)) => Err(invalid("give expires_in or expires_at, not both")),
        (Some(text), None) => {
            let bad = || {
                invalid(format!("expires_in {text:?} must be a number of days or hours, like \"30d\" or \"12h\", {limit}"))
            };
            let split = text.len().checked_sub(1).ok_or_else(bad)?;
            let (count, unit) = text.split_at(split);
            let unit_secs = match unit {
                "d" => DAY,
                "h" => 3600,
                _ => return Err(bad()),
            };
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let count: i64 = count.parse().map_err(|_| bad())?;
            let secs = count
                .checked_mul(unit_secs)
                .filter(|secs| (1..=MAX_EXPIRY_SECS).contains(secs))
                .ok_or_else(bad)?;
            Ok(Some(now + secs))
        }
        (None, Some(at)) if at <= now => {
            Err(invalid(format!("expires_at {at} is not in the future")))
        }
        (None, Some(at)) if at - now > MAX_EXPIRY_SECS => Err(invalid(format!(
            "expires_at {at} is more than 365 days ahead"
        ))),
        (None, Some(at)) => Ok(Some(at)),
        (None, None) => Ok(default.map(|secs| now + secs)),
    }
}

/// `*` and `**` globs over repository-name characters, with no empty path component.
fn valid_pattern(pattern: &str) -> bool {
    pattern.len() <= oci::name::MAX_NAME_LEN
        && pattern.split('/').all(|part| {
            !part.is_empty()
                && !part.contains("***")
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-*".contains(&b))
        })
}

/// Checks a robot's grants: confined to `project` when it has one, known actions only.
fn check_grants(requests: &[GrantRequest], project: Option<&str>) -> Result<Vec<Grant>, Error> {
    if requests.is_empty() {
        return Err(invalid("a robot needs at least one grant"));
    }
    if requests.len() > MAX_GRANTS {
        return Err(invalid(format!("a robot has at most {MAX_GRANTS} grants")));
    }
    requests
        .iter()
        .map(|request| {
            let pattern = request.repositories.as_str();
            if !valid_pattern(pattern) {
                return Err(invalid(format!(
                    "repositories {pattern:?} must be a repository name or a glob of one (* within a path component, ** across them)"
                )));
            }
            if let Some(project) = project {
                let inside = pattern == project || pattern.strip_prefix(project).is_some_and(|rest| rest.starts_with('/'));
                if !inside {
                    return Err(invalid(format!("repositories {pattern:?} must lie in project {project}: start with \"{project}/\"")));
                }
            }
            if request.actions.is_empty() {
                return Err(invalid(format!("the grant on {pattern:?} names no action; use pull, push or delete")));
            }
            let actions = request
                .actions
                .iter()
                .map(|name| Action::parse(name).ok_or_else(|| invalid(format!("unknown action {name:?}; use pull, push or delete"))))
                .collect::<Result<BTreeSet<Action>, Error>>()?;
            Ok(Grant {
                pattern: pattern.to_owned(),
                actions,
            })
        })
        .collect()
}

fn grants_json(grants: &[Grant]) -> Result<String, Error> {
    let stored: Vec<StoredGrant> = grants
        .iter()
        .map(|grant| StoredGrant {
            pattern: grant.pattern.clone(),
            actions: grant
                .actions
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
        })
        .collect();
    serde_json::to_string(&stored).map_err(internal)
}

/// Hashes a new password on the same bounded pool that verifies passwords.
async fn hash_password(access: &Access, password: &Secret) -> Result<String, Error> {
    auth::password::validate(password.expose()).map_err(|err| invalid(err.to_string()))?;
    let plaintext = password.expose().to_owned();
    let _permit = access.password_pool.acquire().await.map_err(internal)?;
    tokio::task::spawn_blocking(move || auth::password::hash(&plaintext))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// The sort key of an access token listing: creation time, then id.
fn token_cursor(token: &TokenView) -> String {
    format!("{:020}.{}", token.created_at.max(0), token.id)
}

fn principal_kind(principal: &Principal) -> PrincipalKind {
    match principal {
        Principal::User { .. } => PrincipalKind::User,
        Principal::Robot { .. } => PrincipalKind::Robot,
        Principal::Anonymous => PrincipalKind::Anonymous,
    }
}

impl Access {
    /// The principal of a registry (access) token presented to the admin API, as it stands
    /// now (a deleted or disabled user, or a revoked or expired robot, no longer counts), and
    /// the kind of credential the token was obtained with.
    pub async fn bearer_principal(
        &self,
        token: &str,
    ) -> Result<(Principal, Option<CredentialKind>), AuthError> {
        let claims = self.verify(token, false).await.map_err(|err| match err {
            TokenError::Unconfirmed => AuthError::Unavailable(err.to_string()),
            other => AuthError::BadToken(other),
        })?;
        let principal = match self.principal(&claims.sub).await {
            Ok(Some(principal)) => principal,
            Ok(None) => return Err(AuthError::BadCredentials),
            Err(err) => return Err(AuthError::from_backend(err)),
        };
        let active = match &principal {
            Principal::User { disabled, .. } => !disabled,
            Principal::Robot {
                revoked,
                expires_at,
                ..
            } => !revoked && *expires_at > now(),
            Principal::Anonymous => false,
        };
        if active {
            Ok((principal, claims.cred))
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    /// Who the caller is; the only admin call robots may make.
    pub async fn whoami(&self, actor: &Principal) -> Result<WhoAmI, Error> {
        let kind = principal_kind(actor);
        let mut answer = WhoAmI {
            principal: actor.label(),
            kind,
            admin: false,
            projects: Vec::new(),
            robot: None,
        };
        match actor {
            Principal::User { name, admin, .. } => {
                answer.admin = *admin;
                answer.projects = self.memberships(name).await?;
            }
            Principal::Robot { name, .. } => {
                answer.robot = self.store.robot(name).await?.map(RobotView::from);
            }
            Principal::Anonymous => {}
        }
        Ok(answer)
    }

    // ---- users ----

    /// A new account, by an admin who logged in with their password (`credential`): an access
    /// token must not be able to mint accounts that outlive it.
    pub async fn create_user(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        new: NewUser,
        client: Option<IpAddr>,
    ) -> Result<UserView, Error> {
        let acting = self.admin(actor, "user.create", &new.name, client).await?;
        acting
            .require_password(
                self,
                credential,
                "creating a user",
                "user.create",
                &new.name,
            )
            .await?;
        check_account_name("user", &new.name)?;
        let password_hash = hash_password(self, &new.password).await?;
        let record = UserRecord {
            name: new.name.clone(),
            password_hash,
            admin: new.admin,
            disabled: false,
            created_at: now(),
        };
        let change = acting.change("user.create", &new.name);
        let outcome = self.store.create_user(&record).await.map_err(Error::from);
        self.finish(&change, outcome).await?;
        Ok(record.into())
    }

    pub async fn users(
        &self,
        actor: &Principal,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<UserView>, Error> {
        self.admin(actor, "user.list", "users", client).await?;
        let records = self
            .store
            .list_users(page.after.as_deref(), page.bounded() + 1)
            .await?;
        Ok(Listing::cut(
            records.into_iter().map(UserView::from).collect(),
            page.size(),
            |user| user.name.clone(),
        ))
    }

    /// A user, to an admin or to themselves.
    pub async fn user(
        &self,
        actor: &Principal,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<UserView, Error> {
        let acting = self.acting(actor, "user.read", name, client).await?;
        if !acting.admin && acting.name != name {
            return Err(acting
                .deny(
                    self,
                    "user.read",
                    name,
                    "only admins may look at other users",
                )
                .await);
        }
        self.store
            .user(name)
            .await?
            .map(UserView::from)
            .ok_or_else(|| Error::NotFound(format!("user {name}")))
    }

    /// An admin's change to a user. Admins cannot demote, disable or re-password themselves
    /// this way: a stolen session must not lock the real admin out. Setting a password or the
    /// admin role, and re-enabling an account, need a login with the admin's password
    /// (`credential`): through an access token they would hand out access that outlives the
    /// token. Disabling and demoting do not.
    pub async fn update_user(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        name: &str,
        change: UserChange,
        client: Option<IpAddr>,
    ) -> Result<UserView, Error> {
        let acting = self.admin(actor, "user.update", name, client).await?;
        if change.password.is_some() || change.admin == Some(true) || change.disabled == Some(false)
        {
            acting
                .require_password(
                    self,
                    credential,
                    "setting a password, the admin role or re-enabling an account",
                    "user.update",
                    name,
                )
                .await?;
        }
        if acting.name == name {
            if change.admin == Some(false) || change.disabled == Some(true) {
                let refusal = Error::Conflict("admins cannot remove their own admin role or disable themselves; ask another admin".into());
                return self
                    .finish(&acting.change("user.update", name), Err(refusal))
                    .await;
            }
            if change.password.is_some() {
                return Err(invalid("change your own password with your current password, not through a user update"));
            }
        }
        if change.password.is_none() && change.admin.is_none() && change.disabled.is_none() {
            return Err(invalid(
                "nothing to change: give password, admin or disabled",
            ));
        }
        let password_hash = match &change.password {
            Some(password) => Some(hash_password(self, password).await?),
            None => None,
        };
        let update = UserUpdate {
            password_hash,
            admin: change.admin,
            disabled: change.disabled,
        };
        let outcome = match self.store.update_user(name, &update).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(Error::NotFound(format!("user {name}"))),
            Err(err) => Err(err.into()),
        };
        let record = self
            .finish(&acting.change("user.update", name), outcome)
            .await?;
        Ok(record.into())
    }

    /// Changes the caller's own password, proven by the current one, for a caller logged in
    /// with the password (`credential`): not with an access token, which must not become the
    /// account.
    pub async fn change_password(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        name: &str,
        current: &Secret,
        new: &Secret,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let acting = self.acting(actor, "user.password", name, client).await?;
        if acting.name != name {
            let reason =
                "users change only their own password; admins reset others' through a user update";
            return Err(acting.deny(self, "user.password", name, reason).await);
        }
        acting
            .require_password(
                self,
                credential,
                "changing the password",
                "user.password",
                name,
            )
            .await?;
        // An API secret is never a password: a leaked token must not become the account.
        let proven = !auth::secret::looks_like_secret(current.expose())
            && match self.authenticate(name, current.expose(), client).await {
                Ok(proven) => proven.principal.label() == actor.label(),
                Err(AuthError::Throttled { retry_after }) => {
                    let reason =
                        format!("too many failed attempts; retry in {retry_after} seconds");
                    return Err(acting.deny(self, "user.password", name, &reason).await);
                }
                Err(AuthError::BadCredentials | AuthError::BadToken(_)) => false,
                Err(AuthError::Unavailable(cause)) => return Err(Error::Unavailable(cause)),
            };
        if !proven {
            return Err(acting
                .deny(self, "user.password", name, "the current password is wrong")
                .await);
        }
        let update = UserUpdate {
            password_hash: Some(hash_password(self, new).await?),
            ..UserUpdate::default()
        };
        let outcome = match self.store.update_user(name, &update).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::NotFound(format!("user {name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("user.password", name), outcome)
            .await
    }

    pub async fn delete_user(
        &self,
        actor: &Principal,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let acting = self.admin(actor, "user.delete", name, client).await?;
        if acting.name == name {
            let refusal =
                Error::Conflict("admins cannot delete themselves; ask another admin".into());
            return self
                .finish(&acting.change("user.delete", name), Err(refusal))
                .await;
        }
        let outcome = match self.store.delete_user(name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("user {name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("user.delete", name), outcome)
            .await
    }

    // ---- personal access tokens ----

    /// A new token for the caller's own account. Not even an admin makes tokens for someone
    /// else: that would be acting as them. The caller must have logged in with the password
    /// (`credential`): a token that could make tokens would survive its own revocation.
    pub async fn create_access_token(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        user: &str,
        new: NewToken,
        client: Option<IpAddr>,
    ) -> Result<IssuedAccessToken, Error> {
        let acting = self.acting(actor, "token.create", user, client).await?;
        if acting.name != user {
            return Err(acting
                .deny(
                    self,
                    "token.create",
                    user,
                    "users create access tokens only for themselves",
                )
                .await);
        }
        acting
            .require_password(
                self,
                credential,
                "creating an access token",
                "token.create",
                user,
            )
            .await?;
        if new.description.trim().is_empty() {
            return Err(invalid("describe what the token is for"));
        }
        check_description(&new.description)?;
        let created_at = now();
        let expires_at = resolve_expiry(&new.expiry, created_at, Some(DEFAULT_EXPIRY_SECS))?;
        let secret = auth::secret::random();
        let record = AccessTokenRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            user: user.to_owned(),
            description: new.description,
            expires_at,
            revoked: false,
            created_at,
            last_used_at: None,
        };
        let target = format!("{user}:{}", record.id);
        let outcome = self
            .store
            .create_access_token(&record, &secret.hash)
            .await
            .map_err(Error::from);
        self.finish(&acting.change("token.create", &target), outcome)
            .await?;
        Ok(IssuedAccessToken {
            token: record.into(),
            secret: Secret(secret.plaintext),
        })
    }

    /// A user's tokens, to themselves or an admin, oldest first.
    pub async fn access_tokens(
        &self,
        actor: &Principal,
        user: &str,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<TokenView>, Error> {
        let acting = self.acting(actor, "token.list", user, client).await?;
        if !acting.admin && acting.name != user {
            return Err(acting
                .deny(
                    self,
                    "token.list",
                    user,
                    "only admins may look at other users' tokens",
                )
                .await);
        }
        if self.store.user(user).await?.is_none() {
            return Err(Error::NotFound(format!("user {user}")));
        }
        let tokens = self
            .store
            .list_access_tokens(user)
            .await?
            .into_iter()
            .map(TokenView::from)
            .collect();
        Ok(Listing::from_sorted(tokens, page, token_cursor))
    }

    /// Revokes a token at once, by its owner or an admin.
    pub async fn revoke_access_token(
        &self,
        actor: &Principal,
        user: &str,
        id: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let target = format!("{user}:{id}");
        let acting = self.acting(actor, "token.revoke", &target, client).await?;
        if !acting.admin && acting.name != user {
            return Err(acting
                .deny(
                    self,
                    "token.revoke",
                    &target,
                    "only admins may revoke other users' tokens",
                )
                .await);
        }
        let outcome = match self.store.revoke_access_token(user, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("access token {id} of user {user}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("token.revoke", &target), outcome)
            .await
    }

    // ---- refresh tokens ----

    /// A user's refresh tokens, to themselves or an admin, oldest first.
    pub async fn refresh_tokens(
        &self,
        actor: &Principal,
        user: &str,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<RefreshTokenView>, Error> {
        let acting = self
            .acting(actor, "refresh_token.list", user, client)
            .await?;
        if !acting.admin && acting.name != user {
            return Err(acting
                .deny(
                    self,
                    "refresh_token.list",
                    user,
                    "only admins may look at other users' refresh tokens",
                )
                .await);
        }
        if self.store.user(user).await?.is_none() {
            return Err(Error::NotFound(format!("user {user}")));
        }
        let tokens = self
            .store
            .list_refresh_tokens(&format!("user:{user}"))
            .await?
            .into_iter()
            .map(RefreshTokenView::from)
            .collect();
        Ok(Listing::from_sorted(
            tokens,
            page,
            |token: &RefreshTokenView| format!("{:020}.{}", token.created_at.max(0), token.id),
        ))
    }

    /// Revokes one refresh token at once, by its owner or an admin: it cannot be exchanged
    /// again, and the access tokens it gave stop working.
    pub async fn revoke_refresh_token(
        &self,
        actor: &Principal,
        user: &str,
        id: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let target = format!("{user}:{id}");
        let acting = self
            .acting(actor, "refresh_token.revoke", &target, client)
            .await?;
        if !acting.admin && acting.name != user {
            return Err(acting
                .deny(
                    self,
                    "refresh_token.revoke",
                    &target,
                    "only admins may revoke other users' refresh tokens",
                )
                .await);
        }
        let outcome = match self
            .store
            .revoke_refresh_token(&format!("user:{user}"), id)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!(
                "refresh token {id} of user {user}"
            ))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("refresh_token.revoke", &target), outcome)
            .await
    }

    // ---- token-signing keys ----

    /// Every signing key with its state, oldest first; for admins.
    pub async fn signing_keys(
        &self,
        actor: &Principal,
        client: Option<IpAddr>,
    ) -> Result<Vec<SigningKeyView>, Error> {
        self.admin(actor, "key.list", "keys", client).await?;
        let signing = self.signing_kid();
        Ok(self
            .store
            .signing_keys()
            .await?
            .into_iter()
            .map(|record| SigningKeyView {
                state: match record.retired_at {
                    Some(_) => KeyState::Retired,
                    None if record.kid == signing => KeyState::Signing,
                    None => KeyState::Verifying,
                },
                kid: record.kid,
                created_at: record.created_at,
                retired_at: record.retired_at,
            })
            .collect())
    }

    /// Retires a key at once: its tokens stop verifying on every replica. The key that signs
    /// (or the last key in use) is replaced by a new key in the same transaction, which signs
    /// from then on. For admins.
    pub async fn retire_signing_key(
        &self,
        actor: &Principal,
        kid: &str,
        client: Option<IpAddr>,
    ) -> Result<RetiredKey, Error> {
        let acting = self.admin(actor, "key.retire", kid, client).await?;
        let records = self.store.signing_keys().await?;
        let in_use: Vec<&SigningKeyRecord> = records
            .iter()
            .filter(|record| record.retired_at.is_none())
            .collect();
        let change = acting.change("key.retire", kid);
        if !in_use.iter().any(|record| record.kid == kid) {
            let refusal = Err(Error::NotFound(format!("signing key {kid} in use")));
            return self.finish(&change, refusal).await;
        }
        let time = now();
        let replacement = if kid == self.signing_kid() || in_use.len() == 1 {
            let (key, pem) = SigningKey::generate().map_err(internal)?;
            Some(SigningKeyRecord {
                kid: key.kid().to_owned(),
                pem,
                created_at: time,
                retired_at: None,
            })
        } else {
            None
        };
        let outcome = match self
            .store
            .retire_signing_key(kid, time, replacement.as_ref())
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("signing key {kid} in use"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&change, outcome).await?;
        Ok(RetiredKey {
            retired: kid.to_owned(),
            signing: self.signing_kid(),
        })
    }

    // ---- projects and members ----

    pub async fn create_project(
        &self,
        actor: &Principal,
        new: NewProject,
        client: Option<IpAddr>,
    ) -> Result<ProjectView, Error> {
        let acting = self
            .admin(actor, "project.create", &new.name, client)
            .await?;
        check_project_name(&new.name)?;
        let record = ProjectRecord {
            name: new.name.clone(),
            public: new.public,
            created_at: now(),
        };
        let outcome = self
            .store
            .create_project(&record)
            .await
            .map_err(Error::from);
        self.finish(&acting.change("project.create", &new.name), outcome)
            .await?;
        Ok(record.into())
    }

    /// Every project to an admin; public ones and the caller's own to anyone else.
    pub async fn projects(
        &self,
        actor: &Principal,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<ProjectView>, Error> {
        let acting = self
            .acting(actor, "project.list", "projects", client)
            .await?;
        let size = page.size();
        let mut visible = Vec::new();
        let mut after = page.after.clone();
        loop {
            let batch = if acting.admin {
                page.bounded() + 1
            } else {
                SCAN_BATCH
            };
            let records = self.store.list_projects(after.as_deref(), batch).await?;
            let exhausted = records.len() < usize::try_from(batch).unwrap_or(usize::MAX);
            after = records.last().map(|record| record.name.clone());
            for record in records {
                if acting.admin
                    || record.public
                    || self.is_member(&record.name, acting.name).await?
                {
                    visible.push(ProjectView::from(record));
                }
            }
            if exhausted || visible.len() > size {
                break;
            }
        }
        visible.truncate(size + 1);
        Ok(Listing::cut(visible, size, |project| project.name.clone()))
    }

    pub async fn project(
        &self,
        actor: &Principal,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<ProjectView, Error> {
        let acting = self.acting(actor, "project.read", name, client).await?;
        let (record, _) = self
            .visible_project(&acting, "project.read", name, name)
            .await?;
        Ok(record.into())
    }

    pub async fn set_project_public(
        &self,
        actor: &Principal,
        name: &str,
        public: bool,
        client: Option<IpAddr>,
    ) -> Result<ProjectView, Error> {
        let acting = self.acting(actor, "project.update", name, client).await?;
        self.managed_project(&acting, "project.update", name, name)
            .await?;
        let outcome = match self.store.set_project_public(name, public).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("project {name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("project.update", name), outcome)
            .await?;
        self.store
            .project(name)
            .await?
            .map(ProjectView::from)
            .ok_or_else(|| Error::NotFound(format!("project {name}")))
    }

    /// Deletes a project with its members and robots; `Conflict` while it holds repositories.
    pub async fn delete_project(
        &self,
        actor: &Principal,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let acting = self.acting(actor, "project.delete", name, client).await?;
        self.managed_project(&acting, "project.delete", name, name)
            .await?;
        let outcome = match self.store.delete_project(name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("project {name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("project.delete", name), outcome)
            .await
    }

    /// A project's members, to its members and admins.
    pub async fn members(
        &self,
        actor: &Principal,
        project: &str,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<MemberView>, Error> {
        let acting = self.acting(actor, "member.list", project, client).await?;
        let (_, standing) = self
            .visible_project(&acting, "member.list", project, project)
            .await?;
        if standing == Standing::Visitor {
            let reason =
                format!("only members of project {project} and admins may list its members");
            return Err(acting.deny(self, "member.list", project, &reason).await);
        }
        let policy = self
            .project_policy(project)
            .await?
            .ok_or_else(|| Error::NotFound(format!("project {project}")))?;
        let members = policy
            .members
            .into_iter()
            .map(|(user, role)| MemberView { user, role })
            .collect();
        Ok(Listing::from_sorted(members, page, |member| {
            member.user.clone()
        }))
    }

    /// Adds a member or changes their role, by an owner or admin. A project that has owners
    /// keeps at least one.
    pub async fn set_member(
        &self,
        actor: &Principal,
        project: &str,
        user: &str,
        role: &str,
        client: Option<IpAddr>,
    ) -> Result<MemberView, Error> {
        let target = format!("{project}:{user}");
        let acting = self.acting(actor, "member.set", &target, client).await?;
        let policy = self
            .managed_project(&acting, "member.set", project, &target)
            .await?;
        let role = Role::parse(role).ok_or_else(|| {
            invalid(format!(
                "unknown role {role:?}; use owner, maintainer, developer or reader"
            ))
        })?;
        let outcome = match check_owner_remains(&policy, user, Some(role)) {
            Ok(()) => self
                .store
                .set_member(project, user, role.as_str())
                .await
                .map_err(Error::from),
            Err(refusal) => Err(refusal),
        };
        self.finish(&acting.change("member.set", &target), outcome)
            .await?;
        Ok(MemberView {
            user: user.to_owned(),
            role,
        })
    }

    pub async fn remove_member(
        &self,
        actor: &Principal,
        project: &str,
        user: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let target = format!("{project}:{user}");
        let acting = self.acting(actor, "member.remove", &target, client).await?;
        let policy = self
            .managed_project(&acting, "member.remove", project, &target)
            .await?;
        let outcome = match check_owner_remains(&policy, user, None) {
            Ok(()) => match self.store.remove_member(project, user).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::NotFound(format!(
                    "member {user} of project {project}"
                ))),
                Err(err) => Err(err.into()),
            },
            Err(refusal) => Err(refusal),
        };
        self.finish(&acting.change("member.remove", &target), outcome)
            .await
    }

    // ---- robots ----

    /// A new robot and its secret (shown once): in a project by its owners or admins,
    /// system-wide by admins, logged in with their password (`credential`): a robot made
    /// through an access token would outlive the token's revocation.
    pub async fn create_robot(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        scope: RobotScope<'_>,
        new: NewRobot,
        client: Option<IpAddr>,
    ) -> Result<IssuedRobot, Error> {
        let full_name = scope.full_name(&new.name);
        let acting = self
            .acting(actor, "robot.create", &full_name, client)
            .await?;
        self.robot_manager(&acting, "robot.create", scope, &full_name)
            .await?;
        acting
            .require_password(
                self,
                credential,
                "creating a robot",
                "robot.create",
                &full_name,
            )
            .await?;
        check_account_name("robot", &new.name)?;
        if let Some(description) = &new.description {
            check_description(description)?;
        }
        let grants = check_grants(&new.grants, scope.project().as_deref())?;
        let created_at = now();
        let expires_at = resolve_expiry(&new.expiry, created_at, Some(DEFAULT_EXPIRY_SECS))?
            .unwrap_or(created_at + DEFAULT_EXPIRY_SECS);
        let secret = auth::secret::random();
        let record = RobotRecord {
            name: full_name.clone(),
            project: scope.project(),
            description: new.description,
            grants: grants_json(&grants)?,
            expires_at,
            revoked: false,
            created_at,
            last_used_at: None,
        };
        let outcome = self
            .store
            .create_robot(&record, &secret.hash)
            .await
            .map_err(Error::from);
        self.finish(&acting.change("robot.create", &full_name), outcome)
            .await?;
        Ok(IssuedRobot {
            robot: record.into(),
            secret: Secret(secret.plaintext),
        })
    }

    pub async fn robots(
        &self,
        actor: &Principal,
        scope: RobotScope<'_>,
        page: &PageRequest,
        client: Option<IpAddr>,
    ) -> Result<Listing<RobotView>, Error> {
        let target = scope.full_name("*");
        let acting = self.acting(actor, "robot.list", &target, client).await?;
        self.robot_manager(&acting, "robot.list", scope, &target)
            .await?;
        let robots = self
            .store
            .list_robots(scope.project().as_deref())
            .await?
            .into_iter()
            .map(RobotView::from)
            .collect();
        Ok(Listing::from_sorted(robots, page, |robot| {
            robot.name.clone()
        }))
    }

    pub async fn robot(
        &self,
        actor: &Principal,
        scope: RobotScope<'_>,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<RobotView, Error> {
        let full_name = scope.full_name(name);
        let acting = self.acting(actor, "robot.read", &full_name, client).await?;
        self.robot_manager(&acting, "robot.read", scope, &full_name)
            .await?;
        self.scoped_robot(scope, &full_name)
            .await
            .map(RobotView::from)
    }

    /// Replaces a robot's secret (shown once), and its expiry when one is given; like
    /// `create_robot`, only for a caller logged in with their password.
    pub async fn rotate_robot(
        &self,
        actor: &Principal,
        credential: Option<CredentialKind>,
        scope: RobotScope<'_>,
        name: &str,
        expiry: ExpiryRequest,
        client: Option<IpAddr>,
    ) -> Result<IssuedRobot, Error> {
        let full_name = scope.full_name(name);
        let acting = self
            .acting(actor, "robot.rotate", &full_name, client)
            .await?;
        self.robot_manager(&acting, "robot.rotate", scope, &full_name)
            .await?;
        acting
            .require_password(
                self,
                credential,
                "rotating a robot's secret",
                "robot.rotate",
                &full_name,
            )
            .await?;
        let mut record = self.scoped_robot(scope, &full_name).await?;
        let expires_at = resolve_expiry(&expiry, now(), None)?;
        if record.revoked {
            let refusal =
                Error::Conflict(format!("robot {full_name} was revoked; create a new one"));
            return self
                .finish(&acting.change("robot.rotate", &full_name), Err(refusal))
                .await;
        }
        let secret = auth::secret::random();
        let outcome = match self
            .store
            .rotate_robot(&full_name, &secret.hash, expires_at)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("robot {full_name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("robot.rotate", &full_name), outcome)
            .await?;
        if let Some(expires_at) = expires_at {
            record.expires_at = expires_at;
        }
        Ok(IssuedRobot {
            robot: record.into(),
            secret: Secret(secret.plaintext),
        })
    }

    /// Revokes a robot at once: its secret stops working on the next request.
    pub async fn revoke_robot(
        &self,
        actor: &Principal,
        scope: RobotScope<'_>,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let full_name = scope.full_name(name);
        let acting = self
            .acting(actor, "robot.revoke", &full_name, client)
            .await?;
        self.robot_manager(&acting, "robot.revoke", scope, &full_name)
            .await?;
        self.scoped_robot(scope, &full_name).await?;
        let outcome = match self.store.revoke_robot(&full_name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!("robot {full_name}"))),
            Err(err) => Err(err.into()),
        };
        self.finish(&acting.change("robot.revoke", &full_name), outcome)
            .await
    }

    // ---- authorization dry run and audit ----

    /// What `auth::authorize` would decide, without doing anything; for admins and for
    /// owners of the repository's project.
    pub async fn check(
        &self,
        actor: &Principal,
        question: &CheckRequest,
        client: Option<IpAddr>,
    ) -> Result<CheckOutcome, Error> {
        let acting = self
            .acting(actor, "check", &question.repository, client)
            .await?;
        let repository: RepositoryName = question
            .repository
            .parse()
            .map_err(|err: oci::NameError| invalid(err.to_string()))?;
        // Permission first: only those allowed to ask learn which principals exist.
        if !acting.admin {
            let (_, standing) = self
                .visible_project(&acting, "check", repository.project(), repository.as_str())
                .await?;
            if !standing.may_manage() {
                let reason = format!(
                    "only owners of project {} and admins may check access to it",
                    repository.project()
                );
                return Err(acting
                    .deny(self, "check", repository.as_str(), &reason)
                    .await);
            }
        }
        let action = Action::parse(&question.action).ok_or_else(|| {
            invalid(format!(
                "unknown action {:?}; use pull, push or delete",
                question.action
            ))
        })?;
        let subject = match question.principal.as_str() {
            "anonymous" => Some(Principal::Anonymous),
            label if label.starts_with("user:") || label.starts_with("robot:") => {
                self.principal(label).await?
            }
            label => {
                return Err(invalid(format!(
                    "principal {label:?} must be user:NAME, robot:NAME or anonymous"
                )))
            }
        };
        let subject = subject
            .ok_or_else(|| invalid(format!("principal {} does not exist", question.principal)))?;
        Ok(self.decide(&subject, &repository, action).await?.into())
    }

    /// Audit events, newest first; for admins.
    pub async fn audit_events(
        &self,
        actor: &Principal,
        query: AuditQuery,
        client: Option<IpAddr>,
    ) -> Result<Listing<AuditRecord>, Error> {
        self.admin(actor, "audit.read", "audit", client).await?;
        let size = usize::try_from(query.limit.clamp(1, MAX_PAGE_LIMIT)).unwrap_or(100);
        let filter = AuditFilter {
            principal: query.principal,
            action: query.action,
            target: query.target,
            result: query.result,
            since: query.since,
            until: query.until,
            before_id: query.before,
            limit: query.limit.clamp(1, MAX_PAGE_LIMIT) + 1,
        };
        let records = self.store.audit(&filter).await?;
        Ok(Listing::cut(records, size, |record| record.id.to_string()))
    }

    // ---- permission helpers ----

    /// The acting user, or the denial for robots, anonymous and disabled callers.
    async fn acting<'a>(
        &self,
        actor: &'a Principal,
        action: &str,
        target: &str,
        client: Option<IpAddr>,
    ) -> Result<Acting<'a>, Error> {
        let reason = match actor {
            Principal::User {
                name,
                admin,
                disabled: false,
            } => {
                return Ok(Acting {
                    principal: actor,
                    name,
                    admin: *admin,
                    client,
                })
            }
            Principal::User {
                name,
                disabled: true,
                ..
            } => format!("user {name} is disabled"),
            Principal::Robot { .. } => "robot accounts may only ask who they are".to_owned(),
            Principal::Anonymous => "log in to use the admin API".to_owned(),
        };
        self.audit(
            actor,
            action,
            target,
            "denied",
            Some(reason.clone()),
            client,
        )
        .await;
        Err(Error::Forbidden(reason))
    }

    async fn admin<'a>(
        &self,
        actor: &'a Principal,
        action: &str,
        target: &str,
        client: Option<IpAddr>,
    ) -> Result<Acting<'a>, Error> {
        let acting = self.acting(actor, action, target, client).await?;
        if acting.admin {
            Ok(acting)
        } else {
            Err(acting
                .deny(self, action, target, "only system admins may do this")
                .await)
        }
    }

    /// Audits a change as `allowed` when it went through, `failed` with the reason when not.
    async fn finish<T>(&self, change: &Change<'_>, outcome: Result<T, Error>) -> Result<T, Error> {
        let acting = change.acting;
        let (result, reason) = match &outcome {
            Ok(_) => ("allowed", None),
            Err(Error::Internal(_) | Error::Unavailable(_)) => {
                ("failed", Some("internal error".to_owned()))
            }
            Err(err) => ("failed", Some(err.to_string())),
        };
        self.audit(
            acting.principal,
            change.action,
            &change.target,
            result,
            reason,
            acting.client,
        )
        .await;
        if outcome.is_ok() {
            self.follow_change().await;
        }
        outcome
    }

    async fn is_member(&self, project: &str, user: &str) -> Result<bool, Error> {
        Ok(self
            .project_policy(project)
            .await?
            .is_some_and(|policy| policy.members.contains_key(user)))
    }

    /// The caller's projects and roles. Reads every project: fine for an admin call, and the
    /// price of not having a per-user index in the store.
    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, Error> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let records = self
                .store
                .list_projects(after.as_deref(), SCAN_BATCH)
                .await?;
            let exhausted = records.len() < usize::try_from(SCAN_BATCH).unwrap_or(usize::MAX);
            after = records.last().map(|record| record.name.clone());
            for record in records {
                if let Some(role) = self
                    .project_policy(&record.name)
                    .await?
                    .and_then(|policy| policy.members.get(user).copied())
                {
                    found.push(Membership {
                        project: record.name,
                        role,
                    });
                }
            }
            if exhausted {
                return Ok(found);
            }
        }
    }

    /// A project the acting user can see, and what they are to it. A project they cannot
    /// see answers `NotFound`, like one that does not exist; the denial is audited as an
    /// attempt of `action` on `target`.
    async fn visible_project(
        &self,
        acting: &Acting<'_>,
        action: &str,
        name: &str,
        target: &str,
    ) -> Result<(ProjectRecord, Standing), Error> {
        let unknown = || Error::NotFound(format!("project {name}"));
        let Some((record, members)) = self.store.project_policy(name).await? else {
            return Err(unknown());
        };
        let role = members
            .iter()
            .find(|m| m.user == acting.name)
            .and_then(|m| Role::parse(&m.role));
        let standing = match role {
            _ if acting.admin => Standing::Admin,
            Some(role) => Standing::Member(role),
            None if record.public => Standing::Visitor,
            None => {
                // Audited as the denial it is, answered as if the project did not exist.
                let reason = format!(
                    "user {} is not a member of private project {name}",
                    acting.name
                );
                let _denied = acting.deny(self, action, target, &reason).await;
                return Err(unknown());
            }
        };
        Ok((record, standing))
    }

    /// The policy of a project the acting user may manage (as its owner or an admin).
    async fn managed_project(
        &self,
        acting: &Acting<'_>,
        action: &str,
        name: &str,
        target: &str,
    ) -> Result<ProjectPolicy, Error> {
        let (_, standing) = self.visible_project(acting, action, name, target).await?;
        if !standing.may_manage() {
            let reason = format!("only owners of project {name} and admins may do this");
            return Err(acting.deny(self, action, target, &reason).await);
        }
        self.project_policy(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("project {name}")))
    }

    async fn robot_manager(
        &self,
        acting: &Acting<'_>,
        action: &str,
        scope: RobotScope<'_>,
        target: &str,
    ) -> Result<(), Error> {
        match scope {
            RobotScope::Project(project) => self
                .managed_project(acting, action, project, target)
                .await
                .map(drop),
            RobotScope::System if acting.admin => Ok(()),
            RobotScope::System => Err(acting
                .deny(
                    self,
                    action,
                    target,
                    "only system admins manage system robots",
                )
                .await),
        }
    }

    async fn scoped_robot(
        &self,
        scope: RobotScope<'_>,
        full_name: &str,
    ) -> Result<RobotRecord, Error> {
        self.store
            .robot(full_name)
            .await?
            .filter(|record| record.project == scope.project())
            .ok_or_else(|| Error::NotFound(format!("robot {full_name}")))
    }
}

impl<'a> Acting<'a> {
    fn change(&'a self, action: &'static str, target: &str) -> Change<'a> {
        Change {
            acting: self,
            action,
            target: target.to_owned(),
        }
    }

    /// Refuses `action` (audited) unless the caller logged in with the account's password,
    /// directly or through a registry token the password gave; `what` names the deed.
    async fn require_password(
        &self,
        access: &Access,
        credential: Option<CredentialKind>,
        what: &str,
        action: &str,
        target: &str,
    ) -> Result<(), Error> {
        if credential == Some(CredentialKind::Password) {
            return Ok(());
        }
        let reason = format!(
            "{what} needs a login with the account's password: an access token, or a registry token obtained with one, cannot do it"
        );
        Err(self.deny(access, action, target, &reason).await)
    }

    /// Audits a denial and returns the error that answers it.
    async fn deny(&self, access: &Access, action: &str, target: &str, reason: &str) -> Error {
        tracing::info!(principal = %self.principal.label(), action, target, "denied {action} on {target}: {reason}");
        access
            .audit(
                self.principal,
                action,
                target,
                "denied",
                Some(reason.to_owned()),
                self.client,
            )
            .await;
        Error::Forbidden(reason.to_owned())
    }
}

/// Refuses to take the owner role from the last owner of a project that has owners (`role`:
/// the user's new role, `None` when they leave the project).
fn check_owner_remains(
    policy: &ProjectPolicy,
    user: &str,
    role: Option<Role>,
) -> Result<(), Error> {
    if role == Some(Role::Owner) {
        return Ok(());
    }
    let owners: Vec<&String> = policy
        .members
        .iter()
        .filter(|(_, role)| **role == Role::Owner)
        .map(|(name, _)| name)
        .collect();
    if owners.len() == 1 && owners[0] == user {
        return Err(Error::Conflict(format!(
            "{user} is the last owner of project {}; make someone else owner first",
            policy.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_follow_the_grammar() {
        for (name, valid) in [
            ("alice", true),
            ("ci", true),
            ("a.b-c_d", true),
            ("build2", true),
            ("", false),
            ("-ci", false),
            ("ci-", false),
            ("c--i", false),
            ("Ci", false),
            ("c i", false),
            ("c+i", false),
            ("c$i", false),
            (&"a".repeat(65), false),
        ] {
            assert_eq!(valid_account_name(name), valid, "{name:?}");
        }
    }

    fn expiry(expires_in: Option<&str>, expires_at: Option<i64>) -> String {
        let request = ExpiryRequest {
            expires_in: expires_in.map(str::to_owned),
            expires_at,
        };
        match resolve_expiry(&request, 1_000, Some(DEFAULT_EXPIRY_SECS)) {
            Ok(Some(at)) => format!("+{}", at - 1_000),
            Ok(None) => "none".into(),
            Err(_) => "invalid".into(),
        }
    }

    #[test]
    fn expiry_is_mandatory_bounded_and_in_the_future() {
        let cases = [
            (None, None, "+7776000"),
            (Some("30d"), None, "+2592000"),
            (Some("12h"), None, "+43200"),
            (Some("365d"), None, "+31536000"),
            (Some("366d"), None, "invalid"),
            (Some("0d"), None, "invalid"),
            (Some("30"), None, "invalid"),
            (Some("d"), None, "invalid"),
            (Some("-1d"), None, "invalid"),
            (Some("+1d"), None, "invalid"),
            (Some("1w"), None, "invalid"),
            (Some(""), None, "invalid"),
            (Some("99999999999999999999d"), None, "invalid"),
            (None, Some(1_060), "+60"),
            (None, Some(1_000), "invalid"),
            (None, Some(1_000 + MAX_EXPIRY_SECS + 1), "invalid"),
            (Some("1d"), Some(2_000), "invalid"),
        ];
        for (expires_in, expires_at, expected) in cases {
            assert_eq!(
                expiry(expires_in, expires_at),
                expected,
                "{expires_in:?} {expires_at:?}"
            );
        }
    }

    fn grant(repositories: &str, actions: &[&str]) -> GrantRequest {
        GrantRequest {
            repositories: repositories.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn project_robot_grants_stay_in_their_project() {
        let cases = [
            (Some("team"), grant("team/app-*", &["pull", "push"]), true),
            (Some("team"), grant("team", &["pull"]), true),
            (Some("team"), grant("team/**", &["delete"]), true),
            (Some("team"), grant("teammate/app", &["pull"]), false),
            (Some("team"), grant("*/app", &["pull"]), false),
            (Some("team"), grant("**", &["pull"]), false),
            (Some("team"), grant("team/app", &[]), false),
            (Some("team"), grant("team/app", &["manage"]), false),
            (Some("team"), grant("team/app", &["fly"]), false),
            (Some("team"), grant("team//app", &["pull"]), false),
            (Some("team"), grant("team/App", &["pull"]), false),
            (Some("team"), grant("", &["pull"]), false),
            (None, grant("**", &["pull"]), true),
            (None, grant("*/app", &["pull", "pull"]), true),
        ];
        for (project, request, valid) in cases {
            let outcome = check_grants(std::slice::from_ref(&request), project);
            assert_eq!(
                outcome.is_ok(),
                valid,
                "{project:?} {request:?}: {outcome:?}"
            );
        }
        assert!(
            check_grants(&[], Some("team")).is_err(),
            "a robot needs a grant"
        );
    }

    #[test]
    fn pages_cut_after_the_cursor() {
        let page = |after: Option<&str>, limit| PageRequest {
            after: after.map(str::to_owned),
            limit,
        };
        let names = || vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let listing = Listing::from_sorted(names(), &page(None, 2), Clone::clone);
        assert_eq!(
            (listing.items, listing.next),
            (vec!["a".to_owned(), "b".to_owned()], Some("b".to_owned()))
        );
        let listing = Listing::from_sorted(names(), &page(Some("b"), 2), Clone::clone);
        assert_eq!((listing.items, listing.next), (vec!["c".to_owned()], None));
        let listing = Listing::from_sorted(names(), &page(None, 3), Clone::clone);
        assert_eq!(listing.next, None, "a full last page has no next");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2hunter2")),
            "Secret(<redacted>)"
        );
    }
}
