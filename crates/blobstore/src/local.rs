//! Upload staging on local disk: one file per session under `uploads/`, written at the
//! session's acknowledged offset and moved into place with one atomic rename.
//!
//! Every request's bytes are on disk (`sync_data`) before it is acknowledged; writeback starts
//! while they stream (`writeback`), so that flush finds little left to write.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path as FsPath, PathBuf};

use crate::hash::Sha256State;
use crate::writeback::Writeback;
use crate::{storage, Error, UploadState};
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use oci::Digest;

/// Bytes collected before one write: few system calls per GiB, bounded memory per upload.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Bytes of request chunks handed to the writing thread at once, and how many such batches
/// may wait for it.
const BATCH_BYTES: usize = 256 * 1024;
const BATCHES_IN_FLIGHT: usize = 8;

/// Hashes and writes every chunk `received` at `offset` onwards, starting writeback as it
/// goes, then syncs the data.
fn write_staging(
    path: &FsPath,
    offset: u64,
    mut hash: Sha256State,
    mut received: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
) -> Result<(u64, Sha256State), Error> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(storage)?;
    file.set_len(offset).map_err(storage)?;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    out.seek(SeekFrom::Start(offset)).map_err(storage)?;
    let mut written = 0u64;
    let mut writeback = Writeback::new(offset);
    while let Some(batch) = received.blocking_recv() {
        for chunk in batch {
            hash.update(&chunk);
            out.write_all(&chunk).map_err(storage)?;
            written += chunk.len() as u64;
        }
        // What the buffer still holds has not reached the file yet.
        let in_file = offset + written - out.buffer().len() as u64;
        // A write error seen here must fail the request: `sync_data` would not see it again.
        writeback.wrote(out.get_ref(), in_file).map_err(storage)?;
    }
    let file = out.into_inner().map_err(|err| storage(err.error()))?;
    file.sync_data().map_err(storage)?;
    Ok((written, hash))
}

pub(crate) struct LocalStaging {
    root: PathBuf,
}

impl LocalStaging {
    pub fn new(root: PathBuf) -> LocalStaging {
        LocalStaging { root }
    }

    fn staging_path(&self, session: &str) -> PathBuf {
        self.root.join("uploads").join(session)
    }

    /// Writes `body` at `offset` and syncs it; bytes past `offset` left by a failed chunk are
    /// dropped first. The body is received here while a blocking thread hashes and writes the
    /// previous chunks, so receiving, hashing and writing overlap.
    pub async fn append<S, E>(
        &self,
        session: &str,
        offset: u64,
        state: &mut UploadState,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let path = self.staging_path(session);
        let (batches, received) = tokio::sync::mpsc::channel::<Vec<Bytes>>(BATCHES_IN_FLIGHT);
        let hash = state.hash.clone();
        let writer =
            tokio::task::spawn_blocking(move || write_staging(&path, offset, hash, received));
        let mut body = std::pin::pin!(body);
        let mut failed = None;
        // Chunks travel in batches: one hand-over (a thread wake-up) per BATCH_BYTES, not per
        // TLS record.
        let mut batch = Vec::new();
        let mut batched = 0;
        loop {
            let next = body.next().await;
            let end = match next {
                Some(Ok(chunk)) => {
                    batched += chunk.len();
                    batch.push(chunk);
                    false
                }
                Some(Err(err)) => {
                    failed = Some(Error::Body(err.to_string()));
                    break;
                }
                None => true,
            };
            if (end && !batch.is_empty()) || batched >= BATCH_BYTES {
                batched = 0;
                // A closed channel means the writer failed; its error is reported below.
                if batches.send(std::mem::take(&mut batch)).await.is_err() {
                    break;
                }
            }
            if end {
                break;
            }
        }
        drop(batches);
        let written = writer
            .await
            .map_err(|err| Error::Storage(format!("the upload writer stopped: {err}")))?;
        if let Some(err) = failed {
            return Err(err);
        }
        let (written, hash) = written?;
        state.hash = hash;
        Ok(written)
    }

    /// Moves `size` verified bytes into place at `target`. Committing bytes that are already
    /// stored replaces them with identical bytes, so concurrent pushes of one blob both
    /// succeed; a retried commit whose first attempt already moved the bytes succeeds.
    pub async fn commit(&self, session: &str, target: &FsPath, size: u64) -> Result<(), Error> {
        let staging = self.staging_path(session);
        match tokio::fs::OpenOptions::new()
            .write(true)
            .open(&staging)
            .await
        {
            Ok(file) => {
                // Bytes past `size` are leftovers of a failed chunk.
                file.set_len(size).await.map_err(storage)?;
                file.sync_all().await.map_err(storage)?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if tokio::fs::metadata(target)
                    .await
                    .is_ok_and(|meta| meta.len() == size)
                {
                    return Ok(());
                }
                if size != 0 {
                    return Err(Error::Storage(format!(
                        "the staged bytes of upload {session} are missing"
                    )));
                }
                tokio::fs::File::create(&staging)
                    .await
                    .map_err(storage)?
                    .sync_all()
                    .await
                    .map_err(storage)?;
            }
            Err(err) => return Err(storage(err)),
        }
        let parent = target
            .parent()
            .ok_or_else(|| Error::Storage("blob path has no parent".into()))?;
        tokio::fs::create_dir_all(parent).await.map_err(storage)?;
        tokio::fs::rename(&staging, target).await.map_err(storage)?;
        // The rename is durable only once the directory entry is.
        tokio::fs::File::open(parent)
            .await
            .map_err(storage)?
            .sync_all()
            .await
            .map_err(storage)
    }

    /// Discards the session's staged bytes (idempotent).
    pub async fn abort(&self, session: &str) -> Result<(), Error> {
        match tokio::fs::remove_file(self.staging_path(session)).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(storage(err)),
        }
    }

    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.root.join(crate::blob_path(digest).as_ref())
    }
}
