//! Upload staging on local disk: one file per session under `uploads/`, written at the
//! session's acknowledged offset and moved into place with a hard link and an unlink.
//!
//! Every request's bytes are on disk (`sync_data`) before it is acknowledged; writeback starts
//! while they stream (`writeback`), so that flush finds little left to write.
//!
//! Invariants:
//! - The acknowledged bytes of a session are never invented: a request continuing from a
//!   non-zero offset needs the staging file to exist and hold at least that many bytes, or it
//!   is refused with `Error::Lost` (the file was committed or removed while the session's
//!   record survived; refilling it would turn the record's hash into a lie about zeros).
//! - Committing never replaces a blob file: the staged file is linked under the digest only if
//!   no file is there (a blob path holds verified bytes once and for all), then unlinked.
//! - The writer holds the caller's claim on the session, and goes into each writing job and
//!   back out, so a request that is dropped (the client went away) keeps the session claimed
//!   while a job of it still writes into the file.
//! - An upload holds a blocking thread only while one of its batches is written: at most
//!   `WRITERS` jobs run at once, whatever the number of uploads, and an idle or slow client
//!   holds no thread.

use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};

use crate::hash::Sha256State;
use crate::writeback::Writeback;
use crate::{lost, storage, Error, UploadState};
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use oci::Digest;

/// Bytes collected before one write: few system calls per GiB, bounded memory per upload.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Bytes of request chunks handed to a writing job at once.
const BATCH_BYTES: usize = 1024 * 1024;
/// Writing jobs running at once, for every upload of the process together.
const WRITERS: usize = 64;

