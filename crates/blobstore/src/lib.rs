//! Content-addressed blobs and the byte storage of upload sessions.
//!
//! Committed blobs live under `blobs/<algorithm>/<first two hex>/<hex>` and are read through
//! `object_store`. Upload bytes are staged under `uploads/<session id>` until the registry has
//! checked the digest; `commit` then moves them into place in one atomic rename, so a reader
//! can never see a partial blob under a digest.
//!
//! Invariants:
//! - Bytes are hashed exactly once, while they stream in (`append`); nothing here buffers a
//!   whole blob in memory, and `commit` never re-reads the data.
//! - `append` writes at the session's acknowledged offset, so bytes of a chunk that failed
//!   half-way are overwritten by the retry and never become part of a blob.
//! - This crate does not decide whether a digest matches; it only moves verified bytes.

pub mod hash;

use std::io::SeekFrom;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore};
use oci::{ByteRange, Digest};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

pub use hash::{CorruptHashState, Sha256State};

/// Large writes keep the number of blocking file operations per GiB small.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Chunk size for streaming a blob out of a local file.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {0} is missing from storage")]
    Missing(Digest),
    /// The request body failed while streaming (the client went away, or sent a bad chunk).
    #[error("request body failed: {0}")]
    Body(String),
    #[error("blob storage failed: {0}")]
    Storage(String),
}

fn storage(err: impl std::fmt::Display) -> Error {
    Error::Storage(err.to_string())
}

pub struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    root: PathBuf,
}

/// A blob being read: its total size and the requested bytes as a stream.
pub struct BlobRead {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, Error>>,
}

impl BlobStore {
    /// Blobs on the local filesystem under `root` (created if missing).
    pub fn local(root: &FsPath) -> Result<BlobStore, Error> {
        for dir in ["blobs", "uploads"] {
            std::fs::create_dir_all(root.join(dir)).map_err(storage)?;
        }
        let root = root.canonicalize().map_err(storage)?;
        let objects = LocalFileSystem::new_with_prefix(&root).map_err(storage)?;
        Ok(BlobStore {
            objects: Arc::new(objects),
            root,
        })
    }

    fn blob_path(digest: &Digest) -> Path {
        let hex = digest.hex();
        Path::from(format!(
            "blobs/{}/{}/{}",
            digest.algorithm().as_str(),
            &hex[..2],
            hex
        ))
    }

    fn staging_path(&self, session: &str) -> PathBuf {
        self.root.join("uploads").join(session)
    }

    /// Streams `range` (or all) of a committed blob.
    pub async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead, Error> {
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)),
            ..GetOptions::default()
        };
        let result = match self
            .objects
            .get_opts(&Self::blob_path(digest), options)
            .await
        {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Missing(digest.clone()))
            }
            Err(err) => return Err(storage(err)),
        };
        let size = result.meta.size;
        let wanted = result.range.clone();
        let stream = match result.payload {
            GetResultPayload::File(file, _) => {
                let mut file = tokio::fs::File::from_std(file);
                file.seek(SeekFrom::Start(wanted.start))
                    .await
                    .map_err(storage)?;
                let limited = tokio::io::AsyncReadExt::take(file, wanted.end - wanted.start);
                tokio_util::io::ReaderStream::with_capacity(limited, READ_CHUNK)
                    .map(|chunk| chunk.map_err(storage))
                    .boxed()
            }
            GetResultPayload::Stream(stream) => stream.map(|chunk| chunk.map_err(storage)).boxed(),
        };
        Ok(BlobRead { size, stream })
    }

    /// Writes `body` into the session's staging area at `offset`, hashing it into `state`.
    /// Returns the number of bytes written; on error nothing past `offset` counts.
    pub async fn append<S, E>(
        &self,
        session: &str,
        offset: u64,
        state: &mut Sha256State,
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
        // Bytes past the acknowledged offset come from a chunk that failed; drop them.
        file.set_len(offset).await.map_err(storage)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(storage)?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hashed = state.clone();
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
        *state = hashed;
        Ok(written)
    }

    /// Moves a verified upload of `size` bytes into place under its digest. Committing bytes
    /// that are already stored replaces them with identical bytes, so concurrent pushes of one
    /// blob both succeed; a retried commit whose first attempt already moved the bytes succeeds.
    pub async fn commit(&self, session: &str, digest: &Digest, size: u64) -> Result<(), Error> {
        let staging = self.staging_path(session);
        let target = self.root.join(Self::blob_path(digest).as_ref());
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
                if tokio::fs::metadata(&target)
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
        tokio::fs::rename(&staging, &target)
            .await
            .map_err(storage)?;
        // The rename is durable only once the directory entry is.
        tokio::fs::File::open(parent)
            .await
            .map_err(storage)?
            .sync_all()
            .await
            .map_err(storage)
    }

    /// Discards an upload's staged bytes (idempotent).
    pub async fn abort(&self, session: &str) -> Result<(), Error> {
        match tokio::fs::remove_file(self.staging_path(session)).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(storage(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn body(
        chunks: &[&'static [u8]],
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    async fn collect(read: BlobRead) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    #[tokio::test]
    async fn chunks_append_commit_and_read_back_with_ranges() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let mut state = Sha256State::new();
        let first = store
            .append("s1", 0, &mut state, body(&[b"hello ", b"wor"]))
            .await
            .expect("append");
        let second = store
            .append("s1", first, &mut state, body(&[b"ld"]))
            .await
            .expect("append");
        assert_eq!(first + second, 11);
        let digest = state.finish();
        store.commit("s1", &digest, 11).await.expect("commit");

        let all = store.read(&digest, None).await.expect("read");
        assert_eq!(all.size, 11);
        assert_eq!(collect(all).await, b"hello world");
        let part = store
            .read(&digest, Some(ByteRange { start: 6, end: 10 }))
            .await
            .expect("read");
        assert_eq!(collect(part).await, b"world");
        assert!(
            !dir.path().join("uploads/s1").exists(),
            "the staging file moved into place"
        );
    }

    #[tokio::test]
    async fn a_failed_chunk_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let mut state = Sha256State::new();
        let written = store
            .append("s2", 0, &mut state, body(&[b"abc"]))
            .await
            .expect("append");
        let before = state.clone();
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"garbage")),
            Err("connection reset"),
        ]);
        let result = store.append("s2", written, &mut state, failing).await;
        assert!(matches!(result, Err(Error::Body(_))));
        assert_eq!(
            state, before,
            "the hash state is untouched by a failed chunk"
        );
        store
            .append("s2", written, &mut state, body(&[b"def"]))
            .await
            .expect("retry");
        let digest = state.finish();
        store.commit("s2", &digest, 6).await.expect("commit");
        assert_eq!(
            collect(store.read(&digest, None).await.expect("read")).await,
            b"abcdef"
        );
    }

    #[tokio::test]
    async fn missing_blobs_and_empty_uploads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let unknown = Digest::sha256_from_bytes(&[1; 32]);
        assert!(matches!(
            store.read(&unknown, None).await,
            Err(Error::Missing(_))
        ));
        let empty = Sha256State::new().finish();
        store
            .commit("never-written", &empty, 0)
            .await
            .expect("commit an empty blob");
        assert_eq!(store.read(&empty, None).await.expect("read").size, 0);
        store
            .abort("never-written")
            .await
            .expect("abort is idempotent");
    }
}
