//! Registry tokens: ES256 JWTs in the shape of Docker's token authentication spec.
//!
//! An access token carries exactly the access granted (`access: [{type, name, actions}]`), an
//! audience (the service name), an issuer, and a short lifetime. A refresh token (asked for
//! with `offline_token=true`) carries no access, only who it was issued to; the token service
//! re-checks that principal each time it is used.
//!
//! Keys are P-256 ECDSA. Each has a `kid`; the first key of a `KeySet` signs, every key
//! verifies, so rotating the signing key does not invalidate tokens already issued. Time is
//! passed in: expiry and not-before are checked against the caller's `now`.
//!
//! A `KeySet` remembers the access tokens whose signature, issuer and audience it verified
//! (`VerifiedTokens`, by SHA-256 of the token text, at most `VERIFIED_TOKENS_MAX`), so a client
//! sending the same token with every request pays for one ES256 verification. Invariants:
//! - What is remembered is what does not depend on time: the same text under the same keys
//!   verifies the same way. Expiry, not-before and the token's kind are checked against `now`
//!   on every use, cached or not, so the cache never extends a token's life.
//! - Only successes are remembered, and only by the key set that verified them: its keys are
//!   fixed when it is built (a rotation builds a new one), and a changed byte is another token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Clock skew tolerated between replicas for `nbf`, in seconds. Expiry is exact: a token's
/// `expires_in` is what the client was promised, and no more.
pub const LEEWAY: i64 = 30;

/// How many verified access tokens a key set remembers.
pub const VERIFIED_TOKENS_MAX: usize = 4096;
/// The longest token remembered. A token's claims are about as large as the token, and a
/// client may ask for a token covering thousands of scopes: longer ones are verified on every
/// use instead, so the cache holds at most 4096 × 4 KiB of claims (a token for a handful of
/// repositories is well under 1 KiB).
pub const VERIFIED_TOKEN_MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// On access tokens: the kind of credential they were obtained with, directly or through
    /// a refresh token that credential gave. Absent on anonymous tokens (and on tokens issued
    /// before the claim existed), which count as no credential at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<CredentialKind>,
    /// On refresh tokens: the credential they came from, with its kind
    /// (`password:<fingerprint of the password hash>`, `token:<access token id>`,
    /// `robot:<fingerprint of the secret hash>`), so changing the password, revoking the
    /// access token or rotating the robot's secret ends them. Its issuer interprets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// Set on refresh tokens, which grant nothing by themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh: bool,
    /// On access tokens: the revocation epoch the issuer read from the store when it signed
    /// the token (`revocation`). A revocation of the subject, or of one of `credentials`,
    /// recorded later has a higher epoch and ends the token. Absent (tokens of a release
    /// before revocation epochs): 0, so any revocation on record ends them.
    #[serde(default, rename = "rev", skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// On access tokens: what, besides the subject, revoking ends the token: `token:<id>` of
    /// the personal access token it was obtained with, `refresh:<id>` of the refresh token it
    /// was exchanged for.
    #[serde(default, rename = "via", skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
}

/// What makes an access token revocable before it expires (see `Claims::epoch`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocable {
    pub epoch: i64,
    pub credentials: Vec<String>,
}

/// What a caller proved who they are with: the account's password, one of its personal
/// access tokens, or a robot's secret. A token carries it (`Claims::cred`) so whoever honours
/// the token knows how much the caller proved: an access token is not the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Password,
    Token,
    Robot,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Token => "token",
            CredentialKind::Robot => "robot",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialKind> {
        match text {
            "password" => Some(CredentialKind::Password),
            "token" => Some(CredentialKind::Token),
            "robot" => Some(CredentialKind::Robot),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued for another service")]
    WrongAudience,
    #[error("token was issued by someone else")]
    WrongIssuer,
    #[error("a refresh token cannot be used for access, nor an access token for refresh")]
    WrongKind,
    #[error("token was revoked")]
    Revoked,
    /// Whether the token was revoked cannot be told: this replica could not read recent
    /// revocations from the store. Not the client's fault; it may retry.
    #[error("revocations could not be confirmed")]
    Unconfirmed,
    #[error("signing key is unusable: {0}")]
    Key(String),
}

/// One P-256 key pair, with its id.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    x: String,
    y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key; returns it with its PKCS#8 PEM for storage.
    pub fn generate() -> Result<(SigningKey, String), TokenError> {
        let pair = rcgen::KeyPair::generate().map_err(|err| TokenError::Key(err.to_string()))?;
        let pem = pair.serialize_pem();
        Ok((SigningKey::from_pem(&pem)?, pem))
    }

    /// Loads a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &str) -> Result<SigningKey, TokenError> {
        let key = |err: &dyn std::fmt::Display| TokenError::Key(err.to_string());
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|err| key(&err))?;
        if !pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(TokenError::Key(
                "only P-256 ECDSA keys can sign registry tokens".into(),
            ));
        }
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(TokenError::Key("unexpected public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..15]);
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|err| key(&err))?,
            decoding: DecodingKey::from_ec_components(&x, &y).map_err(|err| key(&err))?,
            x,
            y,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, for the JWKS endpoint.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": self.kid, "x": self.x, "y": self.y,
        })
    }
}

