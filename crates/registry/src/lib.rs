//! The registry's use cases: pushing and pulling blobs and manifests, uploads, deletes,
//! listings and referrers. Handlers in `api` call exactly one method here per request.
//!
//! Invariants:
//! - This crate knows no HTTP and no SQL: it speaks `oci` types to the `MetadataStore` and
//!   the `BlobStore`.
//! - A blob becomes visible in a repository only after its bytes were hashed while streaming
//!   and the digest matched; the bytes are in place before the link is written.
//! - An upload session belongs to one repository; another repository cannot see it.

pub mod access;
pub mod admin;
mod error;
pub mod rate;
pub mod throttle;
mod uploads;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobstore::BlobStore;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use metadata::{ManifestCommit, MetadataStore, PageRequest, Timestamp};
use oci::{ByteRange, Digest, Manifest, Reference, RepositoryName};
use serde_json::{json, Value};

pub use error::Error;
pub use metadata::{ManifestRecord, UploadId};
pub use uploads::{UploadStart, UploadStatus};

/// Limits an operator may tune.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_manifest_bytes: usize,
    /// Upload sessions untouched for this long are removed with their bytes.
    pub upload_expiry: Duration,
    /// Blob `GET`s answer 307 to a presigned URL valid this long, when the store signs URLs;
    /// `None`: blobs stream through the registry.
    pub blob_redirect: Option<Duration>,
    /// Bytes of a request's header names and values (431 beyond).
    pub max_header_bytes: usize,
    /// Bytes of a request's target, path and query (414 beyond).
    pub max_uri_bytes: usize,
    /// How long a request body may send nothing before its request fails.
    pub body_idle_timeout: Duration,
    /// Token requests per second per client network (`rate`); 0: unlimited.
    pub token_requests_per_second: u32,
    /// Open upload sessions per principal and per repository; starting more is refused.
    pub max_uploads_per_principal: u32,
    pub max_uploads_per_repository: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            upload_expiry: Duration::from_secs(24 * 3600),
            blob_redirect: None,
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            token_requests_per_second: 20,
            max_uploads_per_principal: 1024,
            max_uploads_per_repository: 4096,
        }
    }
}

/// The most entries one listing page may hold; larger `n` are clamped.
pub const MAX_PAGE: u32 = 10_000;

pub struct Registry {
    metadata: Arc<dyn MetadataStore>,
    blobs: BlobStore,
    limits: Limits,
    writers: uploads::Writers,
}

/// A blob (or part of one) on its way to a client.
pub struct BlobContent {
    pub size: u64,
    /// Set when a satisfiable `Range` was asked for.
    pub range: Option<ByteRange>,
    pub stream: BoxStream<'static, Result<Bytes, blobstore::Error>>,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// One page of a listing, and the `last` value to ask for the next page when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub next: Option<String>,
}

/// A referrers answer: an OCI image index, and whether an `artifactType` filter was applied.
#[derive(Debug, Clone)]
pub struct Referrers {
    pub index: Vec<u8>,
    pub filtered: bool,
}

