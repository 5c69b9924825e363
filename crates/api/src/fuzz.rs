//! What the fuzz targets of this crate do with one input, and the replay of their corpora.
//!
//! `fuzz/fuzz_targets/*` call these functions (cargo-fuzz builds with `--cfg fuzzing`), and the
//! unit tests of the parsers call them on every committed input under `fuzz/corpus/<target>`,
//! so the corpora run with every `cargo test`, without libFuzzer.
//!
//! Invariant: each function returns normally for every input; it panics only when the parser
//! panics or breaks an invariant it states.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use oci::{Digest, RepositoryName};

use crate::access::{basic_credentials, bearer_token};
use crate::forwarded::{Network, TrustedProxies};
use crate::operation::{self, Method, Operation};

/// `operation`: a request line's method and target as the router sees them,
/// `METHOD rest?query`, where `rest` is the path after `/v2/`.
pub fn operation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, target) = text.split_once(' ').unwrap_or((text, ""));
    let (rest, query) = target
        .split_once('?')
        .map_or((target, None), |(rest, query)| (rest, Some(query)));
    let Ok(operation) = operation::parse(Method::from_http(method), rest, query) else {
        return;
    };
    // What the registry is handed is valid as it stands: its names and digests parse back.
    let name_reparses = |name: &RepositoryName| {
        assert_eq!(name.as_str().parse::<RepositoryName>().as_ref(), Ok(name));
    };
    let digest_reparses = |digest: &Digest| {
        assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(digest));
    };
    match &operation {
        Operation::Base | Operation::Catalog { .. } => {}
        Operation::ListTags { name, .. }
        | Operation::GetManifest { name, .. }
        | Operation::PutManifest { name, .. }
        | Operation::DeleteManifest { name, .. }
        | Operation::UploadStatus { name, .. }
        | Operation::PatchUpload { name, .. }
        | Operation::CancelUpload { name, .. } => name_reparses(name),
        Operation::GetBlob { name, digest, .. }
        | Operation::DeleteBlob { name, digest }
        | Operation::FinishUpload { name, digest, .. }
        | Operation::Referrers { name, digest, .. } => {
            name_reparses(name);
            digest_reparses(digest);
        }
        Operation::StartUpload {
            name,
            digest,
            mount,
        } => {
            name_reparses(name);
            digest.iter().for_each(digest_reparses);
            if let Some((digest, from)) = mount {
                digest_reparses(digest);
                name_reparses(from);
            }
        }
    }
}

/// `authorization`: the value of an `Authorization` header, read as the token service and the
/// admin API read Basic credentials and `/v2` reads a Bearer token.
pub fn authorization(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    if let Ok(Some((username, password))) = basic_credentials(&headers) {
        // The user name ends at the first colon; the same pair sent again reads the same.
        let encoded = STANDARD.encode(format!("{username}:{password}"));
        let mut again = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
        again.insert(header::AUTHORIZATION, value);
        assert_eq!(
            basic_credentials(&again),
            Ok(Some((username.clone(), password)))
        );
        assert!(!username.contains(':'));
    }
    if let Some(token) = bearer_token(&headers) {
        assert_eq!(token.trim(), token);
    }
}

/// `forwarded`: trusted proxies (comma-separated) on the first line, the TCP peer on the
/// second, then one `X-Forwarded-For` line per line, read as throttling and the audit log do.
pub fn forwarded(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let networks: Vec<Network> = std::str::from_utf8(lines.next().unwrap_or_default())
        .unwrap_or_default()
        .split(',')
        .filter_map(|text| text.parse().ok())
        .collect();
    let peer: IpAddr = std::str::from_utf8(lines.next().unwrap_or_default())
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(IpAddr::from([10, 0, 0, 1]));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", value);
        }
    }
    let trusted = !networks.is_empty();
    let client = TrustedProxies::new(networks).client(peer, &headers);
    if !trusted {
        let canonical = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            IpAddr::V4(_) => peer,
        };
        assert_eq!(
            client, canonical,
            "no proxy is trusted: the client is the peer"
        );
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
