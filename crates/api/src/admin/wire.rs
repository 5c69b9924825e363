//! The admin API's JSON: request bodies (parsed strictly: unknown fields are refused), the
//! encoding of `registry::admin` answers, and the schema of each, side by side so that a field
//! and its documentation change together.
//!
//! Invariant: every response body is built by a function here, and the tests check each one
//! against the schema published in the OpenAPI document.

use auth::policy::Grant;
use registry::admin::{
    AuditRecord, CheckOutcome, CheckRequest, ExpiryRequest, GrantRequest, IssuedAccessToken,
    IssuedRobot, Listing, MemberView, Membership, NewProject, NewRobot, NewToken, NewUser,
    ProjectView, RefreshTokenView, RetiredKey, RobotView, Secret, SigningKeyView, TokenView,
    UserChange, UserView, WhoAmI,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

// ---- request bodies ----
// No `Debug` on bodies that carry a password: a `Debug` that prints a secret is a bug.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

impl From<NewUserBody> for NewUser {
    fn from(body: NewUserBody) -> Self {
        NewUser {
            name: body.name,
            password: Secret::new(body.password),
            admin: body.admin,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdateBody {
    password: Option<String>,
    admin: Option<bool>,
    disabled: Option<bool>,
}

impl From<UserUpdateBody> for UserChange {
    fn from(body: UserUpdateBody) -> Self {
        UserChange {
            password: body.password.map(Secret::new),
            admin: body.admin,
            disabled: body.disabled,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProjectBody {
    name: String,
    #[serde(default)]
    public: bool,
}

impl From<NewProjectBody> for NewProject {
    fn from(body: NewProjectBody) -> Self {
        NewProject {
            name: body.name,
            public: body.public,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdateBody {
    pub public: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    repositories: String,
    actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRobotBody {
    name: String,
    description: Option<String>,
    grants: Vec<GrantBody>,
    expires_in: Option<String>,
    expires_at: Option<i64>,
}

impl From<NewRobotBody> for NewRobot {
    fn from(body: NewRobotBody) -> Self {
        NewRobot {
            name: body.name,
            description: body.description,
            grants: body
                .grants
                .into_iter()
                .map(|grant| GrantRequest {
                    repositories: grant.repositories,
                    actions: grant.actions,
                })
                .collect(),
            expiry: ExpiryRequest {
                expires_in: body.expires_in,
                expires_at: body.expires_at,
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryBody {
    expires_in: Option<String>,
    expires_at: Option<i64>,
}

impl From<ExpiryBody> for ExpiryRequest {
    fn from(body: ExpiryBody) -> Self {
        ExpiryRequest {
            expires_in: body.expires_in,
            expires_at: body.expires_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    description: String,
    expires_in: Option<String>,
    expires_at: Option<i64>,
}

impl From<NewTokenBody> for NewToken {
    fn from(body: NewTokenBody) -> Self {
        NewToken {
            description: body.description,
            expiry: ExpiryRequest {
                expires_in: body.expires_in,
                expires_at: body.expires_at,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    principal: String,
    repository: String,
    action: String,
}

impl From<CheckBody> for CheckRequest {
    fn from(body: CheckBody) -> Self {
        CheckRequest {
            principal: body.principal,
            repository: body.repository,
            action: body.action,
        }
    }
}

// ---- responses ----

pub fn page<T>(listing: &Listing<T>, item: impl Fn(&T) -> Value) -> Value {
    json!({
        "items": listing.items.iter().map(item).collect::<Vec<_>>(),
        "next": listing.next,
    })
}

pub fn user(user: &UserView) -> Value {
    json!({
        "name": user.name,
        "admin": user.admin,
        "disabled": user.disabled,
        "created_at": user.created_at,
    })
}

pub fn project(project: &ProjectView) -> Value {
    json!({
        "name": project.name,
        "public": project.public,
        "created_at": project.created_at,
    })
}

pub fn member(member: &MemberView) -> Value {
    json!({ "user": member.user, "role": member.role.as_str() })
}

fn membership(membership: &Membership) -> Value {
    json!({ "project": membership.project, "role": membership.role.as_str() })
}

fn grant(grant: &Grant) -> Value {
    let actions: Vec<&str> = grant.actions.iter().map(|action| action.as_str()).collect();
    json!({ "repositories": grant.pattern, "actions": actions })
}

pub fn robot(robot: &RobotView) -> Value {
    json!({
        "name": robot.name,
        "project": robot.project,
        "description": robot.description,
        "grants": robot.grants.iter().map(grant).collect::<Vec<_>>(),
        "expires_at": robot.expires_at,
        "revoked": robot.revoked,
        "created_at": robot.created_at,
        "last_used_at": robot.last_used_at,
    })
}

pub fn issued_robot(issued: &IssuedRobot) -> Value {
    let mut value = robot(&issued.robot);
    value["secret"] = json!(issued.secret.expose());
    value
}

pub fn token(token: &TokenView) -> Value {
    json!({
        "id": token.id,
        "user": token.user,
        "description": token.description,
        "expires_at": token.expires_at,
        "revoked": token.revoked,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
    })
}

pub fn refresh_token(token: &RefreshTokenView) -> Value {
    json!({
        "id": token.id,
        "credential": token.credential,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "revoked": token.revoked,
    })
}

pub fn signing_key(key: &SigningKeyView) -> Value {
    json!({
        "kid": key.kid,
        "state": key.state.as_str(),
        "created_at": key.created_at,
        "retired_at": key.retired_at,
    })
}

pub fn signing_keys(keys: &[SigningKeyView]) -> Value {
    json!({ "items": keys.iter().map(signing_key).collect::<Vec<_>>() })
}

pub fn retired_key(retired: &RetiredKey) -> Value {
    json!({ "retired": retired.retired, "signing": retired.signing })
}

pub fn issued_token(issued: &IssuedAccessToken) -> Value {
    let mut value = token(&issued.token);
    value["secret"] = json!(issued.secret.expose());
    value
}

pub fn whoami(whoami: &WhoAmI) -> Value {
    json!({
        "principal": whoami.principal,
        "kind": whoami.kind.as_str(),
        "admin": whoami.admin,
        "projects": whoami.projects.iter().map(membership).collect::<Vec<_>>(),
        "robot": whoami.robot.as_ref().map(robot),
    })
}

pub fn check(outcome: &CheckOutcome) -> Value {
    json!({ "allowed": outcome.allowed, "rule": outcome.rule, "reason": outcome.reason })
}

pub fn audit_event(record: &AuditRecord) -> Value {
    let event = &record.event;
    json!({
        "id": record.id,
        "time": event.time,
        "principal": event.principal,
        "action": event.action,
        "target": event.target,
        "result": event.result,
        "reason": event.reason,
        "client": event.client,
    })
}

/// The parameters of an audit log read (`extract::AuditQuery` reads them).
pub fn audit_parameters() -> Vec<Value> {
    vec![
        query_parameter(
            "principal",
            "Only events of this principal: `user:alice`, `robot:robot$team+ci`, `anonymous`.",
            json!({"type": "string"}),
        ),
        query_parameter(
            "action",
            "Only this action: `push`, `login`, `user.create`, `robot.revoke`, ...",
            json!({"type": "string"}),
        ),
        query_parameter(
            "target",
            "Only events on this target: a repository, user, project or robot name.",
            json!({"type": "string"}),
        ),
        query_parameter(
            "result",
            "Only this result.",
            json!({"type": "string", "enum": ["allowed", "denied", "failed"]}),
        ),
        query_parameter(
            "since",
            "Only events at or after this time (Unix seconds).",
            json!({"type": "integer", "format": "int64"}),
        ),
        query_parameter(
            "until",
            "Only events at or before this time (Unix seconds).",
            json!({"type": "integer", "format": "int64"}),
        ),
        query_parameter(
            "before",
            "Only events older than this event id: the `next` of the previous page.",
            json!({"type": "integer", "format": "int64"}),
        ),
        limit_parameter(),
    ]
}

pub fn page_parameters() -> Vec<Value> {
    vec![
        limit_parameter(),
        query_parameter(
            "after",
            "The `next` cursor of the previous page.",
            json!({"type": "string"}),
        ),
    ]
}

fn limit_parameter() -> Value {
    query_parameter(
        "limit",
        "Items per page.",
        json!({"type": "integer", "minimum": 1, "maximum": registry::admin::MAX_PAGE_LIMIT, "default": registry::admin::DEFAULT_PAGE_LIMIT}),
    )
}

fn query_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

// ---- schemas ----

pub fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn string() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn time(description: &str) -> Value {
    json!({"type": "integer", "format": "int64", "description": description})
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

fn role() -> Value {
    json!({"type": "string", "enum": ["owner", "maintainer", "developer", "reader"]})
}

fn action() -> Value {
    json!({"type": "string", "enum": ["pull", "push", "delete"]})
}

/// A closed object: every listed property, `required` of them mandatory, nothing else.
fn object(description: &str, properties: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
        .collect();
    let mut schema = json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// A response object: all properties always present (some may be null).
fn record(description: &str, properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
    object(description, properties, &required)
}

fn with_secret(mut schema: Value, what: &str) -> Value {
    schema["properties"]["secret"] = json!({
        "type": "string",
        "description": format!("The {what}'s secret (`bwk_…`). Shown in this answer only; the registry keeps just a hash."),
    });
    if let Some(required) = schema["required"].as_array_mut() {
        required.push(json!("secret"));
    }
    schema
}

fn page_of(item: &str) -> Value {
    record(
        &format!("One page of {item} items."),
        &[
            ("items", json!({"type": "array", "items": reference(item)})),
            (
                "next",
                nullable(
                    json!({"type": "string", "description": "Pass as `after` (audit: `before`) for the next page; null on the last page."}),
                ),
            ),
        ],
    )
}

fn expiry_properties() -> [(&'static str, Value); 2] {
    [
        (
            "expires_in",
            json!({"type": "string", "pattern": "^[0-9]+[dh]$", "example": "30d", "description": "Lifetime in days or hours, at most 365d. Default 90d."}),
        ),
        (
            "expires_at",
            json!({"type": "integer", "format": "int64", "description": "Expiry as Unix seconds, in the future and at most 365 days ahead. Not with expires_in."}),
        ),
    ]
}

fn robot_schema() -> Value {
    record(
        "A robot account. Its secret is never shown again after creation or rotation.",
        &[
            (
                "name",
                json!({"type": "string", "example": "robot$team+ci", "description": "The name it logs in with."}),
            ),
            (
                "project",
                nullable(
                    json!({"type": "string", "description": "Its project; null for a system robot."}),
                ),
            ),
            ("description", nullable(string())),
            (
                "grants",
                json!({"type": "array", "items": reference("Grant")}),
            ),
            ("expires_at", time("Unix seconds.")),
            ("revoked", boolean()),
            ("created_at", time("Unix seconds.")),
            ("last_used_at", nullable(time("Unix seconds."))),
        ],
    )
}

fn token_schema() -> Value {
    record(
        "A personal access token. Its secret is never shown again after creation.",
        &[
            ("id", string()),
            ("user", string()),
            ("description", string()),
            ("expires_at", nullable(time("Unix seconds."))),
            ("revoked", boolean()),
            ("created_at", time("Unix seconds.")),
            ("last_used_at", nullable(time("Unix seconds."))),
        ],
    )
}

/// `components.schemas` of the OpenAPI document.
pub fn schemas() -> Value {
    let [expires_in, expires_at] = expiry_properties();
    let name_pattern = "^[a-z0-9]+([._-][a-z0-9]+)*$";
    let schemas = [
        (
            "Problem",
            record(
                "An RFC 9457 problem: what went wrong, for people.",
                &[
                    ("type", json!({"type": "string", "example": "about:blank"})),
                    ("title", string()),
                    ("status", json!({"type": "integer"})),
                    ("detail", string()),
                ],
            ),
        ),
        (
            "User",
            record(
                "A user account.",
                &[("name", string()), ("admin", boolean()), ("disabled", boolean()), ("created_at", time("Unix seconds."))],
            ),
        ),
        (
            "NewUser",
            object(
                "A user to create.",
                &[
                    ("name", json!({"type": "string", "pattern": name_pattern, "maxLength": 64})),
                    ("password", json!({"type": "string", "minLength": 12, "format": "password"})),
                    ("admin", json!({"type": "boolean", "default": false})),
                ],
                &["name", "password"],
            ),
        ),
        (
            "UserUpdate",
            object(
                "Changes to a user, by an admin; absent fields stay as they are.",
                &[
                    ("password", json!({"type": "string", "minLength": 12, "format": "password"})),
                    ("admin", boolean()),
                    ("disabled", boolean()),
                ],
                &[],
            ),
        ),
        (
            "PasswordChange",
            object(
                "A user's change of their own password.",
                &[
                    ("current_password", json!({"type": "string", "format": "password"})),
                    ("new_password", json!({"type": "string", "minLength": 12, "format": "password"})),
                ],
                &["current_password", "new_password"],
            ),
        ),
        ("AccessToken", token_schema()),
        (
            "RefreshToken",
            record(
                "A refresh token the token service handed out (the token itself is never shown). Exchanging it hands out the same one, by id, with a new lifetime.",
                &[
                    ("id", string()),
                    ("credential", json!({"type": "string", "enum": ["password", "token", "robot"], "description": "What it was obtained with."})),
                    ("created_at", time("Unix seconds.")),
                    ("expires_at", time("Unix seconds.")),
                    ("last_used_at", nullable(time("Unix seconds."))),
                    ("revoked", boolean()),
                ],
            ),
        ),
        (
            "SigningKey",
            record(
                "A token-signing key (ES256, P-256), by its `kid`.",
                &[
                    ("kid", string()),
                    ("state", json!({"type": "string", "enum": ["signing", "verifying", "retired"], "description": "`signing`: signs new tokens on this replica; `verifying`: verifies the tokens it signed; `retired`: neither."})),
                    ("created_at", time("Unix seconds.")),
                    ("retired_at", nullable(time("Unix seconds."))),
                ],
            ),
        ),
        (
            "SigningKeyList",
            record("Every signing key, oldest first.", &[("items", json!({"type": "array", "items": reference("SigningKey")}))]),
        ),
        (
            "RetiredKey",
            record(
                "The key retired, and the key that signs now (a new one when the retired key signed).",
                &[("retired", string()), ("signing", string())],
            ),
        ),
        ("IssuedAccessToken", with_secret(token_schema(), "token")),
        (
            "NewAccessToken",
            object(
                "A personal access token to create for oneself.",
                &[("description", json!({"type": "string", "maxLength": 1024})), expires_in.clone(), expires_at.clone()],
                &["description"],
            ),
        ),
        (
            "Project",
            record("A project: the first path component of its repositories' names.", &[("name", string()), ("public", boolean()), ("created_at", time("Unix seconds."))]),
        ),
        (
            "NewProject",
            object(
                "A project to create.",
                &[("name", json!({"type": "string", "maxLength": 64})), ("public", json!({"type": "boolean", "default": false, "description": "Public projects allow anonymous pull."}))],
                &["name"],
            ),
        ),
        ("ProjectUpdate", object("A project's new visibility.", &[("public", boolean())], &["public"])),
        ("Member", record("A project member and their role.", &[("user", string()), ("role", role())])),
        ("MemberUpdate", object("A member's role.", &[("role", role())], &["role"])),
        ("Membership", record("A project the caller belongs to, and their role in it.", &[("project", string()), ("role", role())])),
        (
            "Grant",
            object(
                "Repositories matching the pattern may receive the actions. `*` matches within one path component, `**` across them; a project robot's patterns start with `<project>/` (or are `<project>`).",
                &[
                    ("repositories", json!({"type": "string", "example": "team/app-*"})),
                    ("actions", json!({"type": "array", "items": action(), "minItems": 1})),
                ],
                &["repositories", "actions"],
            ),
        ),
        ("Robot", robot_schema()),
        ("IssuedRobot", with_secret(robot_schema(), "robot")),
        (
            "NewRobot",
            object(
                "A robot to create.",
                &[
                    (
                        "name",
                        json!({"type": "string", "pattern": name_pattern, "maxLength": 64, "description": "The short name: `ci` becomes `robot$team+ci` in project team, `robot$ci` system-wide."}),
                    ),
                    ("description", json!({"type": "string", "maxLength": 1024})),
                    ("grants", json!({"type": "array", "items": reference("Grant"), "minItems": 1})),
                    expires_in.clone(),
                    expires_at.clone(),
                ],
                &["name", "grants"],
            ),
        ),
        (
            "Expiry",
            object("A new expiry for a rotated secret; without one, the expiry stays.", &[expires_in, expires_at], &[]),
        ),
        (
            "WhoAmI",
            record(
                "The caller, as the registry sees them now.",
                &[
                    ("principal", json!({"type": "string", "example": "user:alice"})),
                    ("kind", json!({"type": "string", "enum": ["user", "robot", "anonymous"]})),
                    ("admin", boolean()),
                    ("projects", json!({"type": "array", "items": reference("Membership"), "description": "A user's projects; empty for robots."})),
                    ("robot", json!({"allOf": [reference("Robot")], "nullable": true, "description": "A robot's own record; null for users."})),
                ],
            ),
        ),
        (
            "CheckRequest",
            object(
                "An authorization question.",
                &[
                    ("principal", json!({"type": "string", "example": "robot:robot$team+ci", "description": "`user:NAME`, `robot:NAME` or `anonymous`."})),
                    ("repository", json!({"type": "string", "example": "team/app"})),
                    ("action", action()),
                ],
                &["principal", "repository", "action"],
            ),
        ),
        (
            "CheckResult",
            record(
                "What the registry would decide, and the rule that decides.",
                &[
                    ("allowed", boolean()),
                    ("rule", json!({"type": "string", "example": "project_role"})),
                    ("reason", json!({"type": "string", "example": "role developer in project team allows push"})),
                ],
            ),
        ),
        (
            "AuditEvent",
            record(
                "Something someone did or tried.",
                &[
                    ("id", json!({"type": "integer", "format": "int64"})),
                    ("time", time("Unix seconds.")),
                    ("principal", string()),
                    ("action", string()),
                    ("target", string()),
                    ("result", json!({"type": "string", "enum": ["allowed", "denied", "failed"]})),
                    ("reason", nullable(string())),
                    ("client", nullable(json!({"type": "string", "description": "The client's IP address."}))),
                ],
            ),
        ),
        ("UserPage", page_of("User")),
        ("AccessTokenPage", page_of("AccessToken")),
        ("RefreshTokenPage", page_of("RefreshToken")),
        ("ProjectPage", page_of("Project")),
        ("MemberPage", page_of("Member")),
        ("RobotPage", page_of("Robot")),
        ("AuditPage", page_of("AuditEvent")),
    ];
    Value::Object(
        schemas
            .into_iter()
            .map(|(name, schema)| (name.to_owned(), schema))
            .collect(),
    )
}
