//! Who is asking and what they may do: password hashing, API secrets, the Docker token
//! service's scopes and JWTs, and the pure RBAC decision.
//!
//! Invariants:
//! - `policy::authorize` is pure: it decides from data already loaded and names the rule that
//!   decided. Nothing here does I/O; time and randomness are passed in.
//! - Secrets are stored only as hashes (argon2id for passwords, SHA-256 for high-entropy API
//!   secrets) and compared in constant time; no `Debug` here prints one.
//! - Revocation compares epochs the store hands out, never clocks (`revocation`).

/// The fuzz targets' checks, shared with the corpus replay tests.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod password;
pub mod policy;
pub mod revocation;
pub mod scope;
pub mod secret;
pub mod token;

pub use policy::{authorize, Action, Decision, Grant, Principal, ProjectPolicy, Role, Rule};
pub use scope::{Scope, ScopeError};
