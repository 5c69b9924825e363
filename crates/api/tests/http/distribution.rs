//! The `/v2` distribution API against the OCI distribution spec v1.1, in-process: pull, push,
//! content discovery and content management, as the spec's conformance suite checks them, plus
//! the limits and failure paths a registry must get right (ranges, sizes, names, errors, upload
//! expiry).

use std::time::Duration;

use crate::support::{
    call, descriptor, digest, image_config, oci_image, test_limits, Manifest, TestRegistry,
    MAX_MANIFEST_BYTES,
};
use futures_util::StreamExt as _;
use oci::media_type::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V1_SIGNED, OCI_EMPTY, OCI_INDEX,
    OCI_MANIFEST,
};
use registry::Limits;
use serde_json::{json, Value};

const EMPTY_JSON: &[u8] = b"{}";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIGNATURE: &str = "application/vnd.example.signature.v1";
/// A well-formed digest no test ever pushes.
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn upload_id(location: &str) -> &str {
    location.rsplit('/').next().expect("a location path")
}

/// The empty config of artifacts: `application/vnd.oci.empty.v1+json`, the blob `{}`.
fn empty_config() -> Value {
    json!({ "mediaType": OCI_EMPTY, "digest": digest(EMPTY_JSON), "size": 2, "data": "e30=" })
}

fn artifact(artifact_type: &str, layer: &[u8], extra: Value) -> Manifest {
    let mut value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty_config(),
        "layers": [descriptor("application/json", layer)],
    });
    if let (Some(value), Value::Object(extra)) = (value.as_object_mut(), extra) {
        value.extend(extra);
    }
    Manifest::new(OCI_MANIFEST, &value)
}

fn subject(manifest: &Manifest) -> Value {
    json!({ "subject": manifest.descriptor() })
}

fn tags(reply: &crate::support::Reply) -> Vec<String> {
    serde_json::from_value(reply.json()["tags"].clone()).expect("a tags array")
}

// Base

#[tokio::test]
async fn the_base_endpoint_says_the_registry_speaks_v2() {
    let registry = TestRegistry::start().await;
    for (method, path) in [("GET", "/v2/"), ("HEAD", "/v2/"), ("GET", "/v2")] {
        registry
            .send(call(method, path))
            .await
            .expect(200)
            .expect_header("docker-distribution-api-version", "registry/2.0");
    }
}

// Blob uploads

#[tokio::test]
async fn post_opens_an_upload_session_with_location_range_and_uuid() {
    let registry = TestRegistry::start().await;
    for path in ["/v2/team/app/blobs/uploads/", "/v2/team/app/blobs/uploads"] {
        let reply = registry.send(call("POST", path)).await;
        reply
            .expect(202)
            .expect_header("range", "0-0")
            .expect_header("content-length", "0");
        let location = reply.header("location");
        let id = location
            .strip_prefix("/v2/team/app/blobs/uploads/")
            .unwrap_or_else(|| panic!("location {location} is not an upload of team/app"));
        assert!(uuid::Uuid::try_parse(id).is_ok(), "upload id {id}");
        reply.expect_header("docker-upload-uuid", id);
        registry
            .get(location)
            .await
            .expect(204)
            .expect_header("range", "0-0")
            .expect_header("location", location);
    }
}

#[tokio::test]
async fn a_single_post_with_a_digest_pushes_a_blob() {
    let registry = TestRegistry::start().await;
    let blob = b"pushed in one request";
    let digest = digest(blob);
    let encoded = digest.replace(':', "%3A");
    for (repository, query) in [("one", &digest), ("two", &encoded)] {
        registry
            .send(
                call(
                    "POST",
                    format!("/v2/{repository}/blobs/uploads/?digest={query}"),
                )
                .octets(blob),
            )
            .await
            .expect(201)
            .expect_header("location", &format!("/v2/{repository}/blobs/{digest}"))
            .expect_header("docker-content-digest", &digest);
        registry
            .get(format!("/v2/{repository}/blobs/{digest}"))
            .await
            .expect(200)
            .expect_body(blob);
    }
}

