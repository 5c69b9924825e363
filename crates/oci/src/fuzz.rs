//! What the fuzz targets of this crate do with one input, and the replay of their corpora.
//!
//! `fuzz/fuzz_targets/*` call these functions (cargo-fuzz builds with `--cfg fuzzing`), and the
//! unit tests of the parsers call them on every committed input under `fuzz/corpus/<target>`,
//! so the corpora run with every `cargo test`, without libFuzzer.
//!
//! Invariant: each function returns normally for every input; it panics only when the parser
//! panics or breaks an invariant it states.

use crate::range::{parse_content_range, resolve_request_range};
use crate::{Digest, Manifest};

/// `manifest`: the body of a manifest PUT, after an optional first line
/// `Content-Type: <type>` giving the header sent with it.
pub fn manifest(data: &[u8]) {
    let (content_type, body) = match data.strip_prefix(b"Content-Type: ") {
        Some(rest) => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(content_type) = std::str::from_utf8(&rest[..end]) else {
                return;
            };
            (Some(content_type), rest.get(end + 1..).unwrap_or_default())
        }
        None => (None, data),
    };
    if let Ok(manifest) = Manifest::parse(content_type, body) {
        // What the registry stores about a manifest names only digests that parse back.
        let descriptors = manifest
            .config
            .iter()
            .chain(&manifest.layers)
            .chain(&manifest.manifests)
            .chain(&manifest.subject);
        for descriptor in descriptors {
            let text = descriptor.digest.to_string();
            assert_eq!(text.parse::<Digest>().as_ref(), Ok(&descriptor.digest));
        }
    }
}

/// `range`: a blob size on the first line (a `u64`; anything else means 0), then a header
/// value, read both as the `Range` of a blob GET and as the `Content-Range` of an upload PATCH.
pub fn range(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (size, header) = text.split_once('\n').unwrap_or(("", text));
    let size = size.trim().parse::<u64>().unwrap_or(0);
    if let Ok(Some(range)) = resolve_request_range(header, size) {
        assert!(
            range.start <= range.end && range.end < size,
            "{range:?} of {size} bytes from {header:?}"
        );
        assert!(range.len() <= size);
    }
    if let Ok(range) = parse_content_range(header) {
        assert!(range.start <= range.end, "{range:?} from {header:?}");
        // The length of any range, even `0-18446744073709551615`, is computed without overflow.
        let _ = range.len();
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
