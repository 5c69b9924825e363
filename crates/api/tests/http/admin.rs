//! The admin API (`/api/v1`), driven in-process with `tower::ServiceExt::oneshot` against a
//! registry on a temporary SQLite database.
//!
//! Every reply passes through `Bulwark::send`, which checks what must hold for all of them: an
//! error is an RFC 9457 problem, every status is one the OpenAPI document lists for that
//! operation, and every JSON body (and the body of every request that succeeded) fits the
//! schema the document publishes. So the document cannot drift from what the API does.
//!
//! The snapshot of the document is `crates/api/openapi.json`; after a deliberate change,
//! regenerate it with `BULWARK_UPDATE_SNAPSHOT=1 cargo test -p api --test http admin`.

use std::net::IpAddr;
use std::sync::Arc;

use api::access::ClientAddress;
use api::AppState;
use auth::policy::Principal;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blobstore::BlobStore;
use metadata::identity::{IdentityStore, RobotRecord, UserRecord};
use metadata::MetadataStore;
use metadata_sqlite::SqliteStore;
use registry::access::{Access, AccessSettings};
use registry::{Limits, Registry};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

const ROOT_PASSWORD: &str = "root password 1234";
const PASSWORD: &str = "correct horse battery";

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("time fits")
}

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
    Raw(&'static str),
}

fn basic(user: &str, secret: &str) -> Auth {
    Auth::Basic(user.to_owned(), secret.to_owned())
}

fn root() -> Auth {
    basic("root", ROOT_PASSWORD)
}

fn user(name: &str) -> Auth {
    basic(name, PASSWORD)
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected answer: {:#}",
            self.body
        );
        &self.body
    }

    /// Expects a problem with this status whose detail contains `words`.
    #[track_caller]
    fn problem(&self, status: u16, words: &str) {
        self.expect(status);
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "detail {detail:?} lacks {words:?}");
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One registry with its own database and storage.
struct Bulwark {
    store: Arc<SqliteStore>,
    access: Arc<Access>,
    app: Router,
    document: Value,
    _dir: TempDir,
}

impl Bulwark {
    /// A registry whose only account is the admin `root`.
    async fn start() -> Bulwark {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("metadata.db"))
                .await
                .expect("open the metadata database"),
        );
        let blobs = BlobStore::local(&dir.path().join("storage")).expect("open blob storage");
        let registry = Arc::new(Registry::new(store.clone(), blobs, Limits::default()));
        let access = Arc::new(
            Access::open(store.clone(), AccessSettings::default())
                .await
                .expect("open access"),
        );
        store
            .create_user(&UserRecord {
                name: "root".into(),
                password_hash: auth::password::hash(ROOT_PASSWORD).expect("hash"),
                admin: true,
                disabled: false,
                created_at: now(),
            })
            .await
            .expect("create the first admin");
        // The token service too, for registry tokens as clients obtain them.
        let app = api::admin::router()
            .route(
                "/auth/token",
                axum::routing::get(api::token::get_token).post(api::token::post_token),
            )
            .with_state(AppState::new(registry, access.clone()));
        Bulwark {
            store,
            access,
            app,
            document: api::admin::openapi(),
            _dir: dir,
        }
    }

    /// A registry with users alice (owner of private project team), bob (developer in team),
    /// carol (no project), and public project open where nobody is a member.
    async fn with_team() -> Bulwark {
        let bulwark = Bulwark::start().await;
        for name in ["alice", "bob", "carol"] {
            bulwark
                .post(
                    "/api/v1/users",
                    &root(),
                    json!({"name": name, "password": PASSWORD}),
                )
                .await
                .expect(201);
        }
        bulwark
            .post("/api/v1/projects", &root(), json!({"name": "team"}))
            .await
            .expect(201);
        bulwark
            .post(
                "/api/v1/projects",
                &root(),
                json!({"name": "open", "public": true}),
            )
            .await
            .expect(201);
        bulwark
            .put(
                "/api/v1/projects/team/members/alice",
                &root(),
                json!({"role": "owner"}),
            )
            .await
            .expect(200);
        bulwark
            .put(
                "/api/v1/projects/team/members/bob",
                &root(),
                json!({"role": "developer"}),
            )
            .await
            .expect(200);
        bulwark
    }

    async fn get(&self, path: &str, auth: &Auth) -> Reply {
        self.send(Method::GET, path, auth, None).await
    }

    async fn post(&self, path: &str, auth: &Auth, body: Value) -> Reply {
        self.send(Method::POST, path, auth, Some(body)).await
    }

    async fn put(&self, path: &str, auth: &Auth, body: Value) -> Reply {
        self.send(Method::PUT, path, auth, Some(body)).await
    }

    async fn patch(&self, path: &str, auth: &Auth, body: Value) -> Reply {
        self.send(Method::PATCH, path, auth, Some(body)).await
    }

    async fn delete(&self, path: &str, auth: &Auth) -> Reply {
        self.send(Method::DELETE, path, auth, None).await
    }

    async fn send(&self, method: Method, path: &str, auth: &Auth, body: Option<Value>) -> Reply {
        let bytes = body
            .as_ref()
            .map(|body| serde_json::to_vec(body).expect("json"))
            .unwrap_or_default();
        let request = self.request(
            method.clone(),
            path,
            auth,
            body.is_some().then_some("application/json"),
            bytes,
        );
        let reply = self.raw(request).await;
        self.check_against_document(&method, path, body.as_ref(), &reply);
        reply
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        auth: &Auth,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        // Each account logs in from its own address, so one test's deliberate failures for
        // one account do not throttle the others.
        let client = match auth {
            Auth::Basic(user, _) => IpAddr::from([
                10,
                1,
                user.len() as u8,
                user.bytes()
                    .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b)),
            ]),
            _ => IpAddr::from([10, 0, 0, 1]),
        };
        match auth {
            Auth::Anonymous => {}
            Auth::Basic(user, secret) => {
                builder = builder.header(
                    header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(format!("{user}:{secret}"))),
                )
            }
            Auth::Bearer(token) => {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"))
            }
            Auth::Raw(value) => builder = builder.header(header::AUTHORIZATION, *value),
        }
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let mut request = builder.body(Body::from(body)).expect("request");
        request.extensions_mut().insert(ClientAddress(client));
        request
    }

    async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("every answer is JSON")
        };
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json"),
                "{body}"
            );
            assert_eq!(body["status"], json!(status.as_u16()), "{body}");
            assert_eq!(body["type"], json!("about:blank"));
            assert!(
                body["title"].is_string() && body["detail"].is_string(),
                "{body}"
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                headers
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok()),
                Some("Basic realm=\"bulwark\"")
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The documented operation a request reached, if the document has one.
    fn operation(&self, method: &Method, path: &str) -> Option<&Value> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()?
            .iter()
            .find_map(|(template, item)| {
                let parts: Vec<&str> = template.split('/').collect();
                let matches = parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(part, segment)| part.starts_with('{') || part == segment);
                matches.then(|| item.get(method.as_str().to_ascii_lowercase()))?
            })
    }

    fn check_against_document(
        &self,
        method: &Method,
        path: &str,
        request: Option<&Value>,
        reply: &Reply,
    ) {
        let Some(operation) = self.operation(method, path) else {
            assert!(
                matches!(reply.status.as_u16(), 404 | 405),
                "{method} {path} is not documented but answered {}",
                reply.status
            );
            return;
        };
        let status = reply.status.as_u16().to_string();
        let Some(documented) = operation["responses"].get(&status) else {
            panic!(
                "{method} {path} answered {status}, which the document does not list: {:#}",
                reply.body
            );
        };
        let documented = resolve(&self.document, documented);
        let schema = documented["content"]
            .as_object()
            .and_then(|content| content.values().next())
            .map(|media| &media["schema"]);
        match schema {
            Some(schema) => {
                if let Err(err) = validate(&self.document, schema, &reply.body, "$") {
                    panic!(
                        "{method} {path} answered {status} with a body off its schema: {err}\n{:#}",
                        reply.body
                    );
                }
            }
            None => assert!(
                reply.body.is_null(),
                "{method} {path} answered {status} with an undocumented body"
            ),
        }
        if let (Some(body), true) = (request, reply.status.is_success()) {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            if let Err(err) = validate(&self.document, schema, body, "$") {
                panic!("{method} {path} accepted a body off its schema: {err}\n{body:#}");
            }
        }
    }

    /// A registry token for `principal`, as the token service would issue it, naming no
    /// credential (like a token issued before tokens named theirs).
    async fn token_for(&self, principal: &Principal) -> String {
        self.access
            .issue(principal, None, &[], false)
            .await
            .expect("issue")
            .access
            .token
    }

    /// A token service answer (`GET /auth/token`, offline) to `auth`.
    async fn registry_token(&self, auth: &Auth) -> Value {
        let request = self.request(
            Method::GET,
            "/auth/token?service=bulwark&offline_token=true",
            auth,
            None,
            Vec::new(),
        );
        self.raw(request).await.expect(200).clone()
    }

    /// A token service answer to a refresh token (`POST /auth/token`).
    async fn refreshed_token(&self, refresh_token: &str) -> Value {
        let request = self.request(
            Method::POST,
            "/auth/token",
            &Auth::Anonymous,
            Some("application/x-www-form-urlencoded"),
            format!("grant_type=refresh_token&refresh_token={refresh_token}&service=bulwark")
                .into_bytes(),
        );
        self.raw(request).await.expect(200).clone()
    }

    /// Audit events matching `query`, newest first.
    async fn audit(&self, query: &str) -> Vec<Value> {
        let reply = self.get(&format!("/api/v1/audit?{query}"), &root()).await;
        reply.expect(200)["items"]
            .as_array()
            .expect("items")
            .clone()
    }

    /// The latest audit event of an action on a target, as `result by principal (reason)`.
    async fn last_audit(&self, action: &str, target: &str) -> String {
        let events = self
            .audit(&format!("action={action}&target={}", encode(target)))
            .await;
        let event = events
            .first()
            .unwrap_or_else(|| panic!("no audit event {action} on {target}"));
        format!(
            "{} by {} ({})",
            event["result"].as_str().unwrap_or("?"),
            event["principal"].as_str().unwrap_or("?"),
            event["reason"].as_str().unwrap_or("-")
        )
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local reference");
            resolve(
                document,
                document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling reference {reference}")),
            )
        }
        None => value,
    }
}

