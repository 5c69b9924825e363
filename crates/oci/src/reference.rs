//! A manifest reference: a tag or a digest. A string with a `:` is a digest (tags cannot
//! contain one), anything else must be a tag.

use std::fmt;
use std::str::FromStr;

use crate::{Digest, DigestError, NameError, Tag};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Tag(#[from] NameError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.contains(':') {
            Ok(Reference::Digest(input.parse()?))
        } else {
            Ok(Reference::Tag(input.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(f),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_tags_from_digests() {
        let hex = "a".repeat(64);
        let cases: &[(String, &str)] = &[
            ("latest".to_owned(), "tag"),
            (format!("sha256:{hex}"), "digest"),
            ("sha256:short".to_owned(), "bad digest"),
            ("bad/tag".to_owned(), "bad tag"),
            (String::new(), "bad tag"),
        ];
        for (input, expected) in cases {
            let got = match input.parse::<Reference>() {
                Ok(Reference::Tag(_)) => "tag",
                Ok(Reference::Digest(_)) => "digest",
                Err(ReferenceError::Digest(_)) => "bad digest",
                Err(ReferenceError::Tag(_)) => "bad tag",
            };
            assert_eq!(got, *expected, "reference {input:?}");
        }
    }
}
