//! Access control use cases: who is asking (authentication), what they may do (the pure
//! `auth::authorize` over policy loaded from the store), registry tokens (the Docker token
//! service), and the audit log.
//!
//! Invariants:
//! - Passwords are verified on a bounded blocking pool, so a flood of logins cannot starve
//!   registry traffic; a verified (user, password, stored hash) triple is remembered briefly so
//!   clients sending Basic credentials on every request pay for argon2 once.
//! - Failed logins are throttled (`throttle`): passwords per client network and per account
//!   (except from networks the account knows), API secrets per client network only, so no
//!   stranger can lock a robot out, nor an owner where they usually log in.
//! - A token never grants more than was asked and more than is allowed.
//! - A refresh token is bound to the credential it was obtained with (`Credential`) and dies
//!   with it: a changed password, a revoked or expired access token, a rotated or re-created
//!   robot. Exchanging it for a new one carries the same binding forward, and the access
//!   tokens it gives say which kind of credential they stem from (`Claims::cred`).
//! - Credentials are checked only once the first accounts exist: a first start creates the
//!   admin account while already listening (`hold_logins_until`), and a login that arrives
//!   meanwhile waits for it rather than failing.
//! - A revocation recorded by any replica ends the tokens it concerns here within
//!   `revocation_refresh` (plus one read), with no read per request: tokens carry the store's
//!   revocation epoch (`auth::revocation`), checked against epochs held in memory and re-read
//!   every `revocation_refresh` by a task that lives as long as the `Access`. Epochs older than
//!   `revocation_max_age` are read again before a token is honoured; if the store cannot
//!   answer, the token is `Unconfirmed` (a 503), never honoured, and honoured again once a
//!   read succeeds. A key announced in the epochs (added or retired) reloads the key set.
//! - Refresh tokens are recorded (`refresh_tokens`), so they can be listed and revoked one at a
//!   time; one without a record (issued before records, or its account deleted) is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use auth::policy::{Action, Decision, Grant, Principal, ProjectPolicy, Role};
use auth::revocation::{Refusal, Revocation, Revocations};
use auth::scope::{Resource, Scope};
use auth::token::{
    AccessEntry, Claims, CredentialKind, IssuedToken, KeySet, Revocable, SigningKey, TokenError,
};
use metadata::identity::{
    AuditEvent, IdentityStore, RefreshTokenRecord, SecretOwner, SigningKeyRecord, UserRecord,
};
use oci::RepositoryName;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::throttle::{Presented, Throttle};
use crate::{now, Error};

/// Tunables of authentication and the token service.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The `service` of the token spec, and the audience of issued tokens.
    pub service: String,
    pub issuer: String,
    pub token_lifetime: Duration,
    pub refresh_lifetime: Duration,
    /// Accept Basic credentials directly on `/v2`, not only at the token endpoint.
    pub basic_on_v2: bool,
    /// A configured token-signing key (PKCS#8 PEM, P-256). It signs from now on (unless it is
    /// retired); every key used before stays valid for verification until it is retired.
    /// Without one, a key is generated on first start.
    pub signing_key: Option<PrivatePem>,
    /// Where clients reach this registry (`https://host[:port]`, checked at load), for the
    /// token realm; `None`: the request's checked `Host`.
    pub external_url: Option<String>,
    /// How often revocations (and signing-key changes) recorded by any replica are read.
    pub revocation_refresh: Duration,
    /// Revocations read longer ago than this are read again before a token is honoured: the
    /// most a revocation elsewhere can take to stop a token here.
    pub revocation_max_age: Duration,
}

/// A private key in PEM form; its `Debug` never shows it.
#[derive(Clone)]
pub struct PrivatePem(pub String);

impl std::fmt::Debug for PrivatePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivatePem(<redacted>)")
    }
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            service: "bulwark".into(),
            issuer: "bulwark".into(),
            token_lifetime: Duration::from_secs(300),
            refresh_lifetime: Duration::from_secs(30 * 86_400),
            basic_on_v2: true,
            signing_key: None,
            external_url: None,
            revocation_refresh: Duration::from_secs(2),
            revocation_max_age: Duration::from_secs(5),
        }
    }
}

/// Why authentication failed. The text is safe to show: it never says whether an account exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("too many failed logins; retry in {retry_after} seconds")]
    Throttled { retry_after: u64 },
    #[error("invalid token: {0}")]
    BadToken(TokenError),
    /// The credentials could not be checked because the store is down; the cause is for the
    /// log. Never a failed login: it neither throttles nor is audited as one.
    #[error("the registry's storage is temporarily unavailable; retry later")]
    Unavailable(String),
}

