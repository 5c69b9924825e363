//! The blob store's behaviour suite on object stores, run against each real server `testing`
//! starts: SeaweedFS (S3) and Azurite (Azure). One server per backend, one test each, every
//! scenario in turn on a key prefix of its own. Where a backend differs by design (Azure signs
//! no URLs and has no resumable multipart uploads), the scenario says so.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use sha2::Digest as _;

use crate::testing::{AzuriteServer, S3Server, StoreServer};
use crate::{Backend, BlobStore, Error, UploadState, MIN_PART_SIZE};

const MIB: usize = 1024 * 1024;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A request body carrying `bytes` in chunks of at most 64 KiB, as a socket delivers them.
fn body(bytes: &[u8]) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Send {
    let chunks: Vec<Result<Bytes, String>> = bytes
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

fn digest_of(bytes: &[u8]) -> oci::Digest {
    format!(
        "sha256:{}",
        oci::digest::to_hex(&sha2::Sha256::digest(bytes))
    )
    .parse()
    .expect("digest")
}

async fn read_all(store: &BlobStore, digest: &oci::Digest) -> Vec<u8> {
    let read = store.read(digest, None).await.expect("read");
    let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("stream");
    chunks.concat()
}

async fn staged_objects(store: &BlobStore, session: &str) -> Vec<String> {
    let prefix = Path::from(format!("uploads/{session}"));
    let mut names: Vec<String> = store
        .objects
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .expect("list");
    names.sort();
    names
}

/// Appends like the registry does: advance, then release what the old state staged.
async fn append(store: &BlobStore, session: &str, state: &mut UploadState, bytes: &[u8]) {
    let before = state.clone();
    let written = store
        .append(session, before.length(), state, body(bytes), ())
        .await
        .expect("append");
    assert_eq!(written, bytes.len() as u64);
    store.release(session, &before, state).await;
}

#[tokio::test]
async fn uploads_on_a_real_s3_server() {
    behaviour(S3Server::start()).await;
}

#[tokio::test]
async fn uploads_on_azurite() {
    behaviour(AzuriteServer::start()).await;
}

async fn behaviour(server: impl StoreServer) {
    small_blob_in_one_request_with_ranges_and_a_presigned_url(&server).await;
    chunks_of_any_size_become_uniform_parts_and_one_tail(&server).await;
    another_replica_continues_and_finishes_a_session(&server).await;
    a_failed_chunk_changes_nothing_recorded(&server).await;
    a_racing_request_cannot_slip_its_bytes_into_the_blob(&server).await;
    two_finishes_of_one_fresh_session_complete_different_objects(&server).await;
    a_wrong_digest_removes_everything_staged(&server).await;
    a_stored_blob_is_never_rewritten_and_lost_bytes_are_not_replaced(&server).await;
    a_single_node_copies_its_blobs_into_the_bucket(&server).await;
    an_outage_is_reported_as_unavailable(server).await;
}

async fn small_blob_in_one_request_with_ranges_and_a_presigned_url(server: &impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let bytes = data(100 * 1024, 1);
    let finishing = store
        .finish("small", 0, &UploadState::new(), body(&bytes), ())
        .await
        .expect("finish");
    assert_eq!(finishing.digest, digest_of(&bytes));
    let digest = finishing.digest.clone();
    store.commit(finishing).await.expect("commit");
    assert_eq!(read_all(&store, &digest).await, bytes);
    let range = store
        .read(&digest, Some(oci::ByteRange { start: 10, end: 19 }))
        .await
        .expect("ranged read");
    assert_eq!(range.size, bytes.len() as u64);
    let chunks: Vec<Bytes> = range.stream.try_collect().await.expect("stream");
    assert_eq!(chunks.concat(), &bytes[10..20]);
    assert!(staged_objects(&store, "small").await.is_empty());

    let signed = store
        .presigned_url(&digest, std::time::Duration::from_secs(60))
        .await
        .expect("sign");
    if let Backend::Azure(_) = server.settings().backend {
        assert_eq!(signed, None, "object_store signs no Azure URLs");
    } else {
        check_presigned_url(&signed.expect("S3 signs URLs"), &bytes).await;
    }

    let empty = store
        .finish("empty", 0, &UploadState::new(), body(&[]), ())
        .await
        .expect("finish");
    let empty_digest = empty.digest.clone();
    store.commit(empty).await.expect("commit an empty blob");
    assert!(read_all(&store, &empty_digest).await.is_empty());
}

async fn check_presigned_url(url: &str, bytes: &[u8]) {
    let fetched = reqwest_tls::get(url)
        .await
        .expect("fetch the presigned URL")
        .error_for_status()
        .expect("the presigned URL is accepted")
        .bytes()
        .await
        .expect("body");
    assert_eq!(fetched.as_ref(), bytes);
    let mut tampered = url.to_owned();
    tampered.push('0');
    let refused = reqwest_tls::get(&tampered).await.expect("request");
    assert_eq!(
        refused.status().as_u16(),
        403,
        "a tampered signature is refused"
    );
}

async fn chunks_of_any_size_become_uniform_parts_and_one_tail(server: &impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let bytes = data(3 * MIN_PART_SIZE + 123, 2);
    let cuts = [0, 3 * MIB, 7 * MIB, 7 * MIB + 1, 13 * MIB, bytes.len() - 10];
    let mut state = UploadState::new();
    for window in cuts.windows(2) {
        append(&store, "chunked", &mut state, &bytes[window[0]..window[1]]).await;
        let parted = state.staged.parted() as usize;
        assert_eq!(parted % MIN_PART_SIZE, 0, "parts are uniform");
        let tail = state.staged.tail.as_ref().map_or(0, |t| t.size as usize);
        assert_eq!(parted + tail, window[1]);
        let staged = staged_objects(&store, "chunked").await;
        let tails = staged.iter().filter(|name| name.contains("/tail-")).count();
        assert_eq!(tails, usize::from(tail > 0), "one tail at most: {staged:?}");
        // The record survives a round trip through the metadata store's bytes.
        state = UploadState::decode(&state.hash_bytes(), &state.storage_bytes()).expect("decode");
    }
    let finishing = store
        .finish(
            "chunked",
            state.length(),
            &state,
            body(&bytes[bytes.len() - 10..]),
            (),
        )
        .await
        .expect("finish");
    assert_eq!(finishing.digest, digest_of(&bytes));
    let digest = finishing.digest.clone();
    store.commit(finishing).await.expect("commit");
    assert_eq!(read_all(&store, &digest).await, bytes);
    assert!(
        staged_objects(&store, "chunked").await.is_empty(),
        "nothing staged remains"
    );
}

async fn another_replica_continues_and_finishes_a_session(server: &impl StoreServer) {
    let settings = server.settings();
    let a = BlobStore::remote(&settings).expect("replica a");
    let b = BlobStore::remote(&settings).expect("replica b");
    let bytes = data(MIN_PART_SIZE + 2 * MIB, 3);
    let mut state = UploadState::new();
    append(&a, "moving", &mut state, &bytes[..MIN_PART_SIZE + MIB]).await;
    // Only the record's bytes travel between replicas.
    let record = (state.hash_bytes(), state.storage_bytes());
    let state = UploadState::decode(&record.0, &record.1).expect("decode");
    let finishing = b
        .finish(
            "moving",
            state.length(),
            &state,
            body(&bytes[MIN_PART_SIZE + MIB..]),
            (),
        )
        .await
        .expect("finish on b");
    assert_eq!(finishing.digest, digest_of(&bytes));
    let digest = finishing.digest.clone();
    b.commit(finishing).await.expect("commit on b");
    assert_eq!(
        read_all(&a, &digest).await,
        bytes,
        "a reads what b committed"
    );
}

async fn a_failed_chunk_changes_nothing_recorded(server: &impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let bytes = data(2 * MIN_PART_SIZE, 4);
    let mut state = UploadState::new();
    append(&store, "failing", &mut state, &bytes[..MIB]).await;
    let before = state.clone();
    let staged_before = staged_objects(&store, "failing").await;
    // A part's worth of garbage, then the connection drops.
    let garbage = data(MIN_PART_SIZE + MIB, 99);
    let failing = body(&garbage).chain(stream::iter(vec![Err("connection reset".to_owned())]));
    let result = store
        .append("failing", state.length(), &mut state, failing, ())
        .await;
    assert!(matches!(result, Err(Error::Body(_))), "{:?}", result.err());
    assert_eq!(state, before, "the state is untouched");
    assert_eq!(
        staged_objects(&store, "failing").await,
        staged_before,
        "the failed request removed what it staged"
    );
    append(&store, "failing", &mut state, &bytes[MIB..]).await;
    let finishing = store
        .finish("failing", state.length(), &state, body(&[]), ())
        .await
        .expect("finish");
    assert_eq!(finishing.digest, digest_of(&bytes));
    let digest = finishing.digest.clone();
    store.commit(finishing).await.expect("commit");
    assert_eq!(read_all(&store, &digest).await, bytes);
}

async fn a_racing_request_cannot_slip_its_bytes_into_the_blob(server: &impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let start = data(MIB, 5);
    let mut state = UploadState::new();
    append(&store, "race", &mut state, &start).await;
    // Two requests continue from the same record. The winner's advance is recorded; the
    // loser's part (the same part number) lands after it, then the loser cleans up.
    let winner_bytes = data(MIN_PART_SIZE, 6);
    let loser_bytes = data(MIN_PART_SIZE, 7);
    let mut winner = state.clone();
    store
        .append("race", state.length(), &mut winner, body(&winner_bytes), ())
        .await
        .expect("winner");
    let mut loser = state.clone();
    store
        .append("race", state.length(), &mut loser, body(&loser_bytes), ())
        .await
        .expect("loser");
    store.release("race", &loser, &state).await;
    store.release("race", &state, &winner).await;

    let finishing = store
        .finish("race", winner.length(), &winner, body(&[]), ())
        .await
        .expect("finish");
    let expected = [start.as_slice(), winner_bytes.as_slice()].concat();
    assert_eq!(finishing.digest, digest_of(&expected));
    let digest = finishing.digest.clone();
    match store.commit(finishing).await {
        Ok(()) => assert_eq!(
            read_all(&store, &digest).await,
            expected,
            "a committed blob holds exactly the recorded bytes"
        ),
        // The store noticed the overwritten part: the push fails and nothing is stored.
        Err(err) => assert!(
            matches!(store.read(&digest, None).await, Err(Error::Missing(_))),
            "{err}"
        ),
    }
}

async fn two_finishes_of_one_fresh_session_complete_different_objects(server: &impl StoreServer) {
    // Two replicas finish one session at once (a client retrying its PUT through the balancer,
    // or a hostile one sending other bytes): each starts a multipart upload of its own. Were
    // both completed to one object, one replica could copy the other's bytes under its digest.
    let store = BlobStore::remote(&server.settings()).expect("store");
    let fresh = UploadState::new();
    let first_bytes = data(MIN_PART_SIZE + MIB, 8);
    let second_bytes = data(MIN_PART_SIZE + MIB, 9);
    let first = store
        .finish("twice", 0, &fresh, body(&first_bytes), ())
        .await
        .expect("first finish");
    let second = store
        .finish("twice", 0, &fresh, body(&second_bytes), ())
        .await
        .expect("second finish");
    let (first_staged, second_staged) = (&first.state.staged, &second.state.staged);
    if first_staged.multipart.is_some() {
        assert!(
            first_staged.data.is_some(),
            "the multipart upload is named by a key"
        );
        assert_ne!(
            first_staged.data, second_staged.data,
            "each multipart upload has an object of its own"
        );
    } else {
        // Without multipart uploads (Azure) every part is an object under a fresh name.
        assert_ne!(
            first_staged.parts, second_staged.parts,
            "each finish staged parts of its own"
        );
    }
    let (first_digest, second_digest) = (first.digest.clone(), second.digest.clone());
    store.commit(first).await.expect("first commit");
    store.commit(second).await.expect("second commit");
    assert_eq!(read_all(&store, &first_digest).await, first_bytes);
    assert_eq!(read_all(&store, &second_digest).await, second_bytes);
}

async fn a_wrong_digest_removes_everything_staged(server: &impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let bytes = data(MIN_PART_SIZE + MIB, 8);
    let mut state = UploadState::new();
    append(&store, "wrong", &mut state, &bytes[..MIN_PART_SIZE + 10]).await;
    let finishing = store
        .finish(
            "wrong",
            state.length(),
            &state,
            body(&bytes[MIN_PART_SIZE + 10..]),
            (),
        )
        .await
        .expect("finish");
    store.abort("wrong", &finishing.state).await.expect("abort");
    assert!(staged_objects(&store, "wrong").await.is_empty());
    store
        .abort("wrong", &finishing.state)
        .await
        .expect("abort is idempotent");
    assert!(matches!(
        store.read(&digest_of(&bytes), None).await,
        Err(Error::Missing(_))
    ));
}

async fn a_stored_blob_is_never_rewritten_and_lost_bytes_are_not_replaced(
    server: &impl StoreServer,
) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    // Whatever a blob path holds stays: here a stand-in of the right size, so that a rewrite
    // would show.
    for (session, len) in [
        ("stored-small", 1000),
        ("stored-parted", MIN_PART_SIZE + 10),
    ] {
        let bytes = data(len, 10);
        let digest = digest_of(&bytes);
        let stand_in = data(len, 11);
        store
            .objects
            .put(&crate::blob_path(&digest), stand_in.clone().into())
            .await
            .expect("store a stand-in");
        let mut state = UploadState::new();
        append(&store, session, &mut state, &bytes[..len - 10]).await;
        let finishing = store
            .finish(
                session,
                state.length(),
                &state,
                body(&bytes[len - 10..]),
                (),
            )
            .await
            .expect("finish");
        assert_eq!(finishing.digest, digest);
        store.commit(finishing).await.expect("commit");
        assert_eq!(
            read_all(&store, &digest).await,
            stand_in,
            "the stored object was not rewritten"
        );
        assert!(
            staged_objects(&store, session).await.is_empty(),
            "the staged copy is gone"
        );
    }

    // A recorded tail that is gone is lost, not an outage to retry.
    let mut state = UploadState::new();
    append(&store, "lost", &mut state, &data(1000, 12)).await;
    for name in staged_objects(&store, "lost").await {
        store
            .objects
            .delete(&Path::from(name))
            .await
            .expect("delete");
    }
    assert!(matches!(
        store
            .finish("lost", state.length(), &state, body(b"more"), ())
            .await,
        Err(Error::Lost(_))
    ));

    // Aborting removes what the record never held, such as a dropped request's tail.
    let mut state = UploadState::new();
    append(&store, "strays", &mut state, &data(1000, 13)).await;
    store
        .objects
        .put(
            &Path::from("uploads/strays/tail-dropped"),
            Bytes::from_static(b"stray").into(),
        )
        .await
        .expect("a stray tail");
    store.abort("strays", &state).await.expect("abort");
    assert!(staged_objects(&store, "strays").await.is_empty());
}