/// The part of OpenAPI 3.0 schemas this document uses: `$ref`, `allOf`, `nullable`, `type`,
/// `properties`, `required`, `additionalProperties: false`, `items`, `enum`, `minItems`.
fn validate(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(document, schema);
    if let Some(all) = schema["allOf"].as_array() {
        if value.is_null() && schema["nullable"] == json!(true) {
            return Ok(());
        }
        return all
            .iter()
            .try_for_each(|part| validate(document, part, value, at));
    }
    if value.is_null() {
        return if schema["nullable"] == json!(true) {
            Ok(())
        } else {
            Err(format!("{at} is null"))
        };
    }
    let fits = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        other => return Err(format!("{at}: schema type {other:?} is not handled")),
    };
    if !fits {
        return Err(format!("{at} should be {}: {value}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at} = {value} is not one of {allowed:?}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema["minItems"].as_u64() {
            if (items.len() as u64) < min {
                return Err(format!("{at} has fewer than {min} items"));
            }
        }
        for (index, item) in items.iter().enumerate() {
            validate(document, &schema["items"], item, &format!("{at}[{index}]"))?;
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}.{name} is missing"));
            }
        }
        for (name, field) in object {
            match properties.get(name) {
                Some(property) => validate(document, property, field, &format!("{at}.{name}"))?,
                None if schema["additionalProperties"] == json!(false) => {
                    return Err(format!("{at}.{name} is not documented"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn names(page: &Value, field: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item[field].as_str().expect("name").to_owned())
        .collect()
}

// ---- the document ----

#[tokio::test]
async fn the_openapi_document_matches_its_snapshot_and_is_served_publicly() {
    let bulwark = Bulwark::start().await;
    let generated = format!("{:#}\n", api::admin::openapi());
    let snapshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("BULWARK_UPDATE_SNAPSHOT").is_some() {
        std::fs::write(&snapshot, &generated).expect("write the snapshot");
    }
    let stored = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert!(
        stored == generated,
        "crates/api/openapi.json differs from the generated document; if the change is deliberate, run\n    BULWARK_UPDATE_SNAPSHOT=1 cargo test -p api --test http admin\nand commit the new snapshot"
    );
    let served = bulwark.get("/api/v1/openapi.json", &Auth::Anonymous).await;
    assert_eq!(served.expect(200), &api::admin::openapi());
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_refuses_anonymous_callers() {
    let bulwark = Bulwark::start().await;
    let document = api::admin::openapi();
    let mut operations = 0;
    for (template, item) in document["paths"].as_object().expect("paths") {
        let path: String = template
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            let method: Method = method.to_ascii_uppercase().parse().expect("method");
            let body = operation.get("requestBody").map(|_| json!({}));
            let reply = bulwark
                .send(method.clone(), &path, &Auth::Anonymous, body)
                .await;
            if operation["security"] == json!([]) {
                reply.expect(200);
            } else {
                reply.problem(401, "authentication required");
            }
        }
    }
    assert_eq!(operations, api::admin::endpoints().len());
    assert_eq!(
        operations, 35,
        "a new endpoint? count it here after covering it below"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_problems() {
    let bulwark = Bulwark::start().await;
    bulwark
        .get("/api/v1/nothing", &root())
        .await
        .problem(404, "no such endpoint");
    bulwark
        .get("/api/v1", &root())
        .await
        .problem(404, "no such endpoint");
    bulwark
        .get("/api/v1/users/root/nothing", &root())
        .await
        .problem(404, "no such endpoint");
    bulwark
        .send(Method::PUT, "/api/v1/users", &root(), Some(json!({})))
        .await
        .problem(405, "does not take that method");
    bulwark
        .delete("/api/v1/whoami", &root())
        .await
        .problem(405, "does not take that method");
}

// ---- authentication ----

#[tokio::test]
async fn credentials_are_checked_and_failures_throttled() {
    let bulwark = Bulwark::start().await;
    let whoami = bulwark.get("/api/v1/whoami", &root()).await;
    assert_eq!(
        whoami.expect(200),
        &json!({"principal": "user:root", "kind": "user", "admin": true, "projects": [], "robot": null})
    );
    assert_eq!(whoami.header("cache-control"), Some("no-store"));

    bulwark
        .get("/api/v1/whoami", &Auth::Raw("Digest abc"))
        .await
        .problem(401, "unsupported Authorization scheme");
    bulwark
        .get("/api/v1/whoami", &Auth::Raw("Basic !!!"))
        .await
        .problem(401, "malformed");
    bulwark
        .get("/api/v1/whoami", &Auth::Bearer("not.a.token".into()))
        .await
        .problem(401, "invalid token");
    bulwark
        .get("/api/v1/whoami", &basic("nobody", "whatever"))
        .await
        .problem(401, "invalid username or password");
    // Five failures are free; the sixth locks the account for a moment.
    for _ in 0..6 {
        bulwark
            .get("/api/v1/whoami", &basic("root", "wrong password"))
            .await
            .problem(401, "invalid username or password");
    }
    let throttled = bulwark
        .get("/api/v1/whoami", &basic("root", "wrong password"))
        .await;
    throttled.problem(429, "too many failed logins");
    assert!(throttled
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|secs| secs > 0));
    // Even the right password waits out the lock.
    bulwark.get("/api/v1/whoami", &root()).await.expect(429);
    let failures = bulwark
        .store
        .audit(&metadata::identity::AuditFilter {
            action: Some("login".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(
        failures
            .iter()
            .all(|record| record.event.result == "failed")
            && failures.len() >= 6,
        "{failures:?}"
    );
}

#[tokio::test]
async fn registry_tokens_authenticate_and_follow_the_account_as_it_stands() {
    let bulwark = Bulwark::with_team().await;
    let alice = Principal::User {
        name: "alice".into(),
        admin: false,
        disabled: false,
    };
    let token = Auth::Bearer(bulwark.token_for(&alice).await);
    let whoami = bulwark.get("/api/v1/whoami", &token).await;
    assert_eq!(
        whoami.expect(200)["projects"],
        json!([{"project": "team", "role": "owner"}])
    );
    bulwark
        .patch("/api/v1/users/alice", &root(), json!({"disabled": true}))
        .await
        .expect(200);
    bulwark
        .get("/api/v1/whoami", &token)
        .await
        .problem(401, "token was revoked");
    bulwark
        .get("/api/v1/whoami", &user("alice"))
        .await
        .problem(401, "invalid username or password");
    bulwark
        .patch("/api/v1/users/alice", &root(), json!({"disabled": false}))
        .await
        .expect(200);
    bulwark
        .get("/api/v1/whoami", &token)
        .await
        .problem(401, "token was revoked");
    let fresh = Auth::Bearer(bulwark.token_for(&alice).await);
    bulwark.get("/api/v1/whoami", &fresh).await.expect(200);
    bulwark
        .delete("/api/v1/users/alice", &root())
        .await
        .expect(204);
    bulwark
        .get("/api/v1/whoami", &fresh)
        .await
        .problem(401, "token was revoked");
}

// ---- users ----

#[tokio::test]
async fn admins_manage_users() {
    let bulwark = Bulwark::start().await;
    let created = bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "alice", "password": PASSWORD}),
        )
        .await;
    let alice = created.expect(201);
    assert_eq!(
        (
            alice["name"].as_str(),
            alice["admin"].as_bool(),
            alice["disabled"].as_bool()
        ),
        (Some("alice"), Some(false), Some(false))
    );
    assert!(alice.get("password").is_none() && alice.get("password_hash").is_none());
    bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "bob", "password": PASSWORD, "admin": true}),
        )
        .await
        .expect(201);
    bulwark
        .get("/api/v1/whoami", &user("alice"))
        .await
        .expect(200);

    bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "alice", "password": PASSWORD}),
        )
        .await
        .problem(409, "exists already");
    bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "Alice!", "password": PASSWORD}),
        )
        .await
        .problem(422, "must match");
    bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "dave", "password": "short"}),
        )
        .await
        .problem(422, "at least 12 characters");

    let first = bulwark.get("/api/v1/users?limit=2", &root()).await;
    assert_eq!(names(first.expect(200), "name"), ["alice", "bob"]);
    assert_eq!(first.body["next"], json!("bob"));
    let second = bulwark
        .get("/api/v1/users?limit=2&after=bob", &root())
        .await;
    assert_eq!(names(second.expect(200), "name"), ["root"]);
    assert_eq!(second.body["next"], Value::Null);
    bulwark
        .get("/api/v1/users?limit=0", &root())
        .await
        .problem(400, "out of range");
    bulwark
        .get("/api/v1/users?limit=1001", &root())
        .await
        .problem(400, "out of range");
    bulwark
        .get("/api/v1/users?page=2", &root())
        .await
        .problem(400, "invalid query");

    assert_eq!(
        bulwark
            .get("/api/v1/users/alice", &root())
            .await
            .expect(200)["name"],
        json!("alice")
    );
    bulwark
        .get("/api/v1/users/ghost", &root())
        .await
        .problem(404, "user ghost does not exist");

    let updated = bulwark
        .patch("/api/v1/users/alice", &root(), json!({"admin": true}))
        .await;
    assert_eq!(updated.expect(200)["admin"], json!(true));
    bulwark
        .patch(
            "/api/v1/users/alice",
            &root(),
            json!({"admin": false, "password": "a brand new password"}),
        )
        .await
        .expect(200);
    bulwark
        .get("/api/v1/whoami", &basic("alice", "a brand new password"))
        .await
        .expect(200);
    bulwark
        .patch("/api/v1/users/alice", &root(), json!({}))
        .await
        .problem(422, "nothing to change");
    bulwark
        .patch("/api/v1/users/alice", &root(), json!({"password": "short"}))
        .await
        .problem(422, "at least 12");
    bulwark
        .patch("/api/v1/users/ghost", &root(), json!({"disabled": true}))
        .await
        .problem(404, "user ghost");
    bulwark
        .patch("/api/v1/users/root", &root(), json!({"admin": false}))
        .await
        .problem(409, "ask another admin");
    bulwark
        .patch("/api/v1/users/root", &root(), json!({"disabled": true}))
        .await
        .problem(409, "ask another admin");
    bulwark
        .patch(
            "/api/v1/users/root",
            &root(),
            json!({"password": "another password"}),
        )
        .await
        .problem(422, "current password");
    bulwark
        .delete("/api/v1/users/root", &root())
        .await
        .problem(409, "ask another admin");

    bulwark
        .delete("/api/v1/users/alice", &root())
        .await
        .expect(204);
    bulwark
        .delete("/api/v1/users/alice", &root())
        .await
        .problem(404, "user alice");
    bulwark
        .get("/api/v1/whoami", &basic("alice", "a brand new password"))
        .await
        .expect(401);

    assert_eq!(
        bulwark.last_audit("user.create", "alice").await,
        "failed by user:root (user alice exists already)"
    );
    assert_eq!(
        bulwark
            .audit("action=user.create&target=alice&result=allowed")
            .await
            .len(),
        1
    );
    assert_eq!(bulwark.last_audit("user.update", "root").await, "failed by user:root (admins cannot remove their own admin role or disable themselves; ask another admin)");
    assert_eq!(
        bulwark.last_audit("user.delete", "root").await,
        "failed by user:root (admins cannot delete themselves; ask another admin)"
    );
    assert_eq!(
        bulwark.last_audit("user.delete", "alice").await,
        "failed by user:root (user alice does not exist)"
    );
}