impl AuthError {
    /// A store failure while checking credentials: an outage says so, so clients retry; any
    /// other failure is logged and refuses, like wrong credentials.
    pub(crate) fn from_backend(err: Error) -> AuthError {
        match err {
            Error::Unavailable(cause) => AuthError::Unavailable(cause),
            other => {
                tracing::error!("authentication backend failed: {other}");
                AuthError::BadCredentials
            }
        }
    }
}

/// A robot's grants, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredGrant {
    pub pattern: String,
    pub actions: Vec<String>,
}

pub fn grants_from_json(text: &str) -> Vec<Grant> {
    let stored: Vec<StoredGrant> = serde_json::from_str(text).unwrap_or_default();
    stored
        .into_iter()
        .map(|grant| Grant {
            pattern: grant.pattern,
            actions: grant
                .actions
                .iter()
                .filter_map(|a| Action::parse(a))
                .collect(),
        })
        .collect()
}

pub fn user_principal(user: &UserRecord) -> Principal {
    Principal::User {
        name: user.name.clone(),
        admin: user.admin,
        disabled: user.disabled,
    }
}

pub fn robot_principal(robot: &metadata::identity::RobotRecord) -> Principal {
    Principal::Robot {
        name: robot.name.clone(),
        project: robot.project.clone(),
        grants: grants_from_json(&robot.grants),
        expires_at: robot.expires_at,
        revoked: robot.revoked,
    }
}

/// The credential a caller proved who they are with: what a refresh token obtained with it
/// is bound to, and re-checked against whenever it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The account's password; a fingerprint of the stored hash it was checked against.
    Password { fingerprint: String },
    /// A personal access token, by id.
    AccessToken { id: String },
    /// A robot's secret; a fingerprint of its stored hash, so a rotated secret or a robot
    /// re-created under the same name is another credential.
    RobotSecret { fingerprint: String },
}

impl Credential {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Password { .. } => CredentialKind::Password,
            Credential::AccessToken { .. } => CredentialKind::Token,
            Credential::RobotSecret { .. } => CredentialKind::Robot,
        }
    }

    /// The refresh-token binding: `password:<fingerprint>`, `token:<id>`, `robot:<fingerprint>`.
    pub fn binding(&self) -> String {
        let (kind, value) = match self {
            Credential::Password { fingerprint } | Credential::RobotSecret { fingerprint } => {
                (self.kind(), fingerprint)
            }
            Credential::AccessToken { id } => (self.kind(), id),
        };
        format!("{}:{value}", kind.as_str())
    }

    /// A binding read back from a refresh token; `None` for any other shape (including the
    /// bare fingerprints of refresh tokens issued before bindings named their kind).
    pub fn from_binding(binding: &str) -> Option<Credential> {
        let (kind, value) = binding.split_once(':')?;
        let hex = value.len() == FINGERPRINT_HEX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let id = !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_alphanumeric());
        match CredentialKind::parse(kind)? {
            CredentialKind::Password if hex => Some(Credential::Password {
                fingerprint: value.to_owned(),
            }),
            CredentialKind::Token if id => Some(Credential::AccessToken {
                id: value.to_owned(),
            }),
            CredentialKind::Robot if hex => Some(Credential::RobotSecret {
                fingerprint: value.to_owned(),
            }),
            _ => None,
        }
    }
}

/// What checking a login's credentials found.
enum Checked {
    Valid(Authenticated),
    Invalid,
    /// Failures counted while it waited locked the attempt's keys: held for this long.
    Held(u64),
}

/// A principal, and the credential it proved itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    pub credential: Credential,
    /// The id of the refresh token it was exchanged for, if any: revoking that refresh token
    /// ends the tokens issued here too.
    pub refresh_token: Option<String>,
}

impl Authenticated {
    fn new(principal: Principal, credential: Credential) -> Authenticated {
        Authenticated {
            principal,
            credential,
            refresh_token: None,
        }
    }
}

/// Hex digits of a stored hash's fingerprint (96 bits): enough to tell a changed hash, while a
/// refresh token, which anyone holding it can read, shows nothing usable of the hash.
const FINGERPRINT_HEX_LEN: usize = 24;

fn fingerprint(stored_hash: &str) -> String {
    let digest = Sha256::digest(stored_hash.as_bytes());
    oci::digest::to_hex(&digest[..FINGERPRINT_HEX_LEN / 2])
}

const VERIFIED_CACHE_SECS: i64 = 60;
const VERIFIED_CACHE_MAX: usize = 10_000;

/// A token signed by a key this replica does not know reads the store again (a key another
/// replica just added), but not more often than this, so unknown `kid`s cannot make every
/// request a read.
const UNKNOWN_KEY_REREAD: Duration = Duration::from_millis(250);

