//! What every black-box test stands on: the real `bulwark` binary as a guard (`server`), the
//! real client programs in an environment isolated from the host's configuration (`clients`),
//! a real load balancer in front of several replicas (`balancer`),
//! a Docker engine of the test's own that verifies TLS (`docker`), HTTPS requests that trust
//! only the server's CA (`http`), and OCI image layouts written byte for byte (`layout`).
//!
//! Invariants:
//! - Nothing here mocks the registry or a client: every byte crosses a real TLS socket.
//! - Every test gets its own server, data directory and client storage, so tests run in
//!   parallel without seeing each other's state.

pub mod balancer;
pub mod clients;
pub mod docker;
pub mod http;
pub mod layout;
pub mod server;

use std::io::Read;

use sha2::Digest as _;

/// `len` bytes from `/dev/urandom`.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

/// The OCI digest (`sha256:<hex>`) of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in hash.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}
