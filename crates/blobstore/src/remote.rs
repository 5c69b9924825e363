//! Upload staging in an object store (S3-compatible, GCS, Azure), resumable on any replica.
//!
//! A session's bytes go into parts of `part_size` as they arrive; what is left at the end of a
//! request (less than one part) is written as a small tail object, read back and completed by
//! the next request. Parts are parts of one multipart upload where the store offers them
//! (S3, GCS); elsewhere (Azure) each part is an object of its own and the commit streams them
//! into the blob once. Every part but the last has exactly `part_size` bytes, which every
//! S3-compatible store accepts (some, such as R2, insist on it).
//!
//! Invariants:
//! - The session record says which parts and which tail make up the bytes received; nothing
//!   else does. A request writes only new names (fresh tail keys, parts past the recorded
//!   ones), so a request that fails, or loses the race to advance the record, leaves the
//!   recorded bytes intact. It removes what it created, except when it cannot know whether
//!   the record took its change (the caller then keeps both; expiry removes the loser).
//! - Parts are numbered after the recorded ones. Two requests racing from one offset write
//!   the same part numbers; the loser's bytes cannot slip into the blob because completion
//!   names each part by the content id (ETag) the winner recorded, which the store checks.
//! - A recorded tail or part that is gone is `Error::Lost`, never replaced.
//! - `commit` leaves a blob that is already stored alone. (Object stores offer no portable
//!   "create only" copy, so two commits racing past that check may both write; both write
//!   the same verified bytes.)
//! - Aborting removes every object under the session's prefix, recorded or not (tails of
//!   requests that were dropped before they could clean up). A multipart upload created by a
//!   request that was dropped before the record held it cannot be listed through
//!   `object_store`; the bucket's lifecycle rule for incomplete multipart uploads removes it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use oci::Digest;

use crate::state::{Part, Staged, Tail};
use crate::{blob_path, lost, unavailable, Error, UploadState};

/// The smallest part S3 accepts (all but the last part of an upload).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

pub(crate) struct RemoteStaging {
    pub objects: Arc<dyn ObjectStore>,
    pub multipart: Option<Arc<dyn MultipartStore>>,
    pub signer: Option<Arc<dyn Signer>>,
    pub part_size: usize,
}

/// Bytes received but not yet in a part.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Takes the first `size` bytes (the caller checked that there are that many).
    fn take(&mut self, size: usize) -> PutPayload {
        let mut taken = Vec::new();
        let mut wanted = size;
        while wanted > 0 {
            let Some(first) = self.chunks.front_mut() else {
                break;
            };
            if first.len() <= wanted {
                wanted -= first.len();
                taken.extend(self.chunks.pop_front());
            } else {
                taken.push(first.split_to(wanted));
                wanted = 0;
            }
        }
        self.len -= size - wanted;
        taken.into_iter().collect()
    }

    fn take_all(&mut self) -> PutPayload {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().collect()
    }
}

/// A finished upload's bytes, hashed and staged except for the last part, which waits in
/// memory until the digest is known to match.
pub(crate) struct Held {
    pub staged: Staged,
    last: Pending,
}

/// The object a session's multipart upload completes to (see `Staged::data`).
fn data_path(session: &str, key: Option<&str>) -> Path {
    match key {
        Some(key) => Path::from(format!("uploads/{session}/data-{key}")),
        None => Path::from(format!("uploads/{session}/data")),
    }
}

fn part_path(session: &str, key: &str) -> Path {
    Path::from(format!("uploads/{session}/part-{key}"))
}

fn tail_path(session: &str, key: &str) -> Path {
    Path::from(format!("uploads/{session}/tail-{key}"))
}

fn fresh_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A recorded object that is gone is lost; anything else is the store failing.
fn recorded(session: &str, err: object_store::Error) -> Error {
    match err {
        object_store::Error::NotFound { path, .. } => {
            lost(format!("{path}, staged for upload {session}, is gone"))
        }
        err => unavailable(err),
    }
}

/// Deleting or aborting what is already gone succeeds.
fn gone_is_fine(result: object_store::Result<()>) -> Result<(), Error> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(err) => Err(unavailable(err)),
    }
}

