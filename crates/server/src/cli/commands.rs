//! Each client command: read its input, make its API call, print the answer.
//!
//! Invariant: every command is one `/auth/token` or `/api/v1` exchange (a listing: one per
//! page); what may be done is decided by the API, never guessed here.

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{self, Api};
use super::profile::{self, Profile};
use super::prompt::{self, StdinLines};
use super::table::{self, field, flag, render, render_fields, time, time_field, yes_no};
use super::{
    AuditArgs, Command, KeyCommand, LoginArgs, MemberCommand, Output, ProjectCommand,
    RefreshTokenCommand, RobotCommand, Since, TokenCommand, UserCommand, Visibility,
};

/// Runs one client command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login(args) => login(args).await,
        Command::Logout => logout(),
        Command::Whoami(output) => whoami(&Api::connect().await?, output).await,
        Command::User { command, output } => user(&Api::connect().await?, command, output).await,
        Command::Project { command, output } => {
            project(&Api::connect().await?, command, output).await
        }
        Command::Member { command, output } => {
            member(&Api::connect().await?, command, output).await
        }
        Command::Robot { command, output } => robot(&Api::connect().await?, command, output).await,
        Command::Token { command, output } => token(&Api::connect().await?, command, output).await,
        Command::RefreshToken { command, output } => {
            refresh_token(&Api::connect().await?, command, output).await
        }
        Command::Key { command, output } => key(&Api::connect().await?, command, output).await,
        Command::Audit(args) => audit(&Api::connect().await?, args).await,
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as JSON, or else the text `human` makes of it.
fn show(output: Output, value: &Value, human: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    if output.json {
        print_json(value)
    } else {
        print!("{}", human(value));
        Ok(())
    }
}

/// A sentence for a change that answers 204 (nothing to print as JSON).
fn done(output: Output, sentence: &str) {
    if !output.json {
        println!("{sentence}");
    }
}