/// What verifies tokens, kept current with the store: the key set and the revocation epochs.
/// Shared with the task that re-reads them, which ends when the `Access` is dropped.
struct Verifier {
    store: Arc<dyn IdentityStore>,
    keys: RwLock<Arc<KeySet>>,
    revocations: RwLock<Revocations>,
    /// One read of the store at a time; who waited finds it done.
    reading: tokio::sync::Mutex<Option<Instant>>,
    /// The configured signing key's id: it signs while it is not retired.
    configured: Option<String>,
    issuer: String,
    service: String,
}

/// The key set of the keys in use (not retired) among `records`: the configured key, if in
/// use, else the newest signs. `None` when no key is in use.
fn key_set(
    records: &[SigningKeyRecord],
    configured: Option<&str>,
    issuer: &str,
    service: &str,
) -> Result<Option<KeySet>, Error> {
    let mut active: Vec<&SigningKeyRecord> = records
        .iter()
        .filter(|record| record.retired_at.is_none())
        .collect();
    if active.is_empty() {
        return Ok(None);
    }
    // Newest first; the configured key, if in use, in front.
    active.sort_by_key(|record| std::cmp::Reverse((record.created_at, record.kid.clone())));
    if let Some(position) = active
        .iter()
        .position(|record| Some(record.kid.as_str()) == configured)
    {
        let chosen = active.remove(position);
        active.insert(0, chosen);
    }
    let keys = active
        .iter()
        .map(|record| {
            SigningKey::from_pem(&record.pem)
                .map_err(|err| Error::Internal(format!("signing key {}: {err}", record.kid)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    KeySet::new(keys, issuer, service)
        .map(Some)
        .map_err(|err| Error::Internal(err.to_string()))
}

impl Verifier {
    fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn seen(&self) -> i64 {
        self.revocations
            .read()
            .map_or(0, |revocations| revocations.seen())
    }

    /// Verifies a token with the keys and revocations as known now, without reading.
    fn check(&self, token: &str, allow_expired: bool) -> Result<Claims, TokenError> {
        let keys = self.keys();
        let claims = if allow_expired {
            keys.verify_allowing_expiry(token, now())?
        } else {
            keys.verify(token, false, now())?
        };
        let decided = match self.revocations.read() {
            Ok(revocations) => revocations.check(&claims, Instant::now()),
            Err(_) => Err(Refusal::Unconfirmed),
        };
        match decided {
            Ok(()) => Ok(claims),
            Err(Refusal::Revoked) => Err(TokenError::Revoked),
            Err(Refusal::Unconfirmed) => Err(TokenError::Unconfirmed),
        }
    }

    /// Reads the revocations above those seen, and the keys when one of them names a key.
    /// With `unless_since`, a read that started after it is taken as good enough.
    async fn read(&self, unless_since: Option<Instant>) -> Result<(), Error> {
        let mut last = self.reading.lock().await;
        if let (Some(since), Some(last)) = (unless_since, *last) {
            if last >= since {
                return Ok(());
            }
        }
        let started = Instant::now();
        let changes = self.store.revocations_since(self.seen()).await?;
        if changes
            .iter()
            .any(|change| change.subject.starts_with("key:"))
        {
            let records = self.store.signing_keys().await?;
            let keys = key_set(
                &records,
                self.configured.as_deref(),
                &self.issuer,
                &self.service,
            )?
            .ok_or_else(|| Error::Internal("every signing key is retired".into()))?;
            tracing::info!(
                kid = keys.signing_kid(),
                "signing keys changed; {} signs",
                keys.signing_kid()
            );
            if let Ok(mut current) = self.keys.write() {
                *current = Arc::new(keys);
            }
        }
        let changes: Vec<Revocation> = changes
            .into_iter()
            .map(|change| Revocation {
                subject: change.subject,
                epoch: change.epoch,
            })
            .collect();
        if let Ok(mut revocations) = self.revocations.write() {
            revocations.apply(&changes, started);
        }
        *last = Some(started);
        Ok(())
    }
}

/// Re-reads revocations every `every` while the verifier lives.
async fn follow_revocations(verifier: Weak<Verifier>, every: Duration) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let Some(verifier) = verifier.upgrade() else {
            return;
        };
        match verifier.read(None).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("revocations are read again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(
                    "could not read revocations; bearer tokens wait for the store: {err}"
                );
            }
            Err(_) => {}
        }
    }
}

pub struct Access {
    pub(crate) store: Arc<dyn IdentityStore>,
    verifier: Arc<Verifier>,
    settings: AccessSettings,
    pub(crate) password_pool: Semaphore,
    verified: Mutex<HashMap<[u8; 32], i64>>,
    throttle: Mutex<Throttle>,
    /// True once the accounts credentials are checked against exist.
    accounts_ready: tokio::sync::watch::Receiver<bool>,
}