async fn a_single_node_copies_its_blobs_into_the_bucket(server: &impl StoreServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = BlobStore::local(dir.path()).expect("local store");
    let mut digests = Vec::new();
    for (n, len) in [0usize, 1000, MIN_PART_SIZE + 7].into_iter().enumerate() {
        let bytes = data(len, 20 + n as u8);
        let finishing = local
            .finish(
                &format!("copy-{n}"),
                0,
                &UploadState::new(),
                body(&bytes),
                (),
            )
            .await
            .expect("finish");
        digests.push((finishing.digest.clone(), bytes));
        local.commit(finishing).await.expect("commit");
    }
    let remote = BlobStore::remote(&server.settings()).expect("store");
    let (blobs, bytes) = local.copy_blobs_into(&remote).await.expect("copy");
    assert_eq!((blobs, bytes), (3, 1000 + MIN_PART_SIZE as u64 + 7));
    for (digest, bytes) in &digests {
        assert_eq!(&read_all(&remote, digest).await, bytes);
    }
    assert_eq!(
        local.copy_blobs_into(&remote).await.expect("copy again"),
        (0, 0),
        "a second run copies nothing"
    );

    // A blob whose bytes rotted on disk is refused, not uploaded under its digest.
    let (digest, _) = &digests[1];
    let hex = digest.hex();
    std::fs::write(
        dir.path().join(format!("blobs/sha256/{}/{hex}", &hex[..2])),
        b"rotten",
    )
    .expect("damage a blob");
    let other = BlobStore::remote(&server.settings()).expect("store");
    assert!(matches!(
        local.copy_blobs_into(&other).await,
        Err(Error::Storage(ref text)) if text.contains("does not hold")
    ));
}

async fn an_outage_is_reported_as_unavailable(mut server: impl StoreServer) {
    let store = BlobStore::remote(&server.settings()).expect("store");
    let bytes = data(1000, 9);
    let finishing = store
        .finish("outage", 0, &UploadState::new(), body(&bytes), ())
        .await
        .expect("finish");
    let digest = finishing.digest.clone();
    store.commit(finishing).await.expect("commit");
    server.stop();
    assert!(matches!(
        store.read(&digest, None).await,
        Err(Error::Unavailable(_))
    ));
    let mut state = UploadState::new();
    assert!(matches!(
        store
            .append("outage-2", 0, &mut state, body(&data(MIN_PART_SIZE, 1)), ())
            .await,
        Err(Error::Unavailable(_))
    ));
    server.resume();
    // The gateway answers before its volume server has re-registered; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let read = loop {
        match store.read(&digest, None).await {
            Ok(read) => break read,
            Err(Error::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the store did not come back: {err}"),
        }
    };
    let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("stream");
    assert_eq!(chunks.concat(), bytes, "back by itself, blob intact");
}
