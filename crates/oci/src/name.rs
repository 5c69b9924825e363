//! Repository names and tags, with the grammars of the distribution spec.
//!
//! A repository name is one or more path components of `[a-z0-9]+` joined by single
//! separators (`.`, `_`, `__`, or any run of `-`), the components joined by `/`. Its length
//! is limited to 255 bytes, as in Distribution, so that names fit in paths and index keys.
//! A tag is `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.

use std::fmt;
use std::str::FromStr;

pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name {0:?} does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*")]
    Grammar(String),
    #[error("tag {0:?} does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag(String),
}

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component: the project a repository belongs to.
    pub fn project(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", followed by an alphanumeric.
        let run_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[run_start..i];
        let allowed = run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        if input.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !input.split('/').all(valid_component) {
            return Err(NameError::Grammar(input.to_owned()));
        }
        Ok(RepositoryName(input.to_owned()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bytes = input.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .skip(1)
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if first_ok && rest_ok && bytes.len() <= 128 {
            Ok(Tag(input.to_owned()))
        } else {
            Err(NameError::Tag(input.to_owned()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_spec_grammar() {
        let long_ok = format!("a/{}", "b".repeat(MAX_NAME_LEN - 2));
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("library/ubuntu", true),
            ("a", true),
            ("team/app/api", true),
            ("my-app", true),
            ("my--app", true),
            ("my__app", true),
            ("my.app", true),
            ("my_app", true),
            ("0/1/2", true),
            (&long_ok, true),
            (&too_long, false),
            ("", false),
            ("Library/ubuntu", false),
            ("my___app", false),
            ("my..app", false),
            ("my._app", false),
            ("-app", false),
            ("app-", false),
            ("team//app", false),
            ("/app", false),
            ("app/", false),
            ("../etc", false),
            ("team/../app", false),
            ("app name", false),
            ("app%2fname", false),
            ("team/app:tag", false),
        ];
        for (input, valid) in cases {
            assert_eq!(
                input.parse::<RepositoryName>().is_ok(),
                *valid,
                "name {input:?}"
            );
        }
    }

    #[test]
    fn project_is_the_first_component() {
        let name: RepositoryName = "team/app/api".parse().expect("valid");
        assert_eq!(name.project(), "team");
        let single: RepositoryName = "alpine".parse().expect("valid");
        assert_eq!(single.project(), "alpine");
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        let max = format!("a{}", "b".repeat(127));
        let over = format!("a{}", "b".repeat(128));
        let cases: &[(&str, bool)] = &[
            ("latest", true),
            ("v1.2.3", true),
            ("_private", true),
            ("1.0-rc_1", true),
            ("UPPER", true),
            (&max, true),
            (&over, false),
            ("", false),
            (".hidden", false),
            ("-dash", false),
            ("a/b", false),
            ("a:b", false),
            ("sha256:abc", false),
        ];
        for (input, valid) in cases {
            assert_eq!(input.parse::<Tag>().is_ok(), *valid, "tag {input:?}");
        }
    }
}
