//! A Bulwark assembled as `bulwark serve` assembles it (SQLite metadata, local blob storage,
//! access control, the real router), driven in-process with `tower::ServiceExt::oneshot`, and
//! the helpers the distribution tests read through: `call` builds a request, `Reply::expect*`
//! checks it. Requests carry the admin's Basic credentials unless they set their own
//! `Authorization` (or ask for none with `Call::anonymous`).
//!
//! Invariant: every reply passes through `TestRegistry::send`, which checks what must hold for
//! all of them: an error carries the spec's envelope and never a path of the server's disk, and
//! a `HEAD` reply has no body.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use blobstore::BlobStore;
use bytes::Bytes;
use metadata::identity::{IdentityStore as _, UserRecord};
use metadata_sqlite::SqliteStore;
use registry::access::{Access, AccessSettings};
use registry::{Limits, Registry};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tower::ServiceExt;

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// How often test registries read revocations recorded elsewhere: short, so a test sees
/// another replica's revocation arrive without waiting seconds.
pub const REVOCATION_REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// Revocations older than this are read again before a token is honoured in test registries.
pub const REVOCATION_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// The manifest size limit of test registries: small, so the limit is cheap to cross.
pub const MAX_MANIFEST_BYTES: usize = 4096;

/// The error codes of the distribution spec (v1.1); no other code may reach a client.
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "UNKNOWN",
];

pub fn test_limits() -> Limits {
    Limits {
        max_manifest_bytes: MAX_MANIFEST_BYTES,
        ..Limits::default()
    }
}

/// One registry with its own database and storage in a temporary directory.
pub struct TestRegistry {
    /// The registry behind the router, for use cases HTTP does not reach (upload expiry).
    pub registry: Arc<Registry>,
    /// The metadata store, for arranging users, projects and robots directly (and for
    /// changes another replica would make).
    pub store: Arc<SqliteStore>,
    /// Access control behind the router.
    pub access: Arc<Access>,
    app: Router,
    dir: TempDir,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        TestRegistry::with_limits(test_limits()).await
    }

    pub async fn with_limits(limits: Limits) -> TestRegistry {
        let registry = TestRegistry::assemble(limits, AccessSettings::default(), None).await;
        registry.create_admin().await;
        registry
    }

    pub async fn with_settings(settings: AccessSettings) -> TestRegistry {
        let registry = TestRegistry::assemble(test_limits(), settings, None).await;
        registry.create_admin().await;
        registry
    }

    /// A registry as a first start serves it: listening before the admin account exists, with
    /// logins held until the returned sender says it does (`create_admin`, then `true`).
    pub async fn first_start() -> (TestRegistry, tokio::sync::watch::Sender<bool>) {
        let (created, ready) = tokio::sync::watch::channel(false);
        let registry =
            TestRegistry::assemble(test_limits(), AccessSettings::default(), Some(ready)).await;
        (registry, created)
    }

    async fn assemble(
        limits: Limits,
        settings: AccessSettings,
        accounts_ready: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("metadata.db"))
            .await
            .expect("open the metadata database");
        let blobs = BlobStore::local(&dir.path().join("storage")).expect("open blob storage");
        let store = Arc::new(store);
        let settings = AccessSettings {
            revocation_refresh: REVOCATION_REFRESH,
            revocation_max_age: REVOCATION_MAX_AGE,
            ..settings
        };
        let mut access = Access::open(store.clone(), settings)
            .await
            .expect("open access control");
        if let Some(ready) = accounts_ready {
            access.hold_logins_until(ready);
        }
        let registry = Arc::new(Registry::new(store.clone(), blobs, limits));
        let access = Arc::new(access);
        let app = api::router(Arc::clone(&registry), Arc::clone(&access));
        TestRegistry {
            registry,
            store,
            access,
            app,
            dir,
        }
    }

    /// Creates the admin account with `ADMIN_PASSWORD`.
    pub async fn create_admin(&self) {
        let admin = UserRecord {
            name: ADMIN.into(),
            password_hash: auth::password::hash(ADMIN_PASSWORD).expect("hash"),
            admin: true,
            disabled: false,
            created_at: 0,
        };
        self.store
            .create_user(&admin)
            .await
            .expect("create the admin");
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the bytes of an upload session wait for their digest.
    pub fn staging_file(&self, upload_id: &str) -> PathBuf {
        self.storage().join("uploads").join(upload_id)
    }

    /// Where a committed blob lives.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    pub async fn send(&self, call: Call) -> Reply {
        let method = call.method.clone();
        let uri = call.uri.clone();
        let response = self
            .app
            .clone()
            .oneshot(call.into_request())
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("read the response body");
        let reply = Reply {
            request: format!("{method} {uri}"),
            status,
            headers,
            body,
        };
        // The token service answers in OAuth2's error shape, not the registry's envelope.
        if uri.starts_with("/v2") {
            reply.check_invariants(&method, self.dir.path());
        }
        reply
    }

    pub async fn get(&self, uri: impl Into<String>) -> Reply {
        self.send(call("GET", uri)).await
    }

    pub async fn head(&self, uri: impl Into<String>) -> Reply {
        self.send(call("HEAD", uri)).await
    }

    pub async fn delete(&self, uri: impl Into<String>) -> Reply {
        self.send(call("DELETE", uri)).await
    }

    /// Starts an upload session in `repository` and returns its location.
    pub async fn start_upload(&self, repository: &str) -> String {
        let reply = self
            .send(call("POST", format!("/v2/{repository}/blobs/uploads/")))
            .await;
        reply.expect(202);
        reply.header("location").to_owned()
    }

    /// Pushes a blob with one `POST ?digest=` and returns its digest.
    pub async fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = digest(bytes);
        self.send(
            call(
                "POST",
                format!("/v2/{repository}/blobs/uploads/?digest={digest}"),
            )
            .octets(bytes),
        )
        .await
        .expect(201);
        digest
    }

    /// Uploads `bytes` in `chunks` ranged PATCHes and closes the session; returns the reply to
    /// the closing PUT.
    pub async fn push_blob_in_chunks(
        &self,
        repository: &str,
        bytes: &[u8],
        chunks: usize,
    ) -> Reply {
        let location = self.start_upload(repository).await;
        let size = bytes.len().div_ceil(chunks.max(1)).max(1);
        for (i, chunk) in bytes.chunks(size).enumerate() {
            let start = i * size;
            let end = start + chunk.len() - 1;
            self.send(
                call("PATCH", &location)
                    .header("content-range", format!("{start}-{end}"))
                    .octets(chunk),
            )
            .await
            .expect(202)
            .expect_header("range", &format!("0-{end}"));
        }
        self.send(call("PUT", format!("{location}?digest={}", digest(bytes))))
            .await
    }

    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Reply {
        self.send(
            call("PUT", format!("/v2/{repository}/manifests/{reference}"))
                .header("content-type", &manifest.media_type)
                .body(manifest.bytes.clone()),
        )
        .await
    }

    /// Pushes an OCI image (a config and one layer, both derived from `seed`) tagged `tag`.
    pub async fn push_image(&self, repository: &str, tag: &str, seed: &str) -> Manifest {
        let config = image_config(seed);
        let layer = format!("layer of {seed}").into_bytes();
        self.push_blob(repository, &config).await;
        self.push_blob(repository, &layer).await;
        let manifest = oci_image(&config, &[&layer]);
        self.push_manifest(repository, tag, &manifest)
            .await
            .expect(201);
        manifest
    }
}

