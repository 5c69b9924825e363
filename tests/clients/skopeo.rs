//! skopeo against bulwark: pushing an image from an OCI layout, inspecting it, listing tags,
//! pulling it back out, deleting it; a multi-architecture index with its digest preserved;
//! and a copy between repositories that mounts blobs instead of uploading them again.
//!
//! Every check compares what skopeo reports with what the registry serves over HTTPS and
//! with the bytes the test wrote: the manifest digest is `sha256` of the raw manifest, and
//! equals `Docker-Content-Digest`.

use std::time::Duration;

use crate::support::clients::{path_str, Clients};
use crate::support::http::Http;
use crate::support::layout::{self, Layout, OCI_INDEX};
use crate::support::server::{admin_creds, Server};
use crate::support::sha256_digest;

/// Fails the test unless the registry serves `manifest` at `repository:reference`, with the
/// digest of its bytes.
fn assert_serves_manifest(http: &Http, repository: &str, reference: &str, manifest: &[u8]) {
    let reply = http.manifest(repository, reference);
    assert_eq!(reply.status, 200, "GET manifest {repository}:{reference}");
    assert!(
        reply.body == manifest,
        "{repository}:{reference} is served with other bytes than were pushed:\n{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("docker-content-digest"),
        sha256_digest(manifest),
        "Docker-Content-Digest of {repository}:{reference}"
    );
}

#[test]
fn skopeo_pushes_inspects_lists_pulls_back_and_deletes_an_image() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let creds = admin_creds();
    let clients = Clients::new();
    let http = Http::new(&server);
    let (layout, image) = layout::single_image(&clients.scratch("app"), "team-app", "v1");
    let remote = format!("docker://{}/team/app:v1", server.host());

    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &creds,
        &layout.reference("v1"),
        &remote,
    ]);

    let raw = clients
        .skopeo([
            "inspect",
            "--raw",
            "--cert-dir",
            certs,
            "--creds",
            &creds,
            &remote,
        ])
        .stdout;
    assert_eq!(
        sha256_digest(&raw),
        image.descriptor.digest,
        "skopeo pushed the manifest as written (its layers were already compressed)"
    );
    assert_serves_manifest(&http, "team/app", "v1", &raw);
    assert_serves_manifest(&http, "team/app", &image.descriptor.digest, &raw);
    for layer in &image.layers {
        let bytes = http.blob("team/app", &layer.digest);
        assert_eq!(sha256_digest(&bytes), layer.digest);
        assert_eq!(bytes.len() as u64, layer.size);
    }

    let tags = clients.skopeo([
        "list-tags",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        &format!("docker://{}/team/app", server.host()),
    ]);
    let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).expect("list-tags JSON");
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]), "{tags}");

    let pulled_dir = clients.scratch("pulled");
    clients.skopeo([
        "copy",
        "--src-cert-dir",
        certs,
        "--src-creds",
        &creds,
        &remote,
        &format!("oci:{}:v1", pulled_dir.display()),
    ]);
    let (pulled, pulled_manifest) = layout::read_tagged(&pulled_dir, "v1");
    assert_eq!(pulled.digest, image.descriptor.digest);
    let pulled_layers = layout::layer_digests(&pulled_manifest);
    let pushed_layers: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(pulled_layers, pushed_layers);
    for digest in &pulled_layers {
        // read_blob checks the bytes skopeo stored hash to their digest.
        layout::read_blob(&pulled_dir, digest);
    }

    clients.skopeo(["delete", "--cert-dir", certs, "--creds", &creds, &remote]);
    assert_eq!(
        http.manifest("team/app", "v1").status,
        404,
        "the tag is gone"
    );
    assert_eq!(
        http.manifest("team/app", &image.descriptor.digest).status,
        404,
        "skopeo deletes by digest: the manifest is gone"
    );
    let failed = clients.skopeo_failing([
        "inspect",
        "--raw",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        &remote,
    ]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("manifest unknown"),
        "inspect after delete should fail with manifest unknown: {stderr}"
    );
}

#[test]
fn skopeo_copies_a_multi_arch_index_with_its_digest_preserved() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let creds = admin_creds();
    let clients = Clients::new();
    let http = Http::new(&server);
    let mut layout = Layout::create(&clients.scratch("multi"));
    let amd64 = layout.add_image("amd64", "team-multi");
    let arm64 = layout.add_image("arm64", "team-multi");
    let index = layout.add_index(vec![amd64, arm64]);
    layout.tag("v1", &index.descriptor);
    let remote = format!("docker://{}/team/multi:v1", server.host());

    clients.skopeo([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &creds,
        &layout.reference("v1"),
        &remote,
    ]);

    let reply = http.manifest("team/multi", "v1");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), OCI_INDEX);
    assert_eq!(
        reply.header("docker-content-digest"),
        index.descriptor.digest,
        "the index digest is preserved"
    );
    assert_serves_manifest(&http, "team/multi", "v1", &index.manifest);
    let raw = clients
        .skopeo([
            "inspect",
            "--raw",
            "--cert-dir",
            certs,
            "--creds",
            &creds,
            &remote,
        ])
        .stdout;
    assert_eq!(sha256_digest(&raw), index.descriptor.digest);

    for image in &index.images {
        assert_serves_manifest(
            &http,
            "team/multi",
            &image.descriptor.digest,
            &image.manifest,
        );
        for layer in &image.layers {
            assert_eq!(
                sha256_digest(&http.blob("team/multi", &layer.digest)),
                layer.digest
            );
        }
    }
    // skopeo resolves the index to the platform asked for.
    let arm64_config = clients.skopeo([
        "inspect",
        "--override-arch",
        "arm64",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        &remote,
    ]);
    let arm64_config: serde_json::Value =
        serde_json::from_slice(&arm64_config.stdout).expect("inspect JSON");
    assert_eq!(arm64_config["Architecture"], "arm64", "{arm64_config}");
}

#[test]
fn skopeo_copies_between_repositories_by_mounting_blobs() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let creds = admin_creds();
    let clients = Clients::new();
    let http = Http::new(&server);
    let (layout, image) = layout::single_image(&clients.scratch("a"), "team-a", "v1");
    let source = format!("docker://{}/team/a:v1", server.host());
    let target = format!("docker://{}/team/b:v1", server.host());
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &creds,
        &layout.reference("v1"),
        &source,
    ]);

    clients.skopeo([
        "copy",
        "--src-cert-dir",
        certs,
        "--src-creds",
        &creds,
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &creds,
        &source,
        &target,
    ]);

    assert_serves_manifest(&http, "team/b", "v1", &image.manifest);
    for layer in &image.layers {
        assert_eq!(
            sha256_digest(&http.blob("team/b", &layer.digest)),
            layer.digest
        );
        let mounted = format!("mounted blob {} from team/a into team/b", layer.digest);
        assert!(
            server.wait_for_log(&mounted, Duration::from_secs(5)),
            "skopeo should have mounted the layer instead of uploading it again \
             (expected `{mounted}` in the server log)"
        );
    }
    assert_serves_manifest(&http, "team/a", "v1", &image.manifest);
}
