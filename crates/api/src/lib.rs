//! The only crate that knows HTTP: the `/v2` distribution API.
//!
//! Every `/v2` request goes through one wildcard route, is parsed into an `Operation`,
//! authorized (`access`), and answered by one `registry` call whose result is mapped to the
//! spec's response. `/auth/token` is the Docker token service (`token`).
//!
//! Invariants:
//! - Handlers hold no business rules: extract, call `registry`, map the answer.
//! - Every error leaves as the spec's envelope (`error::ApiError`); no internal text leaks.
//! - Request and response bodies of blobs stream; only manifests (bounded by the configured
//!   limit) are read whole.
//! - A refused or failed request's unread body is drained (up to `body::DRAIN_LIMIT`) before
//!   the error is sent, unless that would only invite bytes (`Expect: 100-continue`, a larger
//!   body): then the answer goes first and the server's lingering close lets it be read; a body
//!   that sends nothing for `limits.body_idle_timeout` fails its request.

pub mod access;
pub mod admin;
mod body;
pub mod error;
pub mod forwarded;
/// The fuzz targets' checks, shared with the corpus replay tests.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod operation;
pub mod token;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use oci::{Digest, ErrorCode, RepositoryName};
use registry::access::Access;
use registry::{Registry, UploadStart, UploadStatus};
use tracing::Instrument;

use crate::access::{Caller, ClientAddress};
use crate::body::{drain, expects_continue, Leftover};
use crate::error::ApiError;
use crate::operation::{Method, Operation};

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub access: Arc<Access>,
    /// Token requests per client network (`limits.token_requests_per_second`).
    pub token_rate: Arc<std::sync::Mutex<registry::rate::RequestRate>>,
}

impl AppState {
    pub fn new(registry: Arc<Registry>, access: Arc<Access>) -> AppState {
        let token_rate =
            registry::rate::RequestRate::new(registry.limits().token_requests_per_second);
        AppState {
            registry,
            access,
            token_rate: Arc::new(std::sync::Mutex::new(token_rate)),
        }
    }
}

/// The whole HTTP surface, ready to serve.
pub fn router(registry: Arc<Registry>, access: Arc<Access>) -> Router {
    let limits = registry.limits().clone();
    Router::new()
        .route("/v2", any(v2_root))
        .route("/v2/", any(v2_root))
        .route("/v2/{*rest}", any(v2))
        .route("/auth/token", get(token::get_token).post(token::post_token))
        .route("/auth/jwks", get(token::jwks))
        .merge(admin::router())
        .fallback(not_found)
        .with_state(AppState::new(registry, access))
        .layer(middleware::from_fn_with_state(
            Arc::new(limits),
            log_request,
        ))
}

/// Why a request's head is refused before it is routed: no or several `Host`s, a target or
/// headers over the limits.
fn head_problem(limits: &registry::Limits, request: &Request) -> Option<ApiError> {
    if let Some(problem) = access::host_problem(request.version(), request.headers()) {
        return Some(
            ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::BAD_REQUEST)
                .message(problem),
        );
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > limits.max_uri_bytes {
        return Some(
            ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::URI_TOO_LONG)
                .message(format!(
                    "the request target exceeds {} bytes",
                    limits.max_uri_bytes
                )),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some(
            ApiError::new(ErrorCode::Unsupported)
                .status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                .message(format!(
                    "the request's headers exceed {} bytes",
                    limits.max_header_bytes
                )),
        );
    }
    None
}

/// One log line per request, inside a span carrying the request id.
async fn log_request(
    State(limits): State<Arc<registry::Limits>>,
    mut request: Request,
    next: Next,
) -> Response {
    // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in `Host`; handlers read `Host`.
    if !request.headers().contains_key(header::HOST) {
        let authority = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(authority) = authority {
            request.headers_mut().insert(header::HOST, authority);
        }
    }
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_bytes = content_length(request.headers());
    let span = tracing::info_span!("request", request_id = %request_id);
    let started = Instant::now();
    let mut response = match head_problem(&limits, &request) {
        Some(problem) => problem.into_response(),
        None => next.run(request).instrument(span.clone()).await,
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let response_bytes = content_length(response.headers());
    span.in_scope(|| {
        tracing::info!(
            %method,
            %path,
            status,
            request_bytes,
            response_bytes,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "{method} {path} {status}"
        );
    });
    response
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::Unsupported)
        .status(StatusCode::NOT_FOUND)
        .message("not found")
}

