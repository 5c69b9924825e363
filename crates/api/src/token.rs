//! The Docker token service: `GET /auth/token` with Basic credentials (or none), `POST
//! /auth/token` with the OAuth2 form, and the public keys at `GET /auth/jwks`.
//!
//! Errors use OAuth2's JSON shape (`{"error", "error_description"}`), as token clients expect.
//!
//! Invariants:
//! - A token names the kind of credential it stems from (`Claims::cred`), and a refresh token
//!   is bound to that credential; a token obtained with a refresh token inherits both.

use std::net::IpAddr;

use auth::scope::Scope;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use registry::access::{Access, AuthError, Authenticated, TokenGrant};
use serde_json::json;

use crate::access::{basic_credentials, ClientAddress};
use crate::AppState;

/// Token-service form bodies are small; anything larger is not a token request.
const MAX_FORM_BYTES: usize = 64 * 1024;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(value) = "Basic realm=\"bulwark\"".parse() {
            response.headers_mut().insert("www-authenticate", value);
        }
    }
    response
}

fn auth_failure(err: AuthError) -> Response {
    match err {
        AuthError::Throttled { retry_after } => {
            let mut response =
                oauth_error(StatusCode::TOO_MANY_REQUESTS, "slow_down", &err.to_string());
            if let Ok(value) = retry_after.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
        AuthError::BadCredentials => {
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", &err.to_string())
        }
        AuthError::BadToken(_) => {
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", &err.to_string())
        }
        AuthError::Unavailable(ref cause) => {
            tracing::warn!("backend unavailable: {cause}");
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &err.to_string(),
            );
            if let Ok(value) = crate::error::RETRY_AFTER_SECONDS.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
}

fn values<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn client_of(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ClientAddress>().map(|c| c.0)
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, built once per refused request"
)]
fn check_service(access: &Access, pairs: &[(String, String)]) -> Result<(), Response> {
    match values(pairs, "service").next() {
        Some(service) if service != access.settings().service => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "this token service issues tokens for service {:?}",
                access.settings().service
            ),
        )),
        _ => Ok(()),
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, built once per refused request"
)]
fn scopes<'a>(params: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, Response> {
    Scope::parse_all(params)
        .map_err(|err| oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &err.to_string()))
}

/// Issues a token to `who` (`None`: anonymous), carrying the credential it logged in with.
async fn grant(
    access: &Access,
    who: Option<&Authenticated>,
    scopes: &[Scope],
    offline: bool,
) -> Response {
    match access.issue_to(who, scopes, offline).await {
        Ok(grant) => token_response(&grant),
        Err(err) => crate::error::ApiError::from(err).into_response(),
    }
}

fn token_response(grant: &TokenGrant) -> Response {
    let issued_at = auth::token::rfc3339(grant.access.issued_at);
    let mut body = json!({
        "token": grant.access.token,
        "access_token": grant.access.token,
        "expires_in": grant.access.expires_in,
        "issued_at": issued_at,
    });
    if let Some(refresh) = &grant.refresh {
        body["refresh_token"] = json!(refresh.token);
    }
    let mut response = Json(body).into_response();
    if let Ok(value) = "no-store".parse() {
        response.headers_mut().insert("cache-control", value);
    }
    response
}

/// `GET /auth/token?service=…&scope=…[&offline_token=true]`
/// Refuses a request over its client's token-request rate, with when to retry.
#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, built once per refused request"
)]
fn admit(state: &AppState, client: Option<IpAddr>) -> Result<(), Response> {
    let Some(client) = client else {
        return Ok(());
    };
    let admitted = match state.token_rate.lock() {
        Ok(mut rate) => rate.admit(client, std::time::Instant::now()),
        Err(_) => Ok(()),
    };
    admitted.map_err(|wait| {
        let mut response = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            &format!(
                "too many token requests from this address; retry in {} seconds",
                wait.as_secs()
            ),
        );
        if let Ok(value) = wait.as_secs().to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
        response
    })
}

pub async fn get_token(State(state): State<AppState>, request: Request) -> Response {
    let access = &state.access;
    if let Err(response) = admit(&state, client_of(&request)) {
        return response;
    }
    let pairs = query_pairs(request.uri().query());
    if let Err(response) = check_service(access, &pairs) {
        return response;
    }
    let scopes = match scopes(values(&pairs, "scope")) {
        Ok(scopes) => scopes,
        Err(response) => return response,
    };
    let offline = values(&pairs, "offline_token").any(|v| v == "true");
    let client = client_of(&request);
    let who = match basic_credentials(request.headers()) {
        Err(problem) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", problem),
        Ok(None) => None,
        Ok(Some((username, password))) => {
            match access.authenticate(&username, &password, client).await {
                Ok(authenticated) => Some(authenticated),
                Err(err) => return auth_failure(err),
            }
        }
    };
    grant(access, who.as_ref(), &scopes, offline).await
}

/// `POST /auth/token` with `grant_type=password` or `grant_type=refresh_token`.
pub async fn post_token(State(state): State<AppState>, request: Request) -> Response {
    let access = &state.access;
    let client = client_of(&request);
    if let Err(response) = admit(&state, client) {
        return response;
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the form body is too large or unreadable",
            )
        }
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    };
    if let Err(response) = check_service(access, &form) {
        return response;
    }
    let scopes = match scopes(values(&form, "scope")) {
        Ok(scopes) => scopes,
        Err(response) => return response,
    };
    let offline = values(&form, "access_type").any(|v| v == "offline");
    let who = match values(&form, "grant_type").next() {
        Some("password") => {
            let (Some(username), Some(password)) = (
                values(&form, "username").next(),
                values(&form, "password").next(),
            ) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                );
            };
            match access.authenticate(username, password, client).await {
                Ok(authenticated) => authenticated,
                Err(err) => return auth_failure(err),
            }
        }
        Some("refresh_token") => {
            let Some(token) = values(&form, "refresh_token").next() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                );
            };
            // The new tokens carry the refresh token's credential forward: a refresh token
            // obtained with an access token still dies when that access token is revoked.
            match access.refresh(token).await {
                Ok(authenticated) => authenticated,
                Err(err) => return auth_failure(err),
            }
        }
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported"),
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    };
    grant(access, Some(&who), &scopes, offline).await
}

/// `GET /auth/jwks`: the public keys that verify registry tokens.
pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.access.jwks()).into_response()
}
