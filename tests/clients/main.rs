//! Black-box tests: the real `bulwark` binary, started as a process on a random port, driven
//! by the real clients users run (skopeo, buildah, podman, docker, curl) and checked over HTTPS.
//!
//! One test binary holds every module, because each binary costs a link. Each test starts its
//! own server with its own data directory and uses its own repositories, so the tests run in
//! parallel. Build the binary first (`cargo build --bin bulwark`, or `tools/check`, which also
//! installs the clients); a missing client fails the test, it is never skipped.

mod support;

mod abuse;
mod auth;
mod buildah_podman;
mod cli;
mod http_edges;
mod lifecycle;
mod postgres;
mod scale_out;
mod skopeo;
mod tls;
