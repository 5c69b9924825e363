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
//!   the other's hash; the record's compare-and-swap alone cannot see that.
//! - Across replicas (object-store staging) the record's compare-and-swap decides: each
//!   request stages under names the record does not hold yet, and the request whose advance
//!   loses removes what it staged.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use blobstore::UploadState;
use bytes::Bytes;
use futures_util::Stream;
use metadata::{UploadId, UploadRecord};
use oci::{Algorithm, ByteRange, Digest, RepositoryName};

use crate::{now, Error, Registry};

/// Where an upload stands: the client resumes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    pub offset: u64,
}

/// The upload sessions a request of this process is writing to.
#[derive(Debug, Default)]
pub(crate) struct Writers(Mutex<HashSet<uuid::Uuid>>);

impl Writers {
    fn claim(&self, id: uuid::Uuid) -> Option<Writing<'_>> {
        let mut writing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        writing.insert(id).then(|| Writing { writers: self, id })
    }
}

/// Proof that this request is the session's only writer; dropping it lets the next one in.
struct Writing<'a> {
    writers: &'a Writers,
    id: uuid::Uuid,
}

impl Drop for Writing<'_> {
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
        self.metadata.create_upload(&record).await?;
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
        self.finish_upload(
            repository,
            &status.id.to_string(),
            digest,
            None,
            body,
            owner,
        )
        .await
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
    ) -> Result<(Writing<'_>, UploadRecord), Error> {
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
        let (_writing, record) = self.session_to_write(repository, id, owner).await?;
        let offset = self.append(&record, range, body).await?;
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
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        Self::check_start(record, range)?;
        let before = Self::state(record)?;
        let mut state = before.clone();
        let session = record.id.to_string();
        let written = self
            .blobs
            .append(&session, record.offset, &mut state, body)
            .await?;
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
                    "another request advanced this upload at the same time".into(),
                ))
            }
            // Whether the record took the change is unknown: both states' bytes stay until
            // the session finishes or expires.
            Err(err) => Err(err.into()),
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
    /// A digest mismatch cancels the upload: its bytes are not kept under any name.
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
        let (_writing, record) = self.session_to_write(repository, id, owner).await?;
        let before = Self::state(&record)?;
        if digest.algorithm() != Algorithm::Sha256 {
            self.discard(record.id, &before).await;
            return Err(Error::DigestInvalid(format!(
                "digest {digest} uses an algorithm this registry does not compute; use sha256"
            )));
        }
        Self::check_start(&record, range)?;
        let session = record.id.to_string();
        let finishing = self
            .blobs
            .finish(&session, record.offset, &before, body)
            .await?;
        if let Err(err) = Self::check_length(range, finishing.written) {
            self.blobs
                .release(&session, &finishing.state, &before)
                .await;
            return Err(err);
        }
        if finishing.digest != *digest {
            let actual = finishing.digest.clone();
            // The finishing state holds everything the record's state staged, and more.
            self.discard(record.id, &finishing.state).await;
            return Err(Error::DigestInvalid(format!(
                "the uploaded content has digest {actual}, not {digest}"
            )));
        }
        let size = finishing.size;
        self.blobs.commit(finishing).await?;
        self.metadata
            .link_blob(repository, digest, size, now())
            .await?;
        self.metadata.delete_upload(record.id).await?;
        tracing::info!(repository = %repository, digest = %digest, size, "pushed blob {digest} to {repository}");
        Ok(())
    }

    pub async fn cancel_upload(
        &self,
        repository: &RepositoryName,
        id: &str,
        owner: &str,
    ) -> Result<(), Error> {
        let (_writing, record) = self.session_to_write(repository, id, owner).await?;
        self.blobs
            .abort(&record.id.to_string(), &Self::state(&record)?)
            .await?;
        self.metadata.delete_upload(record.id).await?;
        Ok(())
    }

    /// Best effort: a failure here leaves a session that expiry removes later.
    async fn discard(&self, id: UploadId, staged: &UploadState) {
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
