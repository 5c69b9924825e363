//! Content-addressed blobs and the byte storage of upload sessions.
//!
//! Committed blobs live under `blobs/<algorithm>/<first two hex>/<hex>`, on local disk or in
//! an object store (S3-compatible, GCS, Azure), and are read through `object_store`. Upload
//! bytes are staged until the registry has checked the digest: in a file per session on local
//! disk (`local`), or in parts and a small tail object in the object store, recorded in the
//! session's state so any replica can continue it (`remote`). `commit` then puts the bytes in
//! place under their digest in one step, so a reader can never see a partial blob.
//!
//! Invariants:
//! - Bytes are hashed exactly once, while they stream in; nothing here buffers a whole blob in
//!   memory (at most one part per request), and `commit` never re-hashes the data.
//! - A chunk that fails half-way never becomes part of a blob: local staging writes at the
//!   acknowledged offset, object-store staging writes only names the session record does not
//!   hold yet.
//! - Staged bytes a session's record stands for are never invented: when they are gone, the
//!   session cannot continue (`Error::Lost`).
//! - `commit` never replaces a stored blob: a blob path, once written, keeps its verified
//!   bytes, and a commit that finds the blob there keeps it and drops the staged copy.
//! - This crate does not decide whether a digest matches; it only moves verified bytes.

mod cloud;
pub mod hash;
mod local;
mod remote;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests_remote;
mod writeback;

use std::io::SeekFrom;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use oci::{ByteRange, Digest};
use tokio::io::AsyncSeekExt;

pub use cloud::{AzureSettings, Backend, GcsSettings, RemoteSettings, S3Settings};
pub use hash::{CorruptHashState, Sha256State};
pub use remote::MIN_PART_SIZE;
pub use state::{CorruptUploadState, UploadState};

/// Chunk size for streaming a blob out of a local file.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {0} is missing from storage")]
    Missing(Digest),
    /// The request body failed while streaming (the client went away, or sent a bad chunk).
    #[error("request body failed: {0}")]
    Body(String),
    /// The object store did not answer, or answered with an error; retrying may succeed.
    #[error("blob storage unavailable: {0}")]
    Unavailable(String),
    #[error("blob storage failed: {0}")]
    Storage(String),
    /// The staged bytes an upload session's record stands for are gone (committed, or removed
    /// by a cancel or expiry whose record deletion failed): the session cannot continue.
    #[error("upload bytes lost: {0}")]
    Lost(String),
}

fn storage(err: impl std::fmt::Display) -> Error {
    Error::Storage(err.to_string())
}

fn lost(text: String) -> Error {
    Error::Lost(text)
}

fn unavailable(err: impl std::fmt::Display) -> Error {
    Error::Unavailable(err.to_string())
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

/// The digest a `blobs/<algorithm>/<xx>/<hex>` path names.
fn digest_of_path(path: &Path) -> Option<Digest> {
    let parts: Vec<_> = path.parts().collect();
    match parts.as_slice() {
        [root, algorithm, _, hex] if root.as_ref() == "blobs" => {
            format!("{}:{}", algorithm.as_ref(), hex.as_ref())
                .parse()
                .ok()
        }
        _ => None,
    }
}

pub struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    staging: Staging,
    description: String,
}

enum Staging {
    Local(local::LocalStaging),
    Remote(remote::RemoteStaging),
}

/// A blob being read: its total size and the requested bytes as a stream.
pub struct BlobRead {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, Error>>,
}

/// An upload whose last bytes have arrived and been hashed, waiting for the caller to compare
/// `digest` with the one the client named, then to `commit` or `abort` it.
pub struct Finishing {
    session: String,
    /// Bytes the finishing request carried.
    pub written: u64,
    /// The blob's size.
    pub size: u64,
    pub digest: Digest,
    /// The session's state including this request's bytes, for `abort`.
    pub state: UploadState,
    held: Option<remote::Held>,
}

/// What an upload's bytes hash to, when they were hashed without being staged (`hash_rest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// Bytes the finishing request carried.
    pub written: u64,
    /// The blob's size.
    pub size: u64,
    pub digest: Digest,
}

