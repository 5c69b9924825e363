//! Upload staging on local disk: one file per session under `uploads/`, written at the
//! session's acknowledged offset and moved into place with one atomic rename.

use std::io::SeekFrom;
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use oci::Digest;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use crate::{storage, Error, UploadState};

/// Large writes keep the number of blocking file operations per GiB small.
const WRITE_BUFFER: usize = 1024 * 1024;

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
    /// dropped first.
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
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await
            .map_err(storage)?;
        file.set_len(offset).await.map_err(storage)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(storage)?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hashed = state.hash.clone();
        let mut written = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| Error::Body(err.to_string()))?;
            hashed.update(&chunk);
            writer.write_all(&chunk).await.map_err(storage)?;
            written += chunk.len() as u64;
        }
        writer.flush().await.map_err(storage)?;
        let file = writer.into_inner();
        file.sync_data().await.map_err(storage)?;
        state.hash = hashed;
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
