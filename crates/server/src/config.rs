//! Configuration: built-in defaults, overridden by a TOML file, then by `BULWARK_*`
//! environment variables and command-line flags (clap reads both; a flag beats its variable).
//!
//! Invariant: `config/bulwark.example.toml` documents every key and equals `Config::default()`
//! (a test checks it), so the example is always a true description of the defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where metadata, blobs and generated certificates live.
    pub data_dir: PathBuf,
    /// Address and port of the HTTPS listener.
    pub listen: String,
    /// The `https://` URL clients reach this registry at (the balancer's name behind one): the
    /// token realm in `/v2` challenges is built from it. Unset: from the request's `Host`.
    pub external_url: Option<String>,
    /// Load balancers or reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For`
    /// names the client; empty: the client is the TCP peer.
    pub trusted_proxies: Vec<String>,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub uploads: UploadsConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub metadata: MetadataConfig,
    pub storage: StorageConfig,
}

/// Where blobs live: local disk in the data directory, or an object store shared by several
/// replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Keys go under this prefix in the bucket or container (object stores only).
    pub prefix: String,
    /// Bytes per part of a chunked upload to an object store (at least 5 MiB); each request in
    /// flight holds one part in memory.
    pub part_size: usize,
    /// Answer blob `GET`s with a 307 to a presigned URL valid this long (S3 and GCS only);
    /// `0s` keeps blobs streaming through the registry.
    pub redirect: HumanDuration,
    pub s3: S3Config,
    pub gcs: GcsConfig,
    pub azure: AzureConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Filesystem,
    S3,
    Gcs,
    Azure,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub path_style: bool,
    pub allow_http: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsConfig {
    pub bucket: Option<String>,
    pub service_account_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureConfig {
    pub account: Option<String>,
    pub container: Option<String>,
    pub access_key: Option<SecretString>,
    /// The account's blob endpoint (Azure Stack, a sovereign cloud, an emulator); unset means
    /// `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    pub allow_http: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Filesystem,
            prefix: String::new(),
            part_size: 8 * 1024 * 1024,
            redirect: HumanDuration(Duration::ZERO),
            s3: S3Config::default(),
            gcs: GcsConfig::default(),
            azure: AzureConfig::default(),
        }
    }
}

impl StorageConfig {
    /// The object store to keep blobs in; `None` for local disk. Errors name the missing key.
    pub fn remote(&self) -> anyhow::Result<Option<blobstore::RemoteSettings>> {
        fn required(value: &Option<String>, key: &str) -> anyhow::Result<String> {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow::anyhow!("storage.{key} must be set for this backend"))
        }
        let backend = match self.backend {
            StorageBackend::Filesystem => {
                if !self.redirect.0.is_zero() {
                    anyhow::bail!(
                        "storage.redirect needs an object store (s3 or gcs); local blobs stream"
                    );
                }
                return Ok(None);
            }
            StorageBackend::S3 => blobstore::Backend::S3(blobstore::S3Settings {
                bucket: required(&self.s3.bucket, "s3.bucket")?,
                region: self.s3.region.clone(),
                endpoint: self.s3.endpoint.clone(),
                access_key_id: self.s3.access_key_id.clone(),
                secret_access_key: self
                    .s3
                    .secret_access_key
                    .as_ref()
                    .map(|s| s.expose().to_owned()),
                path_style: self.s3.path_style,
                allow_http: self.s3.allow_http,
            }),
            StorageBackend::Gcs => blobstore::Backend::Gcs(blobstore::GcsSettings {
                bucket: required(&self.gcs.bucket, "gcs.bucket")?,
                service_account_path: self
                    .gcs
                    .service_account_path
                    .as_ref()
                    .map(|p| p.display().to_string()),
            }),
            StorageBackend::Azure => {
                if !self.redirect.0.is_zero() {
                    anyhow::bail!("storage.redirect is not available on Azure; set it to 0s");
                }
                blobstore::Backend::Azure(blobstore::AzureSettings {
                    account: required(&self.azure.account, "azure.account")?,
                    container: required(&self.azure.container, "azure.container")?,
                    access_key: self
                        .azure
                        .access_key
                        .as_ref()
                        .map(|s| s.expose().to_owned()),
                    endpoint: self.azure.endpoint.clone(),
                    allow_http: self.azure.allow_http,
                })
            }
        };
        Ok(Some(blobstore::RemoteSettings {
            backend,
            prefix: Some(self.prefix.clone()).filter(|p| !p.is_empty()),
            part_size: self.part_size,
        }))
    }
}

