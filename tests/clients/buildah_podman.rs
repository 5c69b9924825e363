//! buildah and podman against bulwark: an image built from scratch with buildah and pushed,
//! pulled by podman, and pushed by podman to another repository.
//!
//! The digests the clients write with `--digestfile` must equal the registry's
//! `Docker-Content-Digest` and the `sha256` of the manifest it serves.

use crate::support::clients::{path_str, stdout_text, Clients};
use crate::support::http::Http;
use crate::support::layout::layer_digests;
use crate::support::server::{admin_creds, Server};
use crate::support::sha256_digest;

/// Fails the test unless `repository:tag` is served as the manifest with digest `digest`, and
/// its layers are served too; returns the manifest.
fn assert_pushed(http: &Http, repository: &str, tag: &str, digest: &str) -> Vec<u8> {
    let reply = http.manifest(repository, tag);
    assert_eq!(reply.status, 200, "GET manifest {repository}:{tag}");
    assert_eq!(
        reply.header("docker-content-digest"),
        digest,
        "the registry's digest of {repository}:{tag} vs the client's --digestfile"
    );
    assert_eq!(
        sha256_digest(&reply.body),
        digest,
        "sha256 of the raw manifest"
    );
    for layer in layer_digests(&reply.body) {
        assert_eq!(sha256_digest(&http.blob(repository, &layer)), layer);
    }
    reply.body
}

#[test]
fn buildah_builds_and_pushes_then_podman_pulls_and_pushes_elsewhere() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let http = Http::new(&server);
    let digests = clients.scratch("digests");
    let buildah_digest = digests.join("buildah");
    let podman_digest = digests.join("podman");
    let creds = admin_creds();
    let built = format!("{}/team/built:v1", server.host());
    let copied = format!("{}/team/copied:v1", server.host());

    let container = stdout_text(&clients.buildah(["from", "scratch"]));
    clients.buildah(["copy", &container, "/bin/busybox", "/bin/busybox"]);
    clients.buildah([
        "config",
        "--entrypoint",
        r#"["/bin/busybox"]"#,
        "--arch",
        "amd64",
        "--os",
        "linux",
        &container,
    ]);
    clients.buildah(["commit", "--format", "oci", &container, "localhost/tiny:v1"]);
    clients.buildah([
        "push",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        "--digestfile",
        path_str(&buildah_digest),
        "localhost/tiny:v1",
        &format!("docker://{built}"),
    ]);
    let pushed = std::fs::read_to_string(&buildah_digest).expect("buildah's digest file");
    let manifest = assert_pushed(&http, "team/built", "v1", pushed.trim());

    // Empty the local store, so podman has to fetch every byte from the registry.
    clients.buildah(["rm", &container]);
    clients.buildah(["rmi", "localhost/tiny:v1"]);
    let left = stdout_text(&clients.podman(["images", "--quiet"]));
    assert!(left.is_empty(), "the local store still holds {left}");

    clients.podman(["pull", "--cert-dir", certs, "--creds", &creds, &built]);
    let pulled =
        stdout_text(&clients.podman(["image", "inspect", "--format", "{{.Digest}}", &built]));
    assert_eq!(
        pulled,
        pushed.trim(),
        "podman pulled the manifest buildah pushed"
    );

    clients.podman([
        "push",
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        "--digestfile",
        path_str(&podman_digest),
        &built,
        &format!("docker://{copied}"),
    ]);
    let repushed = std::fs::read_to_string(&podman_digest).expect("podman's digest file");
    let copied_manifest = assert_pushed(&http, "team/copied", "v1", repushed.trim());
    assert!(
        copied_manifest == manifest,
        "podman pushed the same image, so the same manifest:\n{}\nvs\n{}",
        String::from_utf8_lossy(&copied_manifest),
        String::from_utf8_lossy(&manifest)
    );
}
