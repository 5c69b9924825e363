//! What admin handlers extract from a request: the authenticated caller, a JSON body, and
//! listing parameters. Each rejection is a problem answer.
//!
//! Invariants:
//! - No admin handler runs without a `Caller`: a request without usable credentials ends here
//!   with a 401 and a Basic challenge, a throttled one with a 429 and `Retry-After`, and one
//!   whose credentials cannot be checked because the store is down with a 503 and
//!   `Retry-After`.
//! - Bodies are read up to `MAX_BODY_BYTES`; malformed JSON is a 400, JSON of the wrong shape
//!   (unknown fields included) a 422.

use std::net::IpAddr;

use auth::policy::Principal;
use auth::token::CredentialKind;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use registry::access::AuthError;
use registry::admin::{PageRequest, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::problem::Problem;
use crate::access::{basic_credentials, bearer_token, ClientAddress};
use crate::AppState;

/// Admin requests are small documents; anything larger is refused before parsing.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The authenticated caller of an admin request, how they proved who they are, and where
/// they call from.
pub struct Caller {
    pub principal: Principal,
    /// The credential the caller logged in with (Basic), or the one its registry token was
    /// obtained with (Bearer; `None` for a token that does not say).
    pub credential: Option<CredentialKind>,
    pub client: Option<IpAddr>,
}

fn refused(err: AuthError) -> Problem {
    match err {
        AuthError::Throttled { retry_after } => Problem::throttled(retry_after),
        AuthError::BadCredentials | AuthError::BadToken(_) => {
            Problem::unauthorized(err.to_string())
        }
        AuthError::Unavailable(cause) => Problem::from(registry::Error::Unavailable(cause)),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = parts
            .extensions
            .get::<ClientAddress>()
            .map(|address| address.0);
        let (principal, credential) = if let Some(token) = bearer_token(&parts.headers) {
            state
                .access
                .bearer_principal(&token)
                .await
                .map_err(refused)?
        } else {
            match basic_credentials(&parts.headers) {
                Err(problem) => return Err(Problem::unauthorized(problem)),
                Ok(None) => {
                    return Err(Problem::unauthorized(
                        "authentication required: use Basic credentials or a registry token",
                    ))
                }
                Ok(Some((username, secret))) => {
                    let authenticated = state
                        .access
                        .authenticate(&username, &secret, client)
                        .await
                        .map_err(refused)?;
                    (
                        authenticated.principal,
                        Some(authenticated.credential.kind()),
                    )
                }
            }
        };
        Ok(Caller {
            principal,
            credential,
            client,
        })
    }
}

/// A JSON request body.
pub struct Json<T>(pub T);

/// A JSON request body that may be left out; an empty body is `T::default()`.
pub struct OptionalJson<T>(pub T);

async fn read_json<T: DeserializeOwned>(
    request: Request,
    optional: bool,
) -> Result<Option<T>, Problem> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request bodies have at most {MAX_BODY_BYTES} bytes"),
            )
        })?;
    if bytes.is_empty() {
        return if optional {
            Ok(None)
        } else {
            Err(Problem::bad_request("this request needs a JSON body"))
        };
    }
    let essence = content_type
        .as_deref()
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    let is_json = essence
        .as_deref()
        .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as application/json",
        ));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| match err.classify() {
            serde_json::error::Category::Data => {
                Problem::unprocessable(format!("the body does not fit this request: {err}"))
            }
            serde_json::error::Category::Io
            | serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof => {
                Problem::bad_request(format!("the body is not valid JSON: {err}"))
            }
        })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let value = read_json(request, false)
            .await?
            .ok_or_else(|| Problem::bad_request("this request needs a JSON body"))?;
        Ok(Json(value))
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(OptionalJson(
            read_json(request, true).await?.unwrap_or_default(),
        ))
    }
}

fn query<T: DeserializeOwned>(parts: &Parts) -> Result<T, Problem> {
    Query::<T>::try_from_uri(&parts.uri)
        .map(|Query(value)| value)
        .map_err(|err| Problem::bad_request(format!("invalid query: {}", err.body_text())))
}

fn limit(limit: Option<u32>) -> Result<u32, Problem> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=MAX_PAGE_LIMIT).contains(&limit) => Ok(limit),
        Some(limit) => Err(Problem::bad_request(format!(
            "limit {limit} is out of range: use 1 to {MAX_PAGE_LIMIT}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<u32>,
    after: Option<String>,
}

/// `?limit=&after=` of a listing.
pub struct Page(pub PageRequest);

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw: PageQuery = query(parts)?;
        Ok(Page(PageRequest {
            after: raw.after,
            limit: limit(raw.limit)?,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    principal: Option<String>,
    action: Option<String>,
    target: Option<String>,
    result: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// The filters and cursor of an audit log read.
pub struct AuditQuery(pub registry::admin::AuditQuery);

impl<S: Send + Sync> FromRequestParts<S> for AuditQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw: AuditParams = query(parts)?;
        Ok(AuditQuery(registry::admin::AuditQuery {
            principal: raw.principal,
            action: raw.action,
            target: raw.target,
            result: raw.result,
            since: raw.since,
            until: raw.until,
            before: raw.before,
            limit: limit(raw.limit)?,
        }))
    }
}

/// The parameters of a route's path (names, ids), as the route table names them.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|err| Problem::bad_request(format!("invalid path: {}", err.body_text())))
    }
}
