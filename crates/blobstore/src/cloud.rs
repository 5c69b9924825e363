//! Building a `BlobStore` on S3-compatible storage, GCS or Azure from plain settings.
//!
//! Credentials left unset come from the usual environment of each cloud (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), then from the instance's metadata service, as `object_store` reads
//! them. Requests to the store are retried briefly and time out on connect, so an outage turns
//! into `Error::Unavailable` within seconds instead of hanging a client.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::remote::{RemoteStaging, MIN_PART_SIZE};
use crate::{BlobStore, Error, Staging};

/// Where and how to keep blobs in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    pub backend: Backend,
    /// Keys go under this prefix in the bucket (none: the bucket's root).
    pub prefix: Option<String>,
    /// Bytes per part of a chunked upload (at least `MIN_PART_SIZE`): one part per request
    /// in flight is held in memory.
    pub part_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    S3(S3Settings),
    Gcs(GcsSettings),
    Azure(AzureSettings),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: Option<String>,
    /// For S3-compatible stores (`https://minio.example:9000`); unset means AWS.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Permit an `http://` endpoint (a store on a private network or loopback).
    pub allow_http: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcsSettings {
    pub bucket: String,
    /// A service account key file; unset means the environment's credentials.
    pub service_account_path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureSettings {
    pub account: String,
    pub container: String,
    pub access_key: Option<String>,
    /// The account's blob endpoint, for Azure Stack, a sovereign cloud or an emulator
    /// (`https://bulwarkstorage.blob.local.azurestack.external`); unset means
    /// `https://<account>.blob.core.windows.net`. An endpoint whose host does not name the
    /// account ends in `/<account>` (path-style, as Azurite serves accounts).
    pub endpoint: Option<String>,
    /// Permit an `http://` endpoint (a store on a private network or loopback).
    pub allow_http: bool,
}

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new().with_connect_timeout(Duration::from_secs(5))
}

fn configuration(err: impl std::fmt::Display) -> Error {
    Error::Storage(format!("invalid object store settings: {err}"))
}

struct Parts {
    objects: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    signer: Option<Arc<dyn Signer>>,
}

fn full<T: ObjectStore + MultipartStore + Signer>(store: T, prefix: Option<&str>) -> Parts {
    match prefix {
        Some(prefix) => full_arc(Arc::new(PrefixStore::new(store, prefix))),
        None => full_arc(Arc::new(store)),
    }
}

fn full_arc<T: ObjectStore + MultipartStore + Signer>(store: Arc<T>) -> Parts {
    Parts {
        objects: store.clone(),
        multipart: Some(store.clone()),
        signer: Some(store),
    }
}