#[tokio::test]
async fn only_admins_manage_users_and_users_see_themselves() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .post(
            "/api/v1/users",
            &user("alice"),
            json!({"name": "eve", "password": PASSWORD}),
        )
        .await
        .problem(403, "only system admins");
    bulwark
        .get("/api/v1/users", &user("alice"))
        .await
        .problem(403, "only system admins");
    bulwark
        .patch(
            "/api/v1/users/alice",
            &user("alice"),
            json!({"admin": true}),
        )
        .await
        .problem(403, "only system admins");
    bulwark
        .delete("/api/v1/users/bob", &user("alice"))
        .await
        .problem(403, "only system admins");
    assert_eq!(
        bulwark
            .get("/api/v1/users/alice", &user("alice"))
            .await
            .expect(200)["name"],
        json!("alice")
    );
    bulwark
        .get("/api/v1/users/bob", &user("alice"))
        .await
        .problem(403, "only admins may look at other users");
    assert_eq!(
        bulwark.last_audit("user.update", "alice").await,
        "denied by user:alice (only system admins may do this)"
    );
    assert_eq!(
        bulwark.last_audit("user.read", "bob").await,
        "denied by user:alice (only admins may look at other users)"
    );
}

#[tokio::test]
async fn users_change_their_own_password_with_the_current_one() {
    let bulwark = Bulwark::with_team().await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    bulwark
        .put(
            "/api/v1/users/alice/password",
            &user("alice"),
            change("wrong password!", "the next password"),
        )
        .await
        .problem(403, "current password is wrong");
    bulwark
        .put(
            "/api/v1/users/bob/password",
            &user("alice"),
            change(PASSWORD, "the next password"),
        )
        .await
        .problem(403, "only their own password");
    bulwark
        .put(
            "/api/v1/users/bob/password",
            &root(),
            change(PASSWORD, "the next password"),
        )
        .await
        .problem(403, "only their own password");
    bulwark
        .put(
            "/api/v1/users/alice/password",
            &user("alice"),
            change(PASSWORD, "short"),
        )
        .await
        .problem(422, "at least 12");
    let token = bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "laptop"}),
        )
        .await;
    let secret = token.expect(201)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    bulwark
        .put(
            "/api/v1/users/alice/password",
            &user("alice"),
            change(&secret, "the next password"),
        )
        .await
        .problem(403, "current password is wrong");
    // Logged in with an access token, not even the right current password will do: a leaked
    // token must not become the account.
    bulwark
        .put(
            "/api/v1/users/alice/password",
            &basic("alice", &secret),
            change(PASSWORD, "the next password"),
        )
        .await
        .problem(403, "needs a login with the account's password");

    bulwark
        .put(
            "/api/v1/users/alice/password",
            &user("alice"),
            change(PASSWORD, "the next password"),
        )
        .await
        .expect(204);
    bulwark
        .get("/api/v1/whoami", &basic("alice", "the next password"))
        .await
        .expect(200);
    bulwark
        .get("/api/v1/whoami", &user("alice"))
        .await
        .expect(401);
    assert_eq!(
        bulwark.last_audit("user.password", "alice").await,
        "allowed by user:alice (-)"
    );
    let denials = bulwark.audit("action=user.password&result=denied").await;
    assert_eq!(denials.len(), 5, "{denials:#?}");
}

// ---- personal access tokens ----

