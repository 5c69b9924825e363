//! The `/v2` error envelope: `{"errors":[{"code","message","detail"}]}`.
//!
//! Invariant: internal error text is logged here, once, and never sent; the client gets
//! `UNKNOWN` and the request id to quote.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;
use serde_json::{json, Value};

use crate::operation::ParseError;

/// How long a client is told to wait (`Retry-After`) when a backend is down: about as long as
/// a request waits for a database connection before giving up.
pub const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    detail: Value,
    headers: HeaderMap,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: code.description().to_owned(),
            detail: Value::Null,
            headers: HeaderMap::new(),
        }
    }

    pub fn message(mut self, message: impl Into<String>) -> ApiError {
        self.message = message.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<Value>) -> ApiError {
        self.detail = detail.into();
        self
    }

    pub fn status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl AsRef<str>) -> ApiError {
        if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(HeaderName::from_static(name), value);
        }
        self
    }

    /// A server fault: its cause goes to the log, the client sees `UNKNOWN`.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {cause}");
        ApiError::new(ErrorCode::Unknown)
            .message("internal server error; see the server log for this request id")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if !self.detail.is_null() {
            error["detail"] = self.detail;
        }
        let body = json!({ "errors": [error] });
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(err: ParseError) -> Self {
        match err {
            ParseError::NameInvalid(text) => ApiError::new(ErrorCode::NameInvalid).message(text),
            ParseError::DigestInvalid(text) => {
                ApiError::new(ErrorCode::DigestInvalid).message(text)
            }
            ParseError::ReferenceInvalid(text) => {
                ApiError::new(ErrorCode::ManifestInvalid).message(text)
            }
            ParseError::ManifestUnknown(reference) => {
                ApiError::new(ErrorCode::ManifestUnknown).detail(json!({ "reference": reference }))
            }
            ParseError::UploadUnknown(id) => {
                ApiError::new(ErrorCode::BlobUploadUnknown).detail(json!({ "upload": id }))
            }
            ParseError::QueryInvalid(text) => ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::BAD_REQUEST)
                .message(format!("invalid query parameter: {text}")),
            ParseError::NotFound => ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::NOT_FOUND)
                .message("no such endpoint in the distribution API"),
            ParseError::MethodNotAllowed => ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .message("method not allowed on this endpoint"),
        }
    }
}

impl From<registry::Error> for ApiError {
    fn from(err: registry::Error) -> Self {
        use registry::Error as E;
        match err {
            E::BlobUnknown(digest) => ApiError::new(ErrorCode::BlobUnknown)
                .detail(json!({ "digest": digest.to_string() })),
            E::UploadUnknown(id) => {
                ApiError::new(ErrorCode::BlobUploadUnknown).detail(json!({ "upload": id }))
            }
            E::UploadInvalid(text) => ApiError::new(ErrorCode::BlobUploadInvalid).message(text),
            E::TooManyUploads => ApiError::new(ErrorCode::TooManyRequests)
                .message(E::TooManyUploads.to_string())
                .header("retry-after", RETRY_AFTER_SECONDS.to_string()),
            E::UploadOutOfOrder { offset, got } => ApiError::new(ErrorCode::BlobUploadInvalid)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .message(format!(
                    "chunk starts at byte {got}, but the upload stands at byte {offset}"
                ))
                .header("range", crate::upload_range(offset)),
            E::RangeNotSatisfiable { size } => ApiError::new(ErrorCode::BlobUnknown)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .message(format!(
                    "requested range is outside the blob's {size} bytes"
                ))
                .header("content-range", format!("bytes */{size}")),
            E::DigestInvalid(text) => ApiError::new(ErrorCode::DigestInvalid).message(text),
            E::ManifestInvalid(text) => ApiError::new(ErrorCode::ManifestInvalid).message(text),
            E::ManifestTooLarge { limit } => ApiError::new(ErrorCode::SizeInvalid)
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .message(format!("manifest exceeds the limit of {limit} bytes")),
            E::ManifestUnknown(reference) => {
                ApiError::new(ErrorCode::ManifestUnknown).detail(json!({ "reference": reference }))
            }
            E::ManifestBlobUnknown(missing) => {
                let digests: Vec<String> = missing.iter().map(ToString::to_string).collect();
                ApiError::new(ErrorCode::ManifestBlobUnknown)
                    .message(format!(
                        "manifest references content this repository does not hold: {}",
                        digests.join(", ")
                    ))
                    .detail(json!({ "digests": digests }))
            }
            E::NameUnknown(name) => {
                ApiError::new(ErrorCode::NameUnknown).detail(json!({ "name": name.to_string() }))
            }
            E::Unavailable(cause) => {
                tracing::warn!("backend unavailable: {cause}");
                ApiError::new(ErrorCode::Unknown)
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .message("the registry's storage is temporarily unavailable; retry later")
                    .header("retry-after", RETRY_AFTER_SECONDS.to_string())
            }
            // Only administration (`/api/v1`, with its own problem answers) conflicts, misses a named
            // record, refuses a user or rejects input in these words; no /v2 operation does.
            E::Conflict(cause) | E::NotFound(cause) | E::Forbidden(cause) | E::Invalid(cause) => {
                ApiError::internal(cause)
            }
            E::Internal(cause) => ApiError::internal(cause),
        }
    }
}