async fn v2_root(state: State<AppState>, request: Request) -> Response {
    dispatch(state, "", request).await
}

async fn v2(state: State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix("/v2/").unwrap_or("").to_owned();
    dispatch(state, &rest, request).await
}

async fn dispatch(State(state): State<AppState>, rest: &str, request: Request) -> Response {
    let method = Method::from_http(request.method().as_str());
    let operation = match operation::parse(method, rest, request.uri().query()) {
        Ok(operation) => operation,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let client = request.extensions().get::<ClientAddress>().map(|c| c.0);
    let expects_continue = expects_continue(request.headers());
    let caller = match access::authorize(&state.access, &operation, request.headers(), client).await
    {
        Ok(caller) => caller,
        Err(err) => {
            drain(request.into_body(), expects_continue).await;
            return err.into_response();
        }
    };
    let audited = audit_action(&operation);
    // What a failing handler left of the body is drained below, so the client reads the error;
    // a body that stops arriving fails the request.
    let (request, leftover) = Leftover::watch(request, state.registry.limits().body_idle_timeout);
    match handle(&state, operation, request, &caller).await {
        Ok(response) => {
            if let Some((action, target)) = audited {
                state
                    .access
                    .audit_as(&caller.label, action, &target, "allowed", None, client)
                    .await;
            }
            response
        }
        Err(err) => {
            if let Some(body) = leftover.take() {
                drain(body, expects_continue).await;
            }
            err.into_response()
        }
    }
}

/// Changes recorded in the audit log when they succeed: pushes of manifests and deletes.
fn audit_action(operation: &Operation) -> Option<(&'static str, String)> {
    match operation {
        Operation::PutManifest { name, reference } => Some(("push", format!("{name}:{reference}"))),
        Operation::DeleteManifest { name, reference } => {
            Some(("delete", format!("{name}:{reference}")))
        }
        Operation::DeleteBlob { name, digest } => Some(("delete", format!("{name}@{digest}"))),
        Operation::Base
        | Operation::Catalog { .. }
        | Operation::ListTags { .. }
        | Operation::GetManifest { .. }
        | Operation::GetBlob { .. }
        | Operation::StartUpload { .. }
        | Operation::UploadStatus { .. }
        | Operation::PatchUpload { .. }
        | Operation::FinishUpload { .. }
        | Operation::CancelUpload { .. }
        | Operation::Referrers { .. } => None,
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(response: &mut Response, name: &'static str, value: impl AsRef<str>) {
    if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
        response.headers_mut().insert(name, value);
    }
}

/// The `Range` header of an upload standing at `offset`: the inclusive range received.
pub(crate) fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn upload_response(status: StatusCode, name: &RepositoryName, upload: UploadStatus) -> Response {
    let mut response = status.into_response();
    set(
        &mut response,
        "location",
        format!("/v2/{name}/blobs/uploads/{}", upload.id),
    );
    set(&mut response, "range", upload_range(upload.offset));
    set(&mut response, "docker-upload-uuid", upload.id.to_string());
    set(&mut response, "content-length", "0");
    response
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    set(
        &mut response,
        "location",
        format!("/v2/{name}/blobs/{digest}"),
    );
    set(&mut response, "docker-content-digest", digest.to_string());
    set(&mut response, "content-length", "0");
    response
}

fn page_link(path: &str, n: Option<u32>, next: Option<&str>) -> Option<String> {
    let next = next?;
    let n = n.map_or(String::new(), |n| format!("n={n}&"));
    Some(format!(
        "<{path}?{n}last={}>; rel=\"next\"",
        encode_query_value(next)
    ))
}

fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn json_response(value: &serde_json::Value) -> Response {
    let mut response = axum::Json(value).into_response();
    let length = response_length(value);
    set(&mut response, "content-length", length.to_string());
    response
}

fn response_length(value: &serde_json::Value) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

async fn handle(
    state: &AppState,
    operation: Operation,
    request: Request,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let registry = &state.registry;
    let owner = caller.label.as_str();
    let headers = request.headers().clone();
    let body = request.into_body();
    match operation {
        Operation::Base => {
            let mut response = json_response(&serde_json::json!({}));
            set(
                &mut response,
                "docker-distribution-api-version",
                "registry/2.0",
            );
            Ok(response)
        }
        Operation::Catalog { n, last } => {
            let page = registry.catalog(n, last).await?;
            // The page lists only what the caller may pull; `next` still continues the walk.
            let principal = caller.principal(&state.access).await?;
            let visible = state.access.pullable(&principal, page.items).await?;
            let mut response = json_response(&serde_json::json!({ "repositories": visible }));
            if let Some(link) = page_link("/v2/_catalog", n, page.next.as_deref()) {
                set(&mut response, "link", link);
            }
            Ok(response)
        }
        Operation::ListTags { name, n, last } => {
            let page = registry.list_tags(&name, n, last).await?;
            let mut response =
                json_response(&serde_json::json!({ "name": name.as_str(), "tags": page.items }));
            if let Some(link) = page_link(&format!("/v2/{name}/tags/list"), n, page.next.as_deref())
            {
                set(&mut response, "link", link);
            }
            Ok(response)
        }
        Operation::GetManifest {
            name,
            reference,
            head,
        } => {
            let manifest = registry.get_manifest(&name, &reference).await?;
            let length = manifest.body.len();
            let mut response = if head {
                Response::new(Body::empty())
            } else {
                Response::new(Body::from(manifest.body))
            };
            set(&mut response, "content-type", &manifest.media_type);
            set(&mut response, "content-length", length.to_string());
            set(
                &mut response,
                "docker-content-digest",
                manifest.digest.to_string(),
            );
            set(&mut response, "etag", format!("\"{}\"", manifest.digest));
            Ok(response)
        }
        Operation::PutManifest { name, reference } => {
            let limit = registry.limits().max_manifest_bytes;
            let too_large = || ApiError::from(registry::Error::ManifestTooLarge { limit });
            if usize::try_from(content_length(&headers)).unwrap_or(usize::MAX) > limit {
                return Err(too_large());
            }
            let bytes = axum::body::to_bytes(body, limit).await.map_err(|err| {
                if std::error::Error::source(&err)
                    .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
                {
                    too_large()
                } else {
                    ApiError::new(ErrorCode::ManifestInvalid)
                        .message(format!("could not read the manifest body: {err}"))
                }
            })?;
            let pushed = registry
                .put_manifest(
                    &name,
                    &reference,
                    header_str(&headers, header::CONTENT_TYPE),
                    &bytes,
                )
                .await?;
            let mut response = StatusCode::CREATED.into_response();
            set(
                &mut response,
                "location",
                format!("/v2/{name}/manifests/{}", pushed.digest),
            );
            set(
                &mut response,
                "docker-content-digest",
                pushed.digest.to_string(),
            );
            set(&mut response, "content-length", "0");
            if let Some(subject) = pushed.subject {
                set(&mut response, "oci-subject", subject.to_string());
            }
            Ok(response)
        }
        Operation::DeleteManifest { name, reference } => {
            registry.delete_manifest(&name, &reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Operation::GetBlob { name, digest, head } => {
            if head {
                let size = registry.stat_blob(&name, &digest).await?;
                let mut response = Response::new(Body::empty());
                set(&mut response, "content-length", size.to_string());
                set(&mut response, "content-type", "application/octet-stream");
                set(&mut response, "docker-content-digest", digest.to_string());
                set(&mut response, "accept-ranges", "bytes");
                return Ok(response);
            }
            if let Some(url) = registry.blob_redirect(&name, &digest).await? {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                set(&mut response, "location", url);
                set(&mut response, "docker-content-digest", digest.to_string());
                return Ok(response);
            }
            let content = registry
                .read_blob(&name, &digest, header_str(&headers, header::RANGE))
                .await?;
            let mut response = Response::new(Body::from_stream(content.stream));
            match content.range {
                Some(range) => {
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    set(&mut response, "content-length", range.len().to_string());
                    set(
                        &mut response,
                        "content-range",
                        format!("bytes {}-{}/{}", range.start, range.end, content.size),
                    );
                }
                None => set(&mut response, "content-length", content.size.to_string()),
            }
            set(&mut response, "content-type", "application/octet-stream");
            set(&mut response, "docker-content-digest", digest.to_string());
            set(&mut response, "accept-ranges", "bytes");
            Ok(response)
        }
        Operation::DeleteBlob { name, digest } => {
            registry.delete_blob(&name, &digest).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Operation::StartUpload {
            name,
            digest,
            mount,
        } => {
            if mount.is_none() {
                if let Some(digest) = digest {
                    registry
                        .upload_blob(&name, &digest, body.into_data_stream(), owner)
                        .await?;
                    return Ok(blob_created(&name, &digest));
                }
            }
            // Mounting needs pull on `from`; without it the client silently gets a plain upload,
            // which reveals nothing about what `from` holds.
            let mount = match mount {
                Some((digest, from)) if caller.may_pull(&state.access, &from).await? => {
                    Some((digest, from))
                }
                Some(_) | None => None,
            };
            match registry
                .start_upload(
                    &name,
                    mount.as_ref().map(|(digest, from)| (digest, from)),
                    owner,
                )
                .await?
            {
                UploadStart::Mounted(digest) => Ok(blob_created(&name, &digest)),
                UploadStart::Session(status) => {
                    Ok(upload_response(StatusCode::ACCEPTED, &name, status))
                }
            }
        }
        Operation::UploadStatus { name, id } => {
            let status = registry.upload_status(&name, &id, owner).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &name, status))
        }
        Operation::PatchUpload { name, id } => {
            let range = content_range(&headers)?;
            let status = registry
                .append_upload(&name, &id, range, body.into_data_stream(), owner)
                .await
                .map_err(|err| {
                    // A client told its chunk was out of order resumes from these headers.
                    let out_of_order = matches!(err, registry::Error::UploadOutOfOrder { .. });
                    let answer = ApiError::from(err);
                    if out_of_order {
                        answer
                            .header("location", format!("/v2/{name}/blobs/uploads/{id}"))
                            .header("docker-upload-uuid", &id)
                    } else {
                        answer
                    }
                })?;
            Ok(upload_response(StatusCode::ACCEPTED, &name, status))
        }
        Operation::FinishUpload { name, id, digest } => {
            let range = content_range(&headers)?;
            registry
                .finish_upload(&name, &id, &digest, range, body.into_data_stream(), owner)
                .await?;
            Ok(blob_created(&name, &digest))
        }
        Operation::CancelUpload { name, id } => {
            registry.cancel_upload(&name, &id, owner).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Operation::Referrers {
            name,
            digest,
            artifact_type,
        } => {
            let referrers = registry
                .referrers(&name, &digest, artifact_type.as_deref())
                .await?;
            let length = referrers.index.len();
            let mut response = Response::new(Body::from(referrers.index));
            set(&mut response, "content-type", oci::media_type::OCI_INDEX);
            set(&mut response, "content-length", length.to_string());
            if referrers.filtered {
                set(&mut response, "oci-filters-applied", "artifactType");
            }
            Ok(response)
        }
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, built once on the error path like every ApiError"
)]
fn content_range(headers: &HeaderMap) -> Result<Option<oci::ByteRange>, ApiError> {
    operation::content_range(header_str(headers, header::CONTENT_RANGE)).map_err(|err| {
        ApiError::new(ErrorCode::BlobUploadInvalid)
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .message(err.to_string())
    })
}
