//! RFC 9457 problem details: every admin API error leaves as `application/problem+json`
//! `{type, title, status, detail}`.
//!
//! Invariant: internal error text is logged here, once, and never sent.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// A request without usable credentials; the challenge names the scheme to use.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
            .header(header::WWW_AUTHENTICATE, "Basic realm=\"bulwark\"")
    }

    pub fn throttled(retry_after: u64) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins; retry in {retry_after} seconds"),
        )
        .header(header::RETRY_AFTER, &retry_after.to_string())
    }

    /// A server fault: its cause goes to the log, the client sees that there was one.
    pub fn internal(cause: impl std::fmt::Display) -> Problem {
        tracing::error!("internal error: {cause}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error; see the server log for this request id",
        )
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Problem {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl From<registry::Error> for Problem {
    fn from(err: registry::Error) -> Self {
        use registry::Error as E;
        match err {
            E::Forbidden(reason) => Problem::new(StatusCode::FORBIDDEN, reason),
            E::Invalid(reason) => Problem::unprocessable(reason),
            err @ E::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, err.to_string()),
            E::Conflict(reason) => Problem::new(StatusCode::CONFLICT, reason),
            E::Unavailable(cause) => {
                tracing::warn!("backend unavailable: {cause}");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the registry's storage is temporarily unavailable; retry later",
                )
                .header(
                    header::RETRY_AFTER,
                    &crate::error::RETRY_AFTER_SECONDS.to_string(),
                )
            }
            E::Internal(cause) => Problem::internal(cause),
            // Distribution errors: no admin use case returns them, so one here is a server bug.
            err @ (E::BlobUnknown(_)
            | E::UploadUnknown(_)
            | E::UploadInvalid(_)
            | E::TooManyUploads
            | E::UploadOutOfOrder { .. }
            | E::RangeNotSatisfiable { .. }
            | E::DigestInvalid(_)
            | E::ManifestInvalid(_)
            | E::ManifestTooLarge { .. }
            | E::ManifestUnknown(_)
            | E::ManifestBlobUnknown(_)
            | E::NameUnknown(_)) => {
                Problem::internal(format!("a distribution error reached the admin API: {err}"))
            }
        }
    }
}
