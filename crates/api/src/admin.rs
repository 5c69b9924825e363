//! The admin REST API under `/api/v1`: users and their access and refresh tokens, projects and
//! members, robot accounts, token-signing keys, an authorization dry run, and the audit log,
//! as JSON.
//!
//! One route table (`endpoints`) is the source of both the axum routes and the OpenAPI 3.0
//! document served at `GET /api/v1/openapi.json`; a snapshot test keeps the published copy,
//! `crates/api/openapi.json`, equal to it.
//!
//! Invariants:
//! - Handlers hold no business rules: extract (`extract`), one `registry::access::Access`
//!   call, map the answer (`wire`). Who may do what is decided in `registry::admin`.
//! - Every endpoint but the document itself needs credentials: Basic (password, personal
//!   access token or robot secret) or a registry token.
//! - Every error leaves as an RFC 9457 problem (`problem::Problem`), unknown paths and wrong
//!   methods under `/api/v1` included.

mod extract;
mod handlers;
mod problem;
mod wire;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{any, MethodFilter, MethodRouter};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::AppState;

pub use problem::Problem;

/// Where the admin API lives.
pub const PREFIX: &str = "/api/v1";

/// One operation of the admin API: its route and its documentation.
pub struct Endpoint {
    pub method: Method,
    /// An axum route path, which is also an OpenAPI path template: `/api/v1/users/{user}`.
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub tag: &'static str,
    /// Needs no credentials.
    pub public: bool,
    /// May refuse a caller it authenticated (every operation but `whoami`).
    pub forbids: bool,
    pub query: Vec<Value>,
    /// The request body's schema, and whether the body may be left out.
    pub body: Option<(Value, bool)>,
    /// The status of success, and its body's schema (`None`: no body).
    pub success: (u16, Option<Value>),
    /// Error statuses this operation answers besides the ones every call may get.
    pub errors: &'static [u16],
    route: MethodRouter<AppState>,
}

fn endpoint<H, T>(
    method: Method,
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    handler: H,
) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Endpoint {
        method,
        path,
        operation_id,
        summary,
        description: "",
        tag: "",
        public: false,
        forbids: true,
        query: Vec::new(),
        body: None,
        success: (200, None),
        errors: &[],
        route: axum::routing::on(filter, handler),
    }
}

impl Endpoint {
    fn tag(mut self, tag: &'static str) -> Endpoint {
        self.tag = tag;
        self
    }

    fn describe(mut self, description: &'static str) -> Endpoint {
        self.description = description;
        self
    }

    fn public(mut self) -> Endpoint {
        self.public = true;
        self.forbids = false;
        self
    }

    /// Open to every authenticated caller, robots included.
    fn anyone(mut self) -> Endpoint {
        self.forbids = false;
        self
    }

    fn paged(mut self) -> Endpoint {
        self.query = wire::page_parameters();
        self
    }

    fn query(mut self, parameters: Vec<Value>) -> Endpoint {
        self.query = parameters;
        self
    }

    fn body(mut self, schema: &str) -> Endpoint {
        self.body = Some((wire::reference(schema), false));
        self
    }

    fn optional_body(mut self, schema: &str) -> Endpoint {
        self.body = Some((wire::reference(schema), true));
        self
    }

    fn returns(self, status: u16, schema: &str) -> Endpoint {
        self.returns_schema(status, wire::reference(schema))
    }

    fn returns_schema(mut self, status: u16, schema: Value) -> Endpoint {
        self.success = (status, Some(schema));
        self
    }

    fn no_content(mut self) -> Endpoint {
        self.success = (204, None);
        self
    }

    fn errors(mut self, errors: &'static [u16]) -> Endpoint {
        self.errors = errors;
        self
    }
}