/// A request under construction.
pub struct Call {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: bool,
    stream: Option<Body>,
    client: Option<IpAddr>,
}

pub fn call(method: &str, uri: impl Into<String>) -> Call {
    Call {
        method: method.to_owned(),
        uri: uri.into(),
        headers: Vec::new(),
        body: Vec::new(),
        content_length: true,
        stream: None,
        client: None,
    }
}

impl Call {
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Call {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Call {
        self.body = body.into();
        self
    }

    /// A blob chunk, sent as clients send one.
    pub fn octets(self, body: &[u8]) -> Call {
        self.header("content-type", "application/octet-stream")
            .body(body)
    }

    /// Streams the body in small pieces with no `Content-Length`, as a chunked transfer does.
    pub fn streamed(mut self) -> Call {
        self.content_length = false;
        self
    }

    /// A body the test feeds itself, e.g. one that stalls half-way.
    pub fn body_stream(mut self, body: Body) -> Call {
        self.stream = Some(body);
        self
    }

    /// Comes from `address`, as the server tells handlers (`ClientAddress`); without it a
    /// request has no known address.
    pub fn client_address(mut self, address: impl Into<IpAddr>) -> Call {
        self.client = Some(address.into());
        self
    }

    /// Sends no credentials at all.
    pub fn anonymous(mut self) -> Call {
        self.headers.push(("authorization".into(), String::new()));
        self
    }

    fn into_request(mut self) -> Request<Body> {
        let has_authorization = self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        if !has_authorization {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{ADMIN}:{ADMIN_PASSWORD}"));
            self.headers
                .push(("authorization".into(), format!("Basic {encoded}")));
        }
        // Clients send the host they reached; an empty `host` asks for none at all.
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            self.headers
                .push(("host".into(), "registry.test:5000".into()));
        }
        self.headers.retain(|(name, value)| {
            !((name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("host"))
                && value.is_empty())
        });
        let mut builder = Request::builder()
            .method(Method::from_bytes(self.method.as_bytes()).expect("a method"))
            .uri(&self.uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let body = if let Some(stream) = self.stream {
            stream
        } else if self.content_length {
            builder = builder.header("content-length", self.body.len().to_string());
            Body::from(self.body)
        } else {
            let pieces: Vec<Result<Bytes, std::io::Error>> = self
                .body
                .chunks(1000)
                .map(|piece| Ok(Bytes::copy_from_slice(piece)))
                .collect();
            Body::from_stream(futures_util::stream::iter(pieces))
        };
        let mut request = builder.body(body).expect("a valid request");
        if let Some(client) = self.client {
            request
                .extensions_mut()
                .insert(api::access::ClientAddress(client));
        }
        request
    }
}

/// A response, read whole.
pub struct Reply {
    request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(400).collect();
        let more = if shown.len() < body.len() { "..." } else { "" };
        format!(
            "{} answered {} with {:?} and body {shown}{more}",
            self.request, self.status, self.headers,
        )
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Reply {
        assert_eq!(self.status.as_u16(), status, "{}", self.describe());
        self
    }