/// Opens the staging file to write at `offset`, dropping what a failed request left past it.
/// Only a session at offset 0 may create the file: any other offset stands for bytes that
/// must already be in it.
fn open_staging(path: &FsPath, offset: u64) -> Result<std::fs::File, Error> {
    let gone = || {
        lost(format!(
            "the first {offset} bytes of upload {} are no longer staged",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
    };
    let file = match std::fs::OpenOptions::new()
        .create(offset == 0)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Err(gone()),
        Err(err) => return Err(storage(err)),
    };
    let metadata = file.metadata().map_err(storage)?;
    if metadata.nlink() > 1 {
        // Also a blob: a commit linked it and did not get to unlink the staged name (it
        // failed, was cancelled, or the process died). Writing would change the blob.
        return Err(lost(format!(
            "upload {} was already committed",
            path.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    if metadata.len() < offset {
        return Err(gone());
    }
    file.set_len(offset).map_err(storage)?;
    Ok(file)
}

/// An upload's staging file being written: its buffer, hash and writeback, and the caller's
/// claim on the session, which goes wherever the writer goes (into a writing job and back),
/// so it is released only once nothing this request started can touch the file.
struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    offset: u64,
    written: u64,
    hash: Sha256State,
    writeback: Writeback,
    claim: Box<dyn Send>,
}

impl Writer {
    fn open(
        path: &FsPath,
        offset: u64,
        hash: Sha256State,
        claim: Box<dyn Send>,
    ) -> Result<Writer, Error> {
        let file = open_staging(path, offset)?;
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        out.seek(SeekFrom::Start(offset)).map_err(storage)?;
        Ok(Writer {
            out,
            offset,
            written: 0,
            hash,
            writeback: Writeback::new(offset),
            claim,
        })
    }

    /// Hashes and writes `batch`, starting writeback as it goes.
    fn write(&mut self, batch: Vec<Bytes>) -> Result<(), Error> {
        for chunk in batch {
            self.hash.update(&chunk);
            self.out.write_all(&chunk).map_err(storage)?;
            self.written += chunk.len() as u64;
        }
        // What the buffer still holds has not reached the file yet.
        let in_file = self.offset + self.written - self.out.buffer().len() as u64;
        // A write error seen here must fail the request: `sync_data` would not see it again.
        self.writeback
            .wrote(self.out.get_ref(), in_file)
            .map_err(storage)
    }

    /// Flushes and syncs what was written; the claim goes with the writer.
    fn finish(self) -> Result<(u64, Sha256State), Error> {
        let file = self.out.into_inner().map_err(|err| storage(err.error()))?;
        file.sync_data().map_err(storage)?;
        drop(self.claim);
        Ok((self.written, self.hash))
    }
}

/// Starts `work` on a blocking thread once one of the `WRITERS` places is free: a slow disk
/// makes uploads wait for a place, it never grows the number of threads writing. The job runs
/// to its end even if its handle is dropped.
async fn on_writer<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<T, Error>>, Error> {
    static PLACES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(WRITERS);
    let place = PLACES
        .acquire()
        .await
        .map_err(|err| Error::Storage(format!("the upload writers are closed: {err}")))?;
    Ok(tokio::task::spawn_blocking(move || {
        let done = work();
        drop(place);
        done
    }))
}

/// What a writing job came to.
async fn joined<T>(job: tokio::task::JoinHandle<Result<T, Error>>) -> Result<T, Error> {
    job.await
        .map_err(|err| Error::Storage(format!("the upload writer stopped: {err}")))?
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
    /// dropped first. The body is received here in batches while a writing job hashes and
    /// writes the previous one, so receiving, hashing and writing overlap; between batches the
    /// upload holds no thread, so a slow or idle client costs its buffers and nothing else.
    /// `claim` travels with the file: if this future is dropped while a job writes, the job
    /// keeps the claim until it is done.
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
        let path = self.staging_path(session);
        let hash = state.hash.clone();
        let claim: Box<dyn Send> = Box::new(claim);
        // The job in flight: opening the file, then writing one batch; it hands the writer back.
        let mut job = on_writer(move || Writer::open(&path, offset, hash, claim)).await?;
        let mut body = std::pin::pin!(body);
        let mut failed = None;
        // Chunks travel in batches: one job per BATCH_BYTES, not per TLS record.
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
                let mut writer = joined(job).await?;
                let batch = std::mem::take(&mut batch);
                job = on_writer(move || {
                    writer.write(batch)?;
                    Ok(writer)
                })
                .await?;
            }
            if end {
                break;
            }
        }
        let writer = joined(job).await?;
        if let Some(err) = failed {
            // Closing flushes the buffer (bytes no one acknowledges: the next request truncates
            // them), so off the async thread; the claim goes once the file is closed.
            let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
            return Err(err);
        }
        let (written, hash) = joined(on_writer(move || writer.finish()).await?).await?;
        state.hash = hash;
        Ok(written)
    }

    /// Moves `size` verified bytes into place at `target`, unless a blob file is already
    /// there: that one holds the same verified bytes and is kept, and the staged copy is
    /// dropped. So concurrent pushes of one blob both succeed, and a retried commit whose
    /// first attempt already moved the bytes succeeds.
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
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if size != 0 {
                    return match stored_size(target).await? {
                        Some(stored) if stored == size => make_durable(target).await,
                        _ => Err(lost(format!(
                            "the staged bytes of upload {session} are missing"
                        ))),
                    };
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
        // A link, unlike a rename, never replaces what is there.
        match tokio::fs::hard_link(&staging, target).await {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                let stored = stored_size(target).await?;
                if stored != Some(size) {
                    return Err(Error::Storage(format!(
                        "{} holds {stored:?} bytes, not the {size} of its digest; left alone",
                        target.display()
                    )));
                }
                // Another commit linked it: it may not have made it durable yet.
                make_durable(target).await?;
            }
            Err(err) if links_unsupported(&err) => {
                // A filesystem without hard links (vfat, some FUSE and network mounts): a
                // rename, only when nothing is there. Between the look and the rename only
                // another commit of the same digest can come, with the same verified bytes.
                match stored_size(target).await? {
                    None => tokio::fs::rename(&staging, target).await.map_err(storage)?,
                    Some(stored) if stored == size => make_durable(target).await?,
                    Some(stored) => {
                        return Err(Error::Storage(format!(
                            "{} holds {stored} bytes, not the {size} of its digest; left alone",
                            target.display()
                        )))
                    }
                }
            }
            Err(err) => return Err(storage(err)),
        }
        // The link is durable only once the directory entry is; only then may the staged
        // name go.
        sync_dir(parent).await?;
        self.abort(session).await
    }

    /// Makes the stored blob `digest` durable (its data and its directory entry): a blob found
    /// stored may have been linked by a commit that has not synced it yet, or failed to.
    pub async fn make_durable(&self, digest: &Digest) -> Result<(), Error> {
        make_durable(&self.blob_file(digest)).await
    }

    /// Discards the session's staged bytes (idempotent).
    pub async fn abort(&self, session: &str) -> Result<(), Error> {
        match tokio::fs::remove_file(self.staging_path(session)).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(storage(err)),
        }
    }

    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.root.join(crate::blob_path(digest).as_ref())
    }
}

/// Whether a failed `hard_link` means the filesystem has no hard links.
fn links_unsupported(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Unsupported | ErrorKind::PermissionDenied
    )
}

