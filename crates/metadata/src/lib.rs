//! Metadata records and the `MetadataStore` trait every backend implements.
//!
//! Invariants:
//! - One trait method is one transaction: a caller never observes half of a change.
//! - Time is passed in (`now`, Unix seconds), never read here, so behaviour is reproducible.
//! - Every backend passes the same behaviour suite, `behaviour::run`, so callers may rely on
//!   what this page documents rather than on one backend's quirks.

pub mod behaviour;
pub mod identity;
pub mod schema;

use async_trait::async_trait;
use oci::{Digest, RepositoryName, Tag};

pub use identity::IdentityStore;

/// Unix seconds.
pub type Timestamp = i64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest names blobs or child manifests this repository does not hold.
    #[error("manifest references content unknown to the repository: {0:?}")]
    UnknownReferences(Vec<Digest>),
    /// A record with that name exists already, or a delete would orphan other records.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A record the change depends on does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend cannot be reached right now; the caller may retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store failure: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadId(pub uuid::Uuid);

/// The most open upload sessions of one principal and of one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    pub per_principal: u32,
    pub per_repository: u32,
}

impl UploadLimits {
    pub const UNLIMITED: UploadLimits = UploadLimits {
        per_principal: u32::MAX,
        per_repository: u32::MAX,
    };
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A resumable blob upload. `hash_state` and `storage_state` are opaque here: the blob store
/// encodes them (the hash so far; where the bytes received so far are staged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: UploadId,
    pub repository: RepositoryName,
    pub offset: u64,
    pub hash_state: Vec<u8>,
    pub storage_state: Vec<u8>,
    /// Who started the upload (`user:NAME`, `robot:NAME`); only they may continue it.
    pub principal: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub body: Vec<u8>,
    pub subject: Option<Digest>,
}

/// A manifest about to be recorded, with everything the store must check and link.
#[derive(Debug, Clone)]
pub struct ManifestCommit<'a> {
    pub repository: &'a RepositoryName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub body: &'a [u8],
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a Digest>,
    /// The manifest's `annotations`, as a JSON object, for the referrers API.
    pub annotations: Option<String>,
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
    pub tag: Option<&'a Tag>,
    pub now: Timestamp,
}

/// One entry of a referrers answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// `n`/`last` pagination, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The size of `digest` if the repository holds it.
    async fn blob_size(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>, Error>;

    /// Records that the repository holds the blob (creating the repository if needed).
    async fn link_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
        now: Timestamp,
    ) -> Result<(), Error>;

    /// Links a blob that `from` holds into `repository`; false when `from` does not hold it.
    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
        now: Timestamp,
    ) -> Result<Option<u64>, Error>;

    /// Removes the repository's link to a blob; false when there was none.
    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, Error>;

    /// Records a manifest, its references and its tag, after checking that every referenced
    /// blob and child manifest is held by the repository (`Error::UnknownReferences` if not).
    async fn commit_manifest(&self, commit: ManifestCommit<'_>) -> Result<(), Error>;

    async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, Error>;

    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error>;

    /// Deletes a manifest and every tag pointing at it; false when it did not exist.
    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, Error>;

    /// Deletes one tag; false when it did not exist.
    async fn delete_tag(&self, repository: &RepositoryName, tag: &Tag) -> Result<bool, Error>;

    /// Tags in lexical order after `page.after`; `None` when the repository is unknown.
    async fn list_tags(
        &self,
        repository: &RepositoryName,
        page: &PageRequest,
    ) -> Result<Option<Vec<String>>, Error>;

    /// Repository names in lexical order after `page.after`.
    async fn list_repositories(&self, page: &PageRequest) -> Result<Vec<String>, Error>;

    /// Manifests in the repository whose subject is `subject`, optionally of one artifact type.
    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, Error>;

    /// Records a new upload session, unless its principal or its repository already holds
    /// `limits`' number of open sessions: `false`, and nothing recorded. The counts are read
    /// in the same statement (on Postgres, concurrent starts may pass a limit by a few).
    async fn create_upload(
        &self,
        upload: &UploadRecord,
        limits: UploadLimits,
    ) -> Result<bool, Error>;

    async fn upload(&self, id: UploadId) -> Result<Option<UploadRecord>, Error>;

    /// Advances an upload from `expected_offset`; false when another writer moved it first,
    /// or a request ending it holds a claim that has not expired (`claim_upload`). An expired
    /// claim is cleared: its holder is presumed gone.
    async fn advance_upload(
        &self,
        id: UploadId,
        expected_offset: u64,
        offset: u64,
        hash_state: &[u8],
        storage_state: &[u8],
        now: Timestamp,
    ) -> Result<bool, Error>;

    /// Claims an upload standing at `offset` for the one request that ends it, until `until`:
    /// to finish it as `digest`, or to discard it (`None`). False when the upload is gone, has
    /// moved on, or is claimed by another request whose claim has not expired, unless both
    /// finish it as the same digest (the same content, so a retried finish goes on and both
    /// put the same verified bytes in place). So of two replicas ending one session, the
    /// second learns it lost before it commits anything. The claim touches the upload at
    /// `now`; until it expires the upload neither advances nor goes stale.
    async fn claim_upload(
        &self,
        id: UploadId,
        offset: u64,
        digest: Option<&Digest>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error>;

    /// Deletes an upload record; false when it did not exist.
    async fn delete_upload(&self, id: UploadId) -> Result<bool, Error>;

    /// Claims up to `limit` uploads not touched since `before` (oldest first), for removal:
    /// each is marked touched at `now` in the same transaction, so replicas sweeping at the
    /// same time never claim the same upload. A claim abandoned by a crash ages out again.
    /// An upload a request ending it has claimed (`claim_upload`) is not stale until that
    /// claim expires.
    async fn claim_stale_uploads(
        &self,
        before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<UploadRecord>, Error>;
}