#[tokio::test]
async fn personal_access_tokens_log_in_until_revoked_and_show_their_secret_once() {
    let bulwark = Bulwark::with_team().await;
    let before = now();
    let created = bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "ci laptop", "expires_in": "30d"}),
        )
        .await;
    let token = created.expect(201).clone();
    let secret = token["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("bwk_"));
    let expires_at = token["expires_at"].as_i64().expect("expiry");
    assert!((before + 30 * 86_400..=now() + 30 * 86_400).contains(&expires_at));
    let id = token["id"].as_str().expect("id").to_owned();

    let whoami = bulwark
        .get("/api/v1/whoami", &basic("alice", &secret))
        .await;
    assert_eq!(whoami.expect(200)["principal"], json!("user:alice"));
    bulwark
        .get("/api/v1/whoami", &basic("bob", &secret))
        .await
        .expect(401);

    let listed = bulwark
        .get("/api/v1/users/alice/tokens", &user("alice"))
        .await;
    let items = listed.expect(200)["items"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("secret").is_none(), "the secret is shown once");
    assert!(items[0]["last_used_at"].is_i64(), "a login records its use");
    assert!(!listed.body.to_string().contains(&secret));

    let default = bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "default expiry"}),
        )
        .await;
    let default_expiry = default.expect(201)["expires_at"].as_i64().expect("expiry");
    assert!((before + 90 * 86_400..=now() + 90 * 86_400).contains(&default_expiry));
    let first = bulwark
        .get("/api/v1/users/alice/tokens?limit=1", &root())
        .await;
    assert_eq!(first.expect(200)["items"].as_array().map(Vec::len), Some(1));
    let next = first.body["next"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = bulwark
        .get(
            &format!("/api/v1/users/alice/tokens?limit=1&after={}", encode(&next)),
            &root(),
        )
        .await;
    let mut both = [
        names(&first.body, "description"),
        names(second.expect(200), "description"),
    ]
    .concat();
    both.sort();
    assert_eq!(both, ["ci laptop", "default expiry"]);
    assert_eq!(second.body["next"], Value::Null);

    bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": " "}),
        )
        .await
        .problem(422, "describe");
    bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "x", "expires_in": "2y"}),
        )
        .await
        .problem(422, "expires_in");
    bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "x", "expires_at": before - 1}),
        )
        .await
        .problem(422, "not in the future");
    bulwark
        .post(
            "/api/v1/users/bob/tokens",
            &user("alice"),
            json!({"description": "x"}),
        )
        .await
        .problem(403, "only for themselves");
    bulwark
        .post(
            "/api/v1/users/bob/tokens",
            &root(),
            json!({"description": "x"}),
        )
        .await
        .problem(403, "only for themselves");
    bulwark
        .get("/api/v1/users/alice/tokens", &user("bob"))
        .await
        .problem(403, "other users' tokens");
    bulwark
        .delete(&format!("/api/v1/users/alice/tokens/{id}"), &user("bob"))
        .await
        .problem(403, "other users' tokens");
    bulwark
        .get("/api/v1/users/ghost/tokens", &root())
        .await
        .problem(404, "user ghost");

    bulwark
        .delete(&format!("/api/v1/users/alice/tokens/{id}"), &user("alice"))
        .await
        .expect(204);
    bulwark
        .get("/api/v1/whoami", &basic("alice", &secret))
        .await
        .expect(401);
    bulwark
        .delete(&format!("/api/v1/users/bob/tokens/{id}"), &root())
        .await
        .problem(404, "access token");
    bulwark
        .delete("/api/v1/users/alice/tokens/nope", &root())
        .await
        .problem(404, "access token nope");
    let listed = bulwark.get("/api/v1/users/alice/tokens", &root()).await;
    let revoked: Vec<(&str, bool)> = listed.expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| {
            (
                t["description"].as_str().unwrap_or("?"),
                t["revoked"] == json!(true),
            )
        })
        .collect();
    assert!(
        revoked.contains(&("ci laptop", true)) && revoked.contains(&("default expiry", false)),
        "{revoked:?}"
    );
    assert_eq!(
        bulwark
            .last_audit("token.create", &format!("alice:{id}"))
            .await,
        "allowed by user:alice (-)"
    );
    assert_eq!(
        bulwark
            .last_audit("token.revoke", &format!("alice:{id}"))
            .await,
        "allowed by user:alice (-)"
    );
    let denied = bulwark
        .audit(&format!(
            "action=token.revoke&target=alice:{id}&result=denied"
        ))
        .await;
    assert_eq!(
        denied[0]["reason"],
        json!("only admins may revoke other users' tokens")
    );
    assert_eq!(denied[0]["principal"], json!("user:bob"));
}

// ---- projects and members ----

#[tokio::test]
async fn projects_are_visible_to_admins_members_and_for_public_ones_everybody() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .post("/api/v1/projects", &root(), json!({"name": "zeta"}))
        .await
        .expect(201);
    let all = bulwark.get("/api/v1/projects", &root()).await;
    assert_eq!(names(all.expect(200), "name"), ["open", "team", "zeta"]);
    let page = bulwark
        .get("/api/v1/projects?limit=1&after=open", &root())
        .await;
    assert_eq!(
        (names(page.expect(200), "name"), page.body["next"].clone()),
        (vec!["team".to_owned()], json!("team"))
    );
    assert_eq!(
        names(
            bulwark
                .get("/api/v1/projects", &user("alice"))
                .await
                .expect(200),
            "name"
        ),
        ["open", "team"]
    );
    assert_eq!(
        names(
            bulwark
                .get("/api/v1/projects", &user("carol"))
                .await
                .expect(200),
            "name"
        ),
        ["open"]
    );
    let carol_page = bulwark.get("/api/v1/projects?limit=1", &user("bob")).await;
    assert_eq!(
        (
            names(carol_page.expect(200), "name"),
            carol_page.body["next"].clone()
        ),
        (vec!["open".to_owned()], json!("open"))
    );

    assert_eq!(
        bulwark
            .get("/api/v1/projects/team", &user("bob"))
            .await
            .expect(200)["public"],
        json!(false)
    );
    assert_eq!(
        bulwark
            .get("/api/v1/projects/open", &user("carol"))
            .await
            .expect(200)["public"],
        json!(true)
    );
    bulwark
        .get("/api/v1/projects/team", &user("carol"))
        .await
        .problem(404, "project team does not exist");
    bulwark
        .get("/api/v1/projects/ghost", &user("carol"))
        .await
        .problem(404, "project ghost does not exist");
    assert_eq!(
        bulwark.last_audit("project.read", "team").await,
        "denied by user:carol (user carol is not a member of private project team)"
    );
}

#[tokio::test]
async fn admins_create_projects_and_owners_change_and_delete_them() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .post("/api/v1/projects", &user("alice"), json!({"name": "mine"}))
        .await
        .problem(403, "only system admins");
    bulwark
        .post("/api/v1/projects", &root(), json!({"name": "team"}))
        .await
        .problem(409, "exists already");
    for bad in ["Team", "a/b", "-x", ""] {
        bulwark
            .post("/api/v1/projects", &root(), json!({"name": bad}))
            .await
            .problem(422, "project name");
    }

    let changed = bulwark
        .patch(
            "/api/v1/projects/team",
            &user("alice"),
            json!({"public": true}),
        )
        .await;
    assert_eq!(changed.expect(200)["public"], json!(true));
    assert_eq!(
        bulwark
            .get("/api/v1/projects/team", &user("carol"))
            .await
            .expect(200)["public"],
        json!(true)
    );
    bulwark
        .patch(
            "/api/v1/projects/team",
            &user("bob"),
            json!({"public": false}),
        )
        .await
        .problem(403, "only owners of project team");
    bulwark
        .patch(
            "/api/v1/projects/team",
            &user("carol"),
            json!({"public": false}),
        )
        .await
        .problem(403, "only owners of project team");
    bulwark
        .patch("/api/v1/projects/team", &root(), json!({"public": false}))
        .await
        .expect(200);
    bulwark
        .patch(
            "/api/v1/projects/team",
            &user("carol"),
            json!({"public": true}),
        )
        .await
        .problem(404, "project team");
    bulwark
        .patch(
            "/api/v1/projects/team",
            &user("alice"),
            json!({"public": "yes"}),
        )
        .await
        .problem(422, "does not fit");

    let repository: oci::RepositoryName = "team/app".parse().expect("name");
    let digest: oci::Digest = format!("sha256:{}", "ab".repeat(32))
        .parse()
        .expect("digest");
    MetadataStore::link_blob(&*bulwark.store, &repository, &digest, 3, now())
        .await
        .expect("link a blob");
    bulwark
        .delete("/api/v1/projects/team", &user("alice"))
        .await
        .problem(409, "still holds repositories");
    bulwark
        .delete("/api/v1/projects/team", &user("bob"))
        .await
        .problem(403, "only owners");
    bulwark
        .delete("/api/v1/projects/open", &user("alice"))
        .await
        .problem(403, "only owners of project open");
    bulwark
        .delete("/api/v1/projects/ghost", &root())
        .await
        .problem(404, "project ghost");
    bulwark
        .post("/api/v1/projects", &root(), json!({"name": "empty"}))
        .await
        .expect(201);
    bulwark
        .put(
            "/api/v1/projects/empty/members/alice",
            &root(),
            json!({"role": "owner"}),
        )
        .await
        .expect(200);
    bulwark
        .delete("/api/v1/projects/empty", &user("alice"))
        .await
        .expect(204);
    bulwark
        .get("/api/v1/projects/empty", &root())
        .await
        .expect(404);

    assert_eq!(
        bulwark.last_audit("project.delete", "team").await,
        "denied by user:bob (only owners of project team and admins may do this)"
    );
    let failed = bulwark
        .audit("action=project.delete&target=team&result=failed")
        .await;
    assert_eq!(
        failed[0]["reason"],
        json!("project team still holds repositories; delete them first")
    );
    assert_eq!(
        bulwark.last_audit("project.delete", "empty").await,
        "allowed by user:alice (-)"
    );
    assert_eq!(
        bulwark.last_audit("project.update", "team").await,
        "denied by user:carol (user carol is not a member of private project team)"
    );
}