fn items(page: &Value) -> &[Value] {
    page.get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A table, or `empty` when there are no rows.
fn listing(headers: &[&str], rows: Vec<Vec<String>>, empty: &str) -> String {
    if rows.is_empty() {
        format!("{empty}\n")
    } else {
        render(headers, &rows)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn warn_secret_shown_once(what: &str) {
    eprintln!("Store this {what} now: it is shown only this once and cannot be retrieved later.");
}

// ---- login ----

/// The password of a login: standard input, `BULWARK_PASSWORD`, or the terminal.
fn login_password(password_stdin: bool, username: &str) -> anyhow::Result<String> {
    if password_stdin {
        return StdinLines::new().next("password");
    }
    if let Some(password) = std::env::var("BULWARK_PASSWORD")
        .ok()
        .filter(|password| !password.is_empty())
    {
        return Ok(password);
    }
    prompt::ask_hidden(&format!("Password for {username}: "))
        .context("cannot ask for the password: pass it with --password-stdin or BULWARK_PASSWORD")
}

async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let base = client::registry_url(&args.url)?;
    let url = client::display_url(&base);
    // Stored absolute, so later commands find it from any directory.
    let ca_cert = match &args.ca_cert {
        Some(file) => Some(
            std::fs::canonicalize(file).with_context(|| format!("--ca-cert {}", file.display()))?,
        ),
        None => None,
    };
    let http = client::transport(ca_cert.as_deref())?;
    let service = client::discover_service(&http, &base, ca_cert.as_deref()).await?;
    let username = match args.username.or_else(|| {
        std::env::var("BULWARK_USERNAME")
            .ok()
            .filter(|name| !name.is_empty())
    }) {
        Some(username) => username,
        None if args.password_stdin => bail!("--password-stdin needs --username"),
        None => {
            prompt::ask("Username: ").context("cannot ask for the user name: pass --username")?
        }
    };
    let password = login_password(args.password_stdin, &username)?;
    let form = [
        ("grant_type", "password"),
        ("username", username.as_str()),
        ("password", password.as_str()),
        ("service", service.as_str()),
        ("access_type", "offline"),
        ("client_id", "bulwark-cli"),
    ];
    let tokens = client::exchange(&http, &base, ca_cert.as_deref(), &form)
        .await
        .with_context(|| format!("logging in to {url} as {username}"))?;
    let Some(refresh_token) = tokens.refresh else {
        bail!("{url} issued no refresh token: its token service does not support `access_type=offline`");
    };
    let path = profile::path()?;
    profile::save(
        &path,
        &Profile {
            url: url.clone(),
            service,
            username: username.clone(),
            refresh_token,
            ca_cert,
        },
    )?;
    println!("Logged in to {url} as {username}.");
    Ok(())
}

fn logout() -> anyhow::Result<()> {
    let path = profile::path()?;
    let stored = profile::load(&path).ok().flatten();
    if profile::remove(&path)? {
        match stored {
            Some(stored) => println!("Logged out of {} (removed {}).", stored.url, path.display()),
            None => println!("Removed {}.", path.display()),
        }
    } else {
        println!("Not logged in (no login at {}).", path.display());
    }
    Ok(())
}

async fn whoami(api: &Api, output: Output) -> anyhow::Result<()> {
    let answer = api.get(&["whoami"]).await?;
    show(output, &answer, |whoami| {
        let mut text = field(whoami, "principal");
        if flag(whoami, "admin") {
            text.push_str(" (admin)");
        }
        text.push('\n');
        if let Some(robot) = whoami.get("robot").filter(|robot| !robot.is_null()) {
            text.push_str(&robot_fields(robot));
        } else {
            let projects = whoami
                .get("projects")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows = projects
                .iter()
                .map(|membership| vec![field(membership, "project"), field(membership, "role")])
                .collect();
            text.push_str(&listing(
                &["PROJECT", "ROLE"],
                rows,
                "No project memberships.",
            ));
        }
        text
    })
}

// ---- users ----

fn user_fields(user: &Value) -> String {
    render_fields(&[
        ("name", field(user, "name")),
        ("admin", yes_no(flag(user, "admin"))),
        ("disabled", yes_no(flag(user, "disabled"))),
        ("created", time_field(user, "created_at", "-")),
    ])
}

async fn user(api: &Api, command: UserCommand, output: Output) -> anyhow::Result<()> {
    match command {
        UserCommand::Create {
            name,
            admin,
            password_stdin,
        } => {
            let password = if password_stdin {
                StdinLines::new().next("password")?
            } else {
                prompt::ask_new_password(&format!("Password for {name}: "))
                    .context("cannot ask for the password: pass it with --password-stdin")?
            };
            let created = api
                .send(
                    Method::POST,
                    &["users"],
                    &json!({ "name": name, "password": password, "admin": admin }),
                )
                .await?;
            let role = if admin { "admin" } else { "user" };
            show(output, &created, |user| {
                format!("Created {role} {}.\n", field(user, "name"))
            })
        }
        UserCommand::List => {
            let page = api.list_all(&["users"]).await?;
            show(output, &page, |page| {
                let rows = items(page)
                    .iter()
                    .map(|user| {
                        vec![
                            field(user, "name"),
                            if flag(user, "admin") { "admin" } else { "user" }.to_owned(),
                            if flag(user, "disabled") {
                                "disabled"
                            } else {
                                "active"
                            }
                            .to_owned(),
                            time_field(user, "created_at", "-"),
                        ]
                    })
                    .collect();
                listing(&["NAME", "ROLE", "STATUS", "CREATED"], rows, "No users.")
            })
        }
        UserCommand::Get { name } => {
            let user = api.get(&["users", &name]).await?;
            show(output, &user, user_fields)
        }
        UserCommand::Disable { name } => {
            let user = api
                .send(
                    Method::PATCH,
                    &["users", &name],
                    &json!({ "disabled": true }),
                )
                .await?;
            show(output, &user, |user| {
                format!(
                    "Disabled user {}: they can no longer log in.\n",
                    field(user, "name")
                )
            })
        }
        UserCommand::Enable { name } => {
            let user = api
                .send(
                    Method::PATCH,
                    &["users", &name],
                    &json!({ "disabled": false }),
                )
                .await?;
            show(output, &user, |user| {
                format!("Enabled user {}.\n", field(user, "name"))
            })
        }
        UserCommand::Delete { name } => {
            api.delete(&["users", &name]).await?;
            done(
                output,
                &format!("Deleted user {name}, their memberships and access tokens."),
            );
            Ok(())
        }
        UserCommand::Passwd => {
            let me = api.username.clone();
            let (current, new) = if prompt::stdin_is_terminal() {
                let current = prompt::ask_hidden(&format!("Current password for {me}: "))?;
                (current, prompt::ask_new_password("New password: ")?)
            } else {
                let mut lines = StdinLines::new();
                (lines.next("current password")?, lines.next("new password")?)
            };
            api.call(
                Method::PUT,
                &["users", &me, "password"],
                &[],
                Some(&json!({ "current_password": current, "new_password": new })),
            )
            .await?;
            done(output, &format!("Changed the password of {me}."));
            Ok(())
        }
    }
}

// ---- projects and members ----

fn visibility(project: &Value) -> String {
    if flag(project, "public") {
        "public"
    } else {
        "private"
    }
    .to_owned()
}

async fn project(api: &Api, command: ProjectCommand, output: Output) -> anyhow::Result<()> {
    match command {
        ProjectCommand::Create { name, public } => {
            let project = api
                .send(
                    Method::POST,
                    &["projects"],
                    &json!({ "name": name, "public": public }),
                )
                .await?;
            show(output, &project, |project| {
                format!(
                    "Created project {} ({}).\n",
                    field(project, "name"),
                    visibility(project)
                )
            })
        }
        ProjectCommand::List => {
            let page = api.list_all(&["projects"]).await?;
            show(output, &page, |page| {
                let rows = items(page)
                    .iter()
                    .map(|project| {
                        vec![
                            field(project, "name"),
                            visibility(project),
                            time_field(project, "created_at", "-"),
                        ]
                    })
                    .collect();
                listing(&["NAME", "VISIBILITY", "CREATED"], rows, "No projects.")
            })
        }
        ProjectCommand::Get { name } => {
            let project = api.get(&["projects", &name]).await?;
            show(output, &project, |project| {
                render_fields(&[
                    ("name", field(project, "name")),
                    ("visibility", visibility(project)),
                    ("created", time_field(project, "created_at", "-")),
                ])
            })
        }
        ProjectCommand::Visibility {
            name,
            visibility: wanted,
        } => {
            let public = matches!(wanted, Visibility::Public);
            let project = api
                .send(
                    Method::PATCH,
                    &["projects", &name],
                    &json!({ "public": public }),
                )
                .await?;
            show(output, &project, |project| {
                let note = if public {
                    ": anyone may pull from it"
                } else {
                    ": only members may pull from it"
                };
                format!(
                    "Project {} is now {}{note}.\n",
                    field(project, "name"),
                    visibility(project)
                )
            })
        }
        ProjectCommand::Delete { name } => {
            api.delete(&["projects", &name]).await?;
            done(output, &format!("Deleted project {name}."));
            Ok(())
        }
    }
}

async fn member(api: &Api, command: MemberCommand, output: Output) -> anyhow::Result<()> {
    match command {
        MemberCommand::Add {
            project,
            user,
            role,
        } => {
            let member = api
                .send(
                    Method::PUT,
                    &["projects", &project, "members", &user],
                    &json!({ "role": role.as_str() }),
                )
                .await?;
            show(output, &member, |member| {
                format!(
                    "{} is now {} in {project}.\n",
                    field(member, "user"),
                    field(member, "role")
                )
            })
        }
        MemberCommand::List { project } => {
            let page = api.list_all(&["projects", &project, "members"]).await?;
            show(output, &page, |page| {
                let rows = items(page)
                    .iter()
                    .map(|member| vec![field(member, "user"), field(member, "role")])
                    .collect();
                listing(
                    &["USER", "ROLE"],
                    rows,
                    &format!("{project} has no members."),
                )
            })
        }
        MemberCommand::Remove { project, user } => {
            api.delete(&["projects", &project, "members", &user])
                .await?;
            done(output, &format!("Removed {user} from {project}."));
            Ok(())
        }
    }
}

// ---- robots ----

/// A robot as the user named it: `robot$team+ci`, `robot$ci`, or a short name and `--project`.
struct RobotName {
    project: Option<String>,
    short: String,
}

impl RobotName {
    fn parse(name: &str, project: Option<String>) -> anyhow::Result<RobotName> {
        let Some(full) = name.strip_prefix("robot$") else {
            return Ok(RobotName {
                project,
                short: name.to_owned(),
            });
        };
        let (named_project, short) = match full.split_once('+') {
            Some((named_project, short)) => (Some(named_project.to_owned()), short.to_owned()),
            None => (None, full.to_owned()),
        };
        if project.is_some() && project != named_project {
            bail!("{name} is not in project {}", project.unwrap_or_default());
        }
        Ok(RobotName {
            project: named_project,
            short,
        })
    }

    /// The name it logs in with.
    fn full(&self) -> String {
        match &self.project {
            Some(project) => format!("robot${project}+{}", self.short),
            None => format!("robot${}", self.short),
        }
    }

    /// `projects/P/robots` or `robots`, optionally followed by the robot and `more`.
    fn path<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut segments = robots_path(self.project.as_deref());
        segments.push(&self.short);
        segments.extend_from_slice(more);
        segments
    }
}

fn robots_path(project: Option<&str>) -> Vec<&str> {
    match project {
        Some(project) => vec!["projects", project, "robots"],
        None => vec!["robots"],
    }
}

fn robot_fields(robot: &Value) -> String {
    let mut fields = vec![("name", field(robot, "name"))];
    if !robot.get("project").is_none_or(Value::is_null) {
        fields.push(("project", field(robot, "project")));
    }
    if !robot.get("description").is_none_or(Value::is_null) {
        fields.push(("description", field(robot, "description")));
    }
    fields.extend([
        ("grants", table::grants(robot, "\n          ")),
        ("expires", time_field(robot, "expires_at", "never")),
        ("status", table::status(robot, now()).to_owned()),
        ("created", time_field(robot, "created_at", "-")),
        ("last used", time_field(robot, "last_used_at", "never")),
    ]);
    render_fields(&fields)
}

/// Prints a new secret: the JSON with it, or the name and the secret with a warning.
fn show_issued(output: Output, issued: &Value, sentence: &str, what: &str) -> anyhow::Result<()> {
    warn_secret_shown_once(what);
    show(output, issued, |issued| {
        format!("{sentence}\nSecret: {}\n", field(issued, "secret"))
    })
}

async fn robot(api: &Api, command: RobotCommand, output: Output) -> anyhow::Result<()> {
    match command {
        RobotCommand::Create {
            name,
            project,
            grants,
            expires,
            description,
        } => {
            let robot = RobotName::parse(&name, project)?;
            let grants: Vec<Value> = grants
                .iter()
                .map(
                    |grant| json!({ "repositories": grant.repositories, "actions": grant.actions }),
                )
                .collect();
            let mut body = json!({ "name": robot.short, "grants": grants, "expires_in": expires });
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            let issued = api
                .send(Method::POST, &robots_path(robot.project.as_deref()), &body)
                .await?;
            let sentence = format!(
                "Created robot {} with {}, expiring {}.",
                field(&issued, "name"),
                table::grants(&issued, " "),
                time_field(&issued, "expires_at", "never")
            );
            show_issued(output, &issued, &sentence, "robot secret")
        }
        RobotCommand::List { project } => {
            let page = api.list_all(&robots_path(project.as_deref())).await?;
            show(output, &page, |page| {
                let now = now();
                let rows = items(page)
                    .iter()
                    .map(|robot| {
                        vec![
                            field(robot, "name"),
                            table::status(robot, now).to_owned(),
                            time_field(robot, "expires_at", "never"),
                            time_field(robot, "last_used_at", "never"),
                            table::grants(robot, " "),
                        ]
                    })
                    .collect();
                let empty = match &project {
                    Some(project) => format!("{project} has no robots."),
                    None => "No system robots.".to_owned(),
                };
                listing(
                    &["NAME", "STATUS", "EXPIRES", "LAST USED", "GRANTS"],
                    rows,
                    &empty,
                )
            })
        }
        RobotCommand::Get { name, project } => {
            let robot = RobotName::parse(&name, project)?;
            let answer = api.get(&robot.path(&[])).await?;
            show(output, &answer, robot_fields)
        }
        RobotCommand::Rotate {
            name,
            project,
            expires,
        } => {
            let robot = RobotName::parse(&name, project)?;
            let body = match expires {
                Some(expires) => json!({ "expires_in": expires }),
                None => json!({}),
            };
            let issued = api
                .send(Method::POST, &robot.path(&["rotate"]), &body)
                .await?;
            let sentence = format!(
                "Rotated the secret of {}; the old one no longer works. The new one expires {}.",
                field(&issued, "name"),
                time_field(&issued, "expires_at", "never")
            );
            show_issued(output, &issued, &sentence, "robot secret")
        }
        RobotCommand::Revoke { name, project } => {
            let robot = RobotName::parse(&name, project)?;
            api.delete(&robot.path(&[])).await?;
            done(
                output,
                &format!(
                    "Revoked robot {}: its secret no longer works.",
                    robot.full()
                ),
            );
            Ok(())
        }
    }
}

// ---- personal access tokens ----

async fn token(api: &Api, command: TokenCommand, output: Output) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            description,
            expires,
        } => {
            let me = api.username.clone();
            let mut body = json!({ "description": description.unwrap_or_else(|| "created with bulwark token create".to_owned()) });
            if let Some(expires) = expires {
                body["expires_in"] = json!(expires);
            }
            let issued = api
                .send(Method::POST, &["users", &me, "tokens"], &body)
                .await?;
            let sentence = format!(
                "Created access token {} for {me}, expiring {}. Use it as the password with your user name.",
                field(&issued, "id"),
                time_field(&issued, "expires_at", "never")
            );
            show_issued(output, &issued, &sentence, "access token")
        }
        TokenCommand::List { user } => {
            let user = user.unwrap_or_else(|| api.username.clone());
            let page = api.list_all(&["users", &user, "tokens"]).await?;
            show(output, &page, |page| {
                let now = now();
                let rows = items(page)
                    .iter()
                    .map(|token| {
                        vec![
                            field(token, "id"),
                            table::status(token, now).to_owned(),
                            time_field(token, "expires_at", "never"),
                            time_field(token, "last_used_at", "never"),
                            field(token, "description"),
                        ]
                    })
                    .collect();
                listing(
                    &["ID", "STATUS", "EXPIRES", "LAST USED", "DESCRIPTION"],
                    rows,
                    &format!("{user} has no access tokens."),
                )
            })
        }
        TokenCommand::Revoke { id, user } => {
            let user = user.unwrap_or_else(|| api.username.clone());
            api.delete(&["users", &user, "tokens", &id]).await?;
            done(output, &format!("Revoked access token {id} of {user}."));
            Ok(())
        }
    }
}