/// Where metadata lives: SQLite in the data directory, or a Postgres database shared by
/// several replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// A `postgres://` URL (TLS through `sslmode`, `sslrootcert`); when unset, metadata is
    /// embedded SQLite in the data directory.
    pub postgres_url: Option<SecretString>,
    /// Connections each replica keeps to Postgres, at most.
    pub max_connections: u32,
    /// How long a request waits for a connection (all busy, or Postgres unreachable) before
    /// answering 503 with `Retry-After`.
    pub acquire_timeout: HumanDuration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            postgres_url: None,
            max_connections: 16,
            acquire_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// A configuration value that must never be printed (it may hold a password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SecretString(text.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The token service's `service` name, and the audience of its tokens.
    pub service: String,
    /// How long a registry token lives.
    pub token_lifetime: HumanDuration,
    /// How long a refresh token (`offline_token=true`) lives.
    pub refresh_lifetime: HumanDuration,
    /// Accept Basic credentials on `/v2` directly, for simple scripts.
    pub basic_on_v2: bool,
    /// The admin account created on first start.
    pub admin_user: String,
    /// A P-256 private key (PKCS#8 PEM) that signs tokens; without one, a key is generated.
    pub signing_key: Option<PathBuf>,
    /// How often each replica reads the revocations (and signing-key changes) any replica
    /// recorded.
    pub revocation_refresh: HumanDuration,
    /// Revocations read longer ago than this are read again before a token is honoured (a
    /// 503 while the store cannot answer): the most a revocation takes to stop a token on
    /// every replica. Longer than `revocation_refresh`.
    pub revocation_max_age: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: "bulwark".into(),
            token_lifetime: HumanDuration(Duration::from_secs(300)),
            refresh_lifetime: HumanDuration(Duration::from_secs(30 * 86_400)),
            basic_on_v2: true,
            admin_user: "admin".into(),
            signing_key: None,
            revocation_refresh: HumanDuration(Duration::from_secs(2)),
            revocation_max_age: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra names for the generated server certificate.
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_manifest_bytes: usize,
    /// Open client connections, in all; more are closed as they arrive.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64 counts as one); trusted proxies
    /// are exempt, their clients are counted per request elsewhere.
    pub max_connections_per_client: usize,
    /// Header fields in one request (HTTP/1.1; HTTP/2 is bounded by `max_header_bytes`).
    pub max_header_count: usize,
    /// Bytes of header names and values in one request: 431 beyond.
    pub max_header_bytes: usize,
    /// Bytes of a request's target (path and query): 414 beyond.
    pub max_uri_bytes: usize,
    /// How long a client may take to send a request's headers, and to start the next one on
    /// an idle HTTP/1.1 connection.
    pub header_timeout: HumanDuration,
    /// How long a request body may send nothing before its request fails.
    pub body_idle_timeout: HumanDuration,
    /// Token requests per second from one client address (bursts of five seconds' worth);
    /// more get 429 with Retry-After.
    pub token_requests_per_second: u32,
    /// Open upload sessions of one user or robot: 429 beyond, until some finish or expire.
    pub max_uploads_per_principal: u32,
    /// Open upload sessions in one repository: 429 beyond.
    pub max_uploads_per_repository: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    pub expiry: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub grace: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,api=debug`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// `trusted_proxies`, parsed.
    pub fn proxies(&self) -> anyhow::Result<api::forwarded::TrustedProxies> {
        let networks = self
            .trusted_proxies
            .iter()
            .map(|text| {
                text.parse()
                    .map_err(|err| anyhow::anyhow!("trusted_proxies: {err}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(api::forwarded::TrustedProxies::new(networks))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./bulwark-data"),
            listen: "0.0.0.0:5000".into(),
            external_url: None,
            trusted_proxies: Vec::new(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            uploads: UploadsConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            metadata: MetadataConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_connections: 8192,
            max_connections_per_client: 1024,
            max_header_count: 100,
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: HumanDuration(Duration::from_secs(30)),
            body_idle_timeout: HumanDuration(Duration::from_secs(60)),
            token_requests_per_second: 20,
            max_uploads_per_principal: 1024,
            max_uploads_per_repository: 4096,
        }
    }
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            expiry: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A duration written as a number and a unit: `90s`, `30m`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 24h or 7d"))?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("{text:?} has no unit; use s, m, h or d")),
        };
        number
            .checked_mul(seconds)
            .map(|secs| HumanDuration(Duration::from_secs(secs)))
            .ok_or_else(|| format!("{text:?} is too long"))
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            0 => write!(f, "0s"),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Settings given on the command line or in `BULWARK_*` variables; each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// A TOML configuration file (see config/bulwark.example.toml).
    #[arg(long, env = "BULWARK_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "BULWARK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address and port to listen on, e.g. 0.0.0.0:5000 or 127.0.0.1:0 for any free port.
    #[arg(long, env = "BULWARK_LISTEN")]
    pub listen: Option<String>,
    /// The https:// URL clients reach the registry at, e.g. https://registry.example.com
    /// (the token realm is built from it instead of the request's Host header).
    #[arg(long, env = "BULWARK_EXTERNAL_URL")]
    pub external_url: Option<String>,
    #[arg(long, env = "BULWARK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "BULWARK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A load balancer or proxy (address or CIDR range) whose X-Forwarded-For names the client
    /// (repeatable).
    #[arg(
        long = "trusted-proxy",
        env = "BULWARK_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Extra DNS names or IP addresses for the generated certificate (repeatable).
    #[arg(long = "tls-san", env = "BULWARK_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    #[arg(long, env = "BULWARK_MAX_MANIFEST_BYTES")]
    pub max_manifest_bytes: Option<usize>,
    /// How long an untouched upload session lives, e.g. 24h.
    #[arg(long, env = "BULWARK_UPLOAD_EXPIRY")]
    pub upload_expiry: Option<HumanDuration>,
    /// How long SIGTERM waits for in-flight requests, e.g. 30s.
    #[arg(long, env = "BULWARK_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<HumanDuration>,
    /// A tracing filter, e.g. info or debug.
    #[arg(long, env = "BULWARK_LOG")]
    pub log_level: Option<String>,
    #[arg(long, env = "BULWARK_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How long registry tokens live, e.g. 5m.
    #[arg(long, env = "BULWARK_TOKEN_LIFETIME")]
    pub token_lifetime: Option<HumanDuration>,
    /// The admin account created on first start (its password comes from
    /// BULWARK_ADMIN_PASSWORD, or is generated and written to <data_dir>/admin-password).
    #[arg(long, env = "BULWARK_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// A P-256 private key (PKCS#8 PEM) to sign tokens with; earlier keys keep verifying.
    #[arg(long, env = "BULWARK_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// How often revocations recorded by any replica are read, e.g. 2s.
    #[arg(long, env = "BULWARK_REVOCATION_REFRESH")]
    pub revocation_refresh: Option<HumanDuration>,
    /// Keep metadata in this Postgres database (postgres://USER:PASSWORD@HOST:PORT/DB, with
    /// ?sslmode=verify-full&sslrootcert=CA.crt for TLS) instead of embedded SQLite.
    #[arg(long, env = "BULWARK_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<SecretString>,
    /// Where blobs live: filesystem (in the data directory), s3, gcs or azure.
    #[arg(long, env = "BULWARK_STORAGE")]
    pub storage: Option<StorageBackend>,
    /// Key prefix inside the bucket or container.
    #[arg(long, env = "BULWARK_STORAGE_PREFIX")]
    pub storage_prefix: Option<String>,
    /// Answer blob GETs with a 307 to a presigned URL valid this long (s3, gcs), e.g. 5m.
    #[arg(long, env = "BULWARK_STORAGE_REDIRECT")]
    pub storage_redirect: Option<HumanDuration>,
    /// The S3 bucket (credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the file).
    #[arg(long, env = "BULWARK_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// An S3-compatible endpoint, e.g. https://minio.internal:9000 (default: AWS).
    #[arg(long, env = "BULWARK_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "BULWARK_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address objects as ENDPOINT/BUCKET/KEY (most self-hosted stores need this).
    #[arg(long, env = "BULWARK_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    /// Permit an http:// endpoint on a private network.
    #[arg(long, env = "BULWARK_S3_ALLOW_HTTP")]
    pub s3_allow_http: Option<bool>,
}

impl Config {
    /// Defaults, then the file named by `overrides.config`, then the overrides themselves.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Config> {
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| anyhow::anyhow!("reading {}: {err}", path.display()))?;
                toml::from_str(&text).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?
            }
            None => Config::default(),
        };
        let o = overrides.clone();
        if let Some(v) = o.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = o.listen {
            config.listen = v;
        }
        if let Some(v) = o.external_url {
            config.external_url = Some(v);
        }
        if let (Some(cert), Some(key)) = (o.tls_cert, o.tls_key) {
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
        }
        config
            .tls
            .sans
            .extend(o.tls_sans.into_iter().filter(|s| !s.is_empty()));
        config
            .trusted_proxies
            .extend(o.trusted_proxies.into_iter().filter(|s| !s.is_empty()));
        if let Some(v) = o.max_manifest_bytes {
            config.limits.max_manifest_bytes = v;
        }
        if let Some(v) = o.upload_expiry {
            config.uploads.expiry = v;
        }
        if let Some(v) = o.shutdown_grace {
            config.shutdown.grace = v;
        }
        if let Some(v) = o.log_level {
            config.log.level = v;
        }
        if let Some(v) = o.token_lifetime {
            config.auth.token_lifetime = v;
        }
        if let Some(v) = o.admin_user {
            config.auth.admin_user = v;
        }
        if let Some(v) = o.signing_key {
            config.auth.signing_key = Some(v);
        }
        if let Some(v) = o.revocation_refresh {
            config.auth.revocation_refresh = v;
        }
        if let Some(v) = o.postgres_url {
            config.metadata.postgres_url = Some(v);
        }
        if let Some(v) = o.log_format {
            config.log.format = v;
        }
        if let Some(v) = o.storage {
            config.storage.backend = v;
        }
        if let Some(v) = o.storage_prefix {
            config.storage.prefix = v;
        }
        if let Some(v) = o.storage_redirect {
            config.storage.redirect = v;
        }
        let s3 = &mut config.storage.s3;
        if let Some(v) = o.s3_bucket {
            s3.bucket = Some(v);
        }
        if let Some(v) = o.s3_endpoint {
            s3.endpoint = Some(v);
        }
        if let Some(v) = o.s3_region {
            s3.region = Some(v);
        }
        if let Some(v) = o.s3_path_style {
            s3.path_style = v;
        }
        if let Some(v) = o.s3_allow_http {
            s3.allow_http = v;
        }
        config.checked()
    }

    /// A configuration file's text, parsed and checked as `load` checks it, without overrides
    /// (what the `config` fuzz target reaches).
    #[cfg(any(test, fuzzing))]
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.checked()
    }

    /// The configuration, once what `serve` would refuse later is refused now.
    fn checked(mut self) -> anyhow::Result<Config> {
        self.storage.remote()?;
        self.proxies()?;
        if let Some(url) = &mut self.external_url {
            *url = external_url(url)?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            anyhow::bail!("tls.cert and tls.key must be set together");
        }
        if self.auth.revocation_refresh.0.is_zero()
            || self.auth.revocation_max_age.0 <= self.auth.revocation_refresh.0
        {
            anyhow::bail!(
                "auth.revocation_refresh must be more than 0s and less than auth.revocation_max_age"
            );
        }
        Ok(self)
    }
}

/// The `config` fuzz target's check of one input (a configuration file's bytes), shared with
/// the replay of its corpus: parsing never panics, and an accepted configuration written back
/// as TOML reads back the same.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        let written = toml::to_string(&config).expect("an accepted configuration serializes");
        let again = Config::from_toml(&written).expect("the written configuration loads");
        assert_eq!(again, config, "written as\n{written}");
    }
}

/// `external_url` as the realm is built from it: `https://` and a host with an optional port,
/// nothing after it but an optional `/` (dropped). The routes live at the root, so a path
/// would only name URLs this server does not answer.
fn external_url(text: &str) -> anyhow::Result<String> {
    let authority = text
        .strip_prefix("https://")
        .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
        .filter(|authority| api::access::is_host(authority))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "external_url must be https://HOST or https://HOST:PORT (got {text:?}); there is no plaintext listener and the API lives at the root"
            )
        })?;
    Ok(format!("https://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_url_is_an_https_origin() {
        for (text, expected) in [
            (
                "https://registry.example.com",
                Some("https://registry.example.com"),
            ),
            (
                "https://registry.example.com/",
                Some("https://registry.example.com"),
            ),
            ("https://10.0.0.5:5000", Some("https://10.0.0.5:5000")),
            ("https://[::1]:5000", Some("https://[::1]:5000")),
            ("http://registry.example.com", None),
            ("https://", None),
            ("https://registry.example.com/v2", None),
            ("https://user@registry.example.com", None),
            ("https://a b", None),
            ("registry.example.com", None),
        ] {
            assert_eq!(
                external_url(text).ok().as_deref(),
                expected,
                "external_url {text:?}"
            );
        }
    }

    #[test]
    fn the_example_file_equals_the_defaults() {
        let text = include_str!("../../../config/bulwark.example.toml");
        let parsed: Config = toml::from_str(text).expect("the example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn durations_read_and_print_with_units() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30)),
            ("15m", Some(900)),
            ("24h", Some(86_400)),
            ("7d", Some(604_800)),
            ("0s", Some(0)),
            ("10", None),
            ("h", None),
            ("1w", None),
            ("-5s", None),
            ("99999999999999999999d", None),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<HumanDuration>().ok().map(|d| d.0.as_secs());
            assert_eq!(parsed, *expected, "{text}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(86_400)).to_string(), "1d");
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "90s");
    }

    #[test]
    fn flags_and_variables_override_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("bulwark.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\n[limits]\nmax_manifest_bytes = 100\n",
        )
        .expect("write");
        let overrides = Overrides {
            config: Some(file),
            max_manifest_bytes: Some(200),
            tls_sans: vec!["registry.test".into()],
            ..Overrides::default()
        };
        let config = Config::load(&overrides).expect("load");
        assert_eq!(config.listen, "127.0.0.1:6000");
        assert_eq!(config.limits.max_manifest_bytes, 200);
        assert_eq!(config.tls.sans, vec!["registry.test".to_owned()]);
        assert_eq!(config.data_dir, PathBuf::from("./bulwark-data"));
    }

    #[test]
    fn the_postgres_url_never_prints() {
        let config = Config {
            metadata: MetadataConfig {
                postgres_url: Some(
                    "postgres://bulwark:hunter2@db/bulwark"
                        .parse()
                        .expect("infallible"),
                ),
                ..MetadataConfig::default()
            },
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn object_stores_are_chosen_and_checked_in_config() {
        let s3: Config = toml::from_str(
            "[storage]\nbackend = \"s3\"\nprefix = \"prod\"\nredirect = \"5m\"\n\
             [storage.s3]\nbucket = \"blobs\"\nendpoint = \"https://s3.internal:9000\"\n\
             path_style = true\naccess_key_id = \"AKIA1\"\nsecret_access_key = \"hunter2\"\n",
        )
        .expect("parse");
        let remote = s3.storage.remote().expect("valid").expect("remote");
        assert_eq!(remote.prefix.as_deref(), Some("prod"));
        assert!(matches!(
            remote.backend,
            blobstore::Backend::S3(ref s) if s.bucket == "blobs" && s.path_style
        ));
        assert!(!format!("{s3:?}").contains("hunter2"));
        blobstore::BlobStore::remote(&remote).expect("an S3 store builds from config");

        let gcs: Config =
            toml::from_str("[storage]\nbackend = \"gcs\"\n[storage.gcs]\nbucket = \"b\"\n")
                .expect("parse");
        let remote = gcs.storage.remote().expect("valid").expect("remote");
        blobstore::BlobStore::remote(&remote).expect("a GCS store builds from config");

        let azure: Config = toml::from_str(
            "[storage]\nbackend = \"azure\"\n\
             [storage.azure]\naccount = \"acct\"\ncontainer = \"blobs\"\naccess_key = \"a2V5\"\n\
             endpoint = \"http://azure.internal:10000/acct\"\nallow_http = true\n",
        )
        .expect("parse");
        let remote = azure.storage.remote().expect("valid").expect("remote");
        assert!(matches!(
            remote.backend,
            blobstore::Backend::Azure(ref a)
                if a.endpoint.as_deref() == Some("http://azure.internal:10000/acct") && a.allow_http
        ));
        blobstore::BlobStore::remote(&remote).expect("an Azure store builds from config");

        let refusals = [
            ("[storage]\nbackend = \"s3\"\n", "storage.s3.bucket"),
            (
                "[storage]\nbackend = \"azure\"\n[storage.azure]\naccount = \"a\"\n",
                "storage.azure.container",
            ),
            ("[storage]\nredirect = \"5m\"\n", "object store"),
        ];
        for (text, expected) in refusals {
            let config: Config = toml::from_str(text).expect("parse");
            let err = config.storage.remote().expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert_eq!(Config::default().storage.remote().expect("valid"), None);
    }

    #[test]
    fn the_compose_file_sets_only_variables_bulwark_reads() {
        let command = <Overrides as clap::Args>::augment_args(clap::Command::new("serve"));
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .chain(["BULWARK_ADMIN_PASSWORD".to_owned()])
            .collect();
        let compose = include_str!("../../../docker-compose.yml");
        let used: Vec<&str> = compose
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("BULWARK_"))
            .collect();
        assert!(
            used.len() > 5,
            "the compose file configures bulwark: {used:?}"
        );
        for variable in used {
            assert!(
                known.iter().any(|k| k == variable),
                "docker-compose.yml sets {variable}, which bulwark does not read"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("listne = \"x\"").expect_err("typo must fail");
        assert!(err.to_string().contains("listne"));
    }

    #[test]
    fn the_config_fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("reading the corpus {}: {err}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("reading a corpus input");
            count += 1;
            if std::panic::catch_unwind(|| fuzz(&data)).is_err() {
                panic!("the config corpus input {} panics", path.display());
            }
        }
        assert!(count > 0, "the corpus {} is empty", dir.display());
    }
}
