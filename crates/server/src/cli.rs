//! `bulwark login`, `user`, `project`, `member`, `robot`, `token`, `refresh-token`, `key`,
//! `audit`, `whoami`: a client
//! of the admin REST API (`/api/v1`) and the token service (`/auth/token`) of a running
//! registry.
//!
//! `bulwark login` trades a password for a refresh token once and stores it (`profile`); every
//! later command trades that for a short-lived registry token and calls the API with it
//! (`client`). Without a stored login, `BULWARK_URL`, `BULWARK_USERNAME` and `BULWARK_PASSWORD`
//! are sent as Basic credentials, for CI.
//!
//! Invariants:
//! - The CLI talks HTTPS to the registry and nothing else: it never opens a data directory or a
//!   database, so it works against any replica, local or remote, with the same rules as the API.
//! - Passwords and secrets never come from flags (flags land in shell history and `ps`): they
//!   come from standard input, a terminal with echo off, or `BULWARK_PASSWORD`.
//! - The stored login holds a refresh token, never a password, in a file of mode 0600.
//! - `--json` prints the API's JSON on stdout; the human output may change between versions.
//!   Messages, prompts and warnings go to stderr or the terminal, never mixed into stdout's JSON.

mod client;
mod commands;
mod profile;
mod prompt;
mod table;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

pub use commands::run;

/// The client commands, next to `serve` in `bulwark`'s command list.
#[derive(Subcommand)]
pub enum Command {
    /// Log in to a registry: stores a refresh token (never the password) for later commands.
    Login(LoginArgs),
    /// Forget the stored login.
    Logout,
    /// Show who the registry takes you for, with your projects and roles.
    Whoami(Output),
    /// Create, list, disable and delete user accounts; change your own password.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Create, list and delete projects; make them public or private.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Give users roles in projects.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Robot accounts for automation: repository grants and a mandatory expiry.
    Robot {
        #[command(subcommand)]
        command: RobotCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Your personal access tokens: secrets to log in with instead of your password.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Your refresh tokens (logins like this CLI's, docker's offline tokens): list them and
    /// revoke one at a time.
    RefreshToken {
        #[command(subcommand)]
        command: RefreshTokenCommand,
        #[command(flatten)]
        output: Output,
    },
    /// The keys that sign registry tokens: list them, retire one (admins only).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
        #[command(flatten)]
        output: Output,
    },
    /// Read the audit log, newest first (admins only).
    Audit(AuditArgs),
}

/// How results are printed.
#[derive(Args, Clone, Copy)]
pub struct Output {
    /// Print the API's JSON instead of text, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The registry, e.g. https://registry.example:5000.
    pub url: String,
    /// Your user name (or a robot's name); asked for when not given.
    #[arg(long, short)]
    pub username: Option<String>,
    /// Read the password (or token, or robot secret) from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// A PEM file with the CA certificate(s) to trust instead of the system's, e.g.
    /// bulwark-data/tls/ca.crt; remembered for later commands.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is asked for, or read from standard input.
    Create {
        name: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Show one user.
    Get { name: String },
    /// Stop a user from logging in or using their tokens.
    Disable { name: String },
    /// Let a disabled user log in again.
    Enable { name: String },
    /// Delete a user, their memberships and their access tokens.
    Delete { name: String },
    /// Change your own password: the current one, then the new one (two lines of standard
    /// input, or asked for on a terminal).
    Passwd,
}

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project (private unless --public).
    Create {
        name: String,
        /// Let anyone pull, without logging in.
        #[arg(long)]
        public: bool,
    },
    /// List the projects you can see.
    List,
    /// Show one project.
    Get { name: String },
    /// Make a project public (anonymous pull) or private.
    Visibility {
        name: String,
        visibility: Visibility,
    },
    /// Delete an empty project.
    Delete { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Add a user to a project, or change their role.
    Add {
        project: String,
        user: String,
        role: Role,
    },
    /// List a project's members.
    List { project: String },
    /// Remove a user from a project.
    Remove { project: String, user: String },
}

/// A role in a project, as the API names it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    /// Everything, including members and robots.
    Owner,
    /// Pull, push and delete.
    Maintainer,
    /// Pull and push.
    Developer,
    /// Pull.
    Reader,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Reader => "reader",
        }
    }
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Create a robot; prints its secret once.
    Create {
        /// Its short name: `ci` becomes robot$PROJECT+ci (or robot$ci without --project).
        name: String,
        /// The project it belongs to; without one, a system robot (admins only).
        #[arg(long)]
        project: Option<String>,
        /// Repositories and actions, e.g. 'team/app-*:pull,push' (repeatable).
        #[arg(long = "grant", value_name = "PATTERN:ACTIONS", required = true, value_parser = parse_grant)]
        grants: Vec<Grant>,
        /// When its secret stops working: days or hours, e.g. 30d or 12h (at most 365d).
        #[arg(long, value_parser = parse_expiry)]
        expires: String,
        /// What the robot is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List a project's robots, or the system robots without --project.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one robot (robot$team+ci, or ci with --project team).
    Get {
        name: String,
        #[arg(long)]
        project: Option<String>,
    },
    /// Replace a robot's secret; prints the new one once, and the old one stops working.
    Rotate {
        name: String,
        #[arg(long)]
        project: Option<String>,
        /// A new expiry for the new secret, e.g. 30d; without one, the expiry stays.
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<String>,
    },
    /// Revoke a robot at once; it stays listed as revoked.
    Revoke {
        name: String,
        #[arg(long)]
        project: Option<String>,
    },
}

