//! The `bulwark` CLI against a real server: `login` with a password on stdin and the server's
//! CA, the README's setup of a project, a user, a membership and a CI robot, `--json` output,
//! revoking the robot, and the audit log that records it all; and how failures read.
//!
//! Every command runs the real binary with a login file of the test's own
//! (`BULWARK_CLI_CONFIG`), and none of the developer's `BULWARK_*` variables.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::clients::{describe, output_with_input, printed};
use crate::support::server::{binary, Server, ADMIN_PASSWORD, ADMIN_USER};

/// The CLI pointed at one server, with its own login file and a copy of the server's CA.
struct Cli {
    dir: TempDir,
    url: String,
}

impl Cli {
    fn new(server: &Server) -> Cli {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-cli-")
            .tempdir()
            .expect("creating a CLI directory");
        std::fs::write(dir.path().join("ca.crt"), server.ca_pem()).expect("writing ca.crt");
        Cli {
            dir,
            url: format!("https://{}", server.host()),
        }
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn login_file(&self) -> PathBuf {
        self.dir.path().join("config/cli.json")
    }

    /// `bulwark ARGS` with this CLI's login file.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BULWARK_") {
                command.env_remove(key);
            }
        }
        command.env("BULWARK_CLI_CONFIG", self.login_file());
        command
    }

    /// `bulwark ARGS` without a login file, as CI runs it: credentials in the environment.
    fn command_as(&self, username: &str, password: &str, args: &[&str]) -> Command {
        let mut command = self.command(args);
        command
            .env("BULWARK_CLI_CONFIG", self.dir.path().join("no-login.json"))
            .env("BULWARK_URL", &self.url)
            .env("BULWARK_USERNAME", username)
            .env("BULWARK_PASSWORD", password)
            .env("BULWARK_CA_CERT", self.ca_cert());
        command
    }

    fn login_admin(&self) {
        let ca_cert = self.ca_cert();
        let args = [
            "login",
            &self.url,
            "--username",
            ADMIN_USER,
            "--password-stdin",
            "--ca-cert",
            ca_cert.to_str().expect("a UTF-8 path"),
        ];
        let printed = succeeds(&mut self.command(&args), &format!("{ADMIN_PASSWORD}\n"));
        assert!(printed.contains("Logged in"), "{printed}");
    }

    /// Runs `bulwark ARGS` and returns its stdout; fails the test unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        succeeds(&mut self.command(args), "")
    }

    /// Runs `bulwark ARGS --json` and parses its stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        parse(&self.ok(&args))
    }
}

fn run(command: &mut Command, stdin: &str) -> Output {
    output_with_input(command, Some(stdin.as_bytes()))
}