#[tokio::test]
async fn post_then_put_with_the_whole_body_pushes_a_blob() {
    let registry = TestRegistry::start().await;
    let blob = b"pushed by POST then PUT";
    let digest = digest(blob);
    let location = registry.start_upload("app").await;
    registry
        .send(call("PUT", format!("{location}?digest={digest}")).octets(blob))
        .await
        .expect(201)
        .expect_header("location", &format!("/v2/app/blobs/{digest}"))
        .expect_header("docker-content-digest", &digest);
    registry
        .get(format!("/v2/app/blobs/{digest}"))
        .await
        .expect(200)
        .expect_body(blob);
    registry
        .get(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_uploads_append_in_order_and_close_with_put() {
    let blob = b"0123456789abcdefghijABCDEFGHIJ";
    type Chunk = (Option<&'static str>, std::ops::Range<usize>);
    let cases: Vec<(&str, Vec<Chunk>, Option<Chunk>)> = vec![
        (
            "two ranged PATCHes, empty PUT",
            vec![(Some("0-9"), 0..10), (Some("10-29"), 10..30)],
            None,
        ),
        (
            "ranged PATCH, last chunk in the PUT",
            vec![(Some("0-9"), 0..10)],
            Some((None, 10..30)),
        ),
        (
            "ranged PATCH, ranged last chunk in the PUT",
            vec![(Some("0-9"), 0..10)],
            Some((Some("10-29"), 10..30)),
        ),
        (
            "streamed PATCHes without Content-Range",
            vec![(None, 0..10), (None, 10..20), (None, 20..30)],
            None,
        ),
        (
            "RFC 9110 Content-Range form",
            vec![
                (Some("bytes 0-14/*"), 0..15),
                (Some("bytes 15-29/30"), 15..30),
            ],
            None,
        ),
    ];
    let registry = TestRegistry::start().await;
    let digest = digest(blob);
    for (i, (case, patches, last)) in cases.into_iter().enumerate() {
        let repository = format!("chunked/case{i}");
        let location = registry.start_upload(&repository).await;
        let id = upload_id(&location).to_owned();
        for (content_range, range) in patches {
            let end = range.end - 1;
            let mut patch = call("PATCH", &location).octets(&blob[range]);
            if let Some(content_range) = content_range {
                patch = patch.header("content-range", content_range);
            }
            let reply = registry.send(patch).await;
            reply
                .expect(202)
                .expect_header("location", &location)
                .expect_header("range", &format!("0-{end}"))
                .expect_header("docker-upload-uuid", &id);
            registry
                .get(&location)
                .await
                .expect(204)
                .expect_header("location", &location)
                .expect_header("range", &format!("0-{end}"));
        }
        let mut put = call("PUT", format!("{location}?digest={digest}"));
        if let Some((content_range, range)) = last {
            put = put.octets(&blob[range]);
            if let Some(content_range) = content_range {
                put = put.header("content-range", content_range);
            }
        }
        registry
            .send(put)
            .await
            .expect(201)
            .expect_header("location", &format!("/v2/{repository}/blobs/{digest}"))
            .expect_header("docker-content-digest", &digest);
        let reply = registry
            .get(format!("/v2/{repository}/blobs/{digest}"))
            .await;
        assert!(reply.body == blob[..], "{case}: read back {:?}", reply.body);
        registry
            .get(&location)
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[tokio::test]
async fn a_refused_upload_body_is_read_before_the_error_is_sent() {
    // Answering before the body is read makes the kernel reset the connection, and an HTTP/1
    // client still sending loses the answer: a failed request's body is drained first.
    let registry = TestRegistry::start().await;
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pulled.clone();
    let chunks = futures_util::stream::iter(0..4).map(move |_| {
        counter.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 * 1024]))
    });
    registry
        .send(
            call(
                "PATCH",
                "/v2/app/blobs/uploads/0b8a2d6e-7c4f-4f7e-9d0a-3a1e5c2b9f10",
            )
            .body_stream(axum::body::Body::from_stream(chunks)),
        )
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(
        pulled.load(std::sync::atomic::Ordering::Relaxed),
        4 * 64 * 1024,
        "the whole refused body was read"
    );
}

#[tokio::test]
async fn an_out_of_order_chunk_is_refused_with_416_and_the_current_range() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("app").await;
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "1-10")
                .octets(&[b'x'; 10]),
        )
        .await
        .expect_error(416, "BLOB_UPLOAD_INVALID")
        .expect_header("range", "0-0")
        .expect_header("location", &location);
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "0-9")
                .octets(&[b'a'; 10]),
        )
        .await
        .expect(202);
    for content_range in ["0-9", "5-14", "9-18", "11-20", "20-29"] {
        registry
            .send(
                call("PATCH", &location)
                    .header("content-range", content_range)
                    .octets(&[b'x'; 10]),
            )
            .await
            .expect_error(416, "BLOB_UPLOAD_INVALID")
            .expect_header("range", "0-9");
    }
    let whole = [[b'a'; 10], [b'b'; 10]].concat();
    registry
        .send(
            call("PUT", format!("{location}?digest={}", digest(&whole)))
                .header("content-range", "12-21")
                .octets(&[b'b'; 10]),
        )
        .await
        .expect_error(416, "BLOB_UPLOAD_INVALID")
        .expect_header("range", "0-9");
    registry
        .get(&location)
        .await
        .expect(204)
        .expect_header("range", "0-9");
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "10-19")
                .octets(&[b'b'; 10]),
        )
        .await
        .expect(202)
        .expect_header("range", "0-19");
    registry
        .send(call("PUT", format!("{location}?digest={}", digest(&whole))))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_content_range_announcing_another_length_than_the_body_is_refused() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("app").await;
    // As long as u64 itself: the length must not overflow (a panic in debug builds, a
    // wrapped zero that an empty body would "match" in release ones).
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "0-18446744073709551615")
                .octets(b""),
        )
        .await
        .expect_error(400, "BLOB_UPLOAD_INVALID");
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "0-9")
                .octets(b"0123456789"),
        )
        .await
        .expect(202);
    for (content_range, body) in [("10-19", &b"short"[..]), ("10-14", &b"much longer"[..])] {
        registry
            .send(
                call("PATCH", &location)
                    .header("content-range", content_range)
                    .octets(body),
            )
            .await
            .expect_error(400, "BLOB_UPLOAD_INVALID");
        registry
            .get(&location)
            .await
            .expect(204)
            .expect_header("range", "0-9");
    }
    // The refused bytes were written to staging; none of them may end up in the blob.
    registry
        .send(
            call("PATCH", &location)
                .header("content-range", "10-14")
                .octets(b"abcde"),
        )
        .await
        .expect(202)
        .expect_header("range", "0-14");
    let blob = b"0123456789abcde";
    let digest = digest(blob);
    registry
        .send(call("PUT", format!("{location}?digest={digest}")))
        .await
        .expect(201);
    registry
        .get(format!("/v2/app/blobs/{digest}"))
        .await
        .expect(200)
        .expect_header("content-length", "15")
        .expect_body(blob);
}

#[tokio::test]
async fn a_wrong_digest_ends_the_session_and_publishes_nothing() {
    let registry = TestRegistry::start().await;
    let blob = b"the bytes actually sent";
    let claimed = digest(b"some other bytes");
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    for (i, wrong) in [claimed.as_str(), sha512.as_str()].into_iter().enumerate() {
        let repository = format!("wrong/digest{i}");
        // Chunked, then closed with the wrong digest.
        let location = registry.start_upload(&repository).await;
        registry
            .send(call("PATCH", &location).octets(blob))
            .await
            .expect(202);
        assert!(registry.staging_file(upload_id(&location)).exists());
        registry
            .send(call("PUT", format!("{location}?digest={wrong}")))
            .await
            .expect_error(400, "DIGEST_INVALID");
        registry
            .get(&location)
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        assert!(
            !registry.staging_file(upload_id(&location)).exists(),
            "the refused bytes are removed"
        );
        // In one POST.
        registry
            .send(
                call(
                    "POST",
                    format!("/v2/{repository}/blobs/uploads/?digest={wrong}"),
                )
                .octets(blob),
            )
            .await
            .expect_error(400, "DIGEST_INVALID");
        for visible in [wrong, digest(blob).as_str()] {
            registry
                .get(format!("/v2/{repository}/blobs/{visible}"))
                .await
                .expect_error(404, "BLOB_UNKNOWN");
        }
    }
    let staged = std::fs::read_dir(registry.storage().join("uploads"))
        .expect("the staging directory")
        .count();
    assert_eq!(staged, 0, "no staged bytes are left behind");
}

#[tokio::test]
async fn closing_an_upload_needs_a_well_formed_digest() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("app").await;
    registry
        .send(call("PATCH", &location).octets(b"bytes"))
        .await
        .expect(202);
    for query in ["", "?digest=", "?digest=sha256:abc", "?digest=bogus"] {
        registry
            .send(call("PUT", format!("{location}{query}")))
            .await
            .expect_error(400, "DIGEST_INVALID");
    }
    // A malformed request is refused before it reaches the session, which the client may
    // still close properly.
    registry
        .get(&location)
        .await
        .expect(204)
        .expect_header("range", "0-4");
    registry
        .send(call(
            "PUT",
            format!("{location}?digest={}", digest(b"bytes")),
        ))
        .await
        .expect(201);
}

#[tokio::test]
async fn unknown_upload_ids_are_404_blob_upload_unknown() {
    let registry = TestRegistry::start().await;
    let fresh = uuid::Uuid::new_v4().to_string();
    for id in [
        "not-a-uuid",
        "..",
        // Decodes to a path: it is the upload id that is wrong, not the repository name.
        "..%2F..%2Fetc",
        "%ZZ",
        "00000000-0000-0000-0000-000000000000",
        fresh.as_str(),
    ] {
        let location = format!("/v2/app/blobs/uploads/{id}");
        for request in [
            call("GET", &location),
            call("PATCH", &location).octets(b"chunk"),
            call("PUT", format!("{location}?digest={}", digest(b"chunk"))),
            call("DELETE", &location),
        ] {
            registry
                .send(request)
                .await
                .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        }
    }
}