#[tokio::test]
async fn owners_manage_members_and_members_see_them() {
    let bulwark = Bulwark::with_team().await;
    let members = bulwark
        .get("/api/v1/projects/team/members", &user("bob"))
        .await;
    assert_eq!(
        members.expect(200)["items"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "developer"}])
    );
    let page = bulwark
        .get("/api/v1/projects/team/members?limit=1", &root())
        .await;
    assert_eq!(page.expect(200)["next"], json!("alice"));
    bulwark
        .get("/api/v1/projects/team/members", &user("carol"))
        .await
        .problem(404, "project team");
    bulwark
        .get("/api/v1/projects/open/members", &user("carol"))
        .await
        .problem(403, "only members of project open");

    let set = bulwark
        .put(
            "/api/v1/projects/team/members/carol",
            &user("alice"),
            json!({"role": "reader"}),
        )
        .await;
    assert_eq!(set.expect(200), &json!({"user": "carol", "role": "reader"}));
    bulwark
        .put(
            "/api/v1/projects/team/members/carol",
            &user("bob"),
            json!({"role": "owner"}),
        )
        .await
        .problem(403, "only owners of project team");
    bulwark
        .put(
            "/api/v1/projects/team/members/carol",
            &user("carol"),
            json!({"role": "owner"}),
        )
        .await
        .problem(403, "only owners");
    bulwark
        .put(
            "/api/v1/projects/team/members/carol",
            &user("alice"),
            json!({"role": "boss"}),
        )
        .await
        .problem(422, "unknown role");
    bulwark
        .put(
            "/api/v1/projects/team/members/ghost",
            &user("alice"),
            json!({"role": "reader"}),
        )
        .await
        .problem(404, "user ghost");
    bulwark
        .put(
            "/api/v1/projects/ghost/members/carol",
            &root(),
            json!({"role": "reader"}),
        )
        .await
        .problem(404, "project ghost");
    bulwark
        .put(
            "/api/v1/projects/team/members/alice",
            &user("alice"),
            json!({"role": "maintainer"}),
        )
        .await
        .problem(409, "last owner");
    bulwark
        .delete("/api/v1/projects/team/members/alice", &root())
        .await
        .problem(409, "last owner");
    bulwark
        .put(
            "/api/v1/projects/team/members/bob",
            &user("alice"),
            json!({"role": "owner"}),
        )
        .await
        .expect(200);
    bulwark
        .put(
            "/api/v1/projects/team/members/alice",
            &user("alice"),
            json!({"role": "maintainer"}),
        )
        .await
        .expect(200);
    bulwark
        .delete("/api/v1/projects/team/members/carol", &user("alice"))
        .await
        .problem(403, "only owners");
    bulwark
        .delete("/api/v1/projects/team/members/carol", &user("bob"))
        .await
        .expect(204);
    bulwark
        .delete("/api/v1/projects/team/members/carol", &user("bob"))
        .await
        .problem(404, "member carol of project team");
    let members = bulwark
        .get("/api/v1/projects/team/members", &user("carol"))
        .await;
    members.problem(404, "project team");

    assert_eq!(
        bulwark.last_audit("member.set", "team:carol").await,
        "denied by user:carol (only owners of project team and admins may do this)"
    );
    assert_eq!(
        bulwark.last_audit("member.remove", "team:carol").await,
        "failed by user:bob (member carol of project team does not exist)"
    );
    let whoami = bulwark.get("/api/v1/whoami", &user("bob")).await;
    assert_eq!(
        whoami.expect(200)["projects"],
        json!([{"project": "team", "role": "owner"}])
    );
}

// ---- robots ----

fn ci_robot() -> Value {
    json!({
        "name": "ci",
        "description": "builds app images",
        "grants": [{"repositories": "team/app-*", "actions": ["push", "pull"]}],
        "expires_in": "12h",
    })
}

#[tokio::test]
async fn owners_create_project_robots_whose_secret_is_shown_once() {
    let bulwark = Bulwark::with_team().await;
    let before = now();
    let created = bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await;
    let robot = created.expect(201).clone();
    assert_eq!(created.header("cache-control"), Some("no-store"));
    assert_eq!(robot["name"], json!("robot$team+ci"));
    assert_eq!(robot["project"], json!("team"));
    assert_eq!(
        robot["grants"],
        json!([{"repositories": "team/app-*", "actions": ["pull", "push"]}])
    );
    assert_eq!(
        (robot["revoked"].clone(), robot["last_used_at"].clone()),
        (json!(false), Value::Null)
    );
    assert!((before + 12 * 3600..=now() + 12 * 3600)
        .contains(&robot["expires_at"].as_i64().expect("expiry")));
    let secret = robot["secret"].as_str().expect("secret").to_owned();

    let whoami = bulwark
        .get("/api/v1/whoami", &basic("robot$team+ci", &secret))
        .await;
    let whoami = whoami.expect(200);
    assert_eq!(
        (
            whoami["principal"].as_str(),
            whoami["kind"].as_str(),
            whoami["admin"].as_bool()
        ),
        (Some("robot:robot$team+ci"), Some("robot"), Some(false))
    );
    assert_eq!(whoami["robot"]["grants"], robot["grants"]);
    assert!(whoami["robot"].get("secret").is_none());

    let fetched = bulwark
        .get("/api/v1/projects/team/robots/ci", &user("alice"))
        .await;
    let fetched = fetched.expect(200);
    assert!(fetched.get("secret").is_none() && !fetched.to_string().contains(&secret));
    assert!(
        fetched["last_used_at"].is_i64(),
        "the login recorded its use"
    );
    let listed = bulwark.get("/api/v1/projects/team/robots", &root()).await;
    assert_eq!(names(listed.expect(200), "name"), ["robot$team+ci"]);
    assert!(!listed.body.to_string().contains(&secret));

    let default = bulwark
        .post(
            "/api/v1/projects/team/robots",
            &user("alice"),
            json!({"name": "nightly", "grants": [{"repositories": "team", "actions": ["pull"]}]}),
        )
        .await;
    let default = default.expect(201);
    assert!((before + 90 * 86_400..=now() + 90 * 86_400)
        .contains(&default["expires_at"].as_i64().expect("expiry")));
    assert_eq!(default["description"], Value::Null);
    let page = bulwark
        .get("/api/v1/projects/team/robots?limit=1", &user("alice"))
        .await;
    assert_eq!(
        (names(page.expect(200), "name"), page.body["next"].clone()),
        (vec!["robot$team+ci".to_owned()], json!("robot$team+ci"))
    );

    bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await
        .problem(409, "exists already");
    assert_eq!(
        bulwark.last_audit("robot.create", "robot$team+ci").await,
        "failed by user:alice (robot robot$team+ci exists already)"
    );
    let allowed = bulwark.audit("action=robot.create&result=allowed").await;
    assert_eq!(allowed.len(), 2);
}

