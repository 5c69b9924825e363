//! Blob uploads: sessions that survive restarts and never re-read their bytes.
//!
//! A session's record (offset, SHA-256 state, where its bytes are staged) lives in the metadata
//! store and is advanced at the end of every chunk; its bytes live in the blob store's staging
//! area (a local file, or object-store parts any replica can continue). Finishing an upload
//! hashes the last bytes, compares the digest with the client's, puts the bytes in place and
//! links the blob, in that order.
//!
//! The staged bytes are named after the session's canonical id, never after the client's
//! spelling of it: a UUID has several (case, hyphens, braces, URN) and all find the session.
//!
//! Invariants:
//! - A session has one writer at a time in this process. Two requests writing one local
//!   staging file could leave it holding one request's bytes while the session record holds
//!   the other's hash; the record's compare-and-swap alone cannot see that. The claim is
//!   shared with the blob store's writing thread and lasts until that thread exits, so a
//!   request the client abandoned keeps the session until its queued bytes are written.
//! - Bytes a session's record stands for are never invented: when its staged bytes are gone
//!   (`blobstore::Error::Lost`), the session is discarded and the client starts again.
//! - A blob already stored is never written again: finishing an upload of it only hashes the
//!   last bytes to prove the session's content. So a retried `PUT` whose first attempt
//!   committed the bytes but failed before deleting the session completes it.
//! - Across replicas (object-store staging) the record's compare-and-swap decides: each
//!   request stages under names the record does not hold yet, and the request whose advance
//!   loses removes what it staged.
//! - A session is ended (finished, or discarded) by the one request that claims its record
//!   in the metadata store (`claim_upload`), across replicas, after hashing its last bytes
//!   and before committing or removing any: a request that loses the claim has put nothing
//!   under a digest and linked nothing, removes only what it staged itself, and is told the
//!   session is unknown (it has ended, or is ending). Two finishes as the same digest share
//!   the claim, so a retried `PUT` goes on. A claim whose holder died expires
//!   (`END_CLAIM`); until then only a finish as its digest goes on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blobstore::UploadState;
use bytes::Bytes;
use futures_util::Stream;
use metadata::{UploadId, UploadLimits, UploadRecord};
use oci::{Algorithm, ByteRange, Digest, RepositoryName};

use crate::{now, Error, Registry};

/// How long a claim to end a session holds: longer than any commit takes (an object store
/// completing a multipart upload and copying up to 5 GiB server-side), so a claim expires
/// only when its holder died, and then the session is usable again.
const END_CLAIM: Duration = Duration::from_secs(15 * 60);

/// Where an upload stands: the client resumes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    pub offset: u64,
}

/// The upload sessions a request of this process (or a thread it started) is writing to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writers(Arc<Mutex<HashSet<uuid::Uuid>>>);

impl Writers {
    fn claim(&self, id: uuid::Uuid) -> Option<Arc<Writing>> {
        let mut writing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        writing.insert(id).then(|| {
            Arc::new(Writing {
                writers: self.clone(),
                id,
            })
        })
    }
}

/// Proof of being the session's only writer, shared by the request and the blob store's
/// writing thread (which outlives a dropped request); the last holder's drop lets the next
/// writer in.
#[derive(Debug)]
struct Writing {
    writers: Writers,
    id: uuid::Uuid,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut writing = self
            .writers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        writing.remove(&self.id);
    }
}

/// What `POST /blobs/uploads/` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStart {
    /// The blob was mounted from another repository; no upload is needed.
    Mounted(Digest),
    Session(UploadStatus),
}

impl Registry {
    /// Starts an upload for `owner` (a principal label), or mounts `digest` from `from` when
    /// that repository holds it. The caller has checked that `owner` may pull `from`.
    pub async fn start_upload(
        &self,
        repository: &RepositoryName,
        mount: Option<(&Digest, &RepositoryName)>,
        owner: &str,
    ) -> Result<UploadStart, Error> {
        if let Some((digest, from)) = mount {
            if self
                .metadata
                .mount_blob(repository, from, digest, now())
                .await?
                .is_some()
            {
                tracing::info!(repository = %repository, digest = %digest, from = %from, "mounted blob {digest} from {from} into {repository}");
                return Ok(UploadStart::Mounted(digest.clone()));
            }
        }
        let time = now();
        let record = UploadRecord {
            id: UploadId(uuid::Uuid::new_v4()),
            repository: repository.clone(),
            offset: 0,
            hash_state: UploadState::new().hash_bytes(),
            storage_state: Vec::new(),
            principal: Some(owner.to_owned()),
            created_at: time,
            updated_at: time,
        };
        let limits = UploadLimits {
            per_principal: self.limits.max_uploads_per_principal,
            per_repository: self.limits.max_uploads_per_repository,
        };
        if !self.metadata.create_upload(&record, limits).await? {
            return Err(Error::TooManyUploads);
        }
        Ok(UploadStart::Session(UploadStatus {
            id: record.id,
            offset: 0,
        }))
    }