/// A token answer of the token service.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access: IssuedToken,
    pub refresh: Option<IssuedToken>,
    pub granted: Vec<AccessEntry>,
}

impl Access {
    /// Loads (or, on the very first start, creates) the token-signing keys, reads the
    /// revocations, and starts re-reading them every `revocation_refresh`.
    pub async fn open(
        store: Arc<dyn IdentityStore>,
        settings: AccessSettings,
    ) -> Result<Access, Error> {
        let configured = match &settings.signing_key {
            Some(pem) => {
                let key = SigningKey::from_pem(&pem.0)
                    .map_err(|err| Error::Invalid(format!("the configured signing key: {err}")))?;
                store
                    .add_signing_key(&SigningKeyRecord {
                        kid: key.kid().to_owned(),
                        pem: pem.0.clone(),
                        created_at: now(),
                        retired_at: None,
                    })
                    .await?;
                Some(key.kid().to_owned())
            }
            None => None,
        };
        // Revocations first: the keys read after them are at least as new.
        let started = Instant::now();
        let changes = store.revocations_since(0).await?;
        let mut records = store.signing_keys().await?;
        if records.iter().all(|record| record.retired_at.is_some()) {
            let (key, pem) =
                SigningKey::generate().map_err(|err| Error::Internal(err.to_string()))?;
            let record = SigningKeyRecord {
                kid: key.kid().to_owned(),
                pem,
                created_at: now(),
                retired_at: None,
            };
            if records.is_empty() {
                store.add_first_signing_key(&record).await?;
            } else {
                store.add_signing_key(&record).await?;
            }
            records = store.signing_keys().await?;
        }
        if let Some(kid) = &configured {
            if records
                .iter()
                .any(|record| &record.kid == kid && record.retired_at.is_some())
            {
                tracing::warn!(kid = %kid, "the configured signing key {kid} is retired; the newest key in use signs");
            }
        }
        let keys = key_set(
            &records,
            configured.as_deref(),
            &settings.issuer,
            &settings.service,
        )?
        .ok_or_else(|| Error::Internal("every signing key is retired".into()))?;
        let mut revocations = Revocations::new(settings.revocation_max_age);
        let changes: Vec<Revocation> = changes
            .into_iter()
            .map(|change| Revocation {
                subject: change.subject,
                epoch: change.epoch,
            })
            .collect();
        revocations.apply(&changes, started);
        let verifier = Arc::new(Verifier {
            store: store.clone(),
            keys: RwLock::new(Arc::new(keys)),
            revocations: RwLock::new(revocations),
            reading: tokio::sync::Mutex::new(Some(started)),
            configured,
            issuer: settings.issuer.clone(),
            service: settings.service.clone(),
        });
        tokio::spawn(follow_revocations(
            Arc::downgrade(&verifier),
            settings.revocation_refresh,
        ));
        Ok(Access {
            store,
            verifier,
            settings,
            password_pool: Semaphore::new(2),
            verified: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            accounts_ready: tokio::sync::watch::channel(true).1,
        })
    }

    /// Reads the revocations (and changed keys) now, after a change made here: this
    /// replica need not wait for its next read. A failure is logged; the next read catches up.
    pub(crate) async fn follow_change(&self) {
        if let Err(err) = self.verifier.read(None).await {
            tracing::warn!("could not read revocations after a change: {err}");
        }
    }

    /// The id of the key that signs here.
    pub fn signing_kid(&self) -> String {
        self.verifier.keys().signing_kid().to_owned()
    }

    /// Makes credential checks wait until `ready` turns true (the first start's admin account
    /// is being created); should its sender go away first, they answer `Unavailable`.
    pub fn hold_logins_until(&mut self, ready: tokio::sync::watch::Receiver<bool>) {
        self.accounts_ready = ready;
    }

    /// Waits until the accounts exist; false if they never will (their creation failed).
    async fn accounts_exist(&self) -> bool {
        if *self.accounts_ready.borrow() {
            return true;
        }
        let mut ready = self.accounts_ready.clone();
        let outcome = ready.wait_for(|ready| *ready).await.is_ok();
        outcome
    }

    pub fn settings(&self) -> &AccessSettings {
        &self.settings
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.verifier.keys().jwks()
    }

    /// Records an audit event; a failure to record is logged, never fatal to the request.
    pub async fn audit(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        result: &str,
        reason: Option<String>,
        client: Option<IpAddr>,
    ) {
        self.audit_as(&principal.label(), action, target, result, reason, client)
            .await;
    }

    /// `audit` for a caller known only by its label (a token subject).
    pub async fn audit_as(
        &self,
        principal: &str,
        action: &str,
        target: &str,
        result: &str,
        reason: Option<String>,
        client: Option<IpAddr>,
    ) {
        let event = AuditEvent {
            time: now(),
            principal: principal.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
            reason,
            client: client.map(|ip| ip.to_string()),
        };
        if let Err(err) = self.store.record_audit(&event).await {
            tracing::warn!("could not record an audit event: {err}");
        }
    }