#[tokio::test]
async fn an_upload_session_is_invisible_from_another_repository() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("team/a").await;
    let id = upload_id(&location);
    let elsewhere = format!("/v2/team/b/blobs/uploads/{id}");
    let blob = b"belongs to team/a";
    let digest = digest(blob);
    for request in [
        call("GET", &elsewhere),
        call("PATCH", &elsewhere).octets(blob),
        call("PUT", format!("{elsewhere}?digest={digest}")).octets(blob),
        call("DELETE", &elsewhere),
    ] {
        registry
            .send(request)
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    registry
        .send(call("PUT", format!("{location}?digest={digest}")).octets(blob))
        .await
        .expect(201);
    registry
        .get(format!("/v2/team/a/blobs/{digest}"))
        .await
        .expect(200);
    registry
        .get(format!("/v2/team/b/blobs/{digest}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn cancelling_an_upload_ends_the_session_and_drops_its_bytes() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("app").await;
    registry
        .send(call("PATCH", &location).octets(b"abandoned"))
        .await
        .expect(202);
    let staging = registry.staging_file(upload_id(&location));
    assert!(staging.exists(), "the chunk is staged");
    registry.delete(&location).await.expect(204);
    assert!(!staging.exists(), "the staged chunk is removed");
    registry
        .get(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    registry
        .send(call("PATCH", &location).octets(b"more"))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    registry
        .delete(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn an_upload_id_in_another_uuid_spelling_reaches_the_same_session_and_bytes() {
    // Regression: finishing or cancelling through a non-canonical spelling of the session id
    // (which the id parser accepts) looked for the staged bytes under the client's spelling,
    // failing with a 500 and leaving the bytes behind.
    let registry = TestRegistry::start().await;
    let blob = b"staged under the canonical id";
    let digest = digest(blob);
    let spellings: [fn(&str) -> String; 4] = [
        |id| id.to_uppercase(),
        |id| id.replace('-', ""),
        |id| format!("%7B{id}%7D"),
        |id| format!("urn:uuid:{id}"),
    ];
    for (i, spell) in spellings.into_iter().enumerate() {
        let repository = format!("spelling/case{i}");
        let location = registry.start_upload(&repository).await;
        let id = upload_id(&location).to_owned();
        registry
            .send(call("PATCH", &location).octets(blob))
            .await
            .expect(202);
        let respelled = format!("/v2/{repository}/blobs/uploads/{}", spell(&id));
        registry
            .get(&respelled)
            .await
            .expect(204)
            .expect_header("location", &location);
        registry
            .send(call("PUT", format!("{respelled}?digest={digest}")))
            .await
            .expect(201);
        registry
            .get(format!("/v2/{repository}/blobs/{digest}"))
            .await
            .expect_body(blob);

        let location = registry.start_upload(&repository).await;
        let id = upload_id(&location).to_owned();
        registry
            .send(call("PATCH", &location).octets(blob))
            .await
            .expect(202);
        let respelled = format!("/v2/{repository}/blobs/uploads/{}", spell(&id));
        registry.delete(&respelled).await.expect(204);
        assert!(
            !registry.staging_file(&id).exists(),
            "cancelling through {respelled} removes the staged bytes"
        );
    }
}

#[tokio::test]
async fn a_second_writer_on_a_session_is_refused_while_the_first_streams() {
    // Regression: two PATCHes on one session both wrote its staging file, and the
    // compare-and-swap on the session record kept one request's hash while the file kept the
    // other's bytes. A client could so store any bytes under the digest of a blob another
    // repository holds, replacing that repository's blob.
    let registry = TestRegistry::start().await;
    let genuine = vec![b'g'; 64 * 1024];
    let forged = vec![b'f'; 64 * 1024];
    let genuine_digest = registry.push_blob("victim", &genuine).await;
    let location = registry.start_upload("attacker").await;
    let content_range = format!("0-{}", genuine.len() - 1);

    // The first PATCH streams its bytes, then stalls until the second has been answered.
    let (streaming, streams) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first_chunk = bytes::Bytes::from(forged.clone());
    let body = futures_util::stream::once(async move {
        let _ = streaming.send(());
        Ok::<_, std::io::Error>(first_chunk)
    })
    .chain(
        futures_util::stream::once(async move {
            // Released, or its sender dropped: either way the stalled request ends.
            let _ = released.await;
        })
        .filter_map(|()| async { None }),
    );
    let stalled = registry.send(
        call("PATCH", &location)
            .header("content-range", &content_range)
            .body_stream(axum::body::Body::from_stream(body)),
    );
    let racing = async {
        streams.await.expect("the first PATCH streams");
        let reply = registry
            .send(
                call("PATCH", &location)
                    .header("content-range", &content_range)
                    .octets(&genuine),
            )
            .await;
        drop(release);
        reply
    };
    let (stalled, racing) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(stalled, racing)
    })
    .await
    .expect("neither request waits for the other");
    racing.expect_error(400, "BLOB_UPLOAD_INVALID");
    stalled.expect(202).expect_header("range", &content_range);

    registry
        .send(call("PUT", format!("{location}?digest={genuine_digest}")))
        .await
        .expect_error(400, "DIGEST_INVALID");
    registry
        .get(format!("/v2/attacker/blobs/{genuine_digest}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    registry
        .get(format!("/v2/victim/blobs/{genuine_digest}"))
        .await
        .expect(200)
        .expect_body(&genuine);
}

#[tokio::test]
async fn an_empty_blob_uploads_and_reads_back() {
    let registry = TestRegistry::start().await;
    let empty = digest(b"");
    let by_post = call("POST", format!("/v2/one/blobs/uploads/?digest={empty}"));
    registry.send(by_post).await.expect(201);
    let location = registry.start_upload("two").await;
    registry
        .send(call("PUT", format!("{location}?digest={empty}")))
        .await
        .expect(201);
    let location = registry.start_upload("three").await;
    registry
        .send(call("PATCH", &location).octets(b""))
        .await
        .expect(202)
        .expect_header("range", "0-0");
    registry
        .send(call("PUT", format!("{location}?digest={empty}")))
        .await
        .expect(201);
    for repository in ["one", "two", "three"] {
        let path = format!("/v2/{repository}/blobs/{empty}");
        registry
            .get(&path)
            .await
            .expect(200)
            .expect_header("content-length", "0")
            .expect_header("docker-content-digest", &empty)
            .expect_body(b"");
        registry
            .head(&path)
            .await
            .expect(200)
            .expect_header("content-length", "0");
        registry
            .send(call("GET", &path).header("range", "bytes=0-"))
            .await
            .expect(416)
            .expect_header("content-range", "bytes */0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_one_blob_both_succeed() {
    let registry = TestRegistry::start().await;
    let blob: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let digest = digest(&blob);
    for (first, second) in [("same/repo", "same/repo"), ("team/one", "team/two")] {
        let (a, b) = tokio::join!(
            registry.push_blob_in_chunks(first, &blob, 4),
            registry.push_blob_in_chunks(second, &blob, 3),
        );
        a.expect(201);
        b.expect(201);
        for repository in [first, second] {
            registry
                .get(format!("/v2/{repository}/blobs/{digest}"))
                .await
                .expect(200)
                .expect_header("content-length", &blob.len().to_string())
                .expect_body(&blob);
        }
    }
    let post = |repository: &str| {
        registry.send(
            call(
                "POST",
                format!("/v2/{repository}/blobs/uploads/?digest={digest}"),
            )
            .octets(&blob),
        )
    };
    let (a, b) = tokio::join!(post("mono/one"), post("mono/two"));
    a.expect(201);
    b.expect(201);
    for repository in ["mono/one", "mono/two"] {
        registry
            .get(format!("/v2/{repository}/blobs/{digest}"))
            .await
            .expect_body(&blob);
    }
}

// Cross-repository mounts

#[tokio::test]
async fn mount_links_a_blob_only_when_the_source_repository_holds_it() {
    let registry = TestRegistry::start().await;
    let blob = b"a base layer";
    let held = registry.push_blob("team/base", blob).await;
    registry.push_blob("team/other", b"something else").await;
    let cases = [
        (format!("?mount={held}&from=team/base"), true),
        (format!("?mount={held}&from=team%2Fbase"), true),
        (format!("?mount={held}&from=team/other"), false),
        (format!("?mount={held}&from=team/missing"), false),
        (format!("?mount={held}"), false),
        (format!("?mount={ABSENT}&from=team/base"), false),
    ];
    for (i, (query, mounted)) in cases.into_iter().enumerate() {
        let target = format!("mount/case{i}");
        let reply = registry
            .send(call("POST", format!("/v2/{target}/blobs/uploads/{query}")))
            .await;
        if mounted {
            reply
                .expect(201)
                .expect_header("location", &format!("/v2/{target}/blobs/{held}"))
                .expect_header("docker-content-digest", &held);
            registry
                .get(format!("/v2/{target}/blobs/{held}"))
                .await
                .expect(200)
                .expect_body(blob);
        } else {
            reply.expect(202).expect_header("range", "0-0");
            let location = reply.header("location");
            assert!(
                location.starts_with(&format!("/v2/{target}/blobs/uploads/")),
                "{query}: {location}"
            );
            registry.get(location).await.expect(204);
            registry
                .get(format!("/v2/{target}/blobs/{held}"))
                .await
                .expect_error(404, "BLOB_UNKNOWN");
        }
    }
}

// Blobs

#[tokio::test]
async fn blobs_pull_with_exact_bytes_and_headers() {
    let registry = TestRegistry::start().await;
    let blob: Vec<u8> = (0..100u8).collect();
    let digest = registry.push_blob("app", &blob).await;
    let path = format!("/v2/app/blobs/{digest}");
    registry
        .get(&path)
        .await
        .expect(200)
        .expect_header("content-length", "100")
        .expect_header("docker-content-digest", &digest)
        .expect_body(&blob);
    registry
        .head(&path)
        .await
        .expect(200)
        .expect_header("content-length", "100")
        .expect_header("docker-content-digest", &digest);
}

#[tokio::test]
async fn range_requests_return_partial_content() {
    let registry = TestRegistry::start().await;
    let blob: Vec<u8> = (0..100u8).collect();
    let digest = registry.push_blob("app", &blob).await;
    // A 206 carries exactly the bytes its Content-Range names; a 200 the whole blob.
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("bytes=0-9", 206, Some("bytes 0-9/100")),
        ("bytes=10-", 206, Some("bytes 10-99/100")),
        ("bytes=-5", 206, Some("bytes 95-99/100")),
        ("bytes=0-0", 206, Some("bytes 0-0/100")),
        ("bytes=99-", 206, Some("bytes 99-99/100")),
        ("bytes=90-500", 206, Some("bytes 90-99/100")),
        ("bytes=-500", 206, Some("bytes 0-99/100")),
        ("bytes=100-", 416, Some("bytes */100")),
        ("bytes=150-160", 416, Some("bytes */100")),
        ("bytes=-0", 416, Some("bytes */100")),
        // Other units, multiple ranges and malformed ranges are ignored: the whole blob.
        ("items=0-9", 200, None),
        ("bytes=0-1,5-6", 200, None),
        ("bytes=9-0", 200, None),
        ("bytes=5", 200, None),
        ("bytes=x-y", 200, None),
    ];
    for (range, status, content_range) in cases {
        let reply = registry
            .send(call("GET", format!("/v2/app/blobs/{digest}")).header("range", *range))
            .await;
        reply.expect(*status);
        match content_range {
            Some(content_range) => reply.expect_header("content-range", content_range),
            None => reply.expect_no_header("content-range"),
        };
        let body = match (status, content_range) {
            (206, Some(content_range)) => {
                let (first, last) = content_range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('/'))
                    .and_then(|(r, _)| r.split_once('-'))
                    .expect("a satisfied Content-Range");
                let first: usize = first.parse().expect("a number");
                let last: usize = last.parse().expect("a number");
                &blob[first..=last]
            }
            (200, _) => &blob[..],
            _ => continue,
        };
        reply
            .expect_header("content-length", &body.len().to_string())
            .expect_header("docker-content-digest", &digest)
            .expect_body(body);
    }
}

#[tokio::test]
async fn unknown_blobs_are_404_blob_unknown() {
    let registry = TestRegistry::start().await;
    registry.push_blob("app", b"known").await;
    for repository in ["app", "never/pushed"] {
        let path = format!("/v2/{repository}/blobs/{ABSENT}");
        registry.get(&path).await.expect_error(404, "BLOB_UNKNOWN");
        registry.head(&path).await.expect(404);
        registry
            .delete(&path)
            .await
            .expect_error(404, "BLOB_UNKNOWN");
    }
}

#[tokio::test]
async fn a_blob_pushed_to_one_repository_is_invisible_in_another() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("team/a", b"private to a").await;
    registry.push_blob("team/b", b"b has its own").await;
    let path = format!("/v2/team/b/blobs/{digest}");
    registry.get(&path).await.expect_error(404, "BLOB_UNKNOWN");
    registry.head(&path).await.expect(404);
}

#[tokio::test]
async fn deleting_a_blob_unlinks_it_from_that_repository_only() {
    let registry = TestRegistry::start().await;
    let blob = b"shared layer";
    let digest = registry.push_blob("team/a", blob).await;
    registry
        .send(call(
            "POST",
            format!("/v2/team/b/blobs/uploads/?mount={digest}&from=team/a"),
        ))
        .await
        .expect(201);
    let path = format!("/v2/team/a/blobs/{digest}");
    registry.delete(&path).await.expect(202);
    registry.get(&path).await.expect_error(404, "BLOB_UNKNOWN");
    registry.head(&path).await.expect(404);
    registry
        .delete(&path)
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    registry
        .get(format!("/v2/team/b/blobs/{digest}"))
        .await
        .expect(200)
        .expect_body(blob);
}

#[tokio::test]
async fn a_blob_lost_from_storage_is_a_server_error_that_reveals_nothing() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("app", b"soon lost").await;
    std::fs::remove_file(registry.blob_file(&digest)).expect("remove the blob file");
    let reply = registry.get(format!("/v2/app/blobs/{digest}")).await;
    reply.expect_error(500, "UNKNOWN");
    let message = reply.json()["errors"][0]["message"].clone();
    assert_eq!(
        message,
        "internal server error; see the server log for this request id"
    );
    assert!(reply.headers.contains_key("x-request-id"));
}

// Manifests

#[tokio::test]
async fn manifests_of_every_kind_push_and_pull_by_tag_and_digest() {
    let registry = TestRegistry::start().await;
    let oci_config = image_config("oci");
    let oci_layer = b"oci layer".to_vec();
    let image = oci_image(&oci_config, &[&oci_layer]);
    let docker_config = image_config("docker");
    let docker_layer = b"docker layer".to_vec();
    let docker = Manifest::new(
        DOCKER_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", &docker_config),
            "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &docker_layer)],
        }),
    );
    let platform = json!({ "architecture": "amd64", "os": "linux" });
    let mut image_entry = image.descriptor();
    image_entry["platform"] = platform.clone();
    let index = Manifest::new(
        OCI_INDEX,
        &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [image_entry] }),
    );
    let mut docker_entry = docker.descriptor();
    docker_entry["platform"] = platform;
    let list = Manifest::new(
        DOCKER_MANIFEST_LIST,
        &json!({ "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [docker_entry] }),
    );
    let sbom = b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec();
    let sbom_artifact = artifact(SBOM, &sbom, json!({}));
    // (kind, blobs it references, child manifests it references, the manifest)
    type Kind<'a> = (&'a str, Vec<&'a [u8]>, Vec<&'a Manifest>, &'a Manifest);
    let cases: Vec<Kind> = vec![
        ("oci image", vec![&oci_config, &oci_layer], vec![], &image),
        (
            "oci index",
            vec![&oci_config, &oci_layer],
            vec![&image],
            &index,
        ),
        (
            "docker schema2",
            vec![&docker_config, &docker_layer],
            vec![],
            &docker,
        ),
        (
            "docker manifest list",
            vec![&docker_config, &docker_layer],
            vec![&docker],
            &list,
        ),
        ("artifact", vec![EMPTY_JSON, &sbom], vec![], &sbom_artifact),
    ];
    for (i, (case, blobs, children, manifest)) in cases.into_iter().enumerate() {
        let repository = format!("kinds/case{i}");
        for blob in blobs {
            registry.push_blob(&repository, blob).await;
        }
        for child in children {
            registry
                .push_manifest(&repository, &child.digest, child)
                .await
                .expect(201);
        }
        registry
            .push_manifest(&repository, "v1", manifest)
            .await
            .expect(201)
            .expect_header(
                "location",
                &format!("/v2/{repository}/manifests/{}", manifest.digest),
            )
            .expect_header("docker-content-digest", &manifest.digest)
            .expect_no_header("oci-subject");
        for reference in ["v1", manifest.digest.as_str()] {
            let path = format!("/v2/{repository}/manifests/{reference}");
            let length = manifest.bytes.len().to_string();
            for reply in [registry.get(&path).await, registry.head(&path).await] {
                reply
                    .expect(200)
                    .expect_header("content-type", &manifest.media_type)
                    .expect_header("docker-content-digest", &manifest.digest)
                    .expect_header("content-length", &length);
            }
            let reply = registry.get(&path).await;
            assert!(reply.body == manifest.bytes, "{case}: {path} bytes differ");
        }
        let reply = registry.get(format!("/v2/{repository}/tags/list")).await;
        assert_eq!(tags(&reply), ["v1"], "{case}");
    }
}

#[tokio::test]
async fn a_manifest_pushed_by_digest_must_match_it() {
    let registry = TestRegistry::start().await;
    let config = image_config("by digest");
    registry.push_blob("app", &config).await;
    let manifest = oci_image(&config, &[]);
    registry
        .push_manifest("app", &manifest.digest, &manifest)
        .await
        .expect(201)
        .expect_header(
            "location",
            &format!("/v2/app/manifests/{}", manifest.digest),
        )
        .expect_header("docker-content-digest", &manifest.digest);
    registry
        .get(format!("/v2/app/manifests/{}", manifest.digest))
        .await
        .expect(200)
        .expect_body(&manifest.bytes);
    let reply = registry.get("/v2/app/tags/list").await;
    assert!(tags(&reply).is_empty(), "a push by digest creates no tag");

    let mut other = manifest.bytes.clone();
    other.extend_from_slice(b"\n");
    let mismatched = Manifest::raw(OCI_MANIFEST, other);
    registry
        .push_manifest("app", &manifest.digest, &mismatched)
        .await
        .expect_error(400, "DIGEST_INVALID");
    registry
        .get(format!("/v2/app/manifests/{}", mismatched.digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifests_referencing_content_the_repository_lacks_are_refused() {
    let registry = TestRegistry::start().await;
    let config = image_config("present");
    let layer = b"present layer".to_vec();
    registry.push_blob("app", &config).await;
    registry.push_blob("app", &layer).await;
    let missing_layer = b"never pushed layer".to_vec();
    let missing_config = image_config("never pushed");
    let missing_child = oci_image(&config, &[&layer, &missing_layer]);
    let docker_child = Manifest::new(
        DOCKER_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
            "layers": [],
        }),
    );
    let foreign = Manifest::new(
        DOCKER_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": digest(&missing_layer),
                "size": missing_layer.len(),
                "urls": ["https://example.com/layer.tar.gz"],
            }],
        }),
    );
    let cases: Vec<(&str, Manifest, Option<Vec<String>>)> = vec![
        (
            "a missing layer",
            oci_image(&config, &[&layer, &missing_layer]),
            Some(vec![digest(&missing_layer)]),
        ),
        (
            "a missing config",
            oci_image(&missing_config, &[&layer]),
            Some(vec![digest(&missing_config)]),
        ),
        (
            "an index with a missing child",
            Manifest::new(
                OCI_INDEX,
                &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [missing_child.descriptor()] }),
            ),
            Some(vec![missing_child.digest.clone()]),
        ),
        (
            "a manifest list with a missing child",
            Manifest::new(
                DOCKER_MANIFEST_LIST,
                &json!({ "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [docker_child.descriptor()] }),
            ),
            Some(vec![docker_child.digest.clone()]),
        ),
        ("a foreign layer fetched from its urls", foreign, None),
    ];
    for (case, manifest, missing) in cases {
        let reply = registry.push_manifest("app", "latest", &manifest).await;
        match missing {
            Some(missing) => {
                reply.expect_error(400, "MANIFEST_BLOB_UNKNOWN");
                assert_eq!(
                    reply.json()["errors"][0]["detail"]["digests"],
                    json!(missing),
                    "{case}"
                );
                registry
                    .get(format!("/v2/app/manifests/{}", manifest.digest))
                    .await
                    .expect_error(404, "MANIFEST_UNKNOWN");
            }
            None => {
                reply.expect(201);
            }
        }
    }
}