/// Repositories matching a pattern, and the actions granted on them.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub repositories: String,
    pub actions: Vec<String>,
}

/// `PATTERN:ACTION[,ACTION...]`, e.g. `team/app-*:pull,push`.
fn parse_grant(text: &str) -> Result<Grant, String> {
    let usage = "write a grant as REPOSITORIES:ACTIONS, e.g. 'team/app-*:pull,push'";
    let (repositories, actions) = text.rsplit_once(':').ok_or(usage)?;
    if repositories.is_empty() {
        return Err(usage.to_owned());
    }
    let actions: Vec<String> = actions
        .split(',')
        .map(|action| action.trim().to_owned())
        .collect();
    if let Some(unknown) = actions
        .iter()
        .find(|action| !matches!(action.as_str(), "pull" | "push" | "delete"))
    {
        return Err(format!(
            "{unknown:?} is not an action: use pull, push or delete"
        ));
    }
    Ok(Grant {
        repositories: repositories.to_owned(),
        actions,
    })
}

/// A lifetime as the API takes it: a number of days or hours.
fn parse_expiry(text: &str) -> Result<String, String> {
    let digits = text.strip_suffix(['d', 'h']).unwrap_or("");
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a lifetime: use days or hours, like 30d or 12h"
        ))
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a personal access token for yourself; prints its secret once.
    Create {
        /// What the token is for.
        #[arg(long)]
        description: Option<String>,
        /// When it stops working: days or hours, e.g. 90d (the default) or 12h.
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<String>,
    },
    /// List your access tokens (admins: anyone's, with --user).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke an access token at once.
    Revoke {
        id: String,
        /// Whose token it is (admins); yours by default.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RefreshTokenCommand {
    /// List your refresh tokens (admins: anyone's, with --user).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a refresh token at once: it cannot be exchanged again, and the registry tokens
    /// it gave stop working.
    Revoke {
        id: String,
        /// Whose token it is (admins); yours by default.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the token-signing keys with their state: signing, verifying or retired.
    List,
    /// Retire a key at once: tokens it signed stop working on every replica. Retiring the key
    /// that signs puts a new key in its place.
    Retire { kid: String },
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only events of this principal: user:alice, robot:robot$team+ci, anonymous.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only this action: push, delete, login, user.create, robot.revoke, ...
    #[arg(long)]
    pub action: Option<String>,
    /// Only events on this target: a repository, user, project or robot name.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this result.
    #[arg(long)]
    pub result: Option<AuditResult>,
    /// Only events since this time: Unix seconds, or an age like 15m, 24h or 7d.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only events older than this event id (the cursor printed after a full page).
    #[arg(long)]
    pub before: Option<i64>,
    /// At most this many events (1 to 1000; the API's default is 100).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AuditResult {
    Allowed,
    Denied,
    Failed,
}

impl AuditResult {
    fn as_str(self) -> &'static str {
        match self {
            AuditResult::Allowed => "allowed",
            AuditResult::Denied => "denied",
            AuditResult::Failed => "failed",
        }
    }
}

/// The start of an audit window: a point in time, or an age counted back from now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Since {
    Unix(i64),
    Ago(u64),
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(Since::Unix(unix));
    }
    text.parse::<crate::config::HumanDuration>()
        .map(|age| Since::Ago(age.0.as_secs()))
        .map_err(|_| format!("{text:?} is neither Unix seconds nor an age like 15m, 24h or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_read_as_repositories_then_actions() {
        assert_eq!(
            parse_grant("team/app-*:pull,push"),
            Ok(Grant {
                repositories: "team/app-*".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        assert_eq!(
            parse_grant("team/**:delete").map(|grant| grant.repositories),
            Ok("team/**".into())
        );
        for bad in ["team/app", ":pull", "team/app:", "team/app:pull,steal"] {
            assert!(parse_grant(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn lifetimes_are_days_or_hours() {
        assert_eq!(parse_expiry("30d"), Ok("30d".into()));
        assert_eq!(parse_expiry("12h"), Ok("12h".into()));
        for bad in ["30", "d", "30m", "-1d", "1.5d", ""] {
            assert!(parse_expiry(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn since_is_a_time_or_an_age() {
        assert_eq!(parse_since("1700000000"), Ok(Since::Unix(1_700_000_000)));
        assert_eq!(parse_since("24h"), Ok(Since::Ago(86_400)));
        assert!(parse_since("yesterday").is_err());
    }
}
