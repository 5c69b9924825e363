//! What can go wrong in a registry use case, in the registry's words. `api` maps each variant
//! to the distribution-spec code and status.

use oci::{Digest, RepositoryName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {0} is unknown to this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} is unknown")]
    UploadUnknown(String),
    #[error("upload is invalid: {0}")]
    UploadInvalid(String),
    /// The principal or the repository holds as many open upload sessions as allowed.
    #[error("too many open upload sessions; finish or cancel some, or wait for them to expire")]
    TooManyUploads,
    /// A chunk did not start where the upload stands.
    #[error("chunk starts at byte {got}, but the upload stands at byte {offset}")]
    UploadOutOfOrder { offset: u64, got: u64 },
    #[error("range cannot be satisfied for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("manifest {0} is unknown to this repository")]
    ManifestUnknown(String),
    #[error("manifest references blobs or manifests this repository does not hold: {0:?}")]
    ManifestBlobUnknown(Vec<Digest>),
    #[error("repository {0} is unknown")]
    NameUnknown(RepositoryName),
    /// The change conflicts with what exists (a name taken, a project not empty).
    #[error("{0}")]
    Conflict(String),
    /// Something the request names does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The caller may not do this; the text names the rule and is safe to show.
    #[error("{0}")]
    Forbidden(String),
    /// The request is well-formed but breaks a rule (a weak password, a grant outside its
    /// project); the text says which and is safe to show.
    #[error("{0}")]
    Invalid(String),
    /// A backend is down; the client should retry later.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A fault of the server; the text is for the log, never for the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<metadata::Error> for Error {
    fn from(err: metadata::Error) -> Self {
        match err {
            metadata::Error::UnknownReferences(missing) => Error::ManifestBlobUnknown(missing),
            metadata::Error::Conflict(text) => Error::Conflict(text),
            metadata::Error::NotFound(text) => Error::NotFound(text),
            metadata::Error::Unavailable(text) => Error::Unavailable(text),
            metadata::Error::Internal(text) => Error::Internal(text),
        }
    }
}

impl From<blobstore::Error> for Error {
    fn from(err: blobstore::Error) -> Self {
        match err {
            // Metadata says the blob exists but storage lost it: a server fault, not a 404.
            blobstore::Error::Missing(digest) => {
                Error::Internal(format!("blob {digest} is linked but missing from storage"))
            }
            blobstore::Error::Body(text) => {
                Error::UploadInvalid(format!("the request body failed: {text}"))
            }
            blobstore::Error::Unavailable(text) => Error::Unavailable(text),
            blobstore::Error::Storage(text) => Error::Internal(text),
            // The text names internal objects; `Registry::failed` logs it.
            blobstore::Error::Lost(_) => Error::UploadInvalid(
                "the bytes staged for this upload are gone; start the upload again".into(),
            ),
        }
    }
}