async fn sync_dir(dir: &FsPath) -> Result<(), Error> {
    tokio::fs::File::open(dir)
        .await
        .map_err(storage)?
        .sync_all()
        .await
        .map_err(storage)
}

/// Syncs the file at `path` and the directory entry naming it.
async fn make_durable(path: &FsPath) -> Result<(), Error> {
    tokio::fs::File::open(path)
        .await
        .map_err(storage)?
        .sync_all()
        .await
        .map_err(storage)?;
    match path.parent() {
        Some(parent) => sync_dir(parent).await,
        None => Ok(()),
    }
}

/// The size of the file at `path`, if there is one.
async fn stored_size(path: &FsPath) -> Result<Option<u64>, Error> {
    match tokio::fs::metadata(path).await {
        Ok(meta) => Ok(Some(meta.len())),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(storage(err)),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use futures_util::stream;
    use tokio::sync::oneshot;

    use super::BATCH_BYTES;
    use crate::{BlobStore, Error, UploadState};
    use bytes::Bytes;
    use futures_util::StreamExt;

    fn body(bytes: &'static [u8]) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        stream::iter([Ok(Bytes::from_static(bytes))])
    }

    fn empty() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        stream::iter(Vec::new())
    }

    /// `hello` staged for `session` at offset 5, as a PATCH leaves it.
    async fn staged_hello(store: &BlobStore, session: &str) -> UploadState {
        let mut state = UploadState::new();
        store
            .append(session, 0, &mut state, body(b"hello"), ())
            .await
            .expect("append");
        state
    }

    #[tokio::test]
    async fn a_session_whose_staged_file_is_gone_is_lost_not_refilled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let state = staged_hello(&store, "s").await;
        let finishing = store
            .finish("s", 5, &state, empty(), ())
            .await
            .expect("finish");
        let digest = finishing.digest.clone();
        let blob = dir.path().join(format!(
            "blobs/sha256/{}/{}",
            &digest.hex()[..2],
            digest.hex()
        ));
        store.commit(finishing).await.expect("commit");

        // The first PUT committed, then failed before the session went: the record still says
        // five bytes are staged. Neither a PATCH nor a PUT may stand in zeros for them.
        let mut again = state.clone();
        assert!(matches!(
            store.append("s", 5, &mut again, body(b"!"), ()).await,
            Err(Error::Lost(_))
        ));
        assert!(matches!(
            store.finish("s", 5, &state, empty(), ()).await,
            Err(Error::Lost(_))
        ));
        assert_eq!(std::fs::read(&blob).expect("blob"), b"hello");
        assert!(
            !dir.path().join("uploads/s").exists(),
            "no staging file was created"
        );

        // A staging file shorter than the record is just as lost.
        let state = staged_hello(&store, "short").await;
        std::fs::write(dir.path().join("uploads/short"), b"hel").expect("shorten");
        assert!(matches!(
            store.finish("short", 5, &state, empty(), ()).await,
            Err(Error::Lost(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join("uploads/short")).expect("staged"),
            b"hel",
            "a lost staging file is not touched"
        );
    }

    #[tokio::test]
    async fn a_staged_file_that_is_also_a_blob_is_never_written() {
        // A commit linked the staged file under its digest and then failed (or was cancelled,
        // or the process died) before unlinking the staged name: both names are one file.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let state = staged_hello(&store, "s").await;
        let blob = dir.path().join("committed-elsewhere");
        std::fs::hard_link(dir.path().join("uploads/s"), &blob).expect("link");

        let mut again = state.clone();
        assert!(matches!(
            store.append("s", 5, &mut again, body(b"!"), ()).await,
            Err(Error::Lost(_))
        ));
        // A monolithic PUT restarting the session at offset 0 would truncate it.
        let mut fresh = UploadState::new();
        assert!(matches!(
            store.append("s", 0, &mut fresh, body(b"other"), ()).await,
            Err(Error::Lost(_))
        ));
        assert!(matches!(
            store
                .finish("s", 0, &UploadState::new(), body(b"other"), ())
                .await,
            Err(Error::Lost(_))
        ));
        assert_eq!(std::fs::read(&blob).expect("blob"), b"hello");
    }

    #[test]
    fn filesystems_without_hard_links_are_recognised() {
        use std::io::{Error as IoError, ErrorKind};
        assert!(super::links_unsupported(&IoError::from_raw_os_error(
            libc::EOPNOTSUPP
        )));
        assert!(super::links_unsupported(&IoError::from_raw_os_error(
            libc::EPERM
        )));
        assert!(super::links_unsupported(&IoError::from_raw_os_error(
            libc::ENOSYS
        )));
        assert!(!super::links_unsupported(&IoError::from(
            ErrorKind::AlreadyExists
        )));
        assert!(!super::links_unsupported(&IoError::from_raw_os_error(
            libc::ENOSPC
        )));
    }

    #[tokio::test]
    async fn committing_keeps_a_stored_blob_and_drops_the_staged_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(dir.path()).expect("store");
        let first = store
            .finish("one", 0, &UploadState::new(), body(b"same bytes"), ())
            .await
            .expect("finish");
        let digest = first.digest.clone();
        let blob = dir.path().join(format!(
            "blobs/sha256/{}/{}",
            &digest.hex()[..2],
            digest.hex()
        ));
        store.commit(first).await.expect("commit");
        let stored = std::fs::metadata(&blob).expect("blob").ino();

        let second = store
            .finish("two", 0, &UploadState::new(), body(b"same bytes"), ())
            .await
            .expect("finish");
        store
            .commit(second)
            .await
            .expect("a second commit succeeds");
        assert_eq!(
            std::fs::metadata(&blob).expect("blob").ino(),
            stored,
            "the stored file was not replaced"
        );
        assert!(!dir.path().join("uploads/two").exists());

        // A stored file of the wrong size is reported, not overwritten.
        std::fs::write(&blob, b"rot").expect("damage");
        let third = store
            .finish("three", 0, &UploadState::new(), body(b"same bytes"), ())
            .await
            .expect("finish");
        assert!(matches!(store.commit(third).await, Err(Error::Storage(_))));
        assert_eq!(std::fs::read(&blob).expect("blob"), b"rot");
    }

    #[tokio::test]
    async fn a_dropped_request_keeps_its_claim_until_its_writing_thread_exits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(BlobStore::local(dir.path()).expect("store"));
        // One full batch, so it is handed over at once, then a client that goes quiet.
        let (gate, in_thread, release) = crate::testing::gated_chunk(vec![b'a'; BATCH_BYTES]);
        let quiet = stream::iter([Ok::<_, Infallible>(gate)]).chain(stream::pending());
        // The claim is a sender: its receiver sees when it is dropped.
        let (claim, mut claimed) = oneshot::channel::<()>();
        let request = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                let mut state = UploadState::new();
                store.append("gated", 0, &mut state, quiet, claim).await
            }
        });
        in_thread.await.expect("the writing thread holds the chunk");
        request.abort();
        assert!(request.await.expect_err("cancelled").is_cancelled());

        assert_eq!(
            claimed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the request is gone, but its thread still writes: the session stays claimed"
        );
        release.send(()).expect("release the thread");
        assert!(
            claimed.await.is_err(),
            "the claim is dropped when the thread exits"
        );

        // The next writer has the file to itself.
        let mut state = UploadState::new();
        store
            .append("gated", 0, &mut state, body(b"mine"), ())
            .await
            .expect("append");
        assert_eq!(
            std::fs::read(dir.path().join("uploads/gated")).expect("staged"),
            b"mine"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_uploads_hold_no_thread_so_other_uploads_proceed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(BlobStore::local(dir.path()).expect("store"));
        // More clients that sent a byte and went quiet than tokio has blocking threads (512).
        let quiet_clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let idle: Vec<_> = (0..600)
            .map(|n| {
                let store = Arc::clone(&store);
                let quiet_clients = Arc::clone(&quiet_clients);
                tokio::spawn(async move {
                    let mut sent = false;
                    let quiet = stream::poll_fn(move |_| {
                        if sent {
                            quiet_clients.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return std::task::Poll::Pending;
                        }
                        sent = true;
                        std::task::Poll::Ready(Some(Ok::<_, Infallible>(Bytes::from_static(b"x"))))
                    });
                    let mut state = UploadState::new();
                    store
                        .append(&format!("idle-{n}"), 0, &mut state, quiet, ())
                        .await
                })
            })
            .collect();
        while quiet_clients.load(std::sync::atomic::Ordering::SeqCst) < 600 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut state = UploadState::new();
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            store.append("busy", 0, &mut state, body(b"still served"), ()),
        )
        .await
        .expect("an upload is written while 600 others wait for their clients")
        .expect("append");
        assert_eq!(written, 12);
        for upload in idle {
            upload.abort();
        }
    }
}