/// Keys that verify tokens; the first one signs.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<SigningKey>,
    issuer: String,
    audience: String,
    verified: VerifiedTokens,
}

/// Claims of access tokens whose signature, issuer and audience were verified, by SHA-256 of
/// the token, until they expire. Bounded in count and in size (tokens longer than
/// `VERIFIED_TOKEN_MAX_LEN` are not kept): when full, expired entries go first, then the entry
/// that expires soonest.
pub struct VerifiedTokens {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Claims>>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key a token is remembered under: its hash, so an entry's size does not depend on
    /// what a client sends, and the token text itself is not kept.
    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The remembered claims of `token`, if it was verified before. The caller still checks
    /// time and kind.
    fn get(&self, token: &str) -> Option<Claims> {
        let key = VerifiedTokens::key(token);
        self.entries.lock().ok()?.get(&key).cloned()
    }

    /// Remembers a verified token that is still useful at `now`.
    fn insert(&self, token: &str, claims: &Claims, now: i64) {
        if self.capacity == 0 || claims.exp <= now || token.len() > VERIFIED_TOKEN_MAX_LEN {
            return;
        }
        let key = VerifiedTokens::key(token);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, remembered| remembered.exp > now);
            while entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, remembered)| remembered.exp)
                    .map(|(key, _)| *key);
                match soonest {
                    Some(soonest) => entries.remove(&soonest),
                    None => break,
                };
            }
        }
        entries.insert(key, claims.clone());
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |entries| entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A signed token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: i64,
    pub expires_in: i64,
}

impl KeySet {
    /// `keys` must not be empty; the first signs.
    pub fn new(
        keys: Vec<SigningKey>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<KeySet, TokenError> {
        if keys.is_empty() {
            return Err(TokenError::Key("a key set needs at least one key".into()));
        }
        Ok(KeySet {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            verified: VerifiedTokens::new(VERIFIED_TOKENS_MAX),
        })
    }

    /// The same key set remembering at most `capacity` verified tokens (0: none).
    pub fn with_verified_capacity(mut self, capacity: usize) -> KeySet {
        self.verified = VerifiedTokens::new(capacity);
        self
    }

    /// The access tokens this key set remembers as verified.
    pub fn verified(&self) -> &VerifiedTokens {
        &self.verified
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    /// The id of the key that signs.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Signs an access token (or, with `refresh`, a refresh token) for `subject`, who proved
    /// who they are with `cred` (`None`: anonymous), under no revocation epoch.
    #[expect(
        clippy::too_many_arguments,
        reason = "every claim of a token is one argument; a struct would restate Claims"
    )]
    pub fn issue(
        &self,
        subject: &str,
        access: Vec<AccessEntry>,
        cred: Option<CredentialKind>,
        refresh: bool,
        lifetime_secs: i64,
        now: i64,
        jti: String,
    ) -> Result<IssuedToken, TokenError> {
        self.issue_revocable(
            subject,
            access,
            cred,
            refresh,
            None,
            lifetime_secs,
            now,
            jti,
        )
    }

