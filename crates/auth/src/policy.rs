//! Role-based access control: may this principal do this action on this repository?
//!
//! A project is the first path component of a repository name. Projects are private unless
//! made public (which allows anonymous pull). Project roles: `owner` (everything, including
//! managing members and robots), `maintainer` (pull, push, delete), `developer` (pull, push),
//! `reader` (pull). System admins may do anything. Robots carry explicit grants
//! (repository glob → actions) and an expiry.
//!
//! Invariants:
//! - `authorize` is pure and total; its `Decision` names the rule that decided, and that
//!   rule's text is what a denied client and the audit log see.
//! - A denied caller cannot tell a private project it is not in from one that does not exist:
//!   the two answers are worded the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use oci::RepositoryName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
    /// Manage a project: members, robots, visibility. Never granted to robots or by tokens.
    Manage,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Manage => "manage",
        }
    }

    /// The registry actions a token scope may name.
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Owner,
    Maintainer,
    Developer,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "maintainer" => Some(Role::Maintainer),
            "developer" => Some(Role::Developer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    pub fn allows(self, action: Action) -> bool {
        match (self, action) {
            (Role::Owner, _) => true,
            (Role::Maintainer, Action::Pull | Action::Push | Action::Delete) => true,
            (Role::Developer, Action::Pull | Action::Push) => true,
            (Role::Reader, Action::Pull) => true,
            (Role::Maintainer | Role::Developer | Role::Reader, _) => false,
        }
    }
}

/// A robot's permission: repositories matching `pattern` (a glob where `*` stays within one
/// path component and `**` spans several) may receive `actions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pattern: String,
    pub actions: BTreeSet<Action>,
}

impl Grant {
    pub fn matches(&self, repository: &RepositoryName) -> bool {
        glob_match(self.pattern.as_bytes(), repository.as_str().as_bytes())
    }

    /// The project the pattern is confined to, if its first component has no wildcard.
    pub fn project(&self) -> Option<&str> {
        let first = self.pattern.split('/').next()?;
        (!first.contains('*') && !first.is_empty()).then_some(first)
    }
}

/// Whether `pattern` matches all of `text`, in time proportional to their lengths' product
/// (patterns and names are at most 255 bytes). A backtracking matcher would be exponential in
/// the number of stars, and a robot's owner chooses its patterns.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let width = text.len() + 1;
    // `matched[i * width + j]`: does `pattern[i..]` match `text[j..]`? Filled from the ends.
    let mut matched = vec![false; (pattern.len() + 1) * width];
    matched[pattern.len() * width + text.len()] = true;
    for i in (0..pattern.len()).rev() {
        for j in (0..=text.len()).rev() {
            let next = text.get(j).copied();
            matched[i * width + j] = match (pattern[i], pattern.get(i + 1)) {
                // `**`: nothing more, or one more byte of any kind.
                (b'*', Some(b'*')) => {
                    matched[(i + 2) * width + j] || (next.is_some() && matched[i * width + j + 1])
                }
                // `*`: nothing more, or one more byte of this path component.
                (b'*', _) => {
                    matched[(i + 1) * width + j]
                        || (next.is_some_and(|b| b != b'/') && matched[i * width + j + 1])
                }
                (literal, _) => next == Some(literal) && matched[(i + 1) * width + j + 1],
            };
        }
    }
    matched[0]
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User {
        name: String,
        admin: bool,
        disabled: bool,
    },
    Robot {
        name: String,
        /// `None` for system robots made by an admin.
        project: Option<String>,
        grants: Vec<Grant>,
        expires_at: i64,
        revoked: bool,
    },
}

impl Principal {
    /// How the principal appears in logs and the audit trail.
    pub fn label(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::User { name, .. } => format!("user:{name}"),
            Principal::Robot { name, .. } => format!("robot:{name}"),
        }
    }
}

/// What authorization needs to know about one project.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectPolicy {
    pub name: String,
    pub public: bool,
    pub members: BTreeMap<String, Role>,
}

/// The rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    SystemAdmin,
    DisabledUser(String),
    RobotRevoked(String),
    RobotExpired(String),
    RobotGrant { robot: String, pattern: String },
    RobotOutsideProject { robot: String, project: String },
    RobotNoGrant { robot: String },
    ProjectRole { role: Role, project: String },
    RoleTooWeak { role: Role, project: String },
    PublicPull(String),
    NotMember { user: String, project: String },
    AnonymousPrivate(String),
    ProjectUnknown { who: String, project: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Rule,
    pub action: Action,
}

impl Decision {
    fn allow(rule: Rule, action: Action) -> Decision {
        Decision {
            allowed: true,
            rule,
            action,
        }
    }

    fn deny(rule: Rule, action: Action) -> Decision {
        Decision {
            allowed: false,
            rule,
            action,
        }
    }