    /// A monolithic upload: the whole blob in one request.
    pub async fn upload_blob<S, E>(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        body: S,
        owner: &str,
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let UploadStart::Session(status) = self.start_upload(repository, None, owner).await? else {
            return Err(Error::Internal(
                "a plain upload start mounted a blob".into(),
            ));
        };
        let finished = self
            .finish_upload(
                repository,
                &status.id.to_string(),
                digest,
                None,
                body,
                owner,
            )
            .await;
        if finished.is_err() {
            // The client never learned of this session, so it can neither retry nor cancel
            // it. This request staged at most what a fresh state names (on local disk, the
            // session's file; in an object store, objects under its prefix). Nobody else
            // knows its id, so no other request can be ending it: it is removed unclaimed.
            self.remove(status.id, &UploadState::new()).await;
        }
        finished
    }

    /// The session, if it exists in `repository` and belongs to `owner`; anyone else is told it
    /// does not exist.
    async fn session(
        &self,
        repository: &RepositoryName,
        id: &str,
        owner: &str,
    ) -> Result<UploadRecord, Error> {
        let unknown = || Error::UploadUnknown(id.to_owned());
        let uuid = uuid::Uuid::try_parse(id).map_err(|_| unknown())?;
        let record = self
            .metadata
            .upload(UploadId(uuid))
            .await?
            .ok_or_else(unknown)?;
        let owned = record
            .principal
            .as_deref()
            .is_none_or(|principal| principal == owner);
        if record.repository != *repository || !owned {
            return Err(unknown());
        }
        Ok(record)
    }

    /// The session, claimed for writing. The record is read after the claim, so it is the one
    /// this request's bytes extend.
    async fn session_to_write(
        &self,
        repository: &RepositoryName,
        id: &str,
        owner: &str,
    ) -> Result<(Arc<Writing>, UploadRecord), Error> {
        let uuid = uuid::Uuid::try_parse(id).map_err(|_| Error::UploadUnknown(id.to_owned()))?;
        let writing = self.writers.claim(uuid);
        // An unknown session is reported as such even while someone else writes it.
        let record = self.session(repository, id, owner).await?;
        let writing = writing.ok_or_else(|| {
            Error::UploadInvalid(
                "another request is writing to this upload; retry when it has finished".into(),
            )
        })?;
        Ok((writing, record))
    }

    pub async fn upload_status(
        &self,
        repository: &RepositoryName,
        id: &str,
        owner: &str,
    ) -> Result<UploadStatus, Error> {
        let record = self.session(repository, id, owner).await?;
        Ok(UploadStatus {
            id: record.id,
            offset: record.offset,
        })
    }