    /// `issue`, with what ends the token before it expires (`None`: epoch 0).
    #[expect(
        clippy::too_many_arguments,
        reason = "every claim of a token is one argument; a struct would restate Claims"
    )]
    pub fn issue_revocable(
        &self,
        subject: &str,
        access: Vec<AccessEntry>,
        cred: Option<CredentialKind>,
        refresh: bool,
        revocable: Option<Revocable>,
        lifetime_secs: i64,
        now: i64,
        jti: String,
    ) -> Result<IssuedToken, TokenError> {
        let signer = &self.keys[0];
        let revocable = revocable.unwrap_or_default();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: now + lifetime_secs,
            nbf: now - LEEWAY,
            iat: now,
            jti,
            access,
            cred,
            binding: None,
            refresh,
            epoch: Some(revocable.epoch),
            credentials: revocable.credentials,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signer.encoding)
            .map_err(|err| TokenError::Key(err.to_string()))?;
        Ok(IssuedToken {
            token,
            issued_at: now,
            expires_in: lifetime_secs,
        })
    }

    /// Signs a refresh token for `subject`, bound to `binding` (see `Claims::binding`).
    pub fn issue_refresh(
        &self,
        subject: &str,
        binding: Option<String>,
        lifetime_secs: i64,
        now: i64,
        jti: String,
    ) -> Result<IssuedToken, TokenError> {
        let signer = &self.keys[0];
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: now + lifetime_secs,
            nbf: now - LEEWAY,
            iat: now,
            jti,
            access: Vec::new(),
            cred: None,
            binding,
            refresh: true,
            epoch: None,
            credentials: Vec::new(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signer.encoding)
            .map_err(|err| TokenError::Key(err.to_string()))?;
        Ok(IssuedToken {
            token,
            issued_at: now,
            expires_in: lifetime_secs,
        })
    }

    /// Verifies signature, issuer, audience, time and kind.
    pub fn verify(&self, token: &str, refresh: bool, now: i64) -> Result<Claims, TokenError> {
        self.check(token, refresh, now, true)
    }

    /// Like `verify`, but an expired access token still passes: an upload session authorized
    /// by it stays usable by the same principal after the token's lifetime.
    pub fn verify_allowing_expiry(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        self.check(token, false, now, false)
    }

    fn check(
        &self,
        token: &str,
        refresh: bool,
        now: i64,
        check_expiry: bool,
    ) -> Result<Claims, TokenError> {
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signature(token)?;
                if !claims.refresh {
                    self.verified.insert(token, &claims, now);
                }
                claims
            }
        };
        if check_expiry && claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY {
            return Err(TokenError::NotYetValid);
        }
        if claims.refresh != refresh {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }

    /// What does not depend on time: the key, the signature, the issuer and the audience.
    fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::BadSignature);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::ES256);
        // Time and claims are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }
}