#[tokio::test]
async fn robot_grants_expiry_and_names_are_validated() {
    let bulwark = Bulwark::with_team().await;
    let robot = |patch: Value| {
        let mut body = ci_robot();
        for (key, value) in patch.as_object().expect("object") {
            if value.is_null() {
                body.as_object_mut().expect("object").remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let cases = [
        (
            json!({"grants": [{"repositories": "other/app", "actions": ["pull"]}]}),
            "must lie in project team",
        ),
        (
            json!({"grants": [{"repositories": "teamx/app", "actions": ["pull"]}]}),
            "must lie in project team",
        ),
        (
            json!({"grants": [{"repositories": "**", "actions": ["pull"]}]}),
            "must lie in project team",
        ),
        (
            json!({"grants": [{"repositories": "team/App", "actions": ["pull"]}]}),
            "must be a repository name or a glob",
        ),
        (
            json!({"grants": [{"repositories": "team/app", "actions": []}]}),
            "names no action",
        ),
        (
            json!({"grants": [{"repositories": "team/app", "actions": ["manage"]}]}),
            "unknown action \"manage\"",
        ),
        (
            json!({"grants": [{"repositories": "team/app", "actions": ["fly"]}]}),
            "unknown action \"fly\"",
        ),
        (json!({"grants": []}), "at least one grant"),
        (json!({"name": "CI"}), "robot name \"CI\" must match"),
        (json!({"name": "c+i"}), "must match"),
        (json!({"expires_in": "400d"}), "at most 365 days"),
        (json!({"expires_in": "0h"}), "expires_in"),
        (json!({"expires_in": "10m"}), "expires_in"),
        (
            json!({"expires_in": null, "expires_at": 1}),
            "not in the future",
        ),
        (
            json!({"expires_in": null, "expires_at": now() + 400 * 86_400}),
            "more than 365 days",
        ),
        (json!({"expires_at": now() + 3600}), "not both"),
        (
            json!({"description": "x".repeat(1025)}),
            "at most 1024 characters",
        ),
    ];
    for (patch, words) in cases {
        let reply = bulwark
            .post(
                "/api/v1/projects/team/robots",
                &user("alice"),
                robot(patch.clone()),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{patch}: {:#}",
            reply.body
        );
        reply.problem(422, words);
    }
    bulwark
        .post(
            "/api/v1/projects/team/robots",
            &user("alice"),
            robot(json!({"grants": null})),
        )
        .await
        .problem(422, "missing field `grants`");
    bulwark
        .post(
            "/api/v1/projects/team/robots",
            &user("alice"),
            robot(json!({"scopes": ["x"]})),
        )
        .await
        .problem(422, "unknown field `scopes`");
    let at = now() + 7 * 86_400;
    let explicit = bulwark
        .post(
            "/api/v1/projects/team/robots",
            &user("alice"),
            robot(json!({"expires_in": null, "expires_at": at})),
        )
        .await;
    assert_eq!(explicit.expect(201)["expires_at"], json!(at));
    let listed = bulwark
        .get("/api/v1/projects/team/robots", &user("alice"))
        .await;
    assert_eq!(
        listed.expect(200)["items"].as_array().map(Vec::len),
        Some(1),
        "no invalid robot was made"
    );
}

#[tokio::test]
async fn only_owners_and_admins_manage_project_robots() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .post("/api/v1/projects/team/robots", &user("bob"), ci_robot())
        .await
        .problem(403, "only owners of project team");
    bulwark
        .post("/api/v1/projects/team/robots", &user("carol"), ci_robot())
        .await
        .problem(404, "project team");
    bulwark
        .post("/api/v1/projects/ghost/robots", &root(), ci_robot())
        .await
        .problem(404, "project ghost");
    let by_admin = bulwark
        .post("/api/v1/projects/team/robots", &root(), ci_robot())
        .await;
    by_admin.expect(201);
    bulwark
        .get("/api/v1/projects/team/robots", &user("bob"))
        .await
        .problem(403, "only owners");
    bulwark
        .get("/api/v1/projects/team/robots/ci", &user("bob"))
        .await
        .problem(403, "only owners");
    bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &user("bob"),
            json!({}),
        )
        .await
        .problem(403, "only owners");
    bulwark
        .delete("/api/v1/projects/team/robots/ci", &user("bob"))
        .await
        .problem(403, "only owners");
    bulwark
        .get("/api/v1/projects/team/robots/ci", &user("carol"))
        .await
        .problem(404, "project team");
    bulwark
        .get("/api/v1/projects/team/robots/nope", &user("alice"))
        .await
        .problem(404, "robot robot$team+nope");
    bulwark
        .get("/api/v1/robots/ci", &root())
        .await
        .problem(404, "robot robot$ci");
    bulwark
        .get("/api/v1/projects/open/robots/ci", &root())
        .await
        .problem(404, "robot robot$open+ci");
    assert_eq!(
        bulwark.last_audit("robot.create", "robot$team+ci").await,
        "allowed by user:root (-)"
    );
    assert_eq!(
        bulwark.last_audit("robot.rotate", "robot$team+ci").await,
        "denied by user:bob (only owners of project team and admins may do this)"
    );

    // A robot may ask who it is, and nothing else.
    let secret = by_admin.body["secret"].as_str().expect("secret").to_owned();
    let robot = basic("robot$team+ci", &secret);
    bulwark.get("/api/v1/whoami", &robot).await.expect(200);
    bulwark
        .get("/api/v1/projects", &robot)
        .await
        .problem(403, "robot accounts may only ask who they are");
    bulwark
        .get("/api/v1/projects/team/robots", &robot)
        .await
        .problem(403, "robot accounts may only ask who they are");
    bulwark
        .post(
            "/api/v1/projects/team/robots",
            &robot,
            json!({"name": "child", "grants": [{"repositories": "team", "actions": ["pull"]}]}),
        )
        .await
        .problem(403, "robot accounts");
    bulwark
        .post(
            "/api/v1/check",
            &robot,
            json!({"principal": "anonymous", "repository": "team/app", "action": "pull"}),
        )
        .await
        .problem(403, "robot accounts");
    bulwark
        .get("/api/v1/users/robot$team+ci/tokens", &robot)
        .await
        .problem(403, "robot accounts");
    let denied = bulwark
        .audit(&format!(
            "principal={}&result=denied",
            encode("robot:robot$team+ci")
        ))
        .await;
    assert_eq!(denied.len(), 5);
}

#[tokio::test]
async fn rotating_a_robot_replaces_its_secret_and_may_extend_its_expiry() {
    let bulwark = Bulwark::with_team().await;
    let created = bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await;
    let old_secret = created.expect(201)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let old_expiry = created.body["expires_at"].as_i64().expect("expiry");

    let rotated = bulwark
        .send(
            Method::POST,
            "/api/v1/projects/team/robots/ci/rotate",
            &user("alice"),
            None,
        )
        .await;
    let new_secret = rotated.expect(200)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_ne!(new_secret, old_secret);
    assert_eq!(
        rotated.body["expires_at"],
        json!(old_expiry),
        "without a new expiry it stays"
    );
    bulwark
        .get("/api/v1/whoami", &basic("robot$team+ci", &old_secret))
        .await
        .expect(401);
    bulwark
        .get("/api/v1/whoami", &basic("robot$team+ci", &new_secret))
        .await
        .expect(200);

    let extended = bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &user("alice"),
            json!({"expires_in": "30d"}),
        )
        .await;
    let expiry = extended.expect(200)["expires_at"].as_i64().expect("expiry");
    assert!(expiry >= now() + 30 * 86_400 - 5 && expiry > old_expiry);
    let stored = bulwark
        .get("/api/v1/projects/team/robots/ci", &user("alice"))
        .await;
    assert_eq!(stored.expect(200)["expires_at"], json!(expiry));
    bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &user("alice"),
            json!({"expires_in": "999d"}),
        )
        .await
        .problem(422, "at most 365 days");
    bulwark
        .post(
            "/api/v1/projects/team/robots/nope/rotate",
            &user("alice"),
            json!({}),
        )
        .await
        .problem(404, "robot robot$team+nope");
    assert_eq!(
        bulwark.last_audit("robot.rotate", "robot$team+ci").await,
        "allowed by user:alice (-)"
    );
}

#[tokio::test]
async fn revoking_a_robot_stops_its_secret_and_tokens_at_once() {
    let bulwark = Bulwark::with_team().await;
    let created = bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await;
    let secret = created.expect(201)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let robot = basic("robot$team+ci", &secret);
    bulwark.get("/api/v1/whoami", &robot).await.expect(200);
    let principal = bulwark
        .access
        .principal("robot:robot$team+ci")
        .await
        .expect("store")
        .expect("robot");
    let token = Auth::Bearer(bulwark.token_for(&principal).await);
    bulwark.get("/api/v1/whoami", &token).await.expect(200);

    bulwark
        .delete("/api/v1/projects/team/robots/ci", &user("alice"))
        .await
        .expect(204);
    bulwark
        .get("/api/v1/whoami", &robot)
        .await
        .problem(401, "invalid username or password");
    bulwark
        .get("/api/v1/whoami", &token)
        .await
        .problem(401, "token was revoked");
    assert_eq!(
        bulwark
            .access
            .authenticate("robot$team+ci", &secret, None)
            .await
            .ok(),
        None,
        "the token service refuses it too"
    );
    let listed = bulwark
        .get("/api/v1/projects/team/robots", &user("alice"))
        .await;
    assert_eq!(listed.expect(200)["items"][0]["revoked"], json!(true));
    bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &user("alice"),
            json!({}),
        )
        .await
        .problem(409, "was revoked");
    bulwark
        .delete("/api/v1/projects/team/robots/nope", &user("alice"))
        .await
        .problem(404, "robot robot$team+nope");
    assert_eq!(
        bulwark.last_audit("robot.revoke", "robot$team+ci").await,
        "allowed by user:alice (-)"
    );
}

#[tokio::test]
async fn an_expired_robot_cannot_log_in() {
    let bulwark = Bulwark::with_team().await;
    let secret = auth::secret::random();
    let record = RobotRecord {
        name: "robot$team+old".into(),
        project: Some("team".into()),
        description: None,
        grants: r#"[{"pattern":"team/*","actions":["pull"]}]"#.into(),
        expires_at: now() - 1,
        revoked: false,
        created_at: now() - 100,
        last_used_at: None,
    };
    bulwark
        .store
        .create_robot(&record, &secret.hash)
        .await
        .expect("create");
    bulwark
        .get(
            "/api/v1/whoami",
            &basic("robot$team+old", &secret.plaintext),
        )
        .await
        .problem(401, "invalid username or password");
    let fetched = bulwark
        .get("/api/v1/projects/team/robots/old", &user("alice"))
        .await;
    assert_eq!(fetched.expect(200)["expires_at"], json!(record.expires_at));
    let check = bulwark.post("/api/v1/check", &user("alice"), json!({"principal": "robot:robot$team+old", "repository": "team/app", "action": "pull"})).await;
    assert_eq!(
        check.expect(200),
        &json!({"allowed": false, "rule": "robot_expired", "reason": "robot robot$team+old has expired"})
    );
    let rotated = bulwark
        .post(
            "/api/v1/projects/team/robots/old/rotate",
            &user("alice"),
            json!({"expires_in": "1d"}),
        )
        .await;
    let fresh = rotated.expect(200)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    bulwark
        .get("/api/v1/whoami", &basic("robot$team+old", &fresh))
        .await
        .expect(200);
}