/// The route table: every operation of the admin API.
pub fn endpoints() -> Vec<Endpoint> {
    use handlers as h;
    use Method as M;
    vec![
        endpoint(M::GET, "/api/v1/openapi.json", "getOpenApi", "This document", h::openapi)
            .tag("meta")
            .public()
            .returns_schema(200, json!({"type": "object", "description": "This OpenAPI 3.0 document."})),
        endpoint(M::GET, "/api/v1/whoami", "whoAmI", "Who the caller is", h::whoami)
            .tag("meta")
            .anyone()
            .describe("The caller's principal, whether they are an admin, and their projects and roles (a robot: its own record). The one call robots may make.")
            .returns(200, "WhoAmI"),
        endpoint(M::POST, "/api/v1/check", "checkAccess", "Dry-run an authorization decision", h::check)
            .tag("meta")
            .describe("What the registry would decide if the principal tried the action on the repository, and the rule that decides. For admins and owners of the repository's project.")
            .body("CheckRequest")
            .returns(200, "CheckResult")
            .errors(&[404, 422]),
        endpoint(M::GET, "/api/v1/audit", "listAuditEvents", "Read the audit log", h::audit)
            .tag("audit")
            .describe("Audit events, newest first, filtered by every given parameter. For admins.")
            .query(wire::audit_parameters())
            .returns(200, "AuditPage"),
        // ---- users ----
        endpoint(M::GET, "/api/v1/users", "listUsers", "List users", h::list_users).tag("users").describe("For admins.").paged().returns(200, "UserPage"),
        endpoint(M::POST, "/api/v1/users", "createUser", "Create a user", h::create_user)
            .tag("users")
            .describe("For admins. The password needs at least 12 characters. Needs a login with the caller's password (not an access token, nor a registry token obtained with one): what it hands out outlives any token.")
            .body("NewUser")
            .returns(201, "User")
            .errors(&[409, 422]),
        endpoint(M::GET, "/api/v1/users/{user}", "getUser", "Get a user", h::get_user)
            .tag("users")
            .describe("For admins, and for users about themselves.")
            .returns(200, "User")
            .errors(&[404]),
        endpoint(M::PATCH, "/api/v1/users/{user}", "updateUser", "Change a user", h::update_user)
            .tag("users")
            .describe("For admins: reset a password, grant or remove admin, disable or enable. Admins cannot demote or disable themselves. Resetting a password, granting admin or re-enabling an account needs a login with the caller's password (not an access token, nor a registry token obtained with one); disabling and removing admin do not.")
            .body("UserUpdate")
            .returns(200, "User")
            .errors(&[404, 409, 422]),
        endpoint(M::DELETE, "/api/v1/users/{user}", "deleteUser", "Delete a user", h::delete_user)
            .tag("users")
            .describe("For admins. Removes the user's memberships and access tokens too.")
            .no_content()
            .errors(&[404, 409]),
        endpoint(M::PUT, "/api/v1/users/{user}/password", "changePassword", "Change one's own password", h::change_password)
            .tag("users")
            .describe("For the user themselves, proven by their current password, logged in with the password (not with an access token, nor a registry token obtained with one).")
            .body("PasswordChange")
            .no_content()
            .errors(&[404, 422]),
        endpoint(M::GET, "/api/v1/users/{user}/tokens", "listAccessTokens", "List a user's access tokens", h::list_tokens)
            .tag("access tokens")
            .describe("For the user and admins. Secrets are never shown.")
            .paged()
            .returns(200, "AccessTokenPage")
            .errors(&[404]),
        endpoint(M::POST, "/api/v1/users/{user}/tokens", "createAccessToken", "Create a personal access token", h::create_token)
            .tag("access tokens")
            .describe("For the user themselves, logged in with their password (not with an access token, nor a registry token obtained with one: a leaked token must not make tokens that outlive it). The answer holds the secret, shown this once; use it as the password of Basic credentials.")
            .body("NewAccessToken")
            .returns(201, "IssuedAccessToken")
            .errors(&[404, 422]),
        endpoint(M::DELETE, "/api/v1/users/{user}/tokens/{id}", "revokeAccessToken", "Revoke an access token", h::revoke_token)
            .tag("access tokens")
            .describe("For the user and admins. Takes effect at once: the secret stops working, and so do the registry tokens obtained with it (on every replica within the revocation delay, 5 seconds by default).")
            .no_content()
            .errors(&[404]),
        endpoint(M::GET, "/api/v1/users/{user}/refresh-tokens", "listRefreshTokens", "List a user's refresh tokens", h::list_refresh_tokens)
            .tag("refresh tokens")
            .describe("For the user and admins. The tokens themselves are never shown.")
            .paged()
            .returns(200, "RefreshTokenPage")
            .errors(&[404]),
        endpoint(M::DELETE, "/api/v1/users/{user}/refresh-tokens/{id}", "revokeRefreshToken", "Revoke a refresh token", h::revoke_refresh_token)
            .tag("refresh tokens")
            .describe("For the user and admins. Takes effect at once: it can no longer be exchanged, and the registry tokens it gave stop working (on every replica within the revocation delay).")
            .no_content()
            .errors(&[404]),
        // ---- signing keys ----
        endpoint(M::GET, "/api/v1/signing-keys", "listSigningKeys", "List token-signing keys", h::list_signing_keys)
            .tag("signing keys")
            .describe("For admins. Every key with its state, oldest first.")
            .returns(200, "SigningKeyList"),
        endpoint(M::POST, "/api/v1/signing-keys/{kid}/retire", "retireSigningKey", "Retire a token-signing key", h::retire_signing_key)
            .tag("signing keys")
            .describe("For admins. The key stops verifying at once: every token it signed is refused (on every replica within the revocation delay). Retiring the key that signs, or the last key in use, stores a new key in the same step, which signs from then on.")
            .returns(200, "RetiredKey")
            .errors(&[404]),
        // ---- projects ----
        endpoint(M::GET, "/api/v1/projects", "listProjects", "List projects", h::list_projects)
            .tag("projects")
            .describe("Admins see every project; others the public ones and those they are a member of.")
            .paged()
            .returns(200, "ProjectPage"),
        endpoint(M::POST, "/api/v1/projects", "createProject", "Create a project", h::create_project)
            .tag("projects")
            .describe("For admins.")
            .body("NewProject")
            .returns(201, "Project")
            .errors(&[409, 422]),
        endpoint(M::GET, "/api/v1/projects/{project}", "getProject", "Get a project", h::get_project)
            .tag("projects")
            .describe("A private project is not found by non-members.")
            .returns(200, "Project")
            .errors(&[404]),
        endpoint(M::PATCH, "/api/v1/projects/{project}", "updateProject", "Change a project's visibility", h::update_project)
            .tag("projects")
            .describe("For the project's owners and admins.")
            .body("ProjectUpdate")
            .returns(200, "Project")
            .errors(&[404, 422]),
        endpoint(M::DELETE, "/api/v1/projects/{project}", "deleteProject", "Delete an empty project", h::delete_project)
            .tag("projects")
            .describe("For the project's owners and admins; a conflict while the project holds repositories.")
            .no_content()
            .errors(&[404, 409]),
        endpoint(M::GET, "/api/v1/projects/{project}/members", "listMembers", "List a project's members", h::list_members)
            .tag("projects")
            .describe("For the project's members and admins.")
            .paged()
            .returns(200, "MemberPage")
            .errors(&[404]),
        endpoint(M::PUT, "/api/v1/projects/{project}/members/{user}", "setMember", "Add a member or change their role", h::set_member)
            .tag("projects")
            .describe("For the project's owners and admins. A project that has owners keeps at least one.")
            .body("MemberUpdate")
            .returns(200, "Member")
            .errors(&[404, 409, 422]),
        endpoint(M::DELETE, "/api/v1/projects/{project}/members/{user}", "removeMember", "Remove a member", h::remove_member)
            .tag("projects")
            .describe("For the project's owners and admins. A project that has owners keeps at least one.")
            .no_content()
            .errors(&[404, 409]),
        // ---- project robots ----
        endpoint(M::GET, "/api/v1/projects/{project}/robots", "listProjectRobots", "List a project's robots", h::list_project_robots)
            .tag("robots")
            .describe("For the project's owners and admins.")
            .paged()
            .returns(200, "RobotPage")
            .errors(&[404]),
        endpoint(M::POST, "/api/v1/projects/{project}/robots", "createProjectRobot", "Create a project robot", h::create_project_robot)
            .tag("robots")
            .describe("For the project's owners and admins. Every grant stays inside the project. The answer holds the secret, shown this once. Needs a login with the caller's password (not an access token, nor a registry token obtained with one): what it hands out outlives any token.")
            .body("NewRobot")
            .returns(201, "IssuedRobot")
            .errors(&[404, 409, 422]),
        endpoint(M::GET, "/api/v1/projects/{project}/robots/{robot}", "getProjectRobot", "Get a project robot", h::get_project_robot)
            .tag("robots")
            .describe("For the project's owners and admins.")
            .returns(200, "Robot")
            .errors(&[404]),
        endpoint(M::POST, "/api/v1/projects/{project}/robots/{robot}/rotate", "rotateProjectRobot", "Replace a project robot's secret", h::rotate_project_robot)
            .tag("robots")
            .describe("For the project's owners and admins. The old secret stops working; the new one is shown this once. The expiry moves if a new one is given. Needs a login with the caller's password (not an access token, nor a registry token obtained with one): what it hands out outlives any token.")
            .optional_body("Expiry")
            .returns(200, "IssuedRobot")
            .errors(&[404, 409, 422]),
        endpoint(M::DELETE, "/api/v1/projects/{project}/robots/{robot}", "revokeProjectRobot", "Revoke a project robot", h::revoke_project_robot)
            .tag("robots")
            .describe("For the project's owners and admins. Takes effect at once; the robot stays listed as revoked.")
            .no_content()
            .errors(&[404]),
        // ---- system robots ----
        endpoint(M::GET, "/api/v1/robots", "listSystemRobots", "List system robots", h::list_system_robots)
            .tag("robots")
            .describe("For admins.")
            .paged()
            .returns(200, "RobotPage"),
        endpoint(M::POST, "/api/v1/robots", "createSystemRobot", "Create a system robot", h::create_system_robot)
            .tag("robots")
            .describe("For admins. Its grants may span projects. The answer holds the secret, shown this once. Needs a login with the caller's password (not an access token, nor a registry token obtained with one): what it hands out outlives any token.")
            .body("NewRobot")
            .returns(201, "IssuedRobot")
            .errors(&[409, 422]),
        endpoint(M::GET, "/api/v1/robots/{robot}", "getSystemRobot", "Get a system robot", h::get_system_robot)
            .tag("robots")
            .describe("For admins.")
            .returns(200, "Robot")
            .errors(&[404]),
        endpoint(M::POST, "/api/v1/robots/{robot}/rotate", "rotateSystemRobot", "Replace a system robot's secret", h::rotate_system_robot)
            .tag("robots")
            .describe("For admins. The old secret stops working; the new one is shown this once. The expiry moves if a new one is given. Needs a login with the caller's password (not an access token, nor a registry token obtained with one): what it hands out outlives any token.")
            .optional_body("Expiry")
            .returns(200, "IssuedRobot")
            .errors(&[404, 409, 422]),
        endpoint(M::DELETE, "/api/v1/robots/{robot}", "revokeSystemRobot", "Revoke a system robot", h::revoke_system_robot)
            .tag("robots")
            .describe("For admins. Takes effect at once; the robot stays listed as revoked.")
            .no_content()
            .errors(&[404]),
    ]
}

