//! `bulwark serve`: open the stores, listen with TLS, run background work, drain on SIGTERM.
//!
//! Invariants:
//! - There is no plaintext listener. A plaintext HTTP request on the TLS port is answered
//!   with a short 400 that says to use https, then the connection is closed.
//! - A connection is never closed under a client still sending: it lingers (`linger`), so an
//!   answer sent before the request body was read (413, 401, 503) is read, not reset.
//! - On SIGTERM or SIGINT the listener closes at once; requests in flight get up to the
//!   configured grace period to finish.
//! - A first start given `BULWARK_ADMIN_PASSWORD` listens before the admin account exists:
//!   argon2 hashes its password on a blocking thread meanwhile, and logins wait for the
//!   account (`Access::hold_logins_until`). If it cannot be created, the server stops like on
//!   SIGTERM (draining what is in flight) and exits with the error.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::access::ClientAddress;
use api::forwarded::TrustedProxies;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use metadata::identity::{IdentityStore, UserRecord};
use metadata::MetadataStore;
use registry::access::{Access, AccessSettings, PrivatePem};
use registry::{Limits, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::config::{Config, LogConfig, LogFormat};
use crate::linger::Lingering;
use crate::tls;

/// A client that neither sends a TLS hello nor finishes its handshake in time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

pub fn init_logging(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level).unwrap_or_else(|err| {
        eprintln!("bulwark: ignoring log level {:?}: {err}", config.level);
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;

    let (metadata, identity) = open_stores(&config).await?;
    let blobs = match config.storage.remote()? {
        Some(settings) => blobstore::BlobStore::remote(&settings),
        None => blobstore::BlobStore::local(&data_dir.join("storage")),
    }
    .context("opening blob storage")?;
    tracing::info!("blobs in {}", blobs.description());
    let redirect = config.storage.redirect.0;
    let limits = Limits {
        max_manifest_bytes: config.limits.max_manifest_bytes,
        upload_expiry: config.uploads.expiry.0,
        blob_redirect: (!redirect.is_zero()).then_some(redirect),
        max_header_bytes: config.limits.max_header_bytes,
        max_uri_bytes: config.limits.max_uri_bytes,
        body_idle_timeout: config.limits.body_idle_timeout.0,
        token_requests_per_second: config.limits.token_requests_per_second,
        max_uploads_per_principal: config.limits.max_uploads_per_principal,
        max_uploads_per_repository: config.limits.max_uploads_per_repository,
    };
    let bootstrap = bootstrap_admin(identity.clone(), data_dir, &config.auth.admin_user).await?;
    let settings = AccessSettings {
        service: config.auth.service.clone(),
        issuer: config.auth.service.clone(),
        token_lifetime: config.auth.token_lifetime.0,
        refresh_lifetime: config.auth.refresh_lifetime.0,
        basic_on_v2: config.auth.basic_on_v2,
        revocation_refresh: config.auth.revocation_refresh.0,
        revocation_max_age: config.auth.revocation_max_age.0,
        signing_key: match &config.auth.signing_key {
            Some(path) => Some(PrivatePem(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the signing key {}", path.display()))?,
            )),
            None => None,
        },
        external_url: config.external_url.clone(),
    };
    let mut access = Access::open(identity, settings)
        .await
        .context("loading token-signing keys")?;
    // The admin account being created in the background, if any; logins wait for it.
    let mut admin_created = match bootstrap {
        Bootstrap::Done => None,
        Bootstrap::Creating { task, ready } => {
            access.hold_logins_until(ready);
            Some(task)
        }
    };
    let access = Arc::new(access);
    let registry = Arc::new(Registry::new(metadata, blobs, limits));

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;

    let files = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => tls::CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
            generated_ca: None,
        },
        _ => {
            let names = tls::wanted_names(&config.tls.sans);
            let (files, generated) = tls::ensure_generated(&data_dir.join("tls"), &names)
                .context("generating a TLS certificate")?;
            if generated {
                tracing::info!(names = ?names, "generated a TLS certificate for {}", names.join(", "));
            }
            files
        }
    };
    let resolver = Arc::new(
        tls::ReloadingResolver::new(files.clone()).context("loading the TLS certificate")?,
    );
    resolver.watch(Duration::from_secs(2));
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver)?));
    if let Some(ca) = &files.generated_ca {
        let host_port = format!("localhost:{}", address.port());
        eprintln!("{}", tls::trust_instructions(ca, &host_port));
    }

    let proxies = Arc::new(config.proxies()?);
    let admission = Admission::new(
        config.limits.max_connections,
        config.limits.max_connections_per_client,
    );
    let http = Arc::new(HttpLimits {
        header_timeout: config.limits.header_timeout.0,
        max_header_count: config.limits.max_header_count,
        max_header_bytes: u32::try_from(config.limits.max_header_bytes).unwrap_or(u32::MAX),
    });
    spawn_upload_expiry(registry.clone());
    let app = api::router(registry, access);
    tracing::info!(address = %address, "listening on https://{address}");

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Set when the admin account could not be created: the server stops as on SIGTERM
    // (requests in flight, such as logins answered 503, still finish), then reports it.
    let mut failure = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Running out of file descriptors must not end the server.
                        tracing::warn!("accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admitted = match admission.admit(peer.ip(), proxies.trusts(peer.ip())) {
                    Ok(admitted) => admitted,
                    Err(refusal) => {
                        tracing::debug!(peer = %peer, "closed a connection over the limit: {refusal:?}");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                let proxies = proxies.clone();
                let http = http.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = Lingering::new(stream, admitted);
                    if let Err(err) = serve_connection(stream, peer, acceptor, app, proxies, &http, watcher).await {
                        tracing::debug!(peer = %peer, "connection ended: {err:#}");
                    }
                });
            }
            () = &mut shutdown => break,
            created = async {
                match admin_created.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if admin_created.is_some() => {
                admin_created = None;
                if let Err(err) = created.context("creating the admin account").and_then(|r| r) {
                    tracing::error!("{err:#}; shutting down");
                    failure = Some(err);
                    break;
                }
            }
        }
    }
    drop(listener);
    let grace = config.shutdown.grace.0;
    tracing::info!(
        "shutting down: waiting up to {}s for {} connection(s)",
        grace.as_secs(),
        graceful.count()
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    failure.map_or(Ok(()), Err)
}