#[tokio::test]
async fn admins_alone_manage_system_robots() {
    let bulwark = Bulwark::with_team().await;
    let body = json!({"name": "mirror", "grants": [{"repositories": "**", "actions": ["pull"]}, {"repositories": "*/cache", "actions": ["push", "delete"]}]});
    bulwark
        .post("/api/v1/robots", &user("alice"), body.clone())
        .await
        .problem(403, "only system admins");
    let created = bulwark.post("/api/v1/robots", &root(), body).await;
    let robot = created.expect(201);
    assert_eq!(
        (robot["name"].as_str(), robot["project"].clone()),
        (Some("robot$mirror"), Value::Null)
    );
    let secret = robot["secret"].as_str().expect("secret").to_owned();
    bulwark
        .get("/api/v1/whoami", &basic("robot$mirror", &secret))
        .await
        .expect(200);

    bulwark
        .get("/api/v1/robots", &user("alice"))
        .await
        .problem(403, "only system admins");
    bulwark
        .get("/api/v1/robots/mirror", &user("alice"))
        .await
        .problem(403, "only system admins");
    bulwark
        .post("/api/v1/robots/mirror/rotate", &user("alice"), json!({}))
        .await
        .problem(403, "only system admins");
    bulwark
        .delete("/api/v1/robots/mirror", &user("alice"))
        .await
        .problem(403, "only system admins");
    assert_eq!(
        names(
            bulwark.get("/api/v1/robots", &root()).await.expect(200),
            "name"
        ),
        ["robot$mirror"]
    );
    assert!(bulwark
        .get("/api/v1/robots/mirror", &root())
        .await
        .expect(200)
        .get("secret")
        .is_none());
    bulwark
        .get("/api/v1/projects/team/robots/mirror", &root())
        .await
        .problem(404, "robot robot$team+mirror");
    let rotated = bulwark
        .post(
            "/api/v1/robots/mirror/rotate",
            &root(),
            json!({"expires_at": now() + 86_400}),
        )
        .await;
    let fresh = rotated.expect(200)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    bulwark
        .get("/api/v1/whoami", &basic("robot$mirror", &secret))
        .await
        .expect(401);
    bulwark
        .delete("/api/v1/robots/mirror", &root())
        .await
        .expect(204);
    bulwark
        .get("/api/v1/whoami", &basic("robot$mirror", &fresh))
        .await
        .expect(401);
    bulwark
        .delete("/api/v1/robots/ghost", &root())
        .await
        .problem(404, "robot robot$ghost");
    assert_eq!(
        bulwark.last_audit("robot.create", "robot$mirror").await,
        "allowed by user:root (-)"
    );
    assert_eq!(
        bulwark.last_audit("robot.list", "robot$*").await,
        "denied by user:alice (only system admins manage system robots)"
    );
}

// ---- check ----

#[tokio::test]
async fn the_check_endpoint_dry_runs_authorization_for_admins_and_owners() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await
        .expect(201);
    let check = |principal: &str, repository: &str, action: &str| json!({"principal": principal, "repository": repository, "action": action});
    let cases = [
        (
            root(),
            check("user:bob", "team/app", "push"),
            json!({"allowed": true, "rule": "project_role", "reason": "role developer in project team allows push"}),
        ),
        (
            user("alice"),
            check("user:bob", "team/app", "delete"),
            json!({"allowed": false, "rule": "role_too_weak", "reason": "role developer in project team does not allow delete"}),
        ),
        (
            user("alice"),
            check("user:carol", "team/app", "pull"),
            json!({"allowed": false, "rule": "not_member", "reason": "user carol is not a member of project team, or it does not exist"}),
        ),
        (
            user("alice"),
            check("robot:robot$team+ci", "team/app-web", "push"),
            json!({"allowed": true, "rule": "robot_grant", "reason": "robot robot$team+ci is granted push on team/app-*"}),
        ),
        (
            user("alice"),
            check("robot:robot$team+ci", "team/db", "pull"),
            json!({"allowed": false, "rule": "robot_no_grant", "reason": "no grant of robot robot$team+ci allows pull here"}),
        ),
        (
            user("alice"),
            check("anonymous", "team/app", "pull"),
            json!({"allowed": false, "rule": "anonymous_private", "reason": "project team is private; log in to pull"}),
        ),
        (
            root(),
            check("anonymous", "open/app", "pull"),
            json!({"allowed": true, "rule": "public_pull", "reason": "project open is public"}),
        ),
        (
            root(),
            check("user:root", "nowhere/app", "delete"),
            json!({"allowed": true, "rule": "system_admin", "reason": "system admins may do anything"}),
        ),
        (
            root(),
            check("user:alice", "nowhere/app", "pull"),
            json!({"allowed": false, "rule": "project_unknown", "reason": "user alice is not a member of project nowhere, or it does not exist"}),
        ),
    ];
    for (caller, question, expected) in cases {
        let reply = bulwark
            .post("/api/v1/check", &caller, question.clone())
            .await;
        assert_eq!(reply.expect(200), &expected, "{question}");
    }

    bulwark
        .post(
            "/api/v1/check",
            &user("bob"),
            check("user:bob", "team/app", "pull"),
        )
        .await
        .problem(403, "only owners of project team and admins may check");
    bulwark
        .post(
            "/api/v1/check",
            &user("carol"),
            check("user:bob", "team/app", "pull"),
        )
        .await
        .problem(404, "project team");
    bulwark
        .post(
            "/api/v1/check",
            &user("carol"),
            check("user:bob", "open/app", "pull"),
        )
        .await
        .problem(403, "only owners of project open");
    bulwark
        .post(
            "/api/v1/check",
            &user("alice"),
            check("user:bob", "nowhere/app", "pull"),
        )
        .await
        .problem(404, "project nowhere");
    bulwark
        .post("/api/v1/check", &root(), check("bob", "team/app", "pull"))
        .await
        .problem(422, "must be user:NAME, robot:NAME or anonymous");
    bulwark
        .post(
            "/api/v1/check",
            &root(),
            check("user:ghost", "team/app", "pull"),
        )
        .await
        .problem(422, "principal user:ghost does not exist");
    bulwark
        .post(
            "/api/v1/check",
            &root(),
            check("user:bob", "Team/App", "pull"),
        )
        .await
        .problem(422, "repository name");
    bulwark
        .post(
            "/api/v1/check",
            &root(),
            check("user:bob", "team/app", "manage"),
        )
        .await
        .problem(422, "unknown action");
    let denied = bulwark
        .audit("action=check&target=team/app&result=denied")
        .await;
    let denied: Vec<&str> = denied
        .iter()
        .map(|event| event["reason"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        denied,
        [
            "user carol is not a member of private project team",
            "only owners of project team and admins may check access to it"
        ]
    );
}

// ---- audit ----