    /// Checks a username with a password, personal access token or robot secret; the
    /// principal, with the credential that proved it.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        if !self.accounts_exist().await {
            return Err(AuthError::Unavailable(
                "the admin account could not be created".into(),
            ));
        }
        let time = now();
        let presented = if auth::secret::looks_like_secret(secret) {
            Presented::Secret
        } else {
            Presented::Password
        };
        let (keys, wait) = match self.throttle.lock() {
            Ok(throttle) => {
                let keys = throttle.keys(username, presented, client, time);
                let wait = throttle.retry_after(&keys, time);
                (keys, wait)
            }
            Err(_) => (Vec::new(), None),
        };
        if let Some(retry_after) = wait {
            return Err(AuthError::Throttled { retry_after });
        }
        let outcome = self.check_credentials(username, secret, &keys, time).await;
        match outcome {
            Ok(Checked::Held(retry_after)) => Err(AuthError::Throttled { retry_after }),
            Ok(Checked::Valid(authenticated)) => {
                if let Ok(mut throttle) = self.throttle.lock() {
                    throttle.succeed(username, presented, client, time);
                }
                Ok(authenticated)
            }
            Ok(Checked::Invalid) => {
                if let Ok(mut throttle) = self.throttle.lock() {
                    throttle.fail(&keys, time);
                }
                tracing::info!(username = %username, "failed login for {username}");
                // Labelled as the principal the name claims, so filtering the audit log by a
                // robot finds the failed logins in its name too.
                let who = if username.starts_with(crate::admin::ROBOT_NAME_PREFIX) {
                    format!("robot:{username}")
                } else {
                    format!("user:{username}")
                };
                self.audit_as(
                    &who,
                    "login",
                    username,
                    "failed",
                    Some("invalid credentials".into()),
                    client,
                )
                .await;
                Err(AuthError::BadCredentials)
            }
            Err(err) => Err(AuthError::from_backend(err)),
        }
    }

    /// `keys` are the throttle keys of the attempt: a password waits for a verification slot,
    /// and is held there if failures counted meanwhile locked it (so a burst of parallel
    /// guesses cannot all pass the check made before any of them failed).
    async fn check_credentials(
        &self,
        username: &str,
        secret: &str,
        keys: &[String],
        time: i64,
    ) -> Result<Checked, Error> {
        if auth::secret::looks_like_secret(secret) {
            let hash = auth::secret::hash(secret);
            return Ok(match self.store.secret_owner(&hash, time).await? {
                Some(SecretOwner::Robot(robot))
                    if robot.name == username && !robot.revoked && robot.expires_at > time =>
                {
                    Checked::Valid(Authenticated::new(
                        robot_principal(&robot),
                        Credential::RobotSecret {
                            fingerprint: fingerprint(&hash),
                        },
                    ))
                }
                Some(SecretOwner::AccessToken { token, user })
                    if user.name == username
                        && !user.disabled
                        && !token.revoked
                        && token.expires_at.is_none_or(|expiry| expiry > time) =>
                {
                    Checked::Valid(Authenticated::new(
                        user_principal(&user),
                        Credential::AccessToken { id: token.id },
                    ))
                }
                _ => Checked::Invalid,
            });
        }
        let user = self.store.user(username).await?;
        let stored = user.as_ref().map_or_else(
            || auth::password::decoy_hash().to_owned(),
            |u| u.password_hash.clone(),
        );
        let cache_key: [u8; 32] = Sha256::new()
            .chain_update(username.as_bytes())
            .chain_update([0])
            .chain_update(secret.as_bytes())
            .chain_update([0])
            .chain_update(stored.as_bytes())
            .finalize()
            .into();
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(&cache_key).copied())
            .is_some_and(|expiry| expiry > time);
        let valid = if cached {
            true
        } else {
            let permit = self
                .password_pool
                .acquire()
                .await
                .map_err(|err| Error::Internal(err.to_string()))?;
            let held = self
                .throttle
                .lock()
                .ok()
                .and_then(|throttle| throttle.retry_after(keys, now()));
            if let Some(retry_after) = held {
                return Ok(Checked::Held(retry_after));
            }
            let secret = secret.to_owned();
            let stored_hash = stored.clone();
            let valid =
                tokio::task::spawn_blocking(move || auth::password::verify(&secret, &stored_hash))
                    .await
                    .map_err(|err| Error::Internal(err.to_string()))?;
            drop(permit);
            if valid {
                if let Ok(mut cache) = self.verified.lock() {
                    if cache.len() >= VERIFIED_CACHE_MAX {
                        cache.retain(|_, expiry| *expiry > time);
                        if cache.len() >= VERIFIED_CACHE_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(cache_key, time + VERIFIED_CACHE_SECS);
                }
            }
            valid
        };
        // A disabled account fails like a wrong password, so logins do not reveal it.
        Ok(match user {
            Some(user) if valid && !user.disabled => Checked::Valid(Authenticated::new(
                user_principal(&user),
                Credential::Password {
                    fingerprint: fingerprint(&user.password_hash),
                },
            )),
            _ => Checked::Invalid,
        })
    }

    /// The principal a token subject (`user:NAME`, `robot:NAME`) names, as it stands now.
    pub async fn principal(&self, subject: &str) -> Result<Option<Principal>, Error> {
        if let Some(name) = subject.strip_prefix("user:") {
            return Ok(self.store.user(name).await?.as_ref().map(user_principal));
        }
        if let Some(name) = subject.strip_prefix("robot:") {
            return Ok(self.store.robot(name).await?.as_ref().map(robot_principal));
        }
        Ok((subject == "anonymous").then_some(Principal::Anonymous))
    }

    /// Decides with the repository's project policy, loaded in one read.
    pub async fn decide(
        &self,
        principal: &Principal,
        repository: &RepositoryName,
        action: Action,
    ) -> Result<Decision, Error> {
        let policy = self.project_policy(repository.project()).await?;
        Ok(auth::authorize(
            policy.as_ref(),
            principal,
            repository,
            action,
            now(),
        ))
    }

    /// The repositories of `names` that `principal` may pull, reading each project's policy
    /// once (a catalog page holds many repositories of few projects).
    pub async fn pullable(
        &self,
        principal: &Principal,
        names: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        let mut policies: HashMap<String, Option<ProjectPolicy>> = HashMap::new();
        let time = now();
        let mut visible = Vec::with_capacity(names.len());
        for text in names {
            let Ok(name) = text.parse::<RepositoryName>() else {
                continue;
            };
            let project = name.project().to_owned();
            if !policies.contains_key(&project) {
                let policy = self.project_policy(&project).await?;
                policies.insert(project.clone(), policy);
            }
            let policy = policies.get(&project).and_then(Option::as_ref);
            if auth::authorize(policy, principal, &name, Action::Pull, time).allowed {
                visible.push(text);
            }
        }
        Ok(visible)
    }

    pub async fn project_policy(&self, project: &str) -> Result<Option<ProjectPolicy>, Error> {
        let Some((record, members)) = self.store.project_policy(project).await? else {
            return Ok(None);
        };
        Ok(Some(ProjectPolicy {
            name: record.name,
            public: record.public,
            members: members
                .into_iter()
                .filter_map(|m| Role::parse(&m.role).map(|role| (m.user, role)))
                .collect(),
        }))
    }

    /// Verifies a registry token, and that it was not revoked; with `allow_expired`, an
    /// expired but otherwise valid token passes (for upload sessions that outlive their
    /// token). No read of the store, except when the revocations are older than
    /// `revocation_max_age` (then `Unconfirmed` if the store cannot answer) or the token's key
    /// is unknown here (a key another replica just added).
    pub async fn verify(&self, token: &str, allow_expired: bool) -> Result<Claims, TokenError> {
        let requested = Instant::now();
        match self.verifier.check(token, allow_expired) {
            Err(TokenError::Unconfirmed) => {
                if let Err(err) = self.verifier.read(Some(requested)).await {
                    tracing::warn!("could not read revocations to confirm a token: {err}");
                    return Err(TokenError::Unconfirmed);
                }
            }
            Err(TokenError::UnknownKey) => {
                let reread_after = requested.checked_sub(UNKNOWN_KEY_REREAD);
                if let Err(err) = self.verifier.read(reread_after).await {
                    tracing::warn!("could not read signing keys: {err}");
                    return Err(TokenError::UnknownKey);
                }
            }
            decided => return decided,
        }
        self.verifier.check(token, allow_expired)
    }

    /// Whether a verified token's lifetime is over (only upload sessions accept such a token,
    /// and only once its principal is re-checked).
    pub fn expired(&self, claims: &Claims) -> bool {
        claims.exp <= now()
    }

    /// Issues a token with the intersection of what `scopes` ask and what `principal` may do.
    /// `credential` is how the principal proved itself (`None` for anonymous): the access
    /// token names its kind, and a refresh token (with `offline`) is bound to it.
    pub async fn issue(
        &self,
        principal: &Principal,
        credential: Option<&Credential>,
        scopes: &[Scope],
        offline: bool,
    ) -> Result<TokenGrant, Error> {
        self.issue_exchanged(principal, credential, None, scopes, offline)
            .await
    }

    /// `issue` to who authenticated (`None`: anonymous), which may be the holder of a refresh
    /// token: revoking it ends the access token, and a new refresh token keeps its id.
    pub async fn issue_to(
        &self,
        who: Option<&Authenticated>,
        scopes: &[Scope],
        offline: bool,
    ) -> Result<TokenGrant, Error> {
        match who {
            Some(who) => {
                self.issue_exchanged(
                    &who.principal,
                    Some(&who.credential),
                    who.refresh_token.as_deref(),
                    scopes,
                    offline,
                )
                .await
            }
            None => {
                self.issue_exchanged(&Principal::Anonymous, None, None, scopes, offline)
                    .await
            }
        }
    }

    async fn issue_exchanged(
        &self,
        principal: &Principal,
        credential: Option<&Credential>,
        refresh_token: Option<&str>,
        scopes: &[Scope],
        offline: bool,
    ) -> Result<TokenGrant, Error> {
        let mut granted: Vec<AccessEntry> = Vec::new();
        for scope in scopes {
            match &scope.resource {
                Resource::Repository(name) => {
                    // One policy read per scope, however many actions it asks for.
                    let policy = self.project_policy(name.project()).await?;
                    let time = now();
                    let actions: Vec<String> = scope
                        .actions
                        .iter()
                        .filter(|action| {
                            auth::authorize(policy.as_ref(), principal, name, **action, time)
                                .allowed
                        })
                        .map(|action| action.as_str().to_owned())
                        .collect();
                    match granted
                        .iter_mut()
                        .find(|entry| entry.kind == "repository" && entry.name == name.as_str())
                    {
                        Some(entry) => {
                            for action in actions {
                                if !entry.actions.contains(&action) {
                                    entry.actions.push(action);
                                }
                            }
                        }
                        None => granted.push(AccessEntry {
                            kind: "repository".into(),
                            name: name.to_string(),
                            actions,
                        }),
                    }
                }
                Resource::Catalog => {
                    if !matches!(principal, Principal::Anonymous) && !scope.actions.is_empty() {
                        granted.push(AccessEntry {
                            kind: "registry".into(),
                            name: "catalog".into(),
                            actions: vec!["*".into()],
                        });
                    }
                }
            }
        }
        // The epoch read after the principal was checked: every revocation this token must
        // survive is at or below it. A change this replica has not read yet is read first,
        // so the token is signed by the key in use now.
        let epoch = self.store.revocation_epoch().await?;
        if epoch > self.verifier.seen() {
            self.verifier.read(None).await?;
        }
        let keys = self.verifier.keys();
        let mut credentials = Vec::new();
        if let Some(Credential::AccessToken { id }) = credential {
            credentials.push(format!("token:{id}"));
        }
        if let Some(id) = refresh_token {
            credentials.push(format!("refresh:{id}"));
        }
        let time = now();
        let subject = principal.label();
        let lifetime = i64::try_from(self.settings.token_lifetime.as_secs()).unwrap_or(300);
        let access = keys
            .issue_revocable(
                &subject,
                granted.clone(),
                credential.map(Credential::kind),
                false,
                Some(Revocable { epoch, credentials }),
                lifetime,
                time,
                uuid::Uuid::new_v4().simple().to_string(),
            )
            .map_err(|err| Error::Internal(err.to_string()))?;
        let bound = credential.filter(|_| offline && !matches!(principal, Principal::Anonymous));
        let refresh = if let Some(credential) = bound {
            let lifetime =
                i64::try_from(self.settings.refresh_lifetime.as_secs()).unwrap_or(86_400);
            // Exchanging a refresh token hands out the same one (by id) with a new lifetime,
            // so a login is one entry in its owner's list, however often it was refreshed.
            let id = match refresh_token {
                Some(id) => {
                    self.store
                        .use_refresh_token(id, time, Some(time + lifetime))
                        .await?;
                    id.to_owned()
                }
                None => {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    self.store
                        .create_refresh_token(&RefreshTokenRecord {
                            id: id.clone(),
                            subject: subject.clone(),
                            credential: credential.kind().as_str().to_owned(),
                            created_at: time,
                            expires_at: time + lifetime,
                            last_used_at: None,
                            revoked: false,
                        })
                        .await?;
                    id
                }
            };
            Some(
                keys.issue_refresh(&subject, Some(credential.binding()), lifetime, time, id)
                    .map_err(|err| Error::Internal(err.to_string()))?,
            )
        } else {
            None
        };
        Ok(TokenGrant {
            access,
            refresh,
            granted,
        })
    }

    /// The principal a refresh token was issued to, re-checked as it stands now, with the
    /// credential the token is bound to (which a new refresh token carries forward).
    pub async fn refresh(&self, token: &str) -> Result<Authenticated, AuthError> {
        let claims = self
            .verifier
            .keys()
            .verify(token, true, now())
            .map_err(AuthError::BadToken)?;
        // Listed and revocable: one without a record, or of another subject, is refused.
        match self.store.use_refresh_token(&claims.jti, now(), None).await {
            Ok(Some(record)) if !record.revoked && record.subject == claims.sub => {}
            Ok(_) => return Err(AuthError::BadCredentials),
            Err(err) => return Err(AuthError::from_backend(err.into())),
        }
        // A binding of another shape (or none) is refused: such tokens predate bindings that
        // name their credential, and nothing could be re-checked for them.
        let credential = claims
            .binding
            .as_deref()
            .and_then(Credential::from_binding)
            .ok_or(AuthError::BadCredentials)?;
        match self.credential_holds(&claims.sub, &credential, now()).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadCredentials),
            Err(err) => return Err(AuthError::from_backend(err)),
        }
        let principal = match self.principal(&claims.sub).await {
            // A refresh token dies with its account: disabled users, revoked or expired robots.
            Ok(Some(Principal::User { disabled: true, .. })) => {
                return Err(AuthError::BadCredentials)
            }
            Ok(Some(Principal::Robot {
                revoked,
                expires_at,
                ..
            })) if revoked || expires_at <= now() => return Err(AuthError::BadCredentials),
            Ok(Some(principal)) => principal,
            Ok(None) => return Err(AuthError::BadCredentials),
            Err(err) => return Err(AuthError::from_backend(err)),
        };
        Ok(Authenticated {
            principal,
            credential,
            refresh_token: Some(claims.jti),
        })
    }

    /// Whether `credential` still proves `subject`: the same password, an access token of
    /// this user that is neither revoked nor expired, the robot's current secret.
    async fn credential_holds(
        &self,
        subject: &str,
        credential: &Credential,
        time: i64,
    ) -> Result<bool, Error> {
        let user = subject.strip_prefix("user:");
        let robot = subject.strip_prefix("robot:");
        Ok(match (credential, user, robot) {
            (Credential::Password { fingerprint: bound }, Some(name), _) => self
                .store
                .user(name)
                .await?
                .is_some_and(|user| fingerprint(&user.password_hash) == *bound),
            (Credential::AccessToken { id }, Some(name), _) => self
                .store
                .list_access_tokens(name)
                .await?
                .iter()
                .any(|token| {
                    token.id == *id
                        && !token.revoked
                        && token.expires_at.is_none_or(|expiry| expiry > time)
                }),
            (Credential::RobotSecret { fingerprint: bound }, _, Some(name)) => self
                .store
                .robot_secret_hash(name)
                .await?
                .is_some_and(|hash| fingerprint(&hash) == *bound),
            _ => false,
        })
    }
}