/// What bounds one connection's requests (`limits` in the configuration).
struct HttpLimits {
    header_timeout: Duration,
    max_header_count: usize,
    max_header_bytes: u32,
}

async fn serve_connection(
    mut stream: Lingering,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    proxies: Arc<TrustedProxies>,
    http: &HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
) -> anyhow::Result<()> {
    stream.set_nodelay();
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .context("no data")??;
    if peeked == 0 {
        return Ok(());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        return refuse_plaintext(stream, peer).await;
    }
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .context("TLS handshake timed out")??;
    // The client of each request: the peer, or whom a trusted balancer says it forwarded.
    let service = TowerToHyperService::new(app.layer(axum::middleware::map_request(
        move |mut request: axum::extract::Request| {
            let client = proxies.client(peer.ip(), request.headers());
            request.extensions_mut().insert(ClientAddress(client));
            std::future::ready(request)
        },
    )));
    let mut builder = Builder::new(TokioExecutor::new());
    // HTTP/2's default 64 KiB windows would throttle blob uploads to a trickle per round trip.
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_header_list_size(http.max_header_bytes);
    // A client that never finishes its request headers must not hold a connection (or a
    // shutdown) forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout)
        .max_headers(http.max_header_count);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    watcher
        .watch(connection.into_owned())
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))
}

/// Answers a plaintext HTTP request with a 400 that explains what to do.
async fn refuse_plaintext(mut stream: Lingering, peer: SocketAddr) -> anyhow::Result<()> {
    tracing::info!(peer = %peer, "refused a plaintext HTTP request: this port speaks HTTPS only");
    // Read what the client sent, so closing does not reset the connection under our answer.
    let mut discard = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut discard)).await;
    let body = "This Bulwark registry speaks HTTPS only. Use https:// and trust its CA (see the server log).\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The Postgres pool of the configuration.
pub fn pool_settings(config: &Config) -> metadata_postgres::PoolSettings {
    metadata_postgres::PoolSettings {
        max_connections: config.metadata.max_connections,
        acquire_timeout: config.metadata.acquire_timeout.0,
    }
}