#[tokio::test]
async fn malformed_manifests_are_refused_as_manifest_invalid() {
    let registry = TestRegistry::start().await;
    let config = image_config("valid");
    registry.push_blob("app", &config).await;
    let valid = oci_image(&config, &[]);
    let as_index_with_config = Manifest::new(
        OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "manifests": [],
        }),
    );
    let schema1 = String::from_utf8(valid.bytes.clone())
        .expect("utf-8")
        .replace("\"schemaVersion\": 2", "\"schemaVersion\": 1");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("not JSON", OCI_MANIFEST, b"{not json".to_vec()),
        ("an empty body", OCI_MANIFEST, Vec::new()),
        ("a JSON array", OCI_MANIFEST, b"[1,2]".to_vec()),
        (
            "Content-Type index, body image manifest",
            OCI_INDEX,
            valid.bytes.clone(),
        ),
        (
            "Content-Type Docker, body OCI mediaType",
            DOCKER_MANIFEST,
            valid.bytes.clone(),
        ),
        (
            "Content-Type text/plain, body OCI mediaType",
            "text/plain",
            valid.bytes.clone(),
        ),
        (
            "Content-Type application/json, body OCI mediaType",
            "application/json",
            valid.bytes.clone(),
        ),
        ("schemaVersion 1", OCI_MANIFEST, schema1.into_bytes()),
        (
            "Docker schema1",
            DOCKER_MANIFEST_V1_SIGNED,
            br#"{"schemaVersion":1,"name":"app","tag":"latest"}"#.to_vec(),
        ),
        (
            "an index with a config",
            OCI_INDEX,
            as_index_with_config.bytes,
        ),
    ];
    for (case, content_type, body) in cases {
        let reply = registry
            .send(
                call("PUT", "/v2/app/manifests/latest")
                    .header("content-type", content_type)
                    .body(body),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{case}");
        reply.expect_error(400, "MANIFEST_INVALID");
    }
    registry
        .get("/v2/app/manifests/latest")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifests_over_the_size_limit_are_refused_with_413() {
    let registry = TestRegistry::start().await;
    let config = image_config("big");
    registry.push_blob("app", &config).await;
    let padded = |length: usize| {
        let shape = |pad: &str| {
            Manifest::new(
                OCI_MANIFEST,
                &json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
                    "layers": [],
                    "annotations": { "pad": pad },
                }),
            )
        };
        let base = shape("").bytes.len();
        let manifest = shape(&"x".repeat(length - base));
        assert_eq!(manifest.bytes.len(), length);
        manifest
    };
    let at_limit = padded(MAX_MANIFEST_BYTES);
    registry
        .push_manifest("app", "at-limit", &at_limit)
        .await
        .expect(201);
    let over = padded(MAX_MANIFEST_BYTES + 1);
    for request in [
        call("PUT", "/v2/app/manifests/over").header("content-type", OCI_MANIFEST),
        call("PUT", "/v2/app/manifests/over")
            .header("content-type", OCI_MANIFEST)
            .streamed(),
    ] {
        registry
            .send(request.body(over.bytes.clone()))
            .await
            .expect_error(413, "SIZE_INVALID");
    }
    registry
        .get("/v2/app/manifests/over")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn a_manifest_with_a_subject_is_accepted_with_the_oci_subject_header() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "subject").await;
    registry.push_blob("app", EMPTY_JSON).await;
    registry.push_blob("app", b"sbom").await;
    let never_pushed = oci_image(&image_config("never pushed"), &[]);
    for target in [&image, &never_pushed] {
        let referrer = artifact(SBOM, b"sbom", subject(target));
        registry
            .push_manifest("app", &referrer.digest, &referrer)
            .await
            .expect(201)
            .expect_header("oci-subject", &target.digest);
    }
}

