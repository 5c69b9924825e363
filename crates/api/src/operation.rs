//! `/v2` requests parsed into one closed `Operation`.
//!
//! Repository names contain `/`, so the router hands us everything after `/v2/` and this
//! module finds the operation from the right-hand end of the path, where the grammar is
//! unambiguous: a reference, digest or upload id never contains `/`.
//!
//! Invariant: parsing is pure and total: every method, path and query yields an `Operation`
//! or a `ParseError` naming the spec's code, never a panic.

use oci::{ByteRange, Digest, Reference, RepositoryName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Base,
    Catalog {
        n: Option<u32>,
        last: Option<String>,
    },
    ListTags {
        name: RepositoryName,
        n: Option<u32>,
        last: Option<String>,
    },
    GetManifest {
        name: RepositoryName,
        reference: Reference,
        head: bool,
    },
    PutManifest {
        name: RepositoryName,
        reference: Reference,
    },
    DeleteManifest {
        name: RepositoryName,
        reference: Reference,
    },
    GetBlob {
        name: RepositoryName,
        digest: Digest,
        head: bool,
    },
    DeleteBlob {
        name: RepositoryName,
        digest: Digest,
    },
    /// `POST /blobs/uploads/`: a session, a monolithic upload (`digest`), or a mount.
    StartUpload {
        name: RepositoryName,
        digest: Option<Digest>,
        mount: Option<(Digest, RepositoryName)>,
    },
    UploadStatus {
        name: RepositoryName,
        id: String,
    },
    PatchUpload {
        name: RepositoryName,
        id: String,
    },
    FinishUpload {
        name: RepositoryName,
        id: String,
        digest: Digest,
    },
    CancelUpload {
        name: RepositoryName,
        id: String,
    },
    Referrers {
        name: RepositoryName,
        digest: Digest,
        artifact_type: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NameInvalid(String),
    DigestInvalid(String),
    ReferenceInvalid(String),
    ManifestUnknown(String),
    /// An upload id that cannot name a session (it does not even decode).
    UploadUnknown(String),
    QueryInvalid(String),
    NotFound,
    MethodNotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Patch,
    Delete,
    Other,
}

impl Method {
    pub fn from_http(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ParseError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode(&text.replace('+', " "))
                    .ok_or_else(|| ParseError::QueryInvalid(pair.to_owned()))
            };
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self) -> Result<Option<u32>, ParseError> {
        match self.get("n") {
            None | Some("") => Ok(None),
            Some(text) => text.parse::<u32>().map(Some).map_err(|_| {
                ParseError::QueryInvalid(format!("n={text} is not a non-negative integer"))
            }),
        }
    }

    fn last(&self) -> Option<String> {
        self.get("last")
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    }

    fn digest(&self, key: &str) -> Result<Option<Digest>, ParseError> {
        self.get(key)
            .map(|text| {
                text.parse()
                    .map_err(|err: oci::DigestError| ParseError::DigestInvalid(err.to_string()))
            })
            .transpose()
    }
}

/// What an undecodable path segment becomes: it holds `/`, so no decoded segment equals it, a
/// repository name holding it is invalid, and neither a digest nor a tag parses from it.
const UNDECODABLE: &str = "/";

fn name(segments: &[&str]) -> Result<RepositoryName, ParseError> {
    let joined = segments.join("/");
    joined
        .parse()
        .map_err(|err: oci::NameError| ParseError::NameInvalid(err.to_string()))
}

/// The digest of a path segment (`raw` as sent, for the message when it did not decode).
fn digest(text: &str, raw: &str) -> Result<Digest, ParseError> {
    if text == UNDECODABLE {
        return Err(ParseError::DigestInvalid(format!(
            "{raw:?} is not a digest"
        )));
    }
    text.parse()
        .map_err(|err: oci::DigestError| ParseError::DigestInvalid(err.to_string()))
}