// ---- refresh tokens ----

async fn refresh_token(
    api: &Api,
    command: RefreshTokenCommand,
    output: Output,
) -> anyhow::Result<()> {
    match command {
        RefreshTokenCommand::List { user } => {
            let user = user.unwrap_or_else(|| api.username.clone());
            let page = api.list_all(&["users", &user, "refresh-tokens"]).await?;
            show(output, &page, |page| {
                let now = now();
                let rows = items(page)
                    .iter()
                    .map(|token| {
                        vec![
                            field(token, "id"),
                            table::status(token, now).to_owned(),
                            field(token, "credential"),
                            time_field(token, "created_at", "never"),
                            time_field(token, "expires_at", "never"),
                            time_field(token, "last_used_at", "never"),
                        ]
                    })
                    .collect();
                listing(
                    &[
                        "ID",
                        "STATUS",
                        "LOGGED IN WITH",
                        "CREATED",
                        "EXPIRES",
                        "LAST USED",
                    ],
                    rows,
                    &format!("{user} has no refresh tokens."),
                )
            })
        }
        RefreshTokenCommand::Revoke { id, user } => {
            let user = user.unwrap_or_else(|| api.username.clone());
            api.delete(&["users", &user, "refresh-tokens", &id]).await?;
            done(output, &format!("Revoked refresh token {id} of {user}."));
            Ok(())
        }
    }
}

