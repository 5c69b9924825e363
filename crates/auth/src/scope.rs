//! Scopes of the Docker token service: `repository:team/app:pull,push`,
//! `repository(plugin):team/app:pull`, `registry:catalog:*`.
//!
//! Unknown actions are dropped (the token simply does not grant them); unknown resource types
//! are refused.

use std::collections::BTreeSet;
use std::fmt;

use oci::RepositoryName;

use crate::policy::Action;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Repository(RepositoryName),
    Catalog,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: BTreeSet<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?} is not of the form type:name:actions")]
    Malformed(String),
    #[error("scope {0:?} names an unknown resource type")]
    UnknownType(String),
    #[error("scope {0:?} names an invalid repository")]
    Name(String),
    #[error("{0} scopes asked for at once; at most {MAX_SCOPES} are allowed in one token request")]
    TooMany(usize),
}

/// The most scopes one token request may name. Clients ask for one to three (a pull, a push, a
/// cross-repository mount); each scope costs a policy lookup and a place in the token, so a
/// request naming thousands is refused rather than served.
pub const MAX_SCOPES: usize = 100;

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let malformed = || ScopeError::Malformed(text.to_owned());
        let (kind, rest) = text.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        if name.is_empty() {
            return Err(malformed());
        }
        let kind = kind.split_once('(').map_or(kind, |(base, _class)| base);
        match kind {
            "repository" => {
                let name = name
                    .parse()
                    .map_err(|_| ScopeError::Name(text.to_owned()))?;
                let actions = actions
                    .split(',')
                    .flat_map(|action| match action.trim() {
                        "*" => vec![Action::Pull, Action::Push, Action::Delete],
                        other => Action::parse(other).into_iter().collect(),
                    })
                    .collect();
                Ok(Scope {
                    resource: Resource::Repository(name),
                    actions,
                })
            }
            "registry" if name == "catalog" => Ok(Scope {
                resource: Resource::Catalog,
                actions: if actions.split(',').any(|a| a.trim() == "*") {
                    BTreeSet::from([Action::Pull])
                } else {
                    BTreeSet::new()
                },
            }),
            _ => Err(ScopeError::UnknownType(text.to_owned())),
        }
    }

    /// Every scope of a request: several `scope` parameters, each possibly space-separated.
    pub fn parse_all<'a>(
        params: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Scope>, ScopeError> {
        let texts: Vec<&str> = params
            .into_iter()
            .flat_map(|param| param.split(' '))
            .filter(|s| !s.is_empty())
            .collect();
        if texts.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany(texts.len()));
        }
        texts.into_iter().map(Scope::parse).collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Resource::Repository(name) => {
                let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
                write!(f, "repository:{name}:{}", actions.join(","))
            }
            Resource::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> String {
        match Scope::parse(text) {
            Ok(scope) => scope.to_string(),
            Err(ScopeError::Malformed(_)) => "malformed".into(),
            Err(ScopeError::UnknownType(_)) => "unknown type".into(),
            Err(ScopeError::Name(_)) => "bad name".into(),
            Err(ScopeError::TooMany(_)) => "too many".into(),
        }
    }

    #[test]
    fn a_token_request_names_at_most_max_scopes() {
        let scopes: Vec<String> = (0..=MAX_SCOPES)
            .map(|n| format!("repository:team/app-{n}:pull"))
            .collect();
        let texts = |count: usize| scopes[..count].iter().map(String::as_str);
        assert_eq!(
            Scope::parse_all(texts(MAX_SCOPES)).map(|all| all.len()),
            Ok(MAX_SCOPES)
        );
        assert_eq!(
            Scope::parse_all(texts(MAX_SCOPES + 1)),
            Err(ScopeError::TooMany(MAX_SCOPES + 1))
        );
        let joined = scopes.join(" ");
        assert_eq!(
            Scope::parse_all([joined.as_str()]),
            Err(ScopeError::TooMany(MAX_SCOPES + 1)),
            "space-separated scopes in one parameter count one by one"
        );
    }

    #[test]
    fn scopes_parse_per_the_token_spec() {
        let cases = [
            ("repository:team/app:pull", "repository:team/app:pull"),
            (
                "repository:team/app:push,pull",
                "repository:team/app:pull,push",
            ),
            (
                "repository:team/app:pull,push,delete",
                "repository:team/app:pull,push,delete",
            ),
            (
                "repository:team/app:*",
                "repository:team/app:pull,push,delete",
            ),
            (
                "repository(plugin):team/app:pull",
                "repository:team/app:pull",
            ),
            ("repository:team/app:pull,fly", "repository:team/app:pull"),
            ("repository:team/app:", "repository:team/app:"),
            ("registry:catalog:*", "registry:catalog:*"),
            ("registry:other:*", "unknown type"),
            ("image:team/app:pull", "unknown type"),
            ("repository:Team/App:pull", "bad name"),
            ("repository::pull", "malformed"),
            ("repository", "malformed"),
            ("", "malformed"),
        ];
        for (input, expected) in cases {
            assert_eq!(show(input), expected, "{input:?}");
        }
    }

    #[test]
    fn several_scopes_in_one_or_many_parameters() {
        let scopes =
            Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*"])
                .expect("valid");
        assert_eq!(scopes.len(), 3);
    }

    #[test]
    fn the_scope_fuzz_corpus_replays() {
        crate::fuzz::replay("scope", crate::fuzz::scope);
    }
}