/// The admin API's routes, for merging into the application router.
pub fn router() -> Router<AppState> {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for endpoint in endpoints() {
        match by_path.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, route)) => {
                *route = std::mem::replace(route, MethodRouter::new()).merge(endpoint.route)
            }
            None => by_path.push((endpoint.path, endpoint.route)),
        }
    }
    let router = by_path
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, route.fallback(handlers::method_not_allowed))
        });
    router
        .route("/api/v1", any(handlers::unknown_path))
        .route("/api/v1/{*rest}", any(handlers::unknown_path))
}

fn path_parameter(name: &str) -> Value {
    let description = match name {
        "user" => "A user name.",
        "project" => "A project name.",
        "robot" => "A robot's short name: `ci` for `robot$team+ci` or `robot$ci`.",
        "id" => "An access or refresh token's id.",
        "kid" => "A signing key's id (`kid`).",
        _ => "",
    };
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"} })
}

fn problem_response(status: u16) -> Value {
    let name = match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        503 => "ServiceUnavailable",
        415 => "UnsupportedMediaType",
        422 => "UnprocessableEntity",
        429 => "TooManyRequests",
        _ => "InternalServerError",
    };
    json!({ "$ref": format!("#/components/responses/{name}") })
}

fn problem_responses() -> Value {
    let problem = |description: &str| json!({ "description": description, "content": { problem::CONTENT_TYPE: { "schema": wire::reference("Problem") } } });
    let mut responses = json!({
        "BadRequest": problem("The request is malformed: invalid JSON, query or path."),
        "Unauthorized": problem("No usable credentials."),
        "Forbidden": problem("The caller may not do this; the detail names the rule."),
        "NotFound": problem("The named record does not exist, or is a private project the caller is not a member of."),
        "Conflict": problem("The change conflicts with what exists."),
        "PayloadTooLarge": problem("The body exceeds 64 KiB."),
        "UnsupportedMediaType": problem("The body is not application/json."),
        "UnprocessableEntity": problem("The body is JSON of the wrong shape, or breaks a rule; the detail says which."),
        "TooManyRequests": problem("Too many failed logins from this client or for this account."),
        "InternalServerError": problem("A fault of the server; its cause is in the server log."),
        "ServiceUnavailable": problem("The registry's storage is unreachable for now."),
    });
    responses["Unauthorized"]["headers"] = json!({ "WWW-Authenticate": { "schema": {"type": "string"}, "description": "`Basic realm=\"bulwark\"`" } });
    responses["TooManyRequests"]["headers"] = json!({ "Retry-After": { "schema": {"type": "integer"}, "description": "Seconds to wait." } });
    responses["ServiceUnavailable"]["headers"] = json!({ "Retry-After": { "schema": {"type": "integer"}, "description": "Seconds to wait." } });
    responses
}

