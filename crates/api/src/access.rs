//! Who may call which `/v2` operation: credentials from the request, checked against the
//! token's access list or the RBAC decision, and the `WWW-Authenticate` challenge that sends
//! clients to the token service.
//!
//! Invariants:
//! - `Operation::required_access` is an exhaustive match: a new operation does not compile
//!   until someone decides who may call it.
//! - A denial with a known principal is a 403 `DENIED` naming the rule, and is audited. A
//!   request without usable credentials is a 401 with a Bearer challenge, and is not: every
//!   client's first request is one, and an unthrottled write per forged token would let anyone
//!   flood the audit log. Failed logins are audited where credentials are checked (`Access`).
//! - A Bearer caller has exactly its token's access list, never its principal's wider rights
//!   (a mount's source too: clients ask for `repository:<from>:pull` with the push scope).
//! - An expired token is accepted only to continue an upload session, and only for a principal
//!   that, as it stands now, may still push to the repository. A revoked token is accepted
//!   for nothing, upload sessions included; one whose revocation cannot be confirmed (the
//!   store is down) is a 503, never honoured.

use std::net::IpAddr;

use auth::policy::{Action, Principal};
use auth::token::{Claims, TokenError};
use axum::http::{header, HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use oci::{ErrorCode, RepositoryName};
use registry::access::{token_allows, token_allows_catalog, Access, AuthError};

use crate::error::ApiError;
use crate::operation::Operation;

/// The client's address, put into request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// What an operation requires of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need<'a> {
    /// Any authenticated caller (`GET /v2/`).
    Authenticated,
    /// The catalog; its answer is filtered to what the caller may pull.
    Catalog,
    Repository(&'a RepositoryName, Action),
    /// An existing upload session: push on its repository, by the principal that started it,
    /// even after that principal's token expired.
    UploadSession(&'a RepositoryName),
}

impl Operation {
    pub fn required_access(&self) -> Need<'_> {
        match self {
            Operation::Base => Need::Authenticated,
            Operation::Catalog { .. } => Need::Catalog,
            Operation::ListTags { name, .. }
            | Operation::GetManifest { name, .. }
            | Operation::GetBlob { name, .. }
            | Operation::Referrers { name, .. } => Need::Repository(name, Action::Pull),
            Operation::PutManifest { name, .. } | Operation::StartUpload { name, .. } => {
                Need::Repository(name, Action::Push)
            }
            Operation::UploadStatus { name, .. }
            | Operation::PatchUpload { name, .. }
            | Operation::FinishUpload { name, .. }
            | Operation::CancelUpload { name, .. } => Need::UploadSession(name),
            Operation::DeleteManifest { name, .. } | Operation::DeleteBlob { name, .. } => {
                Need::Repository(name, Action::Delete)
            }
        }
    }

    /// The scopes a 401 names: what the operation needs and, for a mount, pull on its source
    /// (space-separated, as Distribution sends them), so a client that asks for exactly the
    /// challenged scopes gets a token that covers the mount.
    pub fn challenge_scope(&self) -> Option<String> {
        let scope = scope_text(&self.required_access());
        match self {
            Operation::StartUpload {
                name,
                mount: Some((_, from)),
                ..
            } if from != name => scope.map(|scope| format!("{scope} repository:{from}:pull")),
            _ => scope,
        }
    }
}

/// The authorized caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `user:NAME`, `robot:NAME` or `anonymous`: what upload sessions are bound to.
    pub label: String,
    /// Known when credentials were checked directly (Basic, anonymous).
    pub principal: Option<Principal>,
    /// Known when a registry token was presented.
    pub claims: Option<Claims>,
}

impl Caller {
    /// The principal as it stands now, loading it when only a token subject is known.
    pub async fn principal(&self, access: &Access) -> Result<Principal, ApiError> {
        if let Some(principal) = &self.principal {
            return Ok(principal.clone());
        }
        access
            .principal(&self.label)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthorized)
                    .message("the token's principal no longer exists")
            })
    }

    /// Whether the caller may pull `repository` (the source of a mount). A Bearer caller may
    /// pull only what its token grants: a token scoped to one repository must not reach every
    /// repository its principal can read. Docker, containerd and containers/image ask for
    /// `repository:<from>:pull` in the token request of a mount.
    pub async fn may_pull(
        &self,
        access: &Access,
        repository: &RepositoryName,
    ) -> Result<bool, ApiError> {
        if let Some(claims) = &self.claims {
            return Ok(token_allows(claims, repository, Action::Pull));
        }
        let principal = self.principal(access).await?;
        Ok(access
            .decide(&principal, repository, Action::Pull)
            .await
            .map_err(ApiError::from)?
            .allowed)
    }
}

enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Credentials::Anonymous);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or("the Authorization header has no scheme")?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::Bearer(rest.trim().to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        return basic(rest).ok_or("the Basic credentials are malformed");
    }
    Err("unsupported Authorization scheme; use Basic or Bearer")
}

fn basic(encoded: &str) -> Option<Credentials> {
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Basic credentials for the token endpoint and the admin API.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    match credentials(headers)? {
        Credentials::Basic { username, password } => Ok(Some((username, password))),
        Credentials::Anonymous => Ok(None),
        Credentials::Bearer(_) => Err("the token endpoint takes Basic credentials"),
    }
}

/// The bearer token of a request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    match credentials(headers) {
        Ok(Credentials::Bearer(token)) => Some(token),
        _ => None,
    }
}

/// Whether `text` is a host with an optional port as it may appear in `Host` or a URL:
/// letters, digits, `.-:` and the brackets of an IPv6 address, nothing that could break out
/// of the quoted realm or add a path, query or user.
pub fn is_host(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The absolute URL of the token service: under the configured external URL, or else under the
/// request's `Host` (the front door refuses a request without exactly one, `host_problem`).
pub fn realm(access: &Access, headers: &HeaderMap) -> String {
    if let Some(url) = &access.settings().external_url {
        return format!("{url}/auth/token");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| is_host(host))
        .unwrap_or("localhost");
    format!("https://{host}/auth/token")
}

/// Why a request's `Host` makes it unanswerable (RFC 9112 §3.2: an HTTP/1.1 request carries
/// exactly one), or `None`. HTTP/1.0 may omit it; HTTP/2 names the host in `:authority`.
pub fn host_problem(version: axum::http::Version, headers: &HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("a request carries one Host header, not several"),
        (None, _) if version == axum::http::Version::HTTP_11 => {
            Some("an HTTP/1.1 request must carry a Host header")
        }
        (Some(host), None) if !host.to_str().is_ok_and(is_host) => {
            Some("the Host header is not a host name or address with an optional port")
        }
        _ => None,
    }
}

fn scope_text(need: &Need<'_>) -> Option<String> {
    match need {
        Need::Authenticated => None,
        Need::Catalog => Some("registry:catalog:*".into()),
        Need::Repository(name, Action::Pull) => Some(format!("repository:{name}:pull")),
        Need::Repository(name, Action::Push) | Need::UploadSession(name) => {
            Some(format!("repository:{name}:pull,push"))
        }
        Need::Repository(name, action) => Some(format!("repository:{name}:{}", action.as_str())),
    }
}

/// A 401 that tells the client where to get a token, and for what.
pub fn challenge(
    access: &Access,
    headers: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
    message: &str,
) -> ApiError {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(access, headers),
        access.settings().service
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    ApiError::new(ErrorCode::Unauthorized)
        .message(message)
        .header("www-authenticate", value)
}

fn throttled(retry_after: u64) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests)
        .message(format!(
            "too many failed logins; retry in {retry_after} seconds"
        ))
        .header("retry-after", retry_after.to_string())
}