fn succeeds(command: &mut Command, stdin: &str) -> String {
    let output = run(command, stdin);
    assert!(
        output.status.success(),
        "`{}` failed ({})\n{}",
        describe(command),
        output.status,
        printed(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `command`, fails the test unless it exits non-zero, and returns its stderr.
fn fails(command: &mut Command, stdin: &str) -> String {
    let output = run(command, stdin);
    assert!(
        !output.status.success(),
        "`{}` succeeded but was expected to fail\n{}",
        describe(command),
        printed(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).expect("a sane clock"))
        .expect("a clock after 1970")
}

/// Whether the audit log holds an `allowed` event with this action and target.
fn audited(events: &Value, action: &str, target: &str) -> bool {
    events["items"]
        .as_array()
        .expect("audit items")
        .iter()
        .any(|event| {
            event["action"] == action && event["target"] == target && event["result"] == "allowed"
        })
}

#[test]
fn the_readme_setup_creates_a_team_with_a_member_and_a_robot_that_can_be_revoked() {
    let server = Server::start();
    let cli = Cli::new(&server);
    cli.login_admin();
    let login = std::fs::read_to_string(cli.login_file()).expect("the login file");
    assert!(
        !login.contains(ADMIN_PASSWORD),
        "the login file holds the password: {login}"
    );
    let mode = std::fs::metadata(cli.login_file())
        .expect("login file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the login file is private");

    let whoami = cli.json(&["whoami"]);
    assert_eq!(whoami["principal"], "user:admin", "{whoami}");
    assert_eq!(whoami["admin"], true, "{whoami}");

    assert!(cli
        .ok(&["project", "create", "team"])
        .contains("Created project team"));
    let created = succeeds(
        &mut cli.command(&["user", "create", "alice", "--password-stdin"]),
        "a long password for alice\n",
    );
    assert!(created.contains("alice"), "{created}");
    cli.ok(&["member", "add", "team", "alice", "developer"]);
    let members = cli.ok(&["member", "list", "team"]);
    assert!(
        members
            .lines()
            .any(|line| line.split_whitespace().eq(["alice", "developer"])),
        "{members}"
    );

    let robot = cli.json(&[
        "robot",
        "create",
        "--project",
        "team",
        "ci",
        "--grant",
        "team/app-*:pull,push",
        "--expires",
        "30d",
    ]);
    assert_eq!(robot["name"], "robot$team+ci", "{robot}");
    assert_eq!(robot["grants"][0]["repositories"], "team/app-*", "{robot}");
    assert_eq!(
        robot["grants"][0]["actions"],
        serde_json::json!(["pull", "push"]),
        "{robot}"
    );
    let expires_in = robot["expires_at"].as_i64().expect("expires_at") - now();
    assert!(
        (29 * 86_400..=30 * 86_400).contains(&expires_in),
        "expires in {expires_in}s"
    );
    let secret = robot["secret"]
        .as_str()
        .expect("the secret is shown once")
        .to_owned();
    assert!(secret.starts_with("bwk_"), "{robot}");

    // Alice sees her project; the robot logs in with its secret, as CI would.
    let alice = parse(&succeeds(
        &mut cli.command_as("alice", "a long password for alice", &["whoami", "--json"]),
        "",
    ));
    assert_eq!(alice["projects"][0]["project"], "team", "{alice}");
    assert_eq!(alice["projects"][0]["role"], "developer", "{alice}");
    let as_robot = parse(&succeeds(
        &mut cli.command_as("robot$team+ci", &secret, &["whoami", "--json"]),
        "",
    ));
    assert_eq!(as_robot["kind"], "robot", "{as_robot}");
    let listed = cli.ok(&["robot", "list", "--project", "team"]);
    assert!(
        listed.contains("robot$team+ci") && listed.contains("active"),
        "{listed}"
    );

    assert!(cli
        .ok(&["robot", "revoke", "robot$team+ci"])
        .contains("Revoked"));
    let refused = fails(
        &mut cli.command_as("robot$team+ci", &secret, &["whoami"]),
        "",
    );
    assert!(
        refused.contains("Unauthorized"),
        "a revoked secret still works: {refused}"
    );
    let shown = cli.json(&["robot", "get", "ci", "--project", "team"]);
    assert_eq!(shown["revoked"], true, "{shown}");
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown again: {shown}"
    );

    let events = cli.json(&["audit"]);
    for (action, target) in [
        ("project.create", "team"),
        ("user.create", "alice"),
        ("member.set", "team:alice"),
        ("robot.create", "robot$team+ci"),
        ("robot.revoke", "robot$team+ci"),
    ] {
        assert!(
            audited(&events, action, target),
            "no {action} of {target} in {events:#}"
        );
    }
    let revokes = cli.json(&["audit", "--action", "robot.revoke", "--limit", "5"]);
    assert_eq!(
        revokes["items"].as_array().map(Vec::len),
        Some(1),
        "{revokes:#}"
    );

    let logout = cli.ok(&["logout"]);
    assert!(logout.contains("Logged out"), "{logout}");
    assert!(!cli.login_file().exists());
    let refused = fails(&mut cli.command(&["whoami"]), "");
    assert!(refused.contains("not logged in"), "{refused}");
}

#[test]
fn api_errors_exit_non_zero_with_the_problem_title_and_detail() {
    let server = Server::start();
    let cli = Cli::new(&server);
    cli.login_admin();
    cli.ok(&["project", "create", "team"]);

    let duplicate = fails(&mut cli.command(&["project", "create", "team"]), "");
    assert!(duplicate.starts_with("bulwark: Conflict: "), "{duplicate}");
    assert!(duplicate.contains("team"), "{duplicate}");

    let missing = fails(&mut cli.command(&["user", "get", "nobody"]), "");
    assert!(missing.starts_with("bulwark: Not Found: "), "{missing}");

    succeeds(
        &mut cli.command(&["user", "create", "bob", "--password-stdin"]),
        "a long password for bob\n",
    );
    let forbidden = fails(
        &mut cli.command_as(
            "bob",
            "a long password for bob",
            &["project", "create", "mine"],
        ),
        "",
    );
    assert!(forbidden.starts_with("bulwark: Forbidden: "), "{forbidden}");
}

#[test]
fn a_wrong_password_or_an_untrusted_certificate_logs_nobody_in() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let ca_cert = cli.ca_cert();
    let ca_cert = ca_cert.to_str().expect("a UTF-8 path");

    let wrong = fails(
        &mut cli.command(&[
            "login",
            &cli.url,
            "--username",
            ADMIN_USER,
            "--password-stdin",
            "--ca-cert",
            ca_cert,
        ]),
        "not the password\n",
    );
    assert!(wrong.contains("Unauthorized"), "{wrong}");
    assert!(
        !cli.login_file().exists(),
        "a failed login left a login file"
    );

    // Without the server's CA the system's roots are used, and they do not trust it.
    let untrusted = fails(
        &mut cli.command(&[
            "login",
            &cli.url,
            "--username",
            ADMIN_USER,
            "--password-stdin",
        ]),
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(
        untrusted.contains("--ca-cert"),
        "the error does not say what to check: {untrusted}"
    );
    assert!(
        !cli.login_file().exists(),
        "an untrusted login left a login file"
    );
}