#[tokio::test]
async fn admins_read_the_audit_log_newest_first_in_pages() {
    let bulwark = Bulwark::with_team().await;
    bulwark
        .get("/api/v1/users", &user("carol"))
        .await
        .expect(403);
    let all = bulwark.audit("limit=1000").await;
    assert!(
        all.windows(2)
            .all(|pair| pair[0]["id"].as_i64() > pair[1]["id"].as_i64()),
        "newest first"
    );
    assert_eq!(all[0]["principal"], json!("user:carol"));
    assert_eq!(
        (all[0]["action"].as_str(), all[0]["result"].as_str()),
        (Some("user.list"), Some("denied"))
    );
    assert!(
        all[0]["client"]
            .as_str()
            .is_some_and(|client| client.starts_with("10.1.")),
        "{}",
        all[0]
    );

    let creates = bulwark.audit("action=user.create").await;
    assert_eq!(
        creates
            .iter()
            .map(|e| e["target"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["carol", "bob", "alice"]
    );
    let first = bulwark
        .get("/api/v1/audit?action=user.create&limit=2", &root())
        .await;
    assert_eq!(first.expect(200)["items"].as_array().map(Vec::len), Some(2));
    let next = first.body["next"].as_str().expect("next").to_owned();
    let second = bulwark
        .get(
            &format!("/api/v1/audit?action=user.create&limit=2&before={next}"),
            &root(),
        )
        .await;
    assert_eq!(second.expect(200)["items"][0]["target"], json!("alice"));
    assert_eq!(second.body["next"], Value::Null);

    assert_eq!(bulwark.audit("result=denied").await.len(), 1);
    assert_eq!(
        bulwark
            .audit(&format!("principal={}", encode("user:carol")))
            .await
            .len(),
        1
    );
    assert_eq!(
        bulwark
            .audit("target=team&action=project.create")
            .await
            .len(),
        1
    );
    let time = all[0]["time"].as_i64().expect("time");
    assert!(!bulwark
        .audit(&format!("since={time}&until={time}"))
        .await
        .is_empty());
    assert!(bulwark
        .audit(&format!("since={}", time + 1000))
        .await
        .is_empty());

    bulwark
        .get("/api/v1/audit", &user("alice"))
        .await
        .problem(403, "only system admins");
    bulwark
        .get("/api/v1/audit?limit=0", &root())
        .await
        .problem(400, "out of range");
    bulwark
        .get("/api/v1/audit?before=abc", &root())
        .await
        .problem(400, "invalid query");
    bulwark
        .get("/api/v1/audit?who=me", &root())
        .await
        .problem(400, "invalid query");
    assert_eq!(
        bulwark.last_audit("audit.read", "audit").await,
        "denied by user:alice (only system admins may do this)"
    );
}

// ---- request bodies ----

#[tokio::test]
async fn request_bodies_are_parsed_strictly() {
    let bulwark = Bulwark::start().await;
    let send = |content_type: Option<&'static str>, body: &[u8]| {
        bulwark.request(
            Method::POST,
            "/api/v1/projects",
            &root(),
            content_type,
            body.to_vec(),
        )
    };
    bulwark
        .raw(send(Some("application/json"), b"{\"name\":"))
        .await
        .problem(400, "not valid JSON");
    bulwark
        .raw(send(Some("application/json"), b""))
        .await
        .problem(400, "needs a JSON body");
    bulwark
        .raw(send(Some("text/plain"), b"{\"name\":\"x\"}"))
        .await
        .problem(415, "application/json");
    bulwark
        .raw(send(None, b"{\"name\":\"x\"}"))
        .await
        .problem(415, "application/json");
    bulwark
        .raw(send(Some("application/json"), &vec![b' '; 70 * 1024]))
        .await
        .problem(413, "at most 65536 bytes");
    bulwark
        .raw(send(
            Some("application/json"),
            b"{\"name\":\"x\",\"owner\":\"alice\"}",
        ))
        .await
        .problem(422, "unknown field `owner`");
    bulwark
        .raw(send(Some("application/json"), b"{\"public\":true}"))
        .await
        .problem(422, "missing field `name`");
    bulwark
        .raw(send(Some("application/json"), b"[]"))
        .await
        .problem(422, "does not fit");
    let created = bulwark
        .raw(send(
            Some("application/json; charset=utf-8"),
            b"{\"name\":\"x\"}",
        ))
        .await;
    assert_eq!(created.expect(201)["name"], json!("x"));
    // Credentials come first: an anonymous caller learns nothing about the body.
    let anonymous = bulwark.request(
        Method::POST,
        "/api/v1/projects",
        &Auth::Anonymous,
        Some("text/plain"),
        b"junk".to_vec(),
    );
    bulwark.raw(anonymous).await.expect(401);
}

#[tokio::test]
async fn only_a_password_login_creates_access_tokens() {
    let bulwark = Bulwark::with_team().await;
    let created = bulwark
        .post(
            "/api/v1/users/alice/tokens",
            &user("alice"),
            json!({"description": "ci"}),
        )
        .await;
    let secret = created.expect(201)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let pat = basic("alice", &secret);
    let from_pat = bulwark.registry_token(&pat).await;
    let refresh_token = from_pat["refresh_token"].as_str().expect("a refresh token");
    let refreshed = bulwark.refreshed_token(refresh_token).await;
    let bearer = |answer: &Value| Auth::Bearer(answer["token"].as_str().expect("token").to_owned());
    for (how, auth) in [
        ("the access token itself", pat.clone()),
        ("a registry token obtained with it", bearer(&from_pat)),
        ("a registry token refreshed from it", bearer(&refreshed)),
    ] {
        bulwark
            .post(
                "/api/v1/users/alice/tokens",
                &auth,
                json!({"description": "another"}),
            )
            .await
            .problem(403, "needs a login with the account's password");
        // The caller is still alice for everything else.
        let whoami = bulwark.get("/api/v1/whoami", &auth).await;
        assert_eq!(
            whoami.expect(200)["principal"],
            json!("user:alice"),
            "{how}"
        );
    }
    assert_eq!(
        bulwark.last_audit("token.create", "alice").await,
        "denied by user:alice (creating an access token needs a login with the account's password: an access token, or a registry token obtained with one, cannot do it)"
    );
    let listed = bulwark
        .get("/api/v1/users/alice/tokens", &user("alice"))
        .await;
    assert_eq!(
        listed.expect(200)["items"].as_array().map(Vec::len),
        Some(1),
        "no token made another"
    );

    // The password, directly or through the tokens it gives (as the CLI logs in), still does.
    let from_password = bulwark.registry_token(&user("alice")).await;
    let refresh_token = from_password["refresh_token"]
        .as_str()
        .expect("a refresh token");
    let refreshed = bulwark.refreshed_token(refresh_token).await;
    for auth in [user("alice"), bearer(&from_password), bearer(&refreshed)] {
        bulwark
            .post(
                "/api/v1/users/alice/tokens",
                &auth,
                json!({"description": "by password"}),
            )
            .await
            .expect(201);
    }
}

#[tokio::test]
async fn an_access_token_cannot_mint_credentials_that_outlive_it() {
    // Users, passwords, the admin role and robot secrets all outlive a revoked token: only a
    // password login hands them out. Taking access away (disabling) stays possible.
    let bulwark = Bulwark::with_team().await;
    let token_of = |name: &'static str, password: &'static str| {
        let bulwark = &bulwark;
        async move {
            let created = bulwark
                .post(
                    &format!("/api/v1/users/{name}/tokens"),
                    &basic(name, password),
                    json!({"description": "automation"}),
                )
                .await;
            let secret = created.expect(201)["secret"]
                .as_str()
                .expect("secret")
                .to_owned();
            basic(name, &secret)
        }
    };
    let admin_pat = token_of("root", ROOT_PASSWORD).await;
    let owner_pat = token_of("alice", PASSWORD).await;
    let refused = "needs a login with the account's password";
    bulwark
        .post(
            "/api/v1/users",
            &admin_pat,
            json!({"name": "mallory", "password": PASSWORD}),
        )
        .await
        .problem(403, refused);
    bulwark
        .patch(
            "/api/v1/users/carol",
            &admin_pat,
            json!({"password": "a password carol does not know"}),
        )
        .await
        .problem(403, refused);
    bulwark
        .patch("/api/v1/users/carol", &admin_pat, json!({"admin": true}))
        .await
        .problem(403, refused);
    bulwark
        .patch("/api/v1/users/carol", &admin_pat, json!({"disabled": true}))
        .await
        .expect(200);
    bulwark
        .post("/api/v1/projects/team/robots", &owner_pat, ci_robot())
        .await
        .problem(403, refused);
    bulwark
        .post("/api/v1/robots", &admin_pat, ci_robot_system())
        .await
        .problem(403, refused);
    bulwark
        .post("/api/v1/projects/team/robots", &user("alice"), ci_robot())
        .await
        .expect(201);
    bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &owner_pat,
            json!({}),
        )
        .await
        .problem(403, refused);
    assert!(bulwark
        .last_audit("robot.rotate", "robot$team+ci")
        .await
        .starts_with(
        "denied by user:alice (rotating a robot's secret needs a login with the account's password"
    ));
    bulwark
        .post(
            "/api/v1/projects/team/robots/ci/rotate",
            &user("alice"),
            json!({}),
        )
        .await
        .expect(200);
    bulwark
        .post(
            "/api/v1/users",
            &root(),
            json!({"name": "mallory", "password": PASSWORD}),
        )
        .await
        .expect(201);
}

fn ci_robot_system() -> Value {
    json!({
        "name": "ci",
        "grants": [{"repositories": "**", "actions": ["pull"]}],
        "expires_in": "12h",
    })
}

// ---- refresh tokens and signing keys ----

#[tokio::test]
async fn refresh_tokens_and_signing_keys_answer_as_documented() {
    let bulwark = Bulwark::with_team().await;
    bulwark.registry_token(&user("alice")).await;
    let listed = bulwark
        .get("/api/v1/users/alice/refresh-tokens", &user("alice"))
        .await;
    let items = listed.expect(200)["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert_eq!(items[0]["credential"], "password");
    let id = items[0]["id"].as_str().expect("id").to_owned();
    bulwark
        .get("/api/v1/users/alice/refresh-tokens", &user("bob"))
        .await
        .problem(403, "only admins");
    bulwark
        .get("/api/v1/users/nobody/refresh-tokens", &root())
        .await
        .expect(404);
    let path = format!("/api/v1/users/alice/refresh-tokens/{id}");
    bulwark.delete(&path, &root()).await.expect(204);
    bulwark.delete(&path, &root()).await.expect(204);
    bulwark
        .delete("/api/v1/users/alice/refresh-tokens/unknown", &root())
        .await
        .expect(404);
    let listed = bulwark
        .get("/api/v1/users/alice/refresh-tokens", &root())
        .await;
    assert_eq!(listed.expect(200)["items"][0]["revoked"], true);

    let keys = bulwark.get("/api/v1/signing-keys", &root()).await;
    let kid = keys.expect(200)["items"][0]["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    bulwark
        .get("/api/v1/signing-keys", &user("alice"))
        .await
        .problem(403, "only system admins");
    let retire = format!("/api/v1/signing-keys/{kid}/retire");
    let retired = bulwark.send(Method::POST, &retire, &root(), None).await;
    assert_ne!(retired.expect(200)["signing"], kid.as_str());
    bulwark
        .send(Method::POST, &retire, &root(), None)
        .await
        .problem(404, "in use");
}