/// Hashes the last bytes of an upload on top of `state` without staging them: for a blob that
/// is already stored (`BlobStore::stored_size`), where only the digest of the session's
/// content has to be proven, not its bytes kept.
pub async fn hash_rest<S, E>(state: &UploadState, body: S) -> Result<Hashed, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut hash = state.hash.clone();
    let mut written = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| Error::Body(err.to_string()))?;
        hash.update(&chunk);
        written += chunk.len() as u64;
    }
    Ok(Hashed {
        written,
        size: hash.length(),
        digest: hash.finish(),
    })
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
            description: format!("local disk at {}", root.display()),
            staging: Staging::Local(local::LocalStaging::new(root)),
        })
    }

    /// Where blobs live, for the operator (never includes credentials).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Streams `range` (or all) of a committed blob.
    pub async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead, Error> {
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)),
            ..GetOptions::default()
        };
        let result = match self.objects.get_opts(&blob_path(digest), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Missing(digest.clone()))
            }
            Err(err) => return Err(self.failure(err)),
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
            GetResultPayload::Stream(stream) => {
                stream.map(|chunk| chunk.map_err(unavailable)).boxed()
            }
        };
        Ok(BlobRead { size, stream })
    }

    /// The size of the stored blob `digest`, if it is stored.
    pub async fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        match self.objects.head(&blob_path(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(self.failure(err)),
        }
    }

    /// A URL the client may fetch the blob from directly for `ttl`, when the store can sign
    /// one (S3, GCS); `None` when blobs must stream through the registry.
    pub async fn presigned_url(
        &self,
        digest: &Digest,
        ttl: Duration,
    ) -> Result<Option<String>, Error> {
        let Staging::Remote(remote) = &self.staging else {
            return Ok(None);
        };
        let Some(signer) = &remote.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &blob_path(digest), ttl)
            .await
            .map_err(unavailable)?;
        Ok(Some(url.to_string()))
    }

    fn failure(&self, err: object_store::Error) -> Error {
        match self.staging {
            Staging::Local(_) => storage(err),
            Staging::Remote(_) => unavailable(err),
        }
    }

    /// Hashes `body` into `state` and stages it after the `offset` bytes received so far.
    /// Returns the number of bytes written; on error `state` is untouched and nothing past
    /// `offset` counts. After recording the new state, call `release(old, new)`.
    ///
    /// `claim` (the caller's proof of being the session's only writer) is kept until nothing
    /// this call started can write the session's staged bytes any more, even when this future
    /// is dropped: on local disk, until the writing thread exits.
    pub async fn append<S, E>(
        &self,
        session: &str,
        offset: u64,
        state: &mut UploadState,
        body: S,
        claim: impl Send + 'static,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        Self::check_offset(session, offset, state)?;
        match &self.staging {
            Staging::Local(local) => local.append(session, offset, state, body, claim).await,
            // Everything happens in this future: dropping it stops all writing.
            Staging::Remote(remote) => remote.append(session, state, body).await,
        }
    }

    /// Hashes and stages the last bytes of an upload, without committing anything. `claim`
    /// is kept as for `append`.
    pub async fn finish<S, E>(
        &self,
        session: &str,
        offset: u64,
        state: &UploadState,
        body: S,
        claim: impl Send + 'static,
    ) -> Result<Finishing, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        Self::check_offset(session, offset, state)?;
        let mut state = state.clone();
        let (written, held) = match &self.staging {
            Staging::Local(local) => (
                local
                    .append(session, offset, &mut state, body, claim)
                    .await?,
                None,
            ),
            Staging::Remote(remote) => {
                let (written, held) = remote.finish(session, &mut state, body).await?;
                (written, Some(held))
            }
        };
        Ok(Finishing {
            session: session.to_owned(),
            written,
            size: state.length(),
            digest: state.hash.finish(),
            state,
            held,
        })
    }

    fn check_offset(session: &str, offset: u64, state: &UploadState) -> Result<(), Error> {
        if state.length() != offset {
            return Err(Error::Storage(format!(
                "upload {session} stands at byte {offset} but its hash state holds {} bytes",
                state.length()
            )));
        }
        Ok(())
    }

    /// Puts a finished upload in place under its digest (which the caller has verified) and
    /// removes what it staged. A blob already stored under the digest is kept as it is, so
    /// concurrent pushes of one blob both succeed and a retried commit changes nothing.
    pub async fn commit(&self, finishing: Finishing) -> Result<(), Error> {
        match (&self.staging, finishing.held) {
            (Staging::Local(local), _) => {
                local
                    .commit(
                        &finishing.session,
                        &local.blob_file(&finishing.digest),
                        finishing.size,
                    )
                    .await
            }
            (Staging::Remote(remote), Some(held)) => {
                remote
                    .commit(&finishing.session, held, &finishing.digest, finishing.size)
                    .await
            }
            (Staging::Remote(_), None) => Err(Error::Storage(
                "an object-store upload finished without its held bytes".into(),
            )),
        }
    }

    /// Makes a blob found stored durable before it is acknowledged: on local disk a concurrent
    /// commit may have linked it without having synced it yet (or failed to). An object store
    /// holds an object only once it is durable.
    pub async fn make_durable(&self, digest: &Digest) -> Result<(), Error> {
        match &self.staging {
            Staging::Local(local) => local.make_durable(digest).await,
            Staging::Remote(_) => Ok(()),
        }
    }

    /// Discards everything an upload staged (idempotent). In an object store that is every
    /// object under the session's prefix, recorded in `state` or not.
    pub async fn abort(&self, session: &str, state: &UploadState) -> Result<(), Error> {
        match &self.staging {
            Staging::Local(local) => local.abort(session).await,
            Staging::Remote(remote) => remote.abort(session, &state.staged).await,
        }
    }

    /// Copies every committed blob into `target` (a single node's disk into an object store),
    /// checking each blob's digest on the way; blobs `target` already holds are skipped, so an
    /// interrupted copy resumes. Returns how many blobs and bytes were copied.
    pub async fn copy_blobs_into(&self, target: &BlobStore) -> Result<(u64, u64), Error> {
        use futures_util::TryStreamExt;
        let mut listing = self.objects.list(Some(&Path::from("blobs")));
        let (mut blobs, mut bytes) = (0, 0);
        while let Some(meta) = listing.try_next().await.map_err(|e| self.failure(e))? {
            let Some(digest) = digest_of_path(&meta.location) else {
                tracing::warn!(path = %meta.location, "skipping {}: not a blob path", meta.location);
                continue;
            };
            match target.objects.head(&meta.location).await {
                Ok(existing) if existing.size == meta.size => continue,
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(target.failure(err)),
            }
            // Hash first, so a damaged blob is never uploaded under its digest.
            let mut hash = Sha256State::new();
            let mut stream = self.read(&digest, None).await?.stream;
            while let Some(chunk) = stream.try_next().await? {
                hash.update(&chunk);
            }
            if hash.finish() != digest {
                return Err(Error::Storage(format!(
                    "{} does not hold the bytes of {digest}; not copied",
                    meta.location
                )));
            }
            let upload = target
                .objects
                .put_multipart(&meta.location)
                .await
                .map_err(|e| target.failure(e))?;
            let mut writer =
                object_store::WriteMultipart::new_with_chunk_size(upload, remote::MIN_PART_SIZE);
            let mut stream = self.read(&digest, None).await?.stream;
            while let Some(chunk) = stream.try_next().await? {
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| target.failure(e))?;
                writer.put(chunk);
            }
            writer.finish().await.map_err(|e| target.failure(e))?;
            blobs += 1;
            bytes += meta.size;
        }
        Ok((blobs, bytes))
    }

    /// Best effort, after a session moved from state `from` to `to` (or failed to): removes
    /// what `from` staged that `to` no longer uses.
    pub async fn release(&self, session: &str, from: &UploadState, to: &UploadState) {
        if let Staging::Remote(remote) = &self.staging {
            remote.release(session, &from.staged, &to.staged).await;
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
        let mut state = UploadState::new();
        let first = store
            .append("s1", 0, &mut state, body(&[b"hello ", b"wor"]), ())
            .await
            .expect("append");
        let finishing = store
            .finish("s1", first, &state, body(&[b"ld"]), ())
            .await
            .expect("finish");
        assert_eq!((first, finishing.written, finishing.size), (6 + 3, 2, 11));
        let digest = finishing.digest.clone();
        store.commit(finishing).await.expect("commit");

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
        assert_eq!(
            store
                .presigned_url(&digest, Duration::from_secs(60))
                .await
                .expect("sign"),
            None
        );
    }

    #[tokio::test]
    async fn large_chunks_at_aligned_and_unaligned_offsets_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 12_345u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        // Chunks larger than the write buffer, starting at 0 and at offsets inside it, then
        // the rest with the finishing request.
        let cuts = [
            0,
            2 * 1024 * 1024 + 100,
            3 * 1024 * 1024,
            3 * 1024 * 1024 + 8192 + 1,
        ];
        let mut state = UploadState::new();
        let mut offset = 0u64;
        for window in cuts.windows(2) {
            let chunk = Bytes::copy_from_slice(&data[window[0]..window[1]]);
            let chunks = vec![Ok::<_, std::convert::Infallible>(chunk)];
            offset += store
                .append("big", offset, &mut state, stream::iter(chunks), ())
                .await
                .expect("append");
        }
        let rest = Bytes::copy_from_slice(&data[cuts[cuts.len() - 1]..]);
        let finishing = store
            .finish(
                "big",
                offset,
                &state,
                stream::iter(vec![Ok::<_, std::convert::Infallible>(rest)]),
                (),
            )
            .await
            .expect("finish");
        assert_eq!(finishing.size, data.len() as u64);
        let digest = finishing.digest.clone();
        store.commit(finishing).await.expect("commit");
        assert!(collect(store.read(&digest, None).await.expect("read")).await == data);
    }

    #[tokio::test]
    async fn chunks_spanning_several_writeback_windows_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let window = usize::try_from(writeback::WINDOW).expect("window");
        let data: Vec<u8> = (0..2 * window as u32 + 3 * 1024 * 1024 + 77)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        // The second request starts inside a window and writes past two more.
        let cut = window / 2 + 12_345;
        let chunks = |bytes: &[u8]| {
            stream::iter(
                bytes
                    .chunks(64 * 1024 + 3)
                    .map(|c| Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
        };
        let mut state = UploadState::new();
        let first = store
            .append("windows", 0, &mut state, chunks(&data[..cut]), ())
            .await
            .expect("append");
        let finishing = store
            .finish("windows", first, &state, chunks(&data[cut..]), ())
            .await
            .expect("finish");
        assert_eq!(finishing.size, data.len() as u64);
        let digest = finishing.digest.clone();
        store.commit(finishing).await.expect("commit");
        assert!(collect(store.read(&digest, None).await.expect("read")).await == data);
    }

    #[tokio::test]
    async fn a_failed_chunk_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let mut state = UploadState::new();
        let written = store
            .append("s2", 0, &mut state, body(&[b"abc"]), ())
            .await
            .expect("append");
        let before = state.clone();
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"garbage")),
            Err("connection reset"),
        ]);
        let result = store.append("s2", written, &mut state, failing, ()).await;
        assert!(matches!(result, Err(Error::Body(_))));
        assert_eq!(
            state, before,
            "the hash state is untouched by a failed chunk"
        );
        let finishing = store
            .finish("s2", written, &state, body(&[b"def"]), ())
            .await
            .expect("retry");
        let digest = finishing.digest.clone();
        store.commit(finishing).await.expect("commit");
        assert_eq!(
            collect(store.read(&digest, None).await.expect("read")).await,
            b"abcdef"
        );
    }

    #[tokio::test]
    async fn missing_blobs_empty_uploads_and_a_state_out_of_step() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let unknown = Digest::sha256_from_bytes(&[1; 32]);
        assert!(matches!(
            store.read(&unknown, None).await,
            Err(Error::Missing(_))
        ));
        let state = UploadState::new();
        let empty = store
            .finish("never-written", 0, &state, body(&[]), ())
            .await
            .expect("finish an empty blob");
        let digest = empty.digest.clone();
        store.commit(empty).await.expect("commit an empty blob");
        assert_eq!(store.read(&digest, None).await.expect("read").size, 0);
        store
            .abort("never-written", &state)
            .await
            .expect("abort is idempotent");
        assert!(matches!(
            store.finish("s3", 5, &state, body(&[]), ()).await,
            Err(Error::Storage(_))
        ));
    }
}