/// Connects to Postgres, refusing a schema that is not exactly this release's.
pub async fn connect_current(
    url: &str,
    settings: metadata_postgres::PoolSettings,
) -> anyhow::Result<metadata_postgres::PostgresStore> {
    let store = metadata_postgres::PostgresStore::connect(url, settings)
        .await
        .context("connecting to the Postgres metadata database")?;
    let schema = store
        .schema()
        .await
        .context("reading the Postgres schema's migrations")?;
    if !schema.is_current() {
        return Err(crate::migrate::refusal(&schema));
    }
    Ok(store)
}

/// The configured metadata store, as the two traits the registry and access control use.
/// Postgres must already carry exactly this release's schema (`bulwark migrate`); embedded
/// SQLite is migrated here (see `migrate`).
async fn open_stores(
    config: &Config,
) -> anyhow::Result<(Arc<dyn MetadataStore>, Arc<dyn IdentityStore>)> {
    match &config.metadata.postgres_url {
        Some(url) => {
            let store = connect_current(url.expose(), pool_settings(config)).await?;
            tracing::info!("metadata in Postgres");
            let store = Arc::new(store);
            Ok((store.clone(), store))
        }
        None => {
            let path = config.data_dir.join("metadata.db");
            let store = Arc::new(
                metadata_sqlite::SqliteStore::open(&path)
                    .await
                    .context("opening the metadata database")?,
            );
            tracing::info!(path = %path.display(), "metadata in SQLite at {}", path.display());
            Ok((store.clone(), store))
        }
    }
}

/// What the first start does about the admin account.
enum Bootstrap {
    /// It exists (or was just created): nothing to wait for.
    Done,
    /// It is being created by `task`; `ready` turns true once it exists.
    Creating {
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        ready: tokio::sync::watch::Receiver<bool>,
    },
}

/// Creates the admin account on first start. Its password is `BULWARK_ADMIN_PASSWORD`, hashed
/// in the background while the server starts listening, or is generated, printed once and
/// written to `<data_dir>/admin-password` (mode 0600) before the server listens, so the file is
/// there by the time the port answers.
async fn bootstrap_admin(
    store: Arc<dyn IdentityStore>,
    data_dir: &Path,
    name: &str,
) -> anyhow::Result<Bootstrap> {
    // Only the very first start creates it: once any account exists, admins manage accounts.
    if !store.list_users(None, 1).await?.is_empty() {
        return Ok(Bootstrap::Done);
    }
    let given = std::env::var("BULWARK_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(password) = given {
        auth::password::validate(&password)
            .map_err(|err| anyhow::anyhow!("BULWARK_ADMIN_PASSWORD: {err}"))?;
        let (created, ready) = tokio::sync::watch::channel(false);
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            create_admin(store.as_ref(), &name, password).await?;
            created.send_replace(true);
            Ok(())
        });
        return Ok(Bootstrap::Creating { task, ready });
    }
    let password = auth::secret::random()
        .plaintext
        .trim_start_matches(auth::secret::PREFIX)
        .to_owned();
    if !create_admin(store.as_ref(), name, password.clone()).await? {
        return Ok(Bootstrap::Done);
    }
    let file = data_dir.join("admin-password");
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut handle, format!("{password}\n").as_bytes())?;
    eprintln!(
        "Created the admin account {name:?} with password {password}\n             (also written to {}; change it with the admin API and delete that file)",
        file.display()
    );
    Ok(Bootstrap::Done)
}

/// Hashes `password` (argon2, on a blocking thread) and creates the admin account `name`;
/// false when another replica created it first.
async fn create_admin(
    store: &dyn IdentityStore,
    name: &str,
    password: String,
) -> anyhow::Result<bool> {
    let password_hash =
        tokio::task::spawn_blocking(move || auth::password::hash(&password)).await??;
    let record = UserRecord {
        name: name.to_owned(),
        password_hash,
        admin: true,
        disabled: false,
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)),
    };
    match store.create_user(&record).await {
        Ok(()) => {
            tracing::info!(user = %name, "created the admin account {name}");
            Ok(true)
        }
        Err(metadata::Error::Conflict(_)) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

fn spawn_upload_expiry(registry: Arc<Registry>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(registry.expiry_interval());
        loop {
            ticker.tick().await;
            match registry.expire_uploads().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "removed {count} expired upload session(s)"),
                Err(err) => tracing::warn!("upload expiry failed: {err}"),
            }
        }
    });
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