impl Endpoint {
    /// The parameters named in the path template, in order.
    fn path_parameters(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    }

    fn operation(&self) -> Value {
        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(self.operation_id));
        operation.insert("summary".into(), json!(self.summary));
        if !self.description.is_empty() {
            operation.insert("description".into(), json!(self.description));
        }
        operation.insert("tags".into(), json!([self.tag]));
        let parameters: Vec<Value> = self
            .path_parameters()
            .into_iter()
            .map(path_parameter)
            .chain(self.query.iter().cloned())
            .collect();
        if !parameters.is_empty() {
            operation.insert("parameters".into(), json!(parameters));
        }
        if let Some((schema, optional)) = &self.body {
            operation.insert("requestBody".into(), json!({ "required": !optional, "content": { "application/json": { "schema": schema } } }));
        }
        let mut responses = Map::new();
        let (status, schema) = &self.success;
        let mut success = json!({ "description": match status { 201 => "Created.", 204 => "Done.", _ => "OK." } });
        if let Some(schema) = schema {
            success["content"] = json!({ "application/json": { "schema": schema } });
        }
        responses.insert(status.to_string(), success);
        let mut errors: Vec<u16> = self.errors.to_vec();
        if !self.public {
            errors.extend([401, 429, 503]);
        }
        if self.forbids {
            errors.push(403);
        }
        if !self.query.is_empty() || !self.path_parameters().is_empty() {
            errors.push(400);
        }
        if self.body.is_some() {
            errors.extend([400, 413, 415, 422]);
        }
        errors.push(500);
        for error in errors {
            responses.insert(error.to_string(), problem_response(error));
        }
        operation.insert("responses".into(), Value::Object(responses));
        if self.public {
            operation.insert("security".into(), json!([]));
        }
        Value::Object(operation)
    }
}