/// Authenticates and authorizes a `/v2` request, or answers why not.
pub async fn authorize(
    access: &Access,
    operation: &Operation,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    let need = operation.required_access();
    let scope = operation.challenge_scope();
    let scope = scope.as_deref();
    let credentials = credentials(headers)
        .map_err(|problem| challenge(access, headers, scope, Some("invalid_request"), problem))?;
    match credentials {
        Credentials::Bearer(token) => {
            let allow_expired = matches!(need, Need::UploadSession(_));
            let claims = access
                .verify(&token, allow_expired)
                .await
                .map_err(|err| match err {
                    // Not the token's fault: the store could not say whether it was revoked.
                    TokenError::Unconfirmed => {
                        ApiError::from(registry::Error::Unavailable(err.to_string()))
                    }
                    other => challenge(
                        access,
                        headers,
                        scope,
                        Some("invalid_token"),
                        &format!("invalid token: {other}"),
                    ),
                })?;
            let covered = match &need {
                Need::Authenticated => true,
                Need::Catalog => token_allows_catalog(&claims),
                Need::Repository(name, action) => token_allows(&claims, name, *action),
                Need::UploadSession(name) => token_allows(&claims, name, Action::Push),
            };
            let mut caller = Caller {
                label: claims.sub.clone(),
                principal: None,
                claims: Some(claims),
            };
            if covered {
                if let (Need::UploadSession(name), Some(claims)) = (&need, &caller.claims) {
                    if access.expired(claims) {
                        let principal =
                            still_pushing(access, headers, scope, name, &claims.sub, client)
                                .await?;
                        caller.principal = Some(principal);
                    }
                }
                return Ok(caller);
            }
            // The token lacks the access: say why when the principal may not have it at all,
            // else send the client back for a token with the wider scope.
            if let Need::Repository(name, action) = &need {
                let principal = caller.principal(access).await?;
                let decision = access
                    .decide(&principal, name, *action)
                    .await
                    .map_err(ApiError::from)?;
                if !decision.allowed && !decision.wants_credentials() {
                    return Err(
                        deny(access, &principal, name, *action, decision.reason(), client).await,
                    );
                }
            }
            // An anonymous token for a private project is sent to log in, like no token at all.
            Err(challenge(
                access,
                headers,
                scope,
                Some("insufficient_scope"),
                "the token does not grant this access",
            ))
        }
        Credentials::Basic { username, password } => {
            if !access.settings().basic_on_v2 {
                return Err(challenge(
                    access,
                    headers,
                    scope,
                    None,
                    "log in through the token service",
                ));
            }
            let principal = access
                .authenticate(&username, &password, client)
                .await
                .map(|authenticated| authenticated.principal)
                .map_err(|err| match err {
                    AuthError::Throttled { retry_after } => throttled(retry_after),
                    AuthError::BadCredentials | AuthError::BadToken(_) => challenge(
                        access,
                        headers,
                        scope,
                        Some("invalid_token"),
                        "invalid username or password",
                    ),
                    AuthError::Unavailable(cause) => {
                        ApiError::from(registry::Error::Unavailable(cause))
                    }
                })?;
            let target = match &need {
                Need::Repository(name, action) => Some((*name, *action)),
                Need::UploadSession(name) => Some((*name, Action::Push)),
                Need::Authenticated | Need::Catalog => None,
            };
            if let Some((name, action)) = target {
                let decision = access
                    .decide(&principal, name, action)
                    .await
                    .map_err(ApiError::from)?;
                if !decision.allowed {
                    return Err(
                        deny(access, &principal, name, action, decision.reason(), client).await,
                    );
                }
            }
            Ok(Caller {
                label: principal.label(),
                principal: Some(principal),
                claims: None,
            })
        }
        Credentials::Anonymous => {
            if let Need::Repository(name, action) = &need {
                let decision = access
                    .decide(&Principal::Anonymous, name, *action)
                    .await
                    .map_err(ApiError::from)?;
                if decision.allowed {
                    return Ok(Caller {
                        label: Principal::Anonymous.label(),
                        principal: Some(Principal::Anonymous),
                        claims: None,
                    });
                }
            }
            Err(challenge(
                access,
                headers,
                scope,
                None,
                "authentication required",
            ))
        }
    }
}

/// The principal of an expired token, loaded as it stands now, if it may still push to the
/// upload session's repository: a disabled user, a revoked robot or a demoted member stops
/// there, whatever the token said when it was fresh.
async fn still_pushing(
    access: &Access,
    headers: &HeaderMap,
    scope: Option<&str>,
    repository: &RepositoryName,
    subject: &str,
    client: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let Some(principal) = access.principal(subject).await.map_err(ApiError::from)? else {
        return Err(challenge(
            access,
            headers,
            scope,
            Some("invalid_token"),
            "the token has expired and its principal no longer exists",
        ));
    };
    let decision = access
        .decide(&principal, repository, Action::Push)
        .await
        .map_err(ApiError::from)?;
    if decision.allowed {
        return Ok(principal);
    }
    if decision.wants_credentials() {
        return Err(challenge(
            access,
            headers,
            scope,
            Some("invalid_token"),
            "the token has expired",
        ));
    }
    Err(deny(
        access,
        &principal,
        repository,
        Action::Push,
        decision.reason(),
        client,
    )
    .await)
}

async fn deny(
    access: &Access,
    principal: &Principal,
    repository: &RepositoryName,
    action: Action,
    reason: String,
    client: Option<IpAddr>,
) -> ApiError {
    tracing::info!(principal = %principal.label(), repository = %repository, action = %action, "denied {action} on {repository}: {reason}");
    access
        .audit(
            principal,
            action.as_str(),
            repository.as_str(),
            "denied",
            Some(reason.clone()),
            client,
        )
        .await;
    ApiError::new(ErrorCode::Denied)
        .status(StatusCode::FORBIDDEN)
        .message(reason)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_authorization_fuzz_corpus_replays() {
        crate::fuzz::replay("authorization", crate::fuzz::authorization);
    }
}