// ---- signing keys ----

async fn key(api: &Api, command: KeyCommand, output: Output) -> anyhow::Result<()> {
    match command {
        KeyCommand::List => {
            let keys = api.get(&["signing-keys"]).await?;
            show(output, &keys, |keys| {
                let rows = items(keys)
                    .iter()
                    .map(|key| {
                        vec![
                            field(key, "kid"),
                            field(key, "state"),
                            time_field(key, "created_at", "never"),
                            time_field(key, "retired_at", "never"),
                        ]
                    })
                    .collect();
                listing(&["KID", "STATE", "CREATED", "RETIRED"], rows, "No keys.")
            })
        }
        KeyCommand::Retire { kid } => {
            let retired = api
                .send(Method::POST, &["signing-keys", &kid, "retire"], &json!({}))
                .await?;
            show(output, &retired, |retired| {
                format!(
                    "Retired signing key {}; {} signs.\n",
                    field(retired, "retired"),
                    field(retired, "signing")
                )
            })
        }
    }
}

// ---- audit ----

async fn audit(api: &Api, args: AuditArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    let filters = [
        ("principal", args.principal),
        ("action", args.action),
        ("target", args.target),
        (
            "result",
            args.result.map(|result| result.as_str().to_owned()),
        ),
    ];
    query.extend(
        filters
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?))),
    );
    if let Some(since) = args.since {
        let unix = match since {
            Since::Unix(unix) => unix,
            Since::Ago(seconds) => now().saturating_sub(i64::try_from(seconds).unwrap_or(i64::MAX)),
        };
        query.push(("since", unix.to_string()));
    }
    query.extend(args.before.map(|before| ("before", before.to_string())));
    query.extend(args.limit.map(|limit| ("limit", limit.to_string())));
    let page = api.get_with(&["audit"], &query).await?;
    show(args.output, &page, |page| {
        let rows = items(page)
            .iter()
            .map(|event| {
                vec![
                    event
                        .get("time")
                        .and_then(Value::as_i64)
                        .map_or_else(|| "-".to_owned(), time),
                    field(event, "principal"),
                    field(event, "action"),
                    field(event, "target"),
                    field(event, "result"),
                    field(event, "reason"),
                ]
            })
            .collect();
        let mut text = listing(
            &["TIME", "PRINCIPAL", "ACTION", "TARGET", "RESULT", "REASON"],
            rows,
            "No matching events.",
        );
        if let Some(next) = page.get("next").filter(|next| !next.is_null()) {
            let next = next
                .as_str()
                .map_or_else(|| next.to_string(), str::to_owned);
            text.push_str(&format!("(older events: add --before {next})\n"));
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, project: Option<&str>, expected: Option<(&str, &str)>) {
        let parsed = RobotName::parse(name, project.map(str::to_owned)).ok();
        let got = parsed
            .as_ref()
            .map(|robot| (robot.full(), robot.path(&[]).join("/")));
        let expected = expected.map(|(full, path)| (full.to_owned(), path.to_owned()));
        assert_eq!(got, expected, "{name} {project:?}");
    }

    #[test]
    fn robots_are_named_in_full_or_by_project_and_short_name() {
        let team_ci = Some(("robot$team+ci", "projects/team/robots/ci"));
        check("robot$team+ci", None, team_ci);
        check("robot$team+ci", Some("team"), team_ci);
        check("ci", Some("team"), team_ci);
        check("robot$ci", None, Some(("robot$ci", "robots/ci")));
        check("ci", None, Some(("robot$ci", "robots/ci")));
        check("robot$team+ci", Some("other"), None);
        check("robot$ci", Some("team"), None);
    }
}