#[tokio::test]
async fn deleting_a_tag_removes_only_that_tag() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "tagged twice").await;
    registry
        .push_manifest("app", "latest", &image)
        .await
        .expect(201);
    registry.delete("/v2/app/manifests/v1").await.expect(202);
    registry
        .get("/v2/app/manifests/v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    for reference in ["latest", image.digest.as_str()] {
        registry
            .get(format!("/v2/app/manifests/{reference}"))
            .await
            .expect(200)
            .expect_body(&image.bytes);
    }
    assert_eq!(tags(&registry.get("/v2/app/tags/list").await), ["latest"]);
    registry
        .delete("/v2/app/manifests/v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn deleting_a_manifest_by_digest_removes_it_and_every_tag_on_it() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "doomed").await;
    registry
        .push_manifest("app", "latest", &image)
        .await
        .expect(201);
    let kept = registry.push_image("app", "other", "kept").await;
    let path = format!("/v2/app/manifests/{}", image.digest);
    registry.delete(&path).await.expect(202);
    for reference in ["v1", "latest", image.digest.as_str()] {
        let path = format!("/v2/app/manifests/{reference}");
        registry
            .get(&path)
            .await
            .expect_error(404, "MANIFEST_UNKNOWN");
        registry.head(&path).await.expect(404);
    }
    assert_eq!(tags(&registry.get("/v2/app/tags/list").await), ["other"]);
    registry
        .get(format!("/v2/app/manifests/{}", kept.digest))
        .await
        .expect(200);
    registry
        .delete(&path)
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    registry
        .delete(format!("/v2/never/pushed/manifests/{}", image.digest))
        .await
        .expect(404);
}