    #[track_caller]
    pub fn expect_header(&self, name: &str, value: &str) -> &Reply {
        assert_eq!(
            self.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "header {name}: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn expect_no_header(&self, name: &str) -> &Reply {
        assert!(
            self.headers.get(name).is_none(),
            "unexpected header {name}: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn expect_body(&self, body: &[u8]) -> &Reply {
        assert!(
            self.body == body,
            "expected a body of {} bytes: {}",
            body.len(),
            self.describe()
        );
        self
    }

    /// An error reply: this status and, for a request with a body, this spec code.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Reply {
        self.expect(status);
        if !self.request.starts_with("HEAD ") {
            assert_eq!(self.error_codes(), vec![code], "{}", self.describe());
        }
        self
    }

    #[track_caller]
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no header {name}: {}", self.describe()))
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.describe()))
    }

    pub fn error_codes(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|error| error["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What holds for every reply, checked once here instead of in every test.
    #[track_caller]
    fn check_invariants(&self, method: &str, root: &Path) {
        if method == "HEAD" {
            assert!(
                self.body.is_empty(),
                "HEAD with a body: {}",
                self.describe()
            );
            return;
        }
        if self.status.as_u16() < 400 {
            return;
        }
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{}",
            self.describe()
        );
        let envelope = self.json();
        let errors = envelope["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors array: {}", self.describe()));
        assert!(
            !errors.is_empty(),
            "empty errors array: {}",
            self.describe()
        );
        for error in errors {
            let code = error["code"].as_str().unwrap_or_default();
            assert!(
                SPEC_CODES.contains(&code),
                "code {code:?} is not in the spec: {}",
                self.describe()
            );
            assert!(
                error["message"].is_string(),
                "no message: {}",
                self.describe()
            );
        }
        let text = String::from_utf8_lossy(&self.body);
        let root = root.to_string_lossy();
        let canonical = Path::new(root.as_ref())
            .canonicalize()
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        for secret in [root.as_ref(), canonical.as_str(), "metadata.db"] {
            assert!(
                secret.is_empty() || !text.contains(secret),
                "an error reveals {secret:?}: {}",
                self.describe()
            );
        }
    }
}

/// The digest of `bytes`, computed independently of the registry.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", oci::digest::to_hex(&Sha256::digest(bytes)))
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(bytes), "size": bytes.len() })
}

/// A manifest as pushed: the exact bytes, the media type they are sent with, their digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Manifest {
    /// Pretty-printed with a trailing newline, so a registry that re-serialized the JSON
    /// would be caught returning different bytes.
    pub fn new(media_type: &str, value: &Value) -> Manifest {
        let mut bytes = serde_json::to_vec_pretty(value).expect("serialize a manifest");
        bytes.push(b'\n');
        Manifest::raw(media_type, bytes)
    }

    pub fn raw(media_type: &str, bytes: impl Into<Vec<u8>>) -> Manifest {
        let bytes = bytes.into();
        Manifest {
            media_type: media_type.to_owned(),
            digest: digest(&bytes),
            bytes,
        }
    }

    /// This manifest as an entry of an index.
    pub fn descriptor(&self) -> Value {
        descriptor(&self.media_type, &self.bytes)
    }
}

pub fn image_config(seed: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "seed": seed } },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("serialize a config")
}

pub fn oci_image(config: &[u8], layers: &[&[u8]]) -> Manifest {
    let layers: Vec<Value> = layers
        .iter()
        .map(|layer| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer))
        .collect();
    Manifest::new(
        oci::media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": oci::media_type::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": layers,
        }),
    )
}