/// The OpenAPI 3.0 document of the admin API, generated from the route table.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for endpoint in endpoints() {
        let item = paths.entry(endpoint.path).or_insert_with(|| json!({}));
        item[endpoint.method.as_str().to_ascii_lowercase()] = endpoint.operation();
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Bulwark admin API",
            "version": "1",
            "description": "Users, personal access and refresh tokens, projects and members, robot accounts, token-signing keys, an authorization dry run and the audit log of a Bulwark registry. Errors are RFC 9457 problems (application/problem+json). Listings take `limit` (1 to 1000, default 100) and `after`, and answer `{items, next}`; pass `next` as `after` for the following page.",
        },
        "tags": [
            {"name": "meta", "description": "The caller, authorization checks, and this document."},
            {"name": "users", "description": "User accounts; for admins, and for users about themselves."},
            {"name": "access tokens", "description": "Personal access tokens: secrets a user logs in with instead of a password."},
            {"name": "refresh tokens", "description": "Refresh tokens the token service handed out (offline tokens, the CLI's login)."},
            {"name": "signing keys", "description": "The keys that sign and verify registry tokens."},
            {"name": "projects", "description": "Projects (the first component of repository names), their visibility and members."},
            {"name": "robots", "description": "Robot accounts for automation, with repository grants and a mandatory expiry."},
            {"name": "audit", "description": "Who did or tried what."},
        ],
        "paths": paths,
        "components": {
            "schemas": wire::schemas(),
            "responses": problem_responses(),
            "securitySchemes": {
                "basic": { "type": "http", "scheme": "basic", "description": "A user name with a password or personal access token, or a robot name with its secret." },
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A registry token from /auth/token." },
            },
        },
        "security": [ { "basic": [] }, { "bearer": [] } ],
    })
}