#[tokio::test]
async fn unknown_manifests_are_404_manifest_unknown() {
    let registry = TestRegistry::start().await;
    registry.push_image("app", "v1", "known").await;
    for repository in ["app", "never/pushed"] {
        for reference in ["missing", ABSENT] {
            let path = format!("/v2/{repository}/manifests/{reference}");
            registry
                .get(&path)
                .await
                .expect_error(404, "MANIFEST_UNKNOWN");
            registry.head(&path).await.expect(404);
        }
    }
}

#[tokio::test]
async fn re_pushing_a_tag_moves_it() {
    let registry = TestRegistry::start().await;
    let first = registry.push_image("app", "latest", "first").await;
    let second = registry.push_image("app", "latest", "second").await;
    registry
        .get("/v2/app/manifests/latest")
        .await
        .expect(200)
        .expect_header("docker-content-digest", &second.digest)
        .expect_body(&second.bytes);
    registry
        .get(format!("/v2/app/manifests/{}", first.digest))
        .await
        .expect(200)
        .expect_body(&first.bytes);
    assert_eq!(tags(&registry.get("/v2/app/tags/list").await), ["latest"]);
}

// Names, digests and routes

#[tokio::test]
async fn invalid_repository_names_are_refused_as_name_invalid() {
    let registry = TestRegistry::start().await;
    let config = image_config("names");
    let manifest = oci_image(&config, &[]);
    let too_long = "a".repeat(256);
    let names = [
        "Team/App",
        "team/../app",
        "..",
        "team//app",
        "team%2Fapp",
        "-app",
        "app_",
        "team/app:tag",
        too_long.as_str(),
    ];
    for name in names {
        for request in [
            call("GET", format!("/v2/{name}/manifests/latest")),
            call("PUT", format!("/v2/{name}/manifests/latest"))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.bytes.clone()),
            call("DELETE", format!("/v2/{name}/manifests/{ABSENT}")),
            call("GET", format!("/v2/{name}/blobs/{ABSENT}")),
            call("POST", format!("/v2/{name}/blobs/uploads/")),
            call("GET", format!("/v2/{name}/tags/list")),
            call("GET", format!("/v2/{name}/referrers/{ABSENT}")),
        ] {
            registry
                .send(request)
                .await
                .expect_error(400, "NAME_INVALID");
        }
    }
    let longest = format!("a/{}", "b".repeat(253));
    registry.start_upload(&longest).await;
}

#[tokio::test]
async fn a_mount_that_cannot_be_honoured_falls_back_to_an_upload_session() {
    let registry = TestRegistry::start().await;
    for query in [
        format!("mount={ABSENT}&from=Bad/Name"),
        "mount=sha256:abc&from=other".to_owned(),
        format!("mount={ABSENT}"),
    ] {
        let reply = registry
            .send(call("POST", format!("/v2/app/blobs/uploads/?{query}")))
            .await;
        reply.expect(202).expect_header("range", "0-0");
    }
}

#[tokio::test]
async fn invalid_digests_are_refused_as_digest_invalid() {
    let registry = TestRegistry::start().await;
    let upper = ABSENT.replace('0', "A");
    let requests = [
        ("GET", "/v2/app/blobs/sha256:abc".to_owned()),
        ("HEAD", "/v2/app/blobs/sha256:abc".to_owned()),
        ("DELETE", "/v2/app/blobs/sha256:abc".to_owned()),
        ("GET", "/v2/app/blobs/notadigest".to_owned()),
        ("GET", format!("/v2/app/blobs/md5:{}", "0".repeat(32))),
        ("GET", format!("/v2/app/blobs/{upper}")),
        ("GET", "/v2/app/manifests/sha256:abc".to_owned()),
        ("DELETE", "/v2/app/manifests/sha256:xyz".to_owned()),
        ("GET", "/v2/app/referrers/sha256:abc".to_owned()),
        ("GET", "/v2/app/referrers/latest".to_owned()),
        (
            "POST",
            "/v2/app/blobs/uploads/?digest=sha256:abc".to_owned(),
        ),
    ];
    for (method, path) in requests {
        registry
            .send(call(method, path))
            .await
            .expect_error(400, "DIGEST_INVALID");
    }
}

