//! The admin handlers: extract, one `Access` call, map the answer to JSON.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::admin::RobotScope;
use serde_json::Value;

use super::extract::{AuditQuery, Caller, Json, OptionalJson, Page, Path};
use super::problem::Problem;
use super::wire::{
    self, CheckBody, ExpiryBody, MemberBody, NewProjectBody, NewRobotBody, NewTokenBody,
    NewUserBody, PasswordBody, ProjectUpdateBody, UserUpdateBody,
};
use crate::AppState;

type Answer = Result<Response, Problem>;

fn json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    // Answers name users and robots, and some carry a secret shown once: no cache keeps them.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn ok(body: &Value) -> Answer {
    Ok(json(StatusCode::OK, body))
}

fn created(body: &Value) -> Answer {
    Ok(json(StatusCode::CREATED, body))
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn openapi() -> Response {
    axum::Json(super::openapi()).into_response()
}

pub async fn whoami(State(state): State<AppState>, caller: Caller) -> Answer {
    ok(&wire::whoami(
        &state.access.whoami(&caller.principal).await?,
    ))
}

pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CheckBody>,
) -> Answer {
    ok(&wire::check(
        &state
            .access
            .check(&caller.principal, &body.into(), caller.client)
            .await?,
    ))
}

pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    AuditQuery(query): AuditQuery,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .audit_events(&caller.principal, query, caller.client)
            .await?,
        wire::audit_event,
    ))
}

// ---- users ----

pub async fn list_users(State(state): State<AppState>, caller: Caller, Page(page): Page) -> Answer {
    ok(&wire::page(
        &state
            .access
            .users(&caller.principal, &page, caller.client)
            .await?,
        wire::user,
    ))
}

pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewUserBody>,
) -> Answer {
    created(&wire::user(
        &state
            .access
            .create_user(
                &caller.principal,
                caller.credential,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Answer {
    ok(&wire::user(
        &state
            .access
            .user(&caller.principal, &user, caller.client)
            .await?,
    ))
}

pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Json(body): Json<UserUpdateBody>,
) -> Answer {
    ok(&wire::user(
        &state
            .access
            .update_user(
                &caller.principal,
                caller.credential,
                &user,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Answer {
    state
        .access
        .delete_user(&caller.principal, &user, caller.client)
        .await?;
    no_content()
}

pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Json(body): Json<PasswordBody>,
) -> Answer {
    let (current, new) = (
        registry::admin::Secret::new(body.current_password),
        registry::admin::Secret::new(body.new_password),
    );
    state
        .access
        .change_password(
            &caller.principal,
            caller.credential,
            &user,
            &current,
            &new,
            caller.client,
        )
        .await?;
    no_content()
}

// ---- personal access tokens ----

pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .access_tokens(&caller.principal, &user, &page, caller.client)
            .await?,
        wire::token,
    ))
}

pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Json(body): Json<NewTokenBody>,
) -> Answer {
    created(&wire::issued_token(
        &state
            .access
            .create_access_token(
                &caller.principal,
                caller.credential,
                &user,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> Answer {
    state
        .access
        .revoke_access_token(&caller.principal, &user, &id, caller.client)
        .await?;
    no_content()
}

// ---- refresh tokens ----

pub async fn list_refresh_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .refresh_tokens(&caller.principal, &user, &page, caller.client)
            .await?,
        wire::refresh_token,
    ))
}

pub async fn revoke_refresh_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> Answer {
    state
        .access
        .revoke_refresh_token(&caller.principal, &user, &id, caller.client)
        .await?;
    no_content()
}

// ---- signing keys ----

pub async fn list_signing_keys(State(state): State<AppState>, caller: Caller) -> Answer {
    ok(&wire::signing_keys(
        &state
            .access
            .signing_keys(&caller.principal, caller.client)
            .await?,
    ))
}

pub async fn retire_signing_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(kid): Path<String>,
) -> Answer {
    ok(&wire::retired_key(
        &state
            .access
            .retire_signing_key(&caller.principal, &kid, caller.client)
            .await?,
    ))
}

// ---- projects and members ----

pub async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .projects(&caller.principal, &page, caller.client)
            .await?,
        wire::project,
    ))
}