/// Unix seconds as RFC 3339 in UTC (`2026-11-28T12:50:45Z`), the token spec's `issued_at`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_870_245), "2026-11-28T12:50:45Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    const NOW: i64 = 1_700_000_000;

    fn keyset(keys: Vec<SigningKey>) -> KeySet {
        KeySet::new(keys, "bulwark", "registry.test").expect("keys")
    }

    fn pull(name: &str) -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    /// A five-minute token of `user:alice` pulling `team/app`, issued at `NOW`.
    fn alice_pull_token(keys: &KeySet) -> String {
        keys.issue(
            "user:alice",
            pull("team/app"),
            None,
            false,
            300,
            NOW,
            "j".into(),
        )
        .expect("issue")
        .token
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_access() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let issued = keys
            .issue(
                "user:alice",
                pull("team/app"),
                None,
                false,
                300,
                NOW,
                "j1".into(),
            )
            .expect("issue");
        assert_eq!(issued.expires_in, 300);
        let claims = keys.verify(&issued.token, false, NOW + 10).expect("verify");
        assert_eq!(claims.sub, "user:alice");
        assert_eq!(claims.access, pull("team/app"));
        assert_eq!(
            keys.verify(&issued.token, true, NOW),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn tokens_say_which_credential_they_stem_from() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        for cred in [
            Some(CredentialKind::Password),
            Some(CredentialKind::Token),
            Some(CredentialKind::Robot),
            None,
        ] {
            let token = keys
                .issue(
                    "user:alice",
                    pull("team/app"),
                    cred,
                    false,
                    300,
                    NOW,
                    "j".into(),
                )
                .expect("issue")
                .token;
            assert_eq!(keys.verify(&token, false, NOW).expect("verify").cred, cred);
        }
        let refresh = keys
            .issue_refresh(
                "user:alice",
                Some("token:0123abcd".into()),
                86_400,
                NOW,
                "r".into(),
            )
            .expect("issue")
            .token;
        let claims = keys.verify(&refresh, true, NOW).expect("verify");
        assert_eq!(claims.binding.as_deref(), Some("token:0123abcd"));
        for kind in [
            CredentialKind::Password,
            CredentialKind::Token,
            CredentialKind::Robot,
        ] {
            assert_eq!(CredentialKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CredentialKind::parse("session"), None);
    }

    #[test]
    fn access_tokens_carry_the_epoch_and_credentials_that_revoke_them() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let revocable = Revocable {
            epoch: 42,
            credentials: vec!["token:t1".into(), "refresh:r1".into()],
        };
        let token = keys
            .issue_revocable(
                "user:alice",
                pull("team/app"),
                Some(CredentialKind::Token),
                false,
                Some(revocable.clone()),
                300,
                NOW,
                "j".into(),
            )
            .expect("issue")
            .token;
        let claims = keys.verify(&token, false, NOW).expect("verify");
        assert_eq!(claims.epoch, Some(42));
        assert_eq!(claims.credentials, revocable.credentials);
        let plain = alice_pull_token(&keys);
        let claims = keys.verify(&plain, false, NOW).expect("verify");
        assert_eq!((claims.epoch, claims.credentials), (Some(0), Vec::new()));
    }

    #[test]
    fn expired_tampered_foreign_and_misaddressed_tokens_are_refused() {
        let (key, pem) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let token = alice_pull_token(&keys);

        assert_eq!(
            keys.verify(&token, false, NOW + 300 + LEEWAY),
            Err(TokenError::Expired)
        );
        assert!(
            keys.verify_allowing_expiry(&token, NOW + 3600).is_ok(),
            "upload sessions may outlive their token"
        );
        assert_eq!(
            keys.verify(&token, false, NOW - 2 * LEEWAY - 1),
            Err(TokenError::NotYetValid)
        );

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({
                "iss": "bulwark", "sub": "user:alice", "aud": "registry.test", "exp": NOW + 300,
                "nbf": NOW, "iat": NOW, "jti": "j", "access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push", "delete"]}]
            }))
            .expect("json"),
        );
        parts[1] = forged;
        assert_eq!(
            keys.verify(&parts.join("."), false, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            keys.verify("not.a.jwt", false, NOW),
            Err(TokenError::Malformed)
        );

        let (other, _) = SigningKey::generate().expect("key");
        let foreign = keyset(vec![other])
            .issue("user:alice", Vec::new(), None, false, 300, NOW, "j".into())
            .expect("issue")
            .token;
        assert_eq!(
            keys.verify(&foreign, false, NOW),
            Err(TokenError::UnknownKey)
        );

        let elsewhere = KeySet::new(
            vec![SigningKey::from_pem(&pem).expect("key")],
            "bulwark",
            "other.service",
        )
        .expect("keys");
        let misaddressed = elsewhere
            .issue("user:alice", Vec::new(), None, false, 300, NOW, "j".into())
            .expect("issue")
            .token;
        assert_eq!(
            keys.verify(&misaddressed, false, NOW),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn a_remembered_token_verifies_to_the_same_claims() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let token = alice_pull_token(&keys);
        let first = keys.verify(&token, false, NOW).expect("verify");
        assert_eq!(
            keys.verified().len(),
            1,
            "a verified access token is remembered"
        );
        let again = keys.verify(&token, false, NOW + 10).expect("verify again");
        assert_eq!(again, first);
        assert_eq!(keys.verified().len(), 1);
        assert_eq!(
            keys.verify(&token, true, NOW + 10),
            Err(TokenError::WrongKind),
            "a remembered access token is still not a refresh token"
        );
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let token = alice_pull_token(&keys);
        keys.verify(&token, false, NOW).expect("verify");
        assert_eq!(keys.verified().len(), 1);
        assert_eq!(
            keys.verify(&token, false, NOW + 299)
                .map(|claims| claims.sub),
            Ok("user:alice".to_owned())
        );
        assert_eq!(
            keys.verify(&token, false, NOW + 300),
            Err(TokenError::Expired),
            "expiry is exact, cached or not"
        );
        assert!(
            keys.verify_allowing_expiry(&token, NOW + 3600).is_ok(),
            "upload sessions may outlive their token"
        );
        assert_eq!(
            keys.verify(&token, false, NOW - 2 * LEEWAY - 1),
            Err(TokenError::NotYetValid),
            "not-before is checked on every use too"
        );
    }

    #[test]
    fn a_tampered_copy_of_a_remembered_token_is_refused() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let token = alice_pull_token(&keys);
        keys.verify(&token, false, NOW).expect("verify");

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("base64"))
                .expect("json");
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push", "delete"]);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        assert_eq!(
            keys.verify(&parts.join("."), false, NOW),
            Err(TokenError::BadSignature)
        );
        let mut signature = parts[2].clone().into_bytes();
        signature[0] = if signature[0] == b'A' { b'B' } else { b'A' };
        let resigned = format!(
            "{}.{}",
            token.rsplit_once('.').expect("three parts").0,
            String::from_utf8(signature).expect("ascii")
        );
        assert!(
            keys.verify(&resigned, false, NOW).is_err(),
            "a changed signature is another token, verified afresh"
        );
        assert_eq!(keys.verified().len(), 1, "failures are never remembered");
    }

    #[test]
    fn a_remembered_token_does_not_outlive_its_key_set() {
        let (old, _) = SigningKey::generate().expect("key");
        let before = keyset(vec![old]);
        let token = before
            .issue("robot:ci", Vec::new(), None, false, 300, NOW, "j".into())
            .expect("issue")
            .token;
        before.verify(&token, false, NOW).expect("verify");
        let (new, _) = SigningKey::generate().expect("key");
        let without_old_key = keyset(vec![new]);
        assert_eq!(
            without_old_key.verify(&token, false, NOW),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn refresh_tokens_are_not_remembered() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let token = keys
            .issue_refresh("user:alice", None, 86_400, NOW, "j".into())
            .expect("issue")
            .token;
        keys.verify(&token, true, NOW).expect("verify");
        assert!(keys.verified().is_empty());
    }

    #[test]
    fn remembered_tokens_are_bounded_and_the_soonest_to_expire_goes_first() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]).with_verified_capacity(3);
        let tokens: Vec<String> = (0..5)
            .map(|i| {
                keys.issue(
                    "user:alice",
                    pull("team/app"),
                    None,
                    false,
                    300 + i,
                    NOW,
                    format!("j{i}"),
                )
                .expect("issue")
                .token
            })
            .collect();
        for token in &tokens {
            keys.verify(token, false, NOW).expect("verify");
            assert!(keys.verified().len() <= 3);
        }
        assert_eq!(keys.verified().len(), 3);
        let remembered = |token: &str| keys.verified().get(token).is_some();
        assert!(!remembered(&tokens[0]) && !remembered(&tokens[1]));
        assert!(tokens[2..].iter().all(|token| remembered(token)));
        for token in &tokens {
            assert!(
                keys.verify(token, false, NOW).is_ok(),
                "an evicted token verifies afresh"
            );
        }

        let later = NOW + 1000;
        let fresh = keys
            .issue(
                "user:bob",
                pull("team/app"),
                None,
                false,
                300,
                later,
                "k".into(),
            )
            .expect("issue")
            .token;
        keys.verify(&fresh, false, later).expect("verify");
        assert_eq!(
            keys.verified().len(),
            1,
            "expired tokens are dropped before any live one"
        );

        let none = keyset(vec![SigningKey::generate().expect("key").0]).with_verified_capacity(0);
        let token = none
            .issue("user:alice", Vec::new(), None, false, 300, NOW, "j".into())
            .expect("issue")
            .token;
        assert!(none.verify(&token, false, NOW).is_ok());
        assert!(none.verified().is_empty());
    }

    #[test]
    fn a_token_longer_than_the_limit_verifies_but_is_not_remembered() {
        let (key, _) = SigningKey::generate().expect("key");
        let keys = keyset(vec![key]);
        let scopes: Vec<AccessEntry> = (0..200)
            .flat_map(|n| pull(&format!("team/repository-{n:04}")))
            .collect();
        let token = keys
            .issue("user:alice", scopes, None, false, 300, NOW, "big".into())
            .expect("issue")
            .token;
        assert!(token.len() > VERIFIED_TOKEN_MAX_LEN, "{}", token.len());
        let claims = keys.verify(&token, false, NOW).expect("verify");
        assert_eq!(claims.access.len(), 200);
        assert!(keys.verified().is_empty());
    }

    #[test]
    fn rotated_keys_still_verify_old_tokens() {
        let (old, old_pem) = SigningKey::generate().expect("key");
        let before = keyset(vec![old]);
        let token = before
            .issue("robot:ci", Vec::new(), None, false, 300, NOW, "j".into())
            .expect("issue")
            .token;
        let (new, _) = SigningKey::generate().expect("key");
        let after = keyset(vec![new, SigningKey::from_pem(&old_pem).expect("old key")]);
        assert!(after.verify(&token, false, NOW).is_ok());
        assert_eq!(after.jwks()["keys"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_token_fuzz_corpus_replays() {
        crate::fuzz::replay("token", crate::fuzz::token);
    }
}