#[tokio::test]
async fn unknown_endpoints_are_404_and_wrong_methods_405() {
    let registry = TestRegistry::start().await;
    let cases = [
        ("GET", "/".to_owned(), 404),
        ("GET", "/v1/".to_owned(), 404),
        ("GET", "/v2/app".to_owned(), 404),
        ("GET", "/v2/app/manifests".to_owned(), 404),
        ("GET", "/v2/app/unknown/thing".to_owned(), 404),
        ("GET", "/v2/app/manifests/latest/extra".to_owned(), 404),
        ("POST", "/v2/".to_owned(), 405),
        ("DELETE", "/v2/_catalog".to_owned(), 405),
        ("POST", "/v2/app/manifests/latest".to_owned(), 405),
        ("OPTIONS", "/v2/app/manifests/latest".to_owned(), 405),
        ("PUT", format!("/v2/app/blobs/{ABSENT}"), 405),
        ("PATCH", format!("/v2/app/blobs/{ABSENT}"), 405),
        ("GET", "/v2/app/blobs/uploads/".to_owned(), 405),
        ("POST", "/v2/app/tags/list".to_owned(), 405),
        ("DELETE", format!("/v2/app/referrers/{ABSENT}"), 405),
    ];
    for (method, path, status) in cases {
        registry
            .send(call(method, path))
            .await
            .expect_error(status, "UNSUPPORTED");
    }
}

// Content discovery

#[tokio::test]
async fn tags_list_in_ascii_order_with_n_last_and_link() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("team/app", "v2", "tags").await;
    for tag in ["latest", "v10", "A1", "b", "1.0"] {
        registry
            .push_manifest("team/app", tag, &image)
            .await
            .expect(201);
    }
    let link =
        |n: u32, last: &str| format!("</v2/team/app/tags/list?n={n}&last={last}>; rel=\"next\"");
    let cases: Vec<(&str, Vec<&str>, Option<String>)> = vec![
        ("", vec!["1.0", "A1", "b", "latest", "v10", "v2"], None),
        ("?n=2", vec!["1.0", "A1"], Some(link(2, "A1"))),
        ("?n=2&last=A1", vec!["b", "latest"], Some(link(2, "latest"))),
        ("?n=2&last=latest", vec!["v10", "v2"], None),
        ("?n=6", vec!["1.0", "A1", "b", "latest", "v10", "v2"], None),
        (
            "?n=100",
            vec!["1.0", "A1", "b", "latest", "v10", "v2"],
            None,
        ),
        ("?n=0", vec![], None),
        ("?last=b", vec!["latest", "v10", "v2"], None),
        ("?last=c", vec!["latest", "v10", "v2"], None),
        ("?last=v2", vec![], None),
    ];
    for (query, expected, next) in cases {
        let reply = registry.get(format!("/v2/team/app/tags/list{query}")).await;
        reply.expect(200);
        assert_eq!(reply.json()["name"], "team/app", "{query}");
        assert_eq!(tags(&reply), expected, "{query}");
        match next {
            Some(next) => reply.expect_header("link", &next),
            None => reply.expect_no_header("link"),
        };
    }

    // A client following the Link header sees every tag once.
    let mut seen = Vec::new();
    let mut next = Some("/v2/team/app/tags/list?n=4".to_owned());
    while let Some(path) = next.take() {
        let reply = registry.get(&path).await;
        seen.extend(tags(&reply));
        next = reply.headers.get("link").map(|link| {
            let link = link.to_str().expect("ascii");
            link[1..link.find('>').expect("a link target")].to_owned()
        });
    }
    assert_eq!(seen, ["1.0", "A1", "b", "latest", "v10", "v2"]);

    registry
        .get("/v2/team/app/tags/list?n=ten")
        .await
        .expect_error(400, "UNSUPPORTED");
}

#[tokio::test]
async fn tags_list_of_an_unknown_repository_is_404_name_unknown() {
    let registry = TestRegistry::start().await;
    registry
        .get("/v2/never/pushed/tags/list")
        .await
        .expect_error(404, "NAME_UNKNOWN");
    registry.push_blob("blobs/only", b"no manifests").await;
    let reply = registry.get("/v2/blobs/only/tags/list").await;
    reply.expect(200);
    assert_eq!(
        reply.json(),
        json!({ "name": "blobs/only", "tags": [] }),
        "a repository without tags lists none"
    );
}

#[tokio::test]
async fn the_catalog_lists_repositories_with_n_last_and_link() {
    let registry = TestRegistry::start().await;
    for repository in ["gamma", "beta/two", "alpha", "beta/one"] {
        registry.push_blob(repository, repository.as_bytes()).await;
    }
    registry.start_upload("delta").await;
    let all = vec!["alpha", "beta/one", "beta/two", "gamma"];
    let cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        ("", all.clone(), None),
        (
            "?n=2",
            vec!["alpha", "beta/one"],
            Some("</v2/_catalog?n=2&last=beta%2Fone>; rel=\"next\""),
        ),
        ("?n=2&last=beta%2Fone", vec!["beta/two", "gamma"], None),
        ("?n=4", all.clone(), None),
        ("?n=0", vec![], None),
        ("?last=beta/two", vec!["gamma"], None),
    ];
    for (query, expected, next) in cases {
        let reply = registry.get(format!("/v2/_catalog{query}")).await;
        reply.expect(200);
        assert_eq!(reply.json(), json!({ "repositories": expected }), "{query}");
        match next {
            Some(next) => reply.expect_header("link", next),
            None => reply.expect_no_header("link"),
        };
    }
}

// Referrers

fn expect_empty_index(reply: &crate::support::Reply) {
    reply.expect(200).expect_header("content-type", OCI_INDEX);
    assert_eq!(
        reply.json(),
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
    );
}

fn referrer_descriptors(reply: &crate::support::Reply) -> Vec<Value> {
    reply.expect(200).expect_header("content-type", OCI_INDEX);
    let index = reply.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let mut manifests = index["manifests"].as_array().expect("manifests").clone();
    manifests.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());
    manifests
}

fn sorted(mut descriptors: Vec<Value>) -> Vec<Value> {
    descriptors.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());
    descriptors
}

#[tokio::test]
async fn referrers_of_a_manifest_nobody_refers_to_are_an_empty_index() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "lonely").await;
    for path in [
        format!("/v2/app/referrers/{}", image.digest),
        format!("/v2/app/referrers/{ABSENT}"),
        format!("/v2/never/pushed/referrers/{ABSENT}"),
    ] {
        let reply = registry.get(&path).await;
        expect_empty_index(&reply);
        reply.expect_no_header("oci-filters-applied");
    }
}