impl BlobStore {
    /// Blobs in an object store. Nothing is contacted here; a wrong bucket or credential shows
    /// on the first request (as `Error::Unavailable`, and in the log).
    pub fn remote(settings: &RemoteSettings) -> Result<BlobStore, Error> {
        if settings.part_size < MIN_PART_SIZE {
            return Err(configuration(format!(
                "part size {} is below the minimum of {MIN_PART_SIZE} bytes",
                settings.part_size
            )));
        }
        // The HTTP client's TLS uses the process default provider: `ring`, as everywhere else
        // in Bulwark. Installing fails harmlessly when the process already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prefix = settings.prefix.as_deref().filter(|p| !p.is_empty());
        let (parts, description) = match &settings.backend {
            Backend::S3(s3) => {
                // Client options first: setting them replaces `allow_http`.
                let mut builder = AmazonS3Builder::from_env()
                    .with_client_options(client_options())
                    .with_bucket_name(&s3.bucket)
                    .with_virtual_hosted_style_request(!s3.path_style)
                    .with_allow_http(s3.allow_http)
                    .with_retry(retry());
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(key) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = builder.build().map_err(configuration)?;
                let at = s3.endpoint.as_deref().unwrap_or("AWS");
                (
                    full(store, prefix),
                    format!("S3 bucket {} at {at}", s3.bucket),
                )
            }
            Backend::Gcs(gcs) => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_client_options(client_options())
                    .with_bucket_name(&gcs.bucket)
                    .with_retry(retry());
                if let Some(path) = &gcs.service_account_path {
                    builder = builder.with_service_account_path(path);
                }
                let store = builder.build().map_err(configuration)?;
                (full(store, prefix), format!("GCS bucket {}", gcs.bucket))
            }
            Backend::Azure(azure) => {
                // Client options first: setting them replaces `allow_http`.
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_client_options(client_options())
                    .with_account(&azure.account)
                    .with_container_name(&azure.container)
                    .with_allow_http(azure.allow_http)
                    .with_retry(retry());
                if let Some(key) = &azure.access_key {
                    builder = builder.with_access_key(key);
                }
                if let Some(endpoint) = &azure.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                let store = builder.build().map_err(configuration)?;
                // Azure offers no multipart API to resume across requests, nor URL signing
                // through `object_store`: parts are objects, and blobs stream through us.
                let objects: Arc<dyn ObjectStore> = match prefix {
                    Some(prefix) => Arc::new(PrefixStore::new(store, prefix)),
                    None => Arc::new(store),
                };
                let parts = Parts {
                    objects,
                    multipart: None,
                    signer: None,
                };
                let mut description = format!(
                    "Azure container {} in account {}",
                    azure.container, azure.account
                );
                if let Some(endpoint) = &azure.endpoint {
                    description.push_str(&format!(" at {endpoint}"));
                }
                (parts, description)
            }
        };
        let description = match prefix {
            Some(prefix) => format!("{description}, under {prefix}/"),
            None => description,
        };
        Ok(BlobStore {
            objects: parts.objects.clone(),
            description,
            staging: Staging::Remote(RemoteStaging {
                objects: parts.objects,
                multipart: parts.multipart,
                signer: parts.signer,
                part_size: settings.part_size,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(backend: Backend) -> RemoteSettings {
        RemoteSettings {
            backend,
            prefix: Some("registry".into()),
            part_size: MIN_PART_SIZE,
        }
    }

    #[test]
    fn each_backend_builds_from_settings_without_contacting_anything() {
        let s3 = BlobStore::remote(&settings(Backend::S3(S3Settings {
            bucket: "blobs".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            path_style: true,
            allow_http: true,
        })))
        .expect("s3");
        assert_eq!(
            s3.description(),
            "S3 bucket blobs at http://127.0.0.1:1, under registry/"
        );
        let gcs = BlobStore::remote(&settings(Backend::Gcs(GcsSettings {
            bucket: "blobs".into(),
            service_account_path: None,
        })))
        .expect("gcs");
        assert!(gcs.description().starts_with("GCS bucket blobs"));
        let azure = BlobStore::remote(&settings(Backend::Azure(AzureSettings {
            account: "bulwark".into(),
            container: "blobs".into(),
            access_key: Some("a2V5".into()),
            endpoint: None,
            allow_http: false,
        })))
        .expect("azure");
        assert_eq!(
            azure.description(),
            "Azure container blobs in account bulwark, under registry/"
        );
        let stack = BlobStore::remote(&settings(Backend::Azure(AzureSettings {
            account: "bulwark".into(),
            container: "blobs".into(),
            access_key: Some("a2V5".into()),
            endpoint: Some("https://bulwark.blob.local.azurestack.external".into()),
            allow_http: false,
        })))
        .expect("azure stack");
        assert_eq!(
            stack.description(),
            "Azure container blobs in account bulwark at \
             https://bulwark.blob.local.azurestack.external, under registry/"
        );
    }

    #[test]
    fn refuses_parts_below_the_minimum_and_unreadable_credentials() {
        let mut small = settings(Backend::S3(S3Settings {
            bucket: "blobs".into(),
            ..S3Settings::default()
        }));
        small.part_size = MIN_PART_SIZE - 1;
        assert!(matches!(BlobStore::remote(&small), Err(Error::Storage(_))));
        let missing_key = settings(Backend::Gcs(GcsSettings {
            bucket: "blobs".into(),
            service_account_path: Some("/nonexistent/service-account.json".into()),
        }));
        assert!(matches!(
            BlobStore::remote(&missing_key),
            Err(Error::Storage(_))
        ));
    }
}