    /// Appends a chunk. A `Content-Range` must start where the upload stands and announce
    /// exactly the bytes sent.
    pub async fn append_upload<S, E>(
        &self,
        repository: &RepositoryName,
        id: &str,
        range: Option<ByteRange>,
        body: S,
        owner: &str,
    ) -> Result<UploadStatus, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let (writing, record) = self.session_to_write(repository, id, owner).await?;
        let offset = self.append(&record, range, body, writing.clone()).await?;
        Ok(UploadStatus {
            id: record.id,
            offset,
        })
    }

    async fn append<S, E>(
        &self,
        record: &UploadRecord,
        range: Option<ByteRange>,
        body: S,
        writing: Arc<Writing>,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        Self::check_start(record, range)?;
        let before = Self::state(record)?;
        let mut state = before.clone();
        let session = record.id.to_string();
        let written = match self
            .blobs
            .append(&session, record.offset, &mut state, body, writing)
            .await
        {
            Ok(written) => written,
            Err(err) => return Err(self.failed(record, &before, err, false).await),
        };
        if let Err(err) = Self::check_length(range, written) {
            self.blobs.release(&session, &state, &before).await;
            return Err(err);
        }
        if written == 0 {
            return Ok(record.offset);
        }
        let offset = record.offset + written;
        let advanced = self
            .metadata
            .advance_upload(
                record.id,
                record.offset,
                offset,
                &state.hash_bytes(),
                &state.storage_bytes(),
                now(),
            )
            .await;
        match advanced {
            Ok(true) => {
                self.blobs.release(&session, &before, &state).await;
                Ok(offset)
            }
            Ok(false) => {
                self.blobs.release(&session, &state, &before).await;
                Err(Error::UploadInvalid(
                    "another request advanced or is finishing this upload at the same time".into(),
                ))
            }
            // Whether the record took the change is unknown: both states' bytes stay until
            // the session finishes or expires.
            Err(err) => Err(err.into()),
        }
    }

    /// A staging failure, as the client sees it. A session whose staged bytes are lost can
    /// never finish: it is discarded rather than left to fail every request until it expires.
    /// Unless this request holds the session's claim (`claimed`), bytes found gone may have
    /// been committed by a request ending the session on another replica: then the session
    /// is that request's, and this one is told it is unknown. What is gone is only logged: it
    /// names internal objects.
    async fn failed(
        &self,
        record: &UploadRecord,
        staged: &UploadState,
        err: blobstore::Error,
        claimed: bool,
    ) -> Error {
        if let blobstore::Error::Lost(text) = &err {
            tracing::warn!(upload = %record.id, "staged bytes of upload {} are lost: {text}", record.id);
            if claimed {
                self.remove(record.id, staged).await;
            } else if let Err(not_discarded) = self.discard(record, staged).await {
                return not_discarded;
            }
        }
        err.into()
    }

    /// Claims the session for this request, which ends it: finishing it as `digest`, or
    /// discarding it (`None`). Of two requests ending one session, on any replicas, the
    /// second is refused here, before it has committed or removed anything.
    async fn claim_end(&self, record: &UploadRecord, digest: Option<&Digest>) -> Result<(), Error> {
        let time = now();
        let until = time.saturating_add(i64::try_from(END_CLAIM.as_secs()).unwrap_or(i64::MAX));
        if self
            .metadata
            .claim_upload(record.id, record.offset, digest, time, until)
            .await?
        {
            return Ok(());
        }
        match self.metadata.upload(record.id).await? {
            Some(current) if current.offset != record.offset => Err(Error::UploadInvalid(
                "another request advanced this upload at the same time".into(),
            )),
            // Gone, or claimed by a request ending it: either way it has ended for this one,
            // whenever this request arrived.
            _ => {
                tracing::info!(upload = %record.id, "upload {} is ended by another request", record.id);
                Err(Error::UploadUnknown(record.id.to_string()))
            }
        }
    }

    fn state(record: &UploadRecord) -> Result<UploadState, Error> {
        UploadState::decode(&record.hash_state, &record.storage_state)
            .map_err(|err| Error::Internal(format!("upload {}: {err}", record.id)))
    }

    /// A `Content-Range` must start where the upload stands.
    fn check_start(record: &UploadRecord, range: Option<ByteRange>) -> Result<(), Error> {
        match range {
            Some(range) if range.start != record.offset => Err(Error::UploadOutOfOrder {
                offset: record.offset,
                got: range.start,
            }),
            _ => Ok(()),
        }
    }

    /// ... and announce exactly the bytes sent.
    fn check_length(range: Option<ByteRange>, written: u64) -> Result<(), Error> {
        match range {
            Some(range) if range.len() != written => Err(Error::UploadInvalid(format!(
                "Content-Range announced {} bytes but the body carried {written}",
                range.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Completes an upload with an optional last chunk, checks the digest and links the blob.
    /// A digest mismatch cancels the upload: its bytes are not kept under any name. Finishing
    /// is idempotent: when the blob is already stored (by another upload, or by this one's
    /// earlier attempt), the content is proven by its hash alone and the stored blob linked.
    pub async fn finish_upload<S, E>(
        &self,
        repository: &RepositoryName,
        id: &str,
        digest: &Digest,
        range: Option<ByteRange>,
        body: S,
        owner: &str,
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let (writing, record) = self.session_to_write(repository, id, owner).await?;
        let before = Self::state(&record)?;
        if digest.algorithm() != Algorithm::Sha256 {
            // The client's mistake ends the session, unless another request is ending it.
            let _ = self.discard(&record, &before).await;
            return Err(Error::DigestInvalid(format!(
                "digest {digest} uses an algorithm this registry does not compute; use sha256"
            )));
        }
        Self::check_start(&record, range)?;
        if let Some(stored) = self.blobs.stored_size(digest).await? {
            return self
                .finish_stored(repository, &record, &before, digest, stored, range, body)
                .await;
        }
        let session = record.id.to_string();
        let finishing = match self
            .blobs
            .finish(&session, record.offset, &before, body, writing.clone())
            .await
        {
            Ok(finishing) => finishing,
            Err(err) => return Err(self.failed(&record, &before, err, false).await),
        };
        if let Err(err) = Self::check_length(range, finishing.written) {
            self.blobs
                .release(&session, &finishing.state, &before)
                .await;
            return Err(err);
        }
        if finishing.digest != *digest {
            // The finishing state holds everything the record's state staged, and more. If
            // another request is ending the session, only what this one staged goes.
            if self.discard(&record, &finishing.state).await.is_err() {
                self.blobs
                    .release(&session, &finishing.state, &before)
                    .await;
            }
            return Err(Self::mismatch(&finishing.digest, digest));
        }
        if let Err(lost) = self.claim_end(&record, Some(digest)).await {
            self.blobs
                .release(&session, &finishing.state, &before)
                .await;
            return Err(lost);
        }
        let size = finishing.size;
        let staged = finishing.state.clone();
        if let Err(err) = self.blobs.commit(finishing).await {
            return Err(self.failed(&record, &staged, err, true).await);
        }
        self.metadata
            .link_blob(repository, digest, size, now())
            .await?;
        self.metadata.delete_upload(record.id).await?;
        tracing::info!(repository = %repository, digest = %digest, size, "pushed blob {digest} to {repository}");
        Ok(())
    }

    /// Finishes an upload of a blob that is already stored: the last bytes are hashed, not
    /// staged, which proves the session's content is that blob (the hash state stands for
    /// every byte received before), and the stored blob is linked; the session's own staged
    /// bytes are dropped. Nothing here writes a blob path.
    #[expect(
        clippy::too_many_arguments,
        reason = "the finishing request's parts, as `finish_upload` received them"
    )]
    async fn finish_stored<S, E>(
        &self,
        repository: &RepositoryName,
        record: &UploadRecord,
        before: &UploadState,
        digest: &Digest,
        stored: u64,
        range: Option<ByteRange>,
        body: S,
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let hashed = blobstore::hash_rest(before, body).await?;
        Self::check_length(range, hashed.written)?;
        if hashed.digest != *digest {
            // Logged by `discard`; the client hears about its digest either way.
            let _ = self.discard(record, before).await;
            return Err(Self::mismatch(&hashed.digest, digest));
        }
        if hashed.size != stored {
            return Err(Error::Internal(format!(
                "blob {digest} is stored with {stored} bytes, but its content has {}",
                hashed.size
            )));
        }
        self.claim_end(record, Some(digest)).await?;
        self.blobs.make_durable(digest).await?;
        self.metadata
            .link_blob(repository, digest, stored, now())
            .await?;
        self.blobs.abort(&record.id.to_string(), before).await?;
        self.metadata.delete_upload(record.id).await?;
        tracing::info!(repository = %repository, digest = %digest, size = stored, "pushed blob {digest} to {repository} (already stored)");
        Ok(())
    }

    fn mismatch(actual: &Digest, claimed: &Digest) -> Error {
        Error::DigestInvalid(format!(
            "the uploaded content has digest {actual}, not {claimed}"
        ))
    }

    pub async fn cancel_upload(
        &self,
        repository: &RepositoryName,
        id: &str,
        owner: &str,
    ) -> Result<(), Error> {
        let (_writing, record) = self.session_to_write(repository, id, owner).await?;
        let state = Self::state(&record)?;
        self.claim_end(&record, None).await?;
        self.blobs.abort(&record.id.to_string(), &state).await?;
        self.metadata.delete_upload(record.id).await?;
        Ok(())
    }

    /// Ends a session this request cannot finish: claims it, then removes its bytes and its
    /// record. Err when the claim is lost (another request is ending the session, or moved
    /// it on) or cannot be made; then nothing the session records is touched.
    async fn discard(&self, record: &UploadRecord, staged: &UploadState) -> Result<(), Error> {
        if let Err(err) = self.claim_end(record, None).await {
            tracing::info!(upload = %record.id, "upload {} is not discarded: {err}", record.id);
            return Err(err);
        }
        self.remove(record.id, staged).await;
        Ok(())
    }

    /// Removes a session's bytes and record, unclaimed (the caller holds the claim, or the
    /// session is unknown to anyone else). Best effort: a failure here leaves a session that
    /// expiry removes later.
    async fn remove(&self, id: UploadId, staged: &UploadState) {
        let session = id.to_string();
        if let Err(err) = self.blobs.abort(&session, staged).await {
            tracing::warn!(upload = %session, "could not remove the bytes of upload {session}: {err}");
        }
        if let Err(err) = self.metadata.delete_upload(id).await {
            tracing::warn!(upload = %session, "could not remove upload {session}: {err}");
        }
    }

    /// Removes upload sessions untouched for longer than the configured expiry, with their
    /// bytes. Every replica sweeps; each claims different sessions. Returns how many this one
    /// removed.
    pub async fn expire_uploads(&self) -> Result<usize, Error> {
        let expiry = i64::try_from(self.limits.upload_expiry.as_secs()).unwrap_or(i64::MAX);
        let time = now();
        let cutoff = time.saturating_sub(expiry);
        let mut removed = 0;
        loop {
            let stale = self.metadata.claim_stale_uploads(cutoff, time, 100).await?;
            let batch = stale.len();
            for record in stale {
                // A session this process is writing is not stale, whatever its record says;
                // removing its bytes under the writer would lose them.
                let Some(_writing) = self.writers.claim(record.id.0) else {
                    continue;
                };
                self.blobs
                    .abort(&record.id.to_string(), &Self::state(&record)?)
                    .await?;
                self.metadata.delete_upload(record.id).await?;
                removed += 1;
            }
            if batch < 100 {
                return Ok(removed);
            }
        }
    }

    /// How long to wait between two expiry sweeps.
    pub fn expiry_interval(&self) -> Duration {
        (self.limits.upload_expiry / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::PathBuf;

    use blobstore::testing::S3Server;
    use blobstore::{BlobStore, Sha256State};
    use futures_util::stream::{self, StreamExt};

    use super::*;
    use crate::Limits;

    const OWNER: &str = "alice";

    async fn registry() -> (Arc<Registry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = metadata_sqlite::SqliteStore::open(&dir.path().join("metadata.db"))
            .await
            .expect("metadata");
        let blobs = BlobStore::local(&dir.path().join("storage")).expect("blobs");
        let registry = Registry::new(Arc::new(store), blobs, Limits::default());
        (Arc::new(registry), dir)
    }

    fn repository() -> RepositoryName {
        "team/app".parse().expect("name")
    }

    fn body(bytes: &'static [u8]) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        stream::iter([Ok(Bytes::from_static(bytes))])
    }

    fn digest_of(bytes: &[u8]) -> Digest {
        let mut hash = Sha256State::new();
        hash.update(bytes);
        hash.finish()
    }

    fn blob_file(dir: &tempfile::TempDir, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        dir.path()
            .join(format!("storage/blobs/sha256/{}/{hex}", &hex[..2]))
    }

    fn staging_file(dir: &tempfile::TempDir, id: UploadId) -> PathBuf {
        dir.path().join(format!("storage/uploads/{id}"))
    }

    async fn start(registry: &Registry) -> UploadId {
        match registry.start_upload(&repository(), None, OWNER).await {
            Ok(UploadStart::Session(status)) => status.id,
            other => panic!("no session: {other:?}"),
        }
    }

    /// Every session the metadata store still holds.
    async fn sessions(registry: &Registry) -> usize {
        registry
            .metadata
            .claim_stale_uploads(i64::MAX, now(), 100)
            .await
            .expect("sessions")
            .len()
    }

    #[tokio::test]
    async fn a_retried_put_after_the_blob_was_committed_links_it_and_leaves_its_bytes_alone() {
        let (registry, dir) = registry().await;
        // The session's bytes so far, and what the finishing PUT carries.
        for (patched, last) in [(&b"hello"[..], &b""[..]), (b"hel", b"lo")] {
            let id = start(&registry).await;
            let repo = repository();
            registry
                .append_upload(&repo, &id.to_string(), None, body(patched), OWNER)
                .await
                .expect("patch");
            let whole = [patched, last].concat();
            let digest = digest_of(&whole);
            // The first PUT claimed the session and got as far as putting the bytes under the
            // digest, then the metadata store failed: the session's record survives, still
            // claimed, and its staged file does not.
            let record = registry
                .metadata
                .upload(id)
                .await
                .expect("read")
                .expect("session");
            let state = Registry::state(&record).expect("state");
            let finishing = registry
                .blobs
                .finish(&id.to_string(), record.offset, &state, body(last), ())
                .await
                .expect("finish");
            registry
                .claim_end(&record, Some(&digest))
                .await
                .expect("the first PUT's claim");
            registry.blobs.commit(finishing).await.expect("commit");
            assert!(!staging_file(&dir, id).exists());

            registry
                .finish_upload(&repo, &id.to_string(), &digest, None, body(last), OWNER)
                .await
                .expect("the retried PUT completes the upload");
            assert_eq!(
                std::fs::read(blob_file(&dir, &digest)).expect("blob"),
                whole,
                "the blob keeps its bytes"
            );
            assert_eq!(
                registry.stat_blob(&repo, &digest).await.expect("linked"),
                whole.len() as u64
            );
            assert!(matches!(
                registry.upload_status(&repo, &id.to_string(), OWNER).await,
                Err(Error::UploadUnknown(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_blob_already_stored_is_proven_by_its_hash_and_never_rewritten() {
        let (registry, dir) = registry().await;
        let repo = repository();
        let digest = digest_of(b"shared");
        registry
            .upload_blob(&repo, &digest, body(b"shared"), OWNER)
            .await
            .expect("first push");
        let stored = std::fs::metadata(blob_file(&dir, &digest)).expect("blob");

        let id = start(&registry).await;
        registry
            .append_upload(&repo, &id.to_string(), None, body(b"sha"), OWNER)
            .await
            .expect("patch");
        let wrong = registry
            .finish_upload(&repo, &id.to_string(), &digest, None, body(b"red!"), OWNER)
            .await;
        assert!(
            matches!(wrong, Err(Error::DigestInvalid(_))),
            "other bytes do not link a stored blob: {wrong:?}"
        );
        assert_eq!(
            sessions(&registry).await,
            0,
            "the mismatch ends the session"
        );

        let id = start(&registry).await;
        registry
            .append_upload(&repo, &id.to_string(), None, body(b"sha"), OWNER)
            .await
            .expect("patch");
        registry
            .finish_upload(&repo, &id.to_string(), &digest, None, body(b"red"), OWNER)
            .await
            .expect("second push");
        let after = std::fs::metadata(blob_file(&dir, &digest)).expect("blob");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&after),
            std::os::unix::fs::MetadataExt::ino(&stored),
            "the stored file was not replaced"
        );
        assert!(!staging_file(&dir, id).exists(), "the staged copy is gone");
        assert_eq!(sessions(&registry).await, 0);
    }

    #[tokio::test]
    async fn a_session_whose_staged_bytes_are_gone_is_refused_and_discarded() {
        let (registry, dir) = registry().await;
        let repo = repository();
        let digest = digest_of(b"hello!");
        // A PATCH, then a PUT, on a session whose staged file a cancel or an expiry removed
        // before failing to delete the record.
        for finishing in [false, true] {
            let id = start(&registry).await;
            registry
                .append_upload(&repo, &id.to_string(), None, body(b"hello"), OWNER)
                .await
                .expect("patch");
            std::fs::remove_file(staging_file(&dir, id)).expect("lose the staged bytes");
            let refused = if finishing {
                registry
                    .finish_upload(&repo, &id.to_string(), &digest, None, body(b"!"), OWNER)
                    .await
            } else {
                registry
                    .append_upload(&repo, &id.to_string(), None, body(b"!"), OWNER)
                    .await
                    .map(|_| ())
            };
            assert!(
                matches!(&refused, Err(Error::UploadInvalid(text)) if !text.contains("uploads/")),
                "refused without naming the staged bytes: {refused:?}"
            );
            assert!(!staging_file(&dir, id).exists(), "no bytes were invented");
            assert!(!blob_file(&dir, &digest).exists(), "no blob was written");
            assert!(matches!(
                registry.upload_status(&repo, &id.to_string(), OWNER).await,
                Err(Error::UploadUnknown(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_failed_one_shot_upload_leaves_no_session_behind() {
        let (registry, dir) = registry().await;
        let failing = stream::iter([Ok(Bytes::from_static(b"abc")), Err("connection reset")]);
        let result = registry
            .upload_blob(&repository(), &digest_of(b"abcdef"), failing, OWNER)
            .await;
        assert!(matches!(result, Err(Error::UploadInvalid(_))), "{result:?}");
        assert_eq!(sessions(&registry).await, 0);
        let staged = std::fs::read_dir(dir.path().join("storage/uploads"))
            .expect("uploads")
            .count();
        assert_eq!(staged, 0, "no staged bytes are left");
    }

    #[tokio::test]
    async fn an_abandoned_request_keeps_the_session_until_its_writing_thread_exits() {
        let (registry, _dir) = registry().await;
        let repo = repository();
        let id = start(&registry).await;

        // At least one of the local store's batches, so it is handed to the writing thread at
        // once; then the client goes quiet and resets.
        let (gate, in_thread, release) = blobstore::testing::gated_chunk(vec![b'a'; 1024 * 1024]);
        let quiet = stream::iter([Ok::<_, Infallible>(gate)]).chain(stream::pending());
        let request = tokio::spawn({
            let registry = Arc::clone(&registry);
            let repo = repo.clone();
            async move {
                registry
                    .append_upload(&repo, &id.to_string(), None, quiet, OWNER)
                    .await
            }
        });
        in_thread.await.expect("the writing thread holds the chunk");
        request.abort();
        assert!(request.await.expect_err("cancelled").is_cancelled());

        let busy = |result: Result<(), Error>| is_busy(&result);
        let patch = registry
            .append_upload(&repo, &id.to_string(), None, body(b"b"), OWNER)
            .await
            .map(|_| ());
        assert!(
            busy(patch),
            "a PATCH waits for the abandoned writer to exit"
        );
        let put = registry
            .finish_upload(
                &repo,
                &id.to_string(),
                &digest_of(b"b"),
                None,
                body(b"b"),
                OWNER,
            )
            .await;
        assert!(busy(put), "so does a PUT");
        let cancel = registry.cancel_upload(&repo, &id.to_string(), OWNER).await;
        assert!(busy(cancel), "and a DELETE");
        release.send(()).expect("release the thread");

        // Once the thread has exited, the claim is gone: the session takes writes again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let patch = registry
                .append_upload(&repo, &id.to_string(), None, body(b"b"), OWNER)
                .await
                .map(|_| ());
            if !is_busy(&patch) {
                patch.expect("the session is writable after its writer exited");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the claim was never released"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Refused because another request is writing the session.
    fn is_busy(result: &Result<(), Error>) -> bool {
        matches!(result, Err(Error::UploadInvalid(text)) if text.contains("another request"))
    }

    /// Two replicas, as two `bulwark serve` processes sharing a database and a bucket: each
    /// its own `Registry` (so its own writer claims) with its own connections to one metadata
    /// database and its own client of one bucket prefix.
    async fn replicas(server: &S3Server) -> (Arc<Registry>, Arc<Registry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = server.settings();
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let store = metadata_sqlite::SqliteStore::open(&dir.path().join("metadata.db"))
                .await
                .expect("metadata");
            let blobs = BlobStore::remote(&settings).expect("blobs");
            replicas.push(Arc::new(Registry::new(
                Arc::new(store),
                blobs,
                Limits::default(),
            )));
        }
        let b = replicas.pop().expect("two");
        let a = replicas.pop().expect("two");
        (a, b, dir)
    }

    /// A body that signals `polled` when the request first asks for it (the session has been
    /// read by then), then holds its bytes back until `go`.
    fn held_body(
        bytes: Vec<u8>,
        polled: tokio::sync::oneshot::Sender<()>,
        go: tokio::sync::oneshot::Receiver<()>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        stream::once(async move {
            let _ = polled.send(());
            let _ = go.await;
            Ok(Bytes::from(bytes))
        })
    }

    #[tokio::test]
    async fn upload_sessions_across_two_replicas_on_s3() {
        let server = S3Server::start();
        two_replicas_finishing_one_session_with_different_bodies_store_only_the_winners_blob(
            &server,
        )
        .await;
        a_chunk_racing_a_finish_on_another_replica_is_told_the_session_is_unknown(&server).await;
    }

    async fn two_replicas_finishing_one_session_with_different_bodies_store_only_the_winners_blob(
        server: &S3Server,
    ) {
        let repo = repository();
        // A fresh session, one holding 1 MiB (a staged tail), and a fresh one whose finishing
        // bodies fill a part each (a multipart upload of their own).
        let cases = [(0, 6), (1024 * 1024, 6), (0, blobstore::MIN_PART_SIZE + 1)];
        for (patched, len) in cases {
            let (a, b, _dir) = replicas(server).await;
            let id = start(&a).await.to_string();
            let prefix = vec![b'p'; patched];
            if patched > 0 {
                a.append_upload(
                    &repo,
                    &id,
                    None,
                    stream::iter([Ok::<_, Infallible>(Bytes::from(prefix.clone()))]),
                    OWNER,
                )
                .await
                .expect("patch");
            }
            let (first, second) = (vec![b'1'; len], vec![b'2'; len]);
            let first_digest = digest_of(&[&prefix[..], &first].concat());
            let second_digest = digest_of(&[&prefix[..], &second].concat());

            // B reads the session, then A's finish runs from start to end, then B's goes on.
            let (polled, read) = tokio::sync::oneshot::channel();
            let (go, held) = tokio::sync::oneshot::channel();
            let late = tokio::spawn({
                let (b, repo, id, digest) = (
                    Arc::clone(&b),
                    repo.clone(),
                    id.clone(),
                    second_digest.clone(),
                );
                let body = held_body(second, polled, held);
                async move {
                    b.finish_upload(&repo, &id, &digest, None, body, OWNER)
                        .await
                }
            });
            read.await.expect("B has read the session");
            a.finish_upload(
                &repo,
                &id,
                &first_digest,
                None,
                stream::iter([Ok::<_, Infallible>(Bytes::from(first))]),
                OWNER,
            )
            .await
            .expect("the first finish wins");
            go.send(()).expect("B waits");
            let lost = late.await.expect("B's finish");
            let case = format!("{patched} bytes patched, {len} bytes finishing");
            assert!(
                matches!(&lost, Err(Error::UploadUnknown(_))),
                "{case}: the second finish loses: {lost:?}"
            );
            let text = lost.expect_err("lost").to_string();
            assert!(
                !text.contains("uploads/"),
                "{case}: no internal name: {text}"
            );
            assert!(
                b.blobs
                    .stored_size(&first_digest)
                    .await
                    .expect("head")
                    .is_some(),
                "{case}: the winner's blob is stored"
            );
            assert_eq!(
                b.blobs.stored_size(&second_digest).await.expect("head"),
                None,
                "{case}: the loser's is not"
            );
            assert!(
                matches!(
                    b.stat_blob(&repo, &second_digest).await,
                    Err(Error::BlobUnknown(_))
                ),
                "{case}: nor linked"
            );
            assert!(b.stat_blob(&repo, &first_digest).await.is_ok(), "{case}");
        }
    }

    async fn a_chunk_racing_a_finish_on_another_replica_is_told_the_session_is_unknown(
        server: &S3Server,
    ) {
        // B's PATCH reads the session (with a staged tail), A finishes it (removing the tail),
        // then B's bytes arrive and find the tail gone: the session has ended, which B must
        // hear without the names of objects in the bucket, and nothing A left is discarded.
        let repo = repository();
        let (a, b, _dir) = replicas(server).await;
        let id = start(&a).await.to_string();
        a.append_upload(&repo, &id, None, body(b"hello"), OWNER)
            .await
            .expect("patch");
        let (polled, read) = tokio::sync::oneshot::channel();
        let (go, held) = tokio::sync::oneshot::channel();
        let late = tokio::spawn({
            let (b, repo, id) = (Arc::clone(&b), repo.clone(), id.clone());
            let body = held_body(b" again".to_vec(), polled, held);
            async move { b.append_upload(&repo, &id, None, body, OWNER).await }
        });
        read.await.expect("B has read the session");
        let digest = digest_of(b"hello!");
        a.finish_upload(&repo, &id, &digest, None, body(b"!"), OWNER)
            .await
            .expect("finish");
        go.send(()).expect("B waits");
        let lost = late.await.expect("B's patch");
        assert!(matches!(&lost, Err(Error::UploadUnknown(_))), "{lost:?}");
        let text = lost.expect_err("lost").to_string();
        assert!(!text.contains("uploads/"), "no internal name: {text}");
        assert_eq!(b.stat_blob(&repo, &digest).await.expect("linked"), 6);
    }
}
