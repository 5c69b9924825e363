//! Upload staging on local disk: one file per session under `uploads/`, written at the
//! session's acknowledged offset and moved into place with one atomic rename.

use std::path::{Path as FsPath, PathBuf};

use crate::hash::Sha256State;
use crate::{storage, Error, UploadState};
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use oci::Digest;

/// Bytes collected before one write: few system calls per GiB, bounded memory per upload.
const WRITE_BUFFER: usize = 1024 * 1024;
/// `O_DIRECT` wants buffers, offsets and lengths aligned to the device's block; 4 KiB covers
/// every common one.
const ALIGN: usize = 4096;
/// Bytes of request chunks handed to the writing thread at once, and how many such batches
/// may wait for it.
const BATCH_BYTES: usize = 256 * 1024;
const BATCHES_IN_FLIGHT: usize = 8;

/// Hashes and writes every chunk `received` at `offset` onwards, then syncs the data.
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
    let mut out = StagingWriter::new(file, path, offset)?;
    let mut written = 0u64;
    while let Some(batch) = received.blocking_recv() {
        for chunk in batch {
            hash.update(&chunk);
            out.write(&chunk)?;
            written += chunk.len() as u64;
        }
    }
    out.finish()?;
    Ok((written, hash))
}

/// Writes a staging file in large aligned blocks with `O_DIRECT` where the filesystem allows
/// it: this VM's page cache makes buffered writes several times as expensive once a GiB or so
/// is dirty, and upload bytes are not read again soon. Writes that cannot be aligned (a start
/// inside a block, the last partial block) go through the page cache.
struct StagingWriter {
    file: std::fs::File,
    direct: Option<std::fs::File>,
    buffer: Vec<u8>,
    /// Where the aligned window of `buffer` starts.
    start: usize,
    filled: usize,
    position: u64,
}

impl StagingWriter {
    fn new(file: std::fs::File, path: &FsPath, offset: u64) -> Result<StagingWriter, Error> {
        let direct = offset
            .is_multiple_of(ALIGN as u64)
            .then(|| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        let buffer = vec![0u8; WRITE_BUFFER + ALIGN];
        let start = (ALIGN - buffer.as_ptr() as usize % ALIGN) % ALIGN;
        Ok(StagingWriter {
            file,
            direct,
            buffer,
            start,
            filled: 0,
            position: offset,
        })
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let room = WRITE_BUFFER - self.filled;
            let take = room.min(bytes.len());
            let at = self.start + self.filled;
            self.buffer[at..at + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == WRITE_BUFFER {
                self.flush(WRITE_BUFFER)?;
            }
        }
        Ok(())
    }

    /// Writes the first `len` buffered bytes (`len` a multiple of `ALIGN` for direct writes).
    fn flush(&mut self, len: usize) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let bytes = &self.buffer[self.start..self.start + len];
        let target = self.direct.as_ref().unwrap_or(&self.file);
        target.write_all_at(bytes, self.position).map_err(storage)?;
        self.position += len as u64;
        self.buffer
            .copy_within(self.start + len..self.start + self.filled, self.start);
        self.filled -= len;
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        let aligned = self.filled - self.filled % ALIGN;
        if aligned > 0 {
            self.flush(aligned)?;
        }
        // The last partial block cannot be written directly.
        self.direct = None;
        if self.filled > 0 {
            self.flush(self.filled)?;
        }
        self.file.sync_data().map_err(storage)
    }
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