/// Whether a token's access list covers `action` on `repository`.
pub fn token_allows(claims: &Claims, repository: &RepositoryName, action: Action) -> bool {
    claims.access.iter().any(|entry| {
        entry.kind == "repository"
            && entry.name == repository.as_str()
            && entry.actions.iter().any(|a| a == action.as_str())
    })
}

/// Whether a token grants the catalog.
pub fn token_allows_catalog(claims: &Claims) -> bool {
    claims
        .access
        .iter()
        .any(|entry| entry.kind == "registry" && entry.name == "catalog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_name_their_credential_and_unknown_shapes_are_refused() {
        let credentials = [
            Credential::Password {
                fingerprint: fingerprint("$argon2id$v=19$..."),
            },
            Credential::AccessToken {
                id: "0123456789abcdef0123456789abcdef".into(),
            },
            Credential::RobotSecret {
                fingerprint: fingerprint("a-secret-hash"),
            },
        ];
        for credential in credentials {
            let binding = credential.binding();
            assert!(binding.starts_with(&format!("{}:", credential.kind().as_str())));
            assert_eq!(Credential::from_binding(&binding), Some(credential));
        }
        for unknown in [
            "",
            // A refresh token of the previous release: a bare password fingerprint.
            "0123456789abcdef01234567",
            "password:",
            "password:0123456789ABCDEF01234567",
            "password:0123456789abcdef",
            "robot:xyz",
            "token:",
            "token:not/an-id",
            "session:0123456789abcdef01234567",
        ] {
            assert_eq!(Credential::from_binding(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn stored_grants_round_trip_and_drop_unknown_actions() {
        let grants = grants_from_json(r#"[{"pattern":"team/*","actions":["pull","fly","push"]}]"#);
        assert_eq!(grants.len(), 1);
        assert_eq!(
            grants[0]
                .actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>(),
            vec!["pull", "push"]
        );
        assert!(grants_from_json("not json").is_empty());
    }
}