pub(crate) fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Registry {
    pub fn new(metadata: Arc<dyn MetadataStore>, blobs: BlobStore, limits: Limits) -> Registry {
        Registry {
            metadata,
            blobs,
            limits,
            writers: uploads::Writers::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The size of a blob the repository holds.
    pub async fn stat_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<u64, Error> {
        self.metadata
            .blob_size(repository, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    /// Streams a blob, or the part of it a `Range` header asks for.
    pub async fn read_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<BlobContent, Error> {
        let size = self.stat_blob(repository, digest).await?;
        let range = match range {
            Some(header) => oci::range::resolve_request_range(header, size)
                .map_err(|oci::Unsatisfiable { size }| Error::RangeNotSatisfiable { size })?,
            None => None,
        };
        let read = self.blobs.read(digest, range).await?;
        Ok(BlobContent {
            size: read.size,
            range,
            stream: read.stream,
        })
    }

    /// Where the client may fetch a blob the repository holds directly from the object store,
    /// when redirects are on and the store signs URLs.
    pub async fn blob_redirect(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<String>, Error> {
        let Some(ttl) = self.limits.blob_redirect else {
            return Ok(None);
        };
        self.stat_blob(repository, digest).await?;
        Ok(self.blobs.presigned_url(digest, ttl).await?)
    }

    /// Where blobs live, for the operator.
    pub fn blob_storage(&self) -> &str {
        self.blobs.description()
    }

    /// Removes the blob from the repository. Its bytes stay until no repository holds them.
    pub async fn delete_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), Error> {
        if self.metadata.unlink_blob(repository, digest).await? {
            tracing::info!(repository = %repository, digest = %digest, "deleted blob {digest} from {repository}");
            Ok(())
        } else {
            Err(Error::BlobUnknown(digest.clone()))
        }
    }

    pub async fn put_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<PushedManifest, Error> {
        if body.len() > self.limits.max_manifest_bytes {
            return Err(Error::ManifestTooLarge {
                limit: self.limits.max_manifest_bytes,
            });
        }
        let mut hash = blobstore::Sha256State::new();
        hash.update(body);
        let digest = hash.finish();
        if let Reference::Digest(expected) = reference {
            if *expected != digest {
                return Err(Error::DigestInvalid(format!(
                    "the manifest's digest is {digest}, not {expected}"
                )));
            }
        }
        let manifest = Manifest::parse(content_type, body)
            .map_err(|err| Error::ManifestInvalid(err.to_string()))?;
        let annotations = manifest
            .annotations
            .as_ref()
            .map(|map| Value::Object(map.clone()).to_string());
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        let tag = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        let commit = ManifestCommit {
            repository,
            digest: &digest,
            media_type: manifest.kind.media_type(),
            body,
            artifact_type: manifest.effective_artifact_type(),
            subject: subject.as_ref(),
            annotations,
            blobs: manifest
                .required_blobs()
                .map(|d| d.digest.clone())
                .collect(),
            children: manifest
                .required_manifests()
                .map(|d| d.digest.clone())
                .collect(),
            tag,
            now: now(),
        };
        match self.metadata.commit_manifest(commit).await {
            Ok(()) => {}
            Err(metadata::Error::UnknownReferences(missing)) => {
                return Err(Error::ManifestBlobUnknown(missing))
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(repository = %repository, digest = %digest, reference = %reference, "pushed manifest {digest} to {repository}");
        Ok(PushedManifest { digest, subject })
    }

    pub async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<ManifestRecord, Error> {
        let found = match reference {
            Reference::Tag(tag) => self.metadata.manifest_by_tag(repository, tag).await?,
            Reference::Digest(digest) => {
                self.metadata.manifest_by_digest(repository, digest).await?
            }
        };
        found.ok_or_else(|| Error::ManifestUnknown(reference.to_string()))
    }

    /// Deleting by digest removes the manifest and every tag on it; by tag, only that tag.
    pub async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<(), Error> {
        let deleted = match reference {
            Reference::Tag(tag) => self.metadata.delete_tag(repository, tag).await?,
            Reference::Digest(digest) => self.metadata.delete_manifest(repository, digest).await?,
        };
        if !deleted {
            return Err(Error::ManifestUnknown(reference.to_string()));
        }
        tracing::info!(repository = %repository, reference = %reference, "deleted {reference} from {repository}");
        Ok(())
    }

    pub async fn list_tags(
        &self,
        repository: &RepositoryName,
        limit: Option<u32>,
        last: Option<String>,
    ) -> Result<Page, Error> {
        let limit = limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let request = PageRequest {
            limit: limit.saturating_add(1),
            after: last,
        };
        let items = self
            .metadata
            .list_tags(repository, &request)
            .await?
            .ok_or_else(|| Error::NameUnknown(repository.clone()))?;
        Ok(paginate(items, limit))
    }

    pub async fn catalog(&self, limit: Option<u32>, last: Option<String>) -> Result<Page, Error> {
        let limit = limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let request = PageRequest {
            limit: limit.saturating_add(1),
            after: last,
        };
        let items = self.metadata.list_repositories(&request).await?;
        Ok(paginate(items, limit))
    }

    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, Error> {
        let found = self
            .metadata
            .referrers(repository, subject, artifact_type)
            .await?;
        let manifests: Vec<Value> = found
            .into_iter()
            .map(|referrer| {
                let mut descriptor = json!({
                    "mediaType": referrer.media_type,
                    "digest": referrer.digest.to_string(),
                    "size": referrer.size,
                });
                if let Some(artifact_type) = referrer.artifact_type {
                    descriptor["artifactType"] = Value::String(artifact_type);
                }
                if let Some(annotations) = referrer
                    .annotations
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                {
                    descriptor["annotations"] = annotations;
                }
                descriptor
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": oci::media_type::OCI_INDEX,
            "manifests": manifests,
        });
        Ok(Referrers {
            index: serde_json::to_vec(&index).map_err(|err| Error::Internal(err.to_string()))?,
            filtered: artifact_type.is_some(),
        })
    }
}

fn paginate(mut items: Vec<String>, limit: u32) -> Page {
    let limit = limit as usize;
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().cloned();
        // With n=0 there is no last item to continue from; the client asked for nothing.
        Page { items, next }
    } else {
        Page { items, next: None }
    }
}