    /// True when the denial should prompt for credentials (401) rather than refuse (403).
    pub fn wants_credentials(&self) -> bool {
        !self.allowed && matches!(self.rule, Rule::AnonymousPrivate(_))
    }

    /// A sentence for the client and the audit log.
    pub fn reason(&self) -> String {
        let action = self.action;
        match &self.rule {
            Rule::SystemAdmin => "system admins may do anything".into(),
            Rule::DisabledUser(user) => format!("user {user} is disabled"),
            Rule::RobotRevoked(robot) => format!("robot {robot} was revoked"),
            Rule::RobotExpired(robot) => format!("robot {robot} has expired"),
            Rule::RobotGrant { robot, pattern } => {
                format!("robot {robot} is granted {action} on {pattern}")
            }
            Rule::RobotOutsideProject { robot, project } => {
                format!("robot {robot} belongs to another project than {project}")
            }
            Rule::RobotNoGrant { robot } => {
                format!("no grant of robot {robot} allows {action} here")
            }
            Rule::ProjectRole { role, project } => format!(
                "role {} in project {project} allows {action}",
                role.as_str()
            ),
            Rule::RoleTooWeak { role, project } => format!(
                "role {} in project {project} does not allow {action}",
                role.as_str()
            ),
            Rule::PublicPull(project) => format!("project {project} is public"),
            // Worded like `ProjectUnknown`: a denial must not tell a private project from none.
            Rule::NotMember { user, project } => {
                format!("user {user} is not a member of project {project}, or it does not exist")
            }
            Rule::AnonymousPrivate(project) => {
                format!("project {project} is private; log in to {action}")
            }
            // `who`: "user carol", "robot ci".
            Rule::ProjectUnknown { who, project } => {
                format!("{who} is not a member of project {project}, or it does not exist")
            }
        }
    }
}