#[tokio::test]
async fn referrers_list_artifacts_with_type_size_and_annotations() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "signed").await;
    for blob in [EMPTY_JSON, b"sbom", b"signature"] {
        registry.push_blob("app", blob).await;
    }
    let annotations = json!({ "org.example.format": "spdx", "org.opencontainers.image.created": "2024-01-01T00:00:00Z" });
    let sbom = artifact(
        SBOM,
        b"sbom",
        json!({ "subject": image.descriptor(), "annotations": annotations }),
    );
    let signature = artifact(SIGNATURE, b"signature", subject(&image));
    for referrer in [&sbom, &signature] {
        registry
            .push_manifest("app", &referrer.digest, referrer)
            .await
            .expect(201)
            .expect_header("oci-subject", &image.digest);
    }
    // The same subject digest in another repository is another subject.
    registry.push_image("other", "v1", "other").await;

    let sbom_descriptor = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sbom.digest,
        "size": sbom.bytes.len(),
        "artifactType": SBOM,
        "annotations": annotations,
    });
    let signature_descriptor = json!({
        "mediaType": OCI_MANIFEST,
        "digest": signature.digest,
        "size": signature.bytes.len(),
        "artifactType": SIGNATURE,
    });
    let path = format!("/v2/app/referrers/{}", image.digest);
    let reply = registry.get(&path).await;
    reply.expect_no_header("oci-filters-applied");
    assert_eq!(
        referrer_descriptors(&reply),
        sorted(vec![sbom_descriptor.clone(), signature_descriptor.clone()])
    );

    let cases: Vec<(String, Vec<Value>)> = vec![
        (
            format!("?artifactType={SBOM}"),
            vec![sbom_descriptor.clone()],
        ),
        (
            format!("?artifactType={}", SIGNATURE.replace('/', "%2F")),
            vec![signature_descriptor.clone()],
        ),
        ("?artifactType=application/x.none".to_owned(), vec![]),
    ];
    for (query, expected) in cases {
        let reply = registry.get(format!("{path}{query}")).await;
        reply.expect_header("oci-filters-applied", "artifactType");
        assert_eq!(referrer_descriptors(&reply), expected, "{query}");
    }
    expect_empty_index(
        &registry
            .get(format!("/v2/other/referrers/{}", image.digest))
            .await,
    );

    registry
        .delete(format!("/v2/app/manifests/{}", sbom.digest))
        .await
        .expect(202);
    assert_eq!(
        referrer_descriptors(&registry.get(&path).await),
        vec![signature_descriptor]
    );
}

#[tokio::test]
async fn a_referrer_without_artifact_type_reports_its_config_media_type() {
    let registry = TestRegistry::start().await;
    let image = registry.push_image("app", "v1", "subject").await;
    let config_type = "application/vnd.example.config.v1+json";
    let config = b"{\"signed\":true}".to_vec();
    registry.push_blob("app", &config).await;
    registry.push_blob("app", EMPTY_JSON).await;
    let typed_by_config = Manifest::new(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_type, &config),
            "layers": [],
            "subject": image.descriptor(),
        }),
    );
    let empty_type = Manifest::new(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "",
            "config": empty_config(),
            "layers": [],
            "subject": image.descriptor(),
        }),
    );
    let index = Manifest::new(
        OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
            "subject": image.descriptor(),
            "annotations": { "org.example.kind": "bundle" },
        }),
    );
    let cases = [
        ("config media type", &typed_by_config, json!(config_type)),
        ("empty artifactType", &empty_type, json!(OCI_EMPTY)),
        ("index without artifactType", &index, Value::Null),
    ];
    for (_, manifest, _) in &cases {
        registry
            .push_manifest("app", &manifest.digest, manifest)
            .await
            .expect(201)
            .expect_header("oci-subject", &image.digest);
    }
    let listed = referrer_descriptors(
        &registry
            .get(format!("/v2/app/referrers/{}", image.digest))
            .await,
    );
    for (case, manifest, artifact_type) in &cases {
        let descriptor = listed
            .iter()
            .find(|d| d["digest"] == manifest.digest.as_str())
            .unwrap_or_else(|| panic!("{case}: not listed in {listed:?}"));
        assert_eq!(descriptor["artifactType"], *artifact_type, "{case}");
        assert_eq!(
            descriptor["mediaType"],
            manifest.media_type.as_str(),
            "{case}"
        );
        assert_eq!(descriptor["size"], manifest.bytes.len(), "{case}");
    }
    let index_descriptor = listed
        .iter()
        .find(|d| d["digest"] == index.digest.as_str())
        .expect("the index is listed");
    assert!(index_descriptor.get("artifactType").is_none());
    assert_eq!(
        index_descriptor["annotations"],
        json!({ "org.example.kind": "bundle" })
    );
    // A query string decodes `+` as a space, so the media type's `+` travels as `%2B`.
    let filtered = registry
        .get(format!(
            "/v2/app/referrers/{}?artifactType={}",
            image.digest,
            config_type.replace('+', "%2B")
        ))
        .await;
    assert_eq!(referrer_descriptors(&filtered).len(), 1);
}

// Upload expiry

#[tokio::test]
async fn expired_upload_sessions_are_removed_with_their_bytes() {
    let registry = TestRegistry::with_limits(Limits {
        upload_expiry: Duration::ZERO,
        ..test_limits()
    })
    .await;
    let finished = registry.push_blob("app", b"finished before expiry").await;
    let location = registry.start_upload("app").await;
    registry
        .send(call("PATCH", &location).octets(b"never finished"))
        .await
        .expect(202);
    let staging = registry.staging_file(upload_id(&location));
    assert!(staging.exists(), "the chunk is staged");
    // Session times have a resolution of one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let removed = registry
        .registry
        .expire_uploads()
        .await
        .expect("expire uploads");
    assert_eq!(removed, 1);
    assert!(!staging.exists(), "the staged bytes are removed");
    registry
        .get(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    registry
        .send(call("PATCH", &location).octets(b"late"))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    registry
        .get(format!("/v2/app/blobs/{finished}"))
        .await
        .expect(200);
}

#[tokio::test]
async fn upload_sessions_younger_than_the_expiry_survive_it() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("app").await;
    registry
        .send(call("PATCH", &location).octets(b"in progress"))
        .await
        .expect(202);
    let removed = registry
        .registry
        .expire_uploads()
        .await
        .expect("expire uploads");
    assert_eq!(removed, 0);
    registry
        .get(&location)
        .await
        .expect(204)
        .expect_header("range", "0-10");
    assert!(registry.staging_file(upload_id(&location)).exists());
}

#[tokio::test]
async fn request_targets_and_headers_over_the_limits_are_refused() {
    let registry = TestRegistry::with_limits(Limits {
        max_uri_bytes: 100,
        max_header_bytes: 2000,
        ..test_limits()
    })
    .await;
    let long_path = format!("/v2/{}/tags/list", "a".repeat(100));
    registry
        .get(long_path)
        .await
        .expect_error(414, "UNSUPPORTED");
    registry
        .send(call("GET", "/v2/").header("x-padding", "p".repeat(2000)))
        .await
        .expect_error(431, "UNSUPPORTED");
    registry.get("/v2/").await.expect(200);
}

#[tokio::test]
async fn open_upload_sessions_are_bounded_per_principal_and_per_repository() {
    let registry = TestRegistry::with_limits(Limits {
        max_uploads_per_principal: 2,
        max_uploads_per_repository: 3,
        ..test_limits()
    })
    .await;
    let first = registry.start_upload("app").await;
    registry.start_upload("other").await;
    let reply = registry
        .send(call("POST", "/v2/third/blobs/uploads/"))
        .await;
    reply.expect_error(429, "TOOMANYREQUESTS");
    assert!(
        !reply.header("retry-after").is_empty(),
        "says when to retry"
    );
    // A monolithic push needs a session too.
    registry
        .send(
            call(
                "POST",
                format!("/v2/third/blobs/uploads/?digest={}", digest(b"x")),
            )
            .octets(b"x"),
        )
        .await
        .expect_error(429, "TOOMANYREQUESTS");
    // A cancelled session makes room.
    registry.delete(first).await.expect(204);
    registry.start_upload("third").await;
}