pub async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewProjectBody>,
) -> Answer {
    created(&wire::project(
        &state
            .access
            .create_project(&caller.principal, body.into(), caller.client)
            .await?,
    ))
}

pub async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Answer {
    ok(&wire::project(
        &state
            .access
            .project(&caller.principal, &project, caller.client)
            .await?,
    ))
}

pub async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Json(body): Json<ProjectUpdateBody>,
) -> Answer {
    ok(&wire::project(
        &state
            .access
            .set_project_public(&caller.principal, &project, body.public, caller.client)
            .await?,
    ))
}

pub async fn delete_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Answer {
    state
        .access
        .delete_project(&caller.principal, &project, caller.client)
        .await?;
    no_content()
}

pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .members(&caller.principal, &project, &page, caller.client)
            .await?,
        wire::member,
    ))
}

pub async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
    Json(body): Json<MemberBody>,
) -> Answer {
    ok(&wire::member(
        &state
            .access
            .set_member(
                &caller.principal,
                &project,
                &user,
                &body.role,
                caller.client,
            )
            .await?,
    ))
}

pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
) -> Answer {
    state
        .access
        .remove_member(&caller.principal, &project, &user, caller.client)
        .await?;
    no_content()
}

// ---- project robots ----

pub async fn list_project_robots(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .robots(
                &caller.principal,
                RobotScope::Project(&project),
                &page,
                caller.client,
            )
            .await?,
        wire::robot,
    ))
}

pub async fn create_project_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Json(body): Json<NewRobotBody>,
) -> Answer {
    created(&wire::issued_robot(
        &state
            .access
            .create_robot(
                &caller.principal,
                caller.credential,
                RobotScope::Project(&project),
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn get_project_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, robot)): Path<(String, String)>,
) -> Answer {
    ok(&wire::robot(
        &state
            .access
            .robot(
                &caller.principal,
                RobotScope::Project(&project),
                &robot,
                caller.client,
            )
            .await?,
    ))
}

pub async fn rotate_project_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, robot)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<ExpiryBody>,
) -> Answer {
    ok(&wire::issued_robot(
        &state
            .access
            .rotate_robot(
                &caller.principal,
                caller.credential,
                RobotScope::Project(&project),
                &robot,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn revoke_project_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, robot)): Path<(String, String)>,
) -> Answer {
    state
        .access
        .revoke_robot(
            &caller.principal,
            RobotScope::Project(&project),
            &robot,
            caller.client,
        )
        .await?;
    no_content()
}

// ---- system robots ----

pub async fn list_system_robots(
    State(state): State<AppState>,
    caller: Caller,
    Page(page): Page,
) -> Answer {
    ok(&wire::page(
        &state
            .access
            .robots(&caller.principal, RobotScope::System, &page, caller.client)
            .await?,
        wire::robot,
    ))
}

pub async fn create_system_robot(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewRobotBody>,
) -> Answer {
    created(&wire::issued_robot(
        &state
            .access
            .create_robot(
                &caller.principal,
                caller.credential,
                RobotScope::System,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn get_system_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path(robot): Path<String>,
) -> Answer {
    ok(&wire::robot(
        &state
            .access
            .robot(&caller.principal, RobotScope::System, &robot, caller.client)
            .await?,
    ))
}

pub async fn rotate_system_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path(robot): Path<String>,
    OptionalJson(body): OptionalJson<ExpiryBody>,
) -> Answer {
    ok(&wire::issued_robot(
        &state
            .access
            .rotate_robot(
                &caller.principal,
                caller.credential,
                RobotScope::System,
                &robot,
                body.into(),
                caller.client,
            )
            .await?,
    ))
}

pub async fn revoke_system_robot(
    State(state): State<AppState>,
    caller: Caller,
    Path(robot): Path<String>,
) -> Answer {
    state
        .access
        .revoke_robot(&caller.principal, RobotScope::System, &robot, caller.client)
        .await?;
    no_content()
}

/// Any path under `/api/v1` the route table does not name.
pub async fn unknown_path() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such endpoint in the admin API; see /api/v1/openapi.json",
    )
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see /api/v1/openapi.json",
    )
}