/// Decides whether `principal` may do `action` on `repository`, given the policy of the
/// repository's project (`None` when that project does not exist).
pub fn authorize(
    project: Option<&ProjectPolicy>,
    principal: &Principal,
    repository: &RepositoryName,
    action: Action,
    now: i64,
) -> Decision {
    let project_name = repository.project().to_owned();
    let public_pull = project.is_some_and(|p| p.public) && action == Action::Pull;
    match principal {
        Principal::User {
            name,
            disabled: true,
            ..
        } => Decision::deny(Rule::DisabledUser(name.clone()), action),
        Principal::Robot {
            name,
            revoked: true,
            ..
        } => Decision::deny(Rule::RobotRevoked(name.clone()), action),
        Principal::Robot {
            name, expires_at, ..
        } if *expires_at <= now => Decision::deny(Rule::RobotExpired(name.clone()), action),
        Principal::User { admin: true, .. } => Decision::allow(Rule::SystemAdmin, action),
        // Before the project's existence is looked at, so the answer does not depend on it.
        Principal::Robot {
            name,
            project: Some(robot_project),
            ..
        } if *robot_project != project_name => Decision::deny(
            Rule::RobotOutsideProject {
                robot: name.clone(),
                project: project_name,
            },
            action,
        ),
        _ if project.is_none() => match principal {
            Principal::Anonymous => Decision::deny(Rule::AnonymousPrivate(project_name), action),
            Principal::User { name, .. } => Decision::deny(
                Rule::ProjectUnknown {
                    who: format!("user {name}"),
                    project: project_name,
                },
                action,
            ),
            // A system robot: worded as for an existing project none of its grants cover.
            Principal::Robot { name, .. } => Decision::deny(
                Rule::RobotNoGrant {
                    robot: name.clone(),
                },
                action,
            ),
        },
        Principal::Robot { name, grants, .. } => {
            let grant = grants.iter().find(|g| {
                g.actions.contains(&action) && g.matches(repository) && action != Action::Manage
            });
            match grant {
                Some(grant) => Decision::allow(
                    Rule::RobotGrant {
                        robot: name.clone(),
                        pattern: grant.pattern.clone(),
                    },
                    action,
                ),
                None if public_pull => Decision::allow(Rule::PublicPull(project_name), action),
                None => Decision::deny(
                    Rule::RobotNoGrant {
                        robot: name.clone(),
                    },
                    action,
                ),
            }
        }
        Principal::User { name, .. } => match project.and_then(|p| p.members.get(name)) {
            Some(role) if role.allows(action) => Decision::allow(
                Rule::ProjectRole {
                    role: *role,
                    project: project_name,
                },
                action,
            ),
            _ if public_pull => Decision::allow(Rule::PublicPull(project_name), action),
            Some(role) => Decision::deny(
                Rule::RoleTooWeak {
                    role: *role,
                    project: project_name,
                },
                action,
            ),
            None => Decision::deny(
                Rule::NotMember {
                    user: name.clone(),
                    project: project_name,
                },
                action,
            ),
        },
        Principal::Anonymous if public_pull => {
            Decision::allow(Rule::PublicPull(project_name), action)
        }
        Principal::Anonymous => Decision::deny(Rule::AnonymousPrivate(project_name), action),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn repo(text: &str) -> RepositoryName {
        text.parse().expect("valid")
    }

    fn project(public: bool) -> ProjectPolicy {
        ProjectPolicy {
            name: "team".into(),
            public,
            members: BTreeMap::from([
                ("olive".into(), Role::Owner),
                ("mia".into(), Role::Maintainer),
                ("dev".into(), Role::Developer),
                ("rita".into(), Role::Reader),
            ]),
        }
    }

    fn user(name: &str) -> Principal {
        Principal::User {
            name: name.into(),
            admin: false,
            disabled: false,
        }
    }

    fn robot(
        project: Option<&str>,
        pattern: &str,
        actions: &[Action],
        expires_at: i64,
        revoked: bool,
    ) -> Principal {
        Principal::Robot {
            name: "ci".into(),
            project: project.map(str::to_owned),
            grants: vec![Grant {
                pattern: pattern.into(),
                actions: actions.iter().copied().collect(),
            }],
            expires_at,
            revoked,
        }
    }

    fn check(
        policy: Option<&ProjectPolicy>,
        principal: &Principal,
        repository: &str,
        action: Action,
    ) -> String {
        let decision = authorize(policy, principal, &repo(repository), action, NOW);
        format!(
            "{} ({})",
            if decision.allowed { "allow" } else { "deny" },
            decision.reason()
        )
    }

    #[test]
    fn the_role_matrix() {
        use Action::*;
        let expected: &[(&str, [bool; 4])] = &[
            ("olive", [true, true, true, true]),
            ("mia", [true, true, true, false]),
            ("dev", [true, true, false, false]),
            ("rita", [true, false, false, false]),
            ("stranger", [false, false, false, false]),
        ];
        for public in [false, true] {
            let policy = project(public);
            for (name, allowed) in expected {
                for (action, allow) in [Pull, Push, Delete, Manage].into_iter().zip(allowed) {
                    let allow = *allow || (public && action == Pull);
                    let decision =
                        authorize(Some(&policy), &user(name), &repo("team/app"), action, NOW);
                    assert_eq!(
                        decision.allowed,
                        allow,
                        "{name} {action} public={public}: {}",
                        decision.reason()
                    );
                }
            }
        }
    }

    #[test]
    fn decisions_name_their_rule() {
        let private = project(false);
        let public = project(true);
        let admin = Principal::User {
            name: "root".into(),
            admin: true,
            disabled: false,
        };
        let disabled_admin = Principal::User {
            name: "old".into(),
            admin: true,
            disabled: true,
        };
        let cases: Vec<(Option<&ProjectPolicy>, Principal, &str, Action, &str)> = vec![
            (
                Some(&private),
                admin.clone(),
                "team/app",
                Action::Delete,
                "allow (system admins may do anything)",
            ),
            (
                None,
                admin,
                "newproj/app",
                Action::Push,
                "allow (system admins may do anything)",
            ),
            (
                Some(&private),
                disabled_admin,
                "team/app",
                Action::Pull,
                "deny (user old is disabled)",
            ),
            (
                Some(&private),
                user("dev"),
                "team/app",
                Action::Delete,
                "deny (role developer in project team does not allow delete)",
            ),
            (
                Some(&private),
                user("eve"),
                "team/app",
                Action::Pull,
                "deny (user eve is not a member of project team, or it does not exist)",
            ),
            (
                Some(&public),
                user("eve"),
                "team/app",
                Action::Pull,
                "allow (project team is public)",
            ),
            (
                Some(&public),
                user("eve"),
                "team/app",
                Action::Push,
                "deny (user eve is not a member of project team, or it does not exist)",
            ),
            (
                Some(&private),
                Principal::Anonymous,
                "team/app",
                Action::Pull,
                "deny (project team is private; log in to pull)",
            ),
            (
                Some(&public),
                Principal::Anonymous,
                "team/app",
                Action::Pull,
                "allow (project team is public)",
            ),
            (
                Some(&public),
                Principal::Anonymous,
                "team/app",
                Action::Push,
                "deny (project team is private; log in to push)",
            ),
            (
                None,
                user("olive"),
                "other/app",
                Action::Pull,
                // The same words as for a private project olive is not a member of.
                "deny (user olive is not a member of project other, or it does not exist)",
            ),
            (
                None,
                Principal::Anonymous,
                "other/app",
                Action::Pull,
                "deny (project other is private; log in to pull)",
            ),
        ];
        for (policy, principal, repository, action, expected) in cases {
            assert_eq!(
                check(policy, &principal, repository, action),
                expected,
                "{principal:?} {action} {repository}"
            );
        }
    }

    #[test]
    fn robots_follow_their_grants_expiry_and_revocation() {
        use Action::*;
        let private = project(false);
        let public = project(true);
        let pusher = robot(Some("team"), "team/app-*", &[Pull, Push], NOW + 10, false);
        let cases: Vec<(&ProjectPolicy, Principal, &str, Action, &str)> = vec![
            (
                &private,
                pusher.clone(),
                "team/app-web",
                Push,
                "allow (robot ci is granted push on team/app-*)",
            ),
            (
                &private,
                pusher.clone(),
                "team/app-web",
                Delete,
                "deny (no grant of robot ci allows delete here)",
            ),
            (
                &private,
                pusher.clone(),
                "team/app-web/sub",
                Pull,
                "deny (no grant of robot ci allows pull here)",
            ),
            (
                &private,
                pusher.clone(),
                "team/db",
                Pull,
                "deny (no grant of robot ci allows pull here)",
            ),
            (
                &public,
                pusher.clone(),
                "team/db",
                Pull,
                "allow (project team is public)",
            ),
            (
                &private,
                pusher.clone(),
                "team/app-web",
                Manage,
                "deny (no grant of robot ci allows manage here)",
            ),
            (
                &private,
                robot(Some("team"), "team/**", &[Pull], NOW + 10, false),
                "team/a/b/c",
                Pull,
                "allow (robot ci is granted pull on team/**)",
            ),
            (
                &private,
                robot(Some("other"), "**", &[Pull], NOW + 10, false),
                "team/app",
                Pull,
                "deny (robot ci belongs to another project than team)",
            ),
            (
                &private,
                robot(None, "**", &[Pull], NOW + 10, false),
                "team/app",
                Pull,
                "allow (robot ci is granted pull on **)",
            ),
            (
                &private,
                robot(Some("team"), "team/*", &[Pull], NOW, false),
                "team/app",
                Pull,
                "deny (robot ci has expired)",
            ),
            (
                &private,
                robot(Some("team"), "team/*", &[Pull], NOW + 10, true),
                "team/app",
                Pull,
                "deny (robot ci was revoked)",
            ),
        ];
        for (policy, principal, repository, action, expected) in cases {
            assert_eq!(
                check(Some(policy), &principal, repository, action),
                expected,
                "{repository} {action}"
            );
        }
    }

    #[test]
    fn denials_do_not_tell_a_private_project_from_a_missing_one() {
        let private = project(false);
        let outsider = robot(Some("other"), "**", &[Action::Pull], NOW + 10, false);
        let system = robot(None, "other/*", &[Action::Pull], NOW + 10, false);
        for principal in [user("eve"), outsider, system] {
            assert_eq!(
                check(Some(&private), &principal, "team/app", Action::Pull),
                check(None, &principal, "team/app", Action::Pull),
                "{principal:?}"
            );
        }
    }

    #[test]
    fn globs_keep_single_stars_within_a_component() {
        let cases = [
            ("team/*", "team/app", true),
            ("team/*", "team/app/sub", false),
            ("team/**", "team/app/sub", true),
            ("team/app-*", "team/app-web", true),
            ("team/app-*", "team/ap", false),
            ("team/app", "team/app", true),
            ("team/app", "team/apps", false),
            ("*/app", "team/app", true),
            ("**", "a/b/c", true),
            ("**/c", "a/b/c", true),
            ("a/**/c", "a/c", false),
            ("a/**c", "a/b/c", true),
            ("*a*b", "xaxb", true),
            ("*a*b", "xa/b", false),
        ];
        for (pattern, name, expected) in cases {
            let grant = Grant {
                pattern: pattern.into(),
                actions: BTreeSet::new(),
            };
            assert_eq!(grant.matches(&repo(name)), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn many_stars_against_a_long_name_answer_at_once() {
        // Exponential for a backtracking matcher: each star retries every split.
        let grant = Grant {
            pattern: format!("team/{}b", "*a".repeat(60)),
            actions: BTreeSet::new(),
        };
        let name = format!("team/{}", "a".repeat(200));
        assert!(!grant.matches(&repo(&name)));
        assert!(grant.matches(&repo(&format!("{name}b"))));
    }

    #[test]
    fn stars_may_match_nothing_but_never_a_slash() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a/*", b"a/"));
        assert!(!glob_match(b"*", b"/"));
        assert!(glob_match(b"**", b"/"));
        assert!(!glob_match(b"", b"a"));
        assert!(glob_match(b"", b""));
    }
}