impl RemoteStaging {
    /// Hashes and stages `body` after the bytes `state` records. On success `state` records
    /// the new parts and tail; on failure it is untouched and what this call created is gone.
    pub async fn append<S, E>(
        &self,
        session: &str,
        state: &mut UploadState,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut next = state.clone();
        let mut pending = Pending::default();
        let result = self.receive(session, &mut next, &mut pending, body).await;
        let written = match result {
            Ok(0) => return Ok(0),
            Ok(written) => written,
            Err(err) => {
                self.release(session, &next.staged, &state.staged).await;
                return Err(err);
            }
        };
        next.staged.tail = None;
        if pending.len > 0 {
            let key = fresh_key();
            let size = pending.len as u64;
            if let Err(err) = self
                .objects
                .put(&tail_path(session, &key), pending.take_all())
                .await
            {
                self.release(session, &next.staged, &state.staged).await;
                return Err(unavailable(err));
            }
            next.staged.tail = Some(Tail { key, size });
        }
        *state = next;
        Ok(written)
    }

    /// Like `append`, but keeps the bytes after the last full part in memory for `commit`.
    pub async fn finish<S, E>(
        &self,
        session: &str,
        state: &mut UploadState,
        body: S,
    ) -> Result<(u64, Held), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut next = state.clone();
        let mut pending = Pending::default();
        if let Some(tail) = &state.staged.tail {
            pending.push(self.read_tail(session, tail).await?);
        }
        let written = match self.receive(session, &mut next, &mut pending, body).await {
            Ok(written) => written,
            Err(err) => {
                self.release(session, &next.staged, &state.staged).await;
                return Err(err);
            }
        };
        let held = Held {
            staged: next.staged.clone(),
            last: pending,
        };
        *state = next;
        Ok((written, held))
    }

    /// Streams `body` into `next`: whole parts are uploaded as soon as they fill; the rest is
    /// left in `pending`. The recorded tail is read in front of the first new byte.
    async fn receive<S, E>(
        &self,
        session: &str,
        next: &mut UploadState,
        pending: &mut Pending,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut written = 0u64;
        let mut tail_read = pending.len > 0 || next.staged.tail.is_none();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| Error::Body(err.to_string()))?;
            if chunk.is_empty() {
                continue;
            }
            if !tail_read {
                if let Some(tail) = &next.staged.tail {
                    pending.push(self.read_tail(session, tail).await?);
                }
                tail_read = true;
            }
            next.hash.update(&chunk);
            written += chunk.len() as u64;
            pending.push(chunk);
            while pending.len >= self.part_size {
                let part = pending.take(self.part_size);
                self.put_part(session, &mut next.staged, part).await?;
            }
        }
        Ok(written)
    }

    async fn read_tail(&self, session: &str, tail: &Tail) -> Result<Bytes, Error> {
        let bytes = self
            .objects
            .get(&tail_path(session, &tail.key))
            .await
            .map_err(|err| recorded(session, err))?
            .bytes()
            .await
            .map_err(unavailable)?;
        if bytes.len() as u64 != tail.size {
            return Err(Error::Storage(format!(
                "the staged tail of upload {session} has {} bytes, not {}",
                bytes.len(),
                tail.size
            )));
        }
        Ok(bytes)
    }

    async fn put_part(
        &self,
        session: &str,
        staged: &mut Staged,
        data: PutPayload,
    ) -> Result<(), Error> {
        let size = data.content_length() as u64;
        let id = match &self.multipart {
            Some(multipart) => {
                let (path, upload) = match &staged.multipart {
                    Some(upload) => (data_path(session, staged.data.as_deref()), upload.clone()),
                    None => {
                        let key = fresh_key();
                        let path = data_path(session, Some(&key));
                        let upload = multipart
                            .create_multipart(&path)
                            .await
                            .map_err(unavailable)?;
                        staged.multipart = Some(upload.clone());
                        staged.data = Some(key);
                        (path, upload)
                    }
                };
                // A recorded multipart upload that is gone (aborted by a cancel or expiry whose
                // record removal failed) is lost, like a recorded object.
                multipart
                    .put_part(&path, &upload, staged.parts.len(), data)
                    .await
                    .map_err(|err| recorded(session, err))?
                    .content_id
            }
            None => {
                let key = fresh_key();
                self.objects
                    .put(&part_path(session, &key), data)
                    .await
                    .map_err(unavailable)?;
                key
            }
        };
        staged.parts.push(Part { id, size });
        Ok(())
    }

    /// Assembles the verified blob of `size` bytes under its digest, unless it is already
    /// stored, and removes the session's objects.
    pub async fn commit(
        &self,
        session: &str,
        held: Held,
        digest: &Digest,
        size: u64,
    ) -> Result<(), Error> {
        let Held { staged, mut last } = held;
        let target = blob_path(digest);
        match self.objects.head(&target).await {
            Ok(stored) if stored.size == size => {
                return self.release_all(session, &staged, &Staged::default()).await;
            }
            Ok(stored) => {
                return Err(Error::Storage(format!(
                    "{target} holds {} bytes, not the {size} of its digest; left alone",
                    stored.size
                )))
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(unavailable(err)),
        }
        match (&self.multipart, &staged.multipart) {
            (Some(multipart), Some(upload)) => {
                let path = data_path(session, staged.data.as_deref());
                let mut parts = staged.parts.clone();
                if last.len > 0 {
                    let part = multipart
                        .put_part(&path, upload, parts.len(), last.take_all())
                        .await
                        .map_err(|err| recorded(session, err))?;
                    parts.push(Part {
                        id: part.content_id,
                        size: 0,
                    });
                }
                let ids = parts
                    .into_iter()
                    .map(|part| PartId {
                        content_id: part.id,
                    })
                    .collect();
                multipart
                    .complete_multipart(&path, upload, ids)
                    .await
                    .map_err(|err| recorded(session, err))?;
                // S3 cannot name an object after a digest before the digest is known; the
                // server-side copy moves no bytes through the registry.
                self.objects
                    .copy(&path, &target)
                    .await
                    .map_err(unavailable)?;
                gone_is_fine(self.objects.delete(&path).await)?;
            }
            _ if staged.parts.is_empty() => {
                self.objects
                    .put(&target, last.take_all())
                    .await
                    .map_err(unavailable)?;
            }
            _ => {
                self.concatenate(session, &staged, last, &target).await?;
                for part in &staged.parts {
                    gone_is_fine(self.objects.delete(&part_path(session, &part.id)).await)?;
                }
            }
        }
        if let Some(tail) = &staged.tail {
            gone_is_fine(self.objects.delete(&tail_path(session, &tail.key)).await)?;
        }
        Ok(())
    }

    /// Without multipart uploads, streams the part objects and the held bytes into the blob.
    async fn concatenate(
        &self,
        session: &str,
        staged: &Staged,
        mut last: Pending,
        target: &Path,
    ) -> Result<(), Error> {
        let upload = self
            .objects
            .put_multipart(target)
            .await
            .map_err(unavailable)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for part in &staged.parts {
            let mut stream = self
                .objects
                .get(&part_path(session, &part.id))
                .await
                .map_err(|err| recorded(session, err))?
                .into_stream()
                .map_err(unavailable);
            while let Some(chunk) = stream.try_next().await? {
                writer.wait_for_capacity(2).await.map_err(unavailable)?;
                writer.put(chunk);
            }
        }
        for chunk in std::mem::take(&mut last.chunks) {
            writer.put(chunk);
        }
        writer.finish().await.map_err(unavailable)?;
        Ok(())
    }

    /// Removes everything `state` stages, and every other object under the session's prefix
    /// (idempotent).
    pub async fn abort(&self, session: &str, staged: &Staged) -> Result<(), Error> {
        self.release_all(session, staged, &Staged::default())
            .await?;
        let prefix = Path::from(format!("uploads/{session}"));
        let names: Vec<Path> = self
            .objects
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(unavailable)?;
        for name in names {
            gone_is_fine(self.objects.delete(&name).await)?;
        }
        Ok(())
    }

    /// Best effort: removes what `from` stages and `to` does not.
    pub async fn release(&self, session: &str, from: &Staged, to: &Staged) {
        if let Err(err) = self.release_all(session, from, to).await {
            tracing::warn!(upload = %session, "could not remove staged bytes of upload {session}: {err}");
        }
    }

    async fn release_all(&self, session: &str, from: &Staged, to: &Staged) -> Result<(), Error> {
        if let Some(tail) = from
            .tail
            .as_ref()
            .filter(|tail| to.tail.as_ref() != Some(tail))
        {
            gone_is_fine(self.objects.delete(&tail_path(session, &tail.key)).await)?;
        }
        match (&self.multipart, &from.multipart) {
            (Some(multipart), Some(upload)) if to.multipart.as_ref() != Some(upload) => {
                let path = data_path(session, from.data.as_deref());
                gone_is_fine(multipart.abort_multipart(&path, upload).await)?;
            }
            (None, _) => {
                for part in from.parts.iter().filter(|part| !to.parts.contains(part)) {
                    gone_is_fine(self.objects.delete(&part_path(session, &part.id)).await)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