/// Parses the part of the path after `/v2/` (already split from the query).
pub fn parse(method: Method, rest: &str, query: Option<&str>) -> Result<Operation, ParseError> {
    let query = Query(query_pairs(query.unwrap_or(""))?);
    let raw: Vec<&str> = rest.split('/').collect();
    // A segment that does not decode, or decodes to text holding `/`, stands as `UNDECODABLE`
    // (which no decoded segment can equal): where it sits decides what the client is told.
    let decoded: Vec<String> = raw
        .iter()
        .map(|segment| {
            percent_decode(segment)
                .filter(|s| !s.contains('/'))
                .unwrap_or_else(|| UNDECODABLE.to_owned())
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let n = segments.len();
    let tail = |k: usize| if k <= n { &segments[n - k..] } else { &[][..] };

    if segments == [""] {
        return match method {
            Method::Get | Method::Head => Ok(Operation::Base),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if segments == ["_catalog"] {
        return match method {
            Method::Get => Ok(Operation::Catalog {
                n: query.count()?,
                last: query.last(),
            }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if n >= 3 && tail(2) == ["tags", "list"] {
        let name = name(&segments[..n - 2])?;
        return match method {
            Method::Get => Ok(Operation::ListTags {
                name,
                n: query.count()?,
                last: query.last(),
            }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if n >= 3 && segments[n - 2] == "manifests" {
        let name = name(&segments[..n - 2])?;
        let reference: Reference = match segments[n - 1].parse() {
            _ if segments[n - 1] == UNDECODABLE => {
                return Err(match method {
                    Method::Put => ParseError::ReferenceInvalid(format!(
                        "{:?} is neither a tag nor a digest",
                        raw[n - 1]
                    )),
                    _ => ParseError::ManifestUnknown(raw[n - 1].to_owned()),
                })
            }
            Ok(reference) => reference,
            Err(oci::reference::ReferenceError::Digest(err)) => {
                return Err(ParseError::DigestInvalid(err.to_string()))
            }
            // No manifest can have an invalid tag: reading or deleting one finds nothing,
            // pushing one is a client error.
            Err(oci::reference::ReferenceError::Tag(err)) => {
                return Err(match method {
                    Method::Put => ParseError::ReferenceInvalid(err.to_string()),
                    _ => ParseError::ManifestUnknown(raw[n - 1].to_owned()),
                })
            }
        };
        return match method {
            Method::Get => Ok(Operation::GetManifest {
                name,
                reference,
                head: false,
            }),
            Method::Head => Ok(Operation::GetManifest {
                name,
                reference,
                head: true,
            }),
            Method::Put => Ok(Operation::PutManifest { name, reference }),
            Method::Delete => Ok(Operation::DeleteManifest { name, reference }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    // `blobs/uploads/` (with or without the trailing slash) starts an upload.
    let start = if n >= 4 && tail(3) == ["blobs", "uploads", ""] {
        Some(n - 3)
    } else if n >= 3 && tail(2) == ["blobs", "uploads"] {
        Some(n - 2)
    } else {
        None
    };
    if let Some(end) = start {
        let name = name(&segments[..end])?;
        return match method {
            Method::Post => {
                // A mount that cannot be honoured (no or malformed `from` or `mount`)
                // falls back to a plain upload session, as the spec asks.
                let mount_digest = query.get("mount").and_then(|text| text.parse().ok());
                let from = query.get("from").and_then(|text| text.parse().ok());
                let mount = mount_digest.zip(from);
                Ok(Operation::StartUpload {
                    name,
                    digest: query.digest("digest")?,
                    mount,
                })
            }
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        let name = name(&segments[..n - 3])?;
        if segments[n - 1] == UNDECODABLE {
            return Err(ParseError::UploadUnknown(raw[n - 1].to_owned()));
        }
        let id = segments[n - 1].to_owned();
        return match method {
            Method::Get => Ok(Operation::UploadStatus { name, id }),
            Method::Patch => Ok(Operation::PatchUpload { name, id }),
            Method::Put => {
                let digest = query.digest("digest")?.ok_or_else(|| {
                    ParseError::DigestInvalid(
                        "the digest query parameter is required to finish an upload".into(),
                    )
                })?;
                Ok(Operation::FinishUpload { name, id, digest })
            }
            Method::Delete => Ok(Operation::CancelUpload { name, id }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if n >= 3 && segments[n - 2] == "blobs" {
        let name = name(&segments[..n - 2])?;
        let digest = digest(segments[n - 1], raw[n - 1])?;
        return match method {
            Method::Get => Ok(Operation::GetBlob {
                name,
                digest,
                head: false,
            }),
            Method::Head => Ok(Operation::GetBlob {
                name,
                digest,
                head: true,
            }),
            Method::Delete => Ok(Operation::DeleteBlob { name, digest }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    if n >= 3 && segments[n - 2] == "referrers" {
        let name = name(&segments[..n - 2])?;
        let digest = digest(segments[n - 1], raw[n - 1])?;
        return match method {
            Method::Get => Ok(Operation::Referrers {
                name,
                digest,
                artifact_type: query
                    .get("artifactType")
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            }),
            _ => Err(ParseError::MethodNotAllowed),
        };
    }
    Err(ParseError::NotFound)
}

/// The `Content-Range` of an upload chunk, when one was sent.
pub fn content_range(header: Option<&str>) -> Result<Option<ByteRange>, oci::RangeError> {
    header.map(oci::range::parse_content_range).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn show(method: Method, path: &str) -> String {
        let (rest, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        match parse(method, rest, query) {
            Ok(op) => match op {
                Operation::Base => "base".into(),
                Operation::Catalog { n, last } => format!("catalog n={n:?} last={last:?}"),
                Operation::ListTags { name, n, last } => {
                    format!("tags {name} n={n:?} last={last:?}")
                }
                Operation::GetManifest {
                    name,
                    reference,
                    head,
                } => format!("get-manifest {name} {reference} head={head}"),
                Operation::PutManifest { name, reference } => {
                    format!("put-manifest {name} {reference}")
                }
                Operation::DeleteManifest { name, reference } => {
                    format!("delete-manifest {name} {reference}")
                }
                Operation::GetBlob { name, digest, head } => {
                    format!("get-blob {name} {} head={head}", &digest.hex()[..4])
                }
                Operation::DeleteBlob { name, digest } => {
                    format!("delete-blob {name} {}", &digest.hex()[..4])
                }
                Operation::StartUpload {
                    name,
                    digest,
                    mount,
                } => format!(
                    "start-upload {name} digest={} mount={}",
                    digest.is_some(),
                    mount.map_or("none".into(), |(_, from)| from.to_string())
                ),
                Operation::UploadStatus { name, id } => format!("upload-status {name} {id}"),
                Operation::PatchUpload { name, id } => format!("patch-upload {name} {id}"),
                Operation::FinishUpload { name, id, .. } => format!("finish-upload {name} {id}"),
                Operation::CancelUpload { name, id } => format!("cancel-upload {name} {id}"),
                Operation::Referrers {
                    name,
                    artifact_type,
                    ..
                } => format!("referrers {name} type={artifact_type:?}"),
            },
            Err(err) => format!(
                "error {}",
                match err {
                    ParseError::NameInvalid(_) => "name",
                    ParseError::DigestInvalid(_) => "digest",
                    ParseError::ReferenceInvalid(_) => "reference",
                    ParseError::ManifestUnknown(_) => "manifest-unknown",
                    ParseError::UploadUnknown(_) => "upload-unknown",
                    ParseError::QueryInvalid(_) => "query",
                    ParseError::NotFound => "not-found",
                    ParseError::MethodNotAllowed => "method",
                }
            ),
        }
    }

    #[test]
    fn paths_parse_into_operations() {
        use Method::*;
        let d = format!("sha256:{HEX}");
        let head_by_digest = format!("get-manifest team/app {d} head=true");
        let cases: Vec<(Method, String, &str)> = vec![
            (Get, "".into(), "base"),
            (Head, "".into(), "base"),
            (Post, "".into(), "error method"),
            (Get, "_catalog".into(), "catalog n=None last=None"),
            (
                Get,
                "_catalog?n=10&last=a%2Fb".into(),
                "catalog n=Some(10) last=Some(\"a/b\")",
            ),
            (Get, "_catalog?n=ten".into(), "error query"),
            (
                Get,
                "team/app/tags/list".into(),
                "tags team/app n=None last=None",
            ),
            (
                Get,
                "team/app/tags/list?n=0".into(),
                "tags team/app n=Some(0) last=None",
            ),
            (
                Get,
                "a/tags/list?n=2&last=v1".into(),
                "tags a n=Some(2) last=Some(\"v1\")",
            ),
            (Delete, "a/tags/list".into(), "error method"),
            (
                Get,
                "team/app/manifests/latest".into(),
                "get-manifest team/app latest head=false",
            ),
            (Head, format!("team/app/manifests/{d}"), &head_by_digest),
            (
                Put,
                "a/b/c/manifests/v1.0".into(),
                "put-manifest a/b/c v1.0",
            ),
            (Delete, "app/manifests/v1".into(), "delete-manifest app v1"),
            (Patch, "app/manifests/v1".into(), "error method"),
            (Get, "app/manifests/sha256:abc".into(), "error digest"),
            (Get, "app/manifests/-bad".into(), "error manifest-unknown"),
            (
                Head,
                "app/manifests/.INVALID_MANIFEST_NAME".into(),
                "error manifest-unknown",
            ),
            (
                Delete,
                "app/manifests/.bad".into(),
                "error manifest-unknown",
            ),
            (Put, "app/manifests/.bad".into(), "error reference"),
            (Get, "App/manifests/latest".into(), "error name"),
            (Get, "../manifests/latest".into(), "error name"),
            (Get, "app%2F..%2Fx/manifests/latest".into(), "error name"),
            // A bad last segment is blamed on what it is, not on the repository name.
            (
                Put,
                "app/blobs/uploads/..%2F..%2Fetc".into(),
                "error upload-unknown",
            ),
            (
                Patch,
                "app/blobs/uploads/%ZZ".into(),
                "error upload-unknown",
            ),
            (Get, "app/blobs/sha256%3A..%2Fx".into(), "error digest"),
            (Get, "app/referrers/..%2Fx".into(), "error digest"),
            (Get, "app/manifests/..%2Fx".into(), "error manifest-unknown"),
            (Put, "app/manifests/..%2Fx".into(), "error reference"),
            (Get, "app%2F..%2Fx/blobs/uploads/abc".into(), "error name"),
            (
                Get,
                format!("app/blobs/{d}"),
                "get-blob app 0123 head=false",
            ),
            (
                Head,
                format!("app/blobs/sha256%3A{HEX}"),
                "get-blob app 0123 head=true",
            ),
            (Delete, format!("app/blobs/{d}"), "delete-blob app 0123"),
            (Put, format!("app/blobs/{d}"), "error method"),
            (Get, "app/blobs/notadigest".into(), "error digest"),
            (
                Post,
                "app/blobs/uploads/".into(),
                "start-upload app digest=false mount=none",
            ),
            (
                Post,
                "app/blobs/uploads".into(),
                "start-upload app digest=false mount=none",
            ),
            (
                Post,
                format!("app/blobs/uploads/?digest={d}"),
                "start-upload app digest=true mount=none",
            ),
            (
                Post,
                format!("app/blobs/uploads/?mount={d}&from=other/repo"),
                "start-upload app digest=false mount=other/repo",
            ),
            (
                Post,
                format!("app/blobs/uploads/?mount={d}"),
                "start-upload app digest=false mount=none",
            ),
            (
                Post,
                format!("app/blobs/uploads/?mount={d}&from=Bad"),
                "start-upload app digest=false mount=none",
            ),
            (Post, "app/blobs/uploads/?digest=bad".into(), "error digest"),
            (Get, "app/blobs/uploads/".into(), "error method"),
            (Get, "app/blobs/uploads/abc".into(), "upload-status app abc"),
            (
                Patch,
                "app/blobs/uploads/abc".into(),
                "patch-upload app abc",
            ),
            (
                Put,
                format!("app/blobs/uploads/abc?digest={d}"),
                "finish-upload app abc",
            ),
            (Put, "app/blobs/uploads/abc".into(), "error digest"),
            (
                Delete,
                "app/blobs/uploads/abc".into(),
                "cancel-upload app abc",
            ),
            (Post, "app/blobs/uploads/abc".into(), "error method"),
            (Get, format!("app/referrers/{d}"), "referrers app type=None"),
            (
                Get,
                format!("app/referrers/{d}?artifactType=application%2Fx.sbom"),
                "referrers app type=Some(\"application/x.sbom\")",
            ),
            (Get, "app/referrers/latest".into(), "error digest"),
            // Names may contain the words the grammar uses as markers.
            (
                Get,
                "blobs/manifests/manifests/latest".into(),
                "get-manifest blobs/manifests latest head=false",
            ),
            (
                Get,
                format!("x/blobs/blobs/{d}"),
                "get-blob x/blobs 0123 head=false",
            ),
            (
                Patch,
                "x/blobs/uploads/blobs/uploads/id".into(),
                "patch-upload x/blobs/uploads id",
            ),
            (
                Get,
                "tags/list/tags/list".into(),
                "tags tags/list n=None last=None",
            ),
            (Get, "app".into(), "error not-found"),
            (Get, "app/unknown/thing".into(), "error not-found"),
            (Get, "manifests/latest".into(), "error not-found"),
            (Get, "app/manifests/latest/extra".into(), "error not-found"),
            (Other, "app/manifests/latest".into(), "error method"),
            (Get, "app%zz/manifests/latest".into(), "error name"),
        ];
        for (method, path, expected) in cases {
            assert_eq!(show(method, &path), expected, "{method:?} /v2/{path}");
        }
    }

    #[test]
    fn percent_decoding_refuses_broken_escapes() {
        assert_eq!(percent_decode("a%3Ab"), Some("a:b".into()));
        assert_eq!(percent_decode("plain"), Some("plain".into()));
        assert_eq!(percent_decode("bad%"), None);
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("%ff%fe"), None);
        // `u8::from_str_radix` takes a sign: `%+1` must not decode to U+0001.
        assert_eq!(percent_decode("a%+1b"), None);
        assert_eq!(percent_decode("a%-1b"), None);
    }

    #[test]
    fn the_operation_fuzz_corpus_replays() {
        crate::fuzz::replay("operation", crate::fuzz::operation);
    }
}
