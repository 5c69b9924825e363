//! The OCI vocabulary shared by every other crate: digests, repository names, references,
//! media types, manifest parsing, byte ranges and the distribution-spec error codes.
//!
//! Invariant: this crate does no I/O and knows no async runtime. Every type here is a proof
//! that its input was validated: a `Digest` always holds a supported algorithm and well-formed
//! hex, a `RepositoryName` always matches the spec's grammar.

pub mod digest;
pub mod error;
/// The fuzz targets' checks, shared with the corpus replay tests.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod range;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError};
pub use error::ErrorCode;
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, RepositoryName, Tag};
pub use range::{ByteRange, RangeError, Unsatisfiable};
pub use reference::Reference;
