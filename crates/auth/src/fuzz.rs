//! What the fuzz targets of this crate do with one input, and the replay of their corpora.
//!
//! `fuzz/fuzz_targets/*` call these functions (cargo-fuzz builds with `--cfg fuzzing`), and the
//! unit tests of the parsers call them on every committed input under `fuzz/corpus/<target>`,
//! so the corpora run with every `cargo test`, without libFuzzer.
//!
//! Invariant: each function returns normally for every input; it panics only when the parser
//! panics or breaks an invariant it states.

use std::sync::OnceLock;

use crate::scope::{Resource, Scope};
use crate::token::{KeySet, SigningKey};

/// `scope`: the `scope` parameters of a token request, one a line.
pub fn scope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scopes) = Scope::parse_all(text.lines()) else {
        return;
    };
    for scope in scopes {
        // A granted repository scope is written into tokens and challenges as it displays.
        if let Resource::Repository(_) = scope.resource {
            assert_eq!(Scope::parse(&scope.to_string()), Ok(scope.clone()));
        }
    }
}

/// The key that signed the valid tokens of the `token` corpus. A fuzzing key, trusted nowhere.
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglzZexaWThuK2/M+K
BHdbHPjGwMNKU5STpHISBThsJjWhRANCAARX95pP5gWcQSrPtBUxkt4qrXW1WPQ0
b8QALd3sSCMZE6oh2jqy6HyFLAiqQ8v9y2Q/tgjaGqSFN+CkXCmcAb4G
-----END PRIVATE KEY-----
";

/// The issuer and audience of the corpus' tokens, and the time they are checked at (their
/// `iat`, within their lifetime).
pub const FUZZ_ISSUER: &str = "bulwark";
pub const FUZZ_AUDIENCE: &str = "registry.test";
pub const FUZZ_NOW: i64 = 1_700_000_000;

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_pem(FUZZ_KEY).expect("the fuzzing key loads");
        KeySet::new(vec![key], FUZZ_ISSUER, FUZZ_AUDIENCE).expect("a key set")
    })
}

/// `token`: the text of a Bearer token (an access or refresh JWT, or garbage), verified as
/// `/v2`, the token service and an upload continuation do.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = keys();
    if let Ok(claims) = keys.verify(text, false, FUZZ_NOW) {
        assert!(!claims.refresh && claims.exp > FUZZ_NOW, "{claims:?}");
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (FUZZ_ISSUER, FUZZ_AUDIENCE)
        );
    }
    if let Ok(claims) = keys.verify(text, true, FUZZ_NOW) {
        assert!(claims.refresh && claims.exp > FUZZ_NOW, "{claims:?}");
    }
    if let Ok(claims) = keys.verify_allowing_expiry(text, FUZZ_NOW) {
        assert!(!claims.refresh, "{claims:?}");
    }
}

/// Runs `check` on every file of `fuzz/corpus/<target>`, the committed corpus.
#[cfg(test)]
pub(crate) fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading the corpus {}: {err}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("a corpus entry").path();
        let data =
            std::fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        count += 1;
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("the {target} corpus input {} panics", path.display());
        }
    }
    assert!(count > 0, "the corpus {} is empty", dir.display());
}
