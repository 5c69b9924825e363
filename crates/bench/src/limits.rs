//! The machine's limits, measured beside the results so each figure can be read as a fraction
//! of what the hardware allows: one core's SHA-256 rate, the payload generator's rate, disk
//! write rates, and loopback TLS with a trivial server (a transfer each way, small requests).
//!
//! Invariants:
//! - The trivial server runs in this process on a runtime of its own, with the same
//!   certificate and the same client as the scenarios, so the TLS figures are the ceiling the
//!   registries are measured against, client cost included.
//! - Ceilings take the best of a few tries; nothing here is a registry figure.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use sha2::Digest as _;

use crate::payload::{Payload, PIECE};
use crate::scenarios::{load, GIB, MIB};
use crate::server::Certificates;

/// Figure key → value (MB/s or requests/s, as the key says).
pub type Limits = BTreeMap<String, f64>;

/// Measures everything; `dir` is where the disk test writes (the registries' filesystem).
pub async fn measure(dir: &Path, certificates: &Certificates) -> anyhow::Result<Limits> {
    let mut limits = Limits::new();
    let (sha, generator) =
        tokio::task::spawn_blocking(|| (sha256_rate(), generator_rate())).await?;
    limits.insert("sha256_mbps".into(), sha);
    limits.insert("generator_mbps".into(), generator);
    for (key, flags) in [
        ("disk_direct_mbps", &["oflag=direct"][..]),
        ("disk_fdatasync_mbps", &["conv=fdatasync"][..]),
        ("disk_buffered_mbps", &[][..]),
    ] {
        match disk_write_rate(dir, flags) {
            Ok(rate) => {
                limits.insert(key.into(), rate);
            }
            Err(err) => eprintln!("warning: dd {flags:?} failed: {err:#}"),
        }
    }
    loopback_tls(certificates, &mut limits).await?;
    Ok(limits)
}

/// One core hashing 256 MiB already in memory, best of three, MB/s.
fn sha256_rate() -> f64 {
    let block = Payload::new(99, 64 * MIB).bytes(0..64 * MIB);
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut hasher = sha2::Sha256::new();
            for _ in 0..4 {
                hasher.update(&block);
            }
            std::hint::black_box(hasher.finalize());
            (4 * block.len()) as f64 / 1e6 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// One core generating 256 MiB of payload in pieces, best of three, MB/s.
fn generator_rate() -> f64 {
    let payload = Payload::new(98, 256 * MIB);
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut offset = 0;
            while offset < payload.size {
                std::hint::black_box(payload.bytes(offset..offset + PIECE as u64));
                offset += PIECE as u64;
            }
            payload.size as f64 / 1e6 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// `dd` writing 1 GiB of zeros into `dir` with `flags`, MB/s.
fn disk_write_rate(dir: &Path, flags: &[&str]) -> anyhow::Result<f64> {
    let file = dir.join("dd-test");
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", "count=1024"])
        .args(flags)
        .output()
        .context("running dd")?;
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        return Err(anyhow!(
            "dd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_dd(&String::from_utf8_lossy(&output.stderr))
        .ok_or_else(|| anyhow!("cannot read dd's summary"))
}

/// MB/s from dd's last line, `1073741824 bytes (1.1 GB, 1.0 GiB) copied, 0.9 s, 1.2 GB/s`.
pub fn parse_dd(stderr: &str) -> Option<f64> {
    let line = stderr.lines().rev().find(|l| l.contains(" copied, "))?;
    let bytes: f64 = line.split_whitespace().next()?.parse().ok()?;
    let after = &line[line.find(" copied, ")? + " copied, ".len()..];
    let seconds: f64 = after.split_whitespace().next()?.parse().ok()?;
    (seconds > 0.0).then(|| bytes / 1e6 / seconds)
}

/// The trivial HTTPS endpoint: `GET /big` streams `GIB` bytes, `PUT /sink` discards its
/// body, `GET /small` answers 512 bytes (a manifest's size).
async fn trivial(request: Request<Incoming>) -> Result<Response<TrivialBody>, Infallible> {
    static PIECE_BYTES: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let piece = PIECE_BYTES
        .get_or_init(|| Payload::new(97, PIECE as u64).bytes(0..PIECE as u64))
        .clone();
    let response = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/big") => {
            let pieces = (GIB / PIECE as u64) as usize;
            let stream = futures_util::stream::iter(
                std::iter::repeat_n(piece, pieces).map(|p| Ok(Frame::data(p))),
            );
            Response::builder()
                .header("content-length", GIB)
                .body(StreamBody::new(stream).boxed())
        }
        ("PUT", "/sink") => {
            let mut body = request.into_body();
            while let Some(Ok(_frame)) = body.frame().await {}
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Full::new(Bytes::new()).boxed())
        }
        _ => Response::builder().body(Full::new(piece.slice(0..512)).boxed()),
    };
    Ok(response.expect("a valid response"))
}

type TrivialBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Starts the trivial endpoint on a thread and runtime of its own; returns its port.
fn start_trivial(certificates: &Certificates) -> anyhow::Result<u16> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain =
        CertificateDer::pem_file_iter(&certificates.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&certificates.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    std::thread::Builder::new()
        .name("trivial-tls".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the trivial server");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(
                                hyper_util::rt::TokioIo::new(tls),
                                hyper::service::service_fn(trivial),
                            )
                            .await;
                    });
                }
            });
        })?;
    Ok(port)
}

async fn loopback_tls(certificates: &Certificates, limits: &mut Limits) -> anyhow::Result<()> {
    let port = start_trivial(certificates)?;
    let base = format!("https://127.0.0.1:{port}");
    let client = crate::client::http_client(&certificates.ca_pem, false)?;

    let mut best_download: f64 = 0.0;
    let mut best_upload: f64 = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        let mut response = client.get(format!("{base}/big")).send().await?;
        let mut length = 0u64;
        while let Some(piece) = response.chunk().await? {
            length += piece.len() as u64;
        }
        best_download = best_download.max(length as f64 / 1e6 / started.elapsed().as_secs_f64());

        let payload = Payload::new(96, GIB);
        let started = Instant::now();
        let response = client
            .put(format!("{base}/sink"))
            .header("content-length", payload.size)
            .body(payload.body())
            .send()
            .await?;
        anyhow::ensure!(response.status() == StatusCode::CREATED, "the sink refused");
        best_upload = best_upload.max(payload.size as f64 / 1e6 / started.elapsed().as_secs_f64());
    }
    limits.insert("tls_download_mbps".into(), best_download);
    limits.insert("tls_upload_mbps".into(), best_upload);

    for concurrency in [1, 16] {
        let small = {
            let client = client.clone();
            let url = format!("{base}/small");
            move |_: usize, _: u64| -> BoxFuture<'static, anyhow::Result<()>> {
                let client = client.clone();
                let url = url.clone();
                Box::pin(async move {
                    client.get(&url).send().await?.bytes().await?;
                    Ok(())
                })
            }
        };
        let run = load(concurrency, Duration::from_secs(2), None, small).await?;
        limits.insert(
            format!("tls_small_get_c{concurrency}_rps"),
            run.requests as f64 / run.elapsed.as_secs_f64(),
        );
    }
    Ok(())
}

/// A few lines describing this machine, for the report.
pub fn describe_machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let sha_ni = cpuinfo.contains(" sha_ni");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = crate::server::status_kib(&meminfo, "MemTotal:").unwrap_or(0) as f64 / 1048576.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![
        format!(
            "CPU: {model}, {cores} logical CPUs{}",
            if sha_ni { ", SHA-NI" } else { "" }
        ),
        format!("memory: {memory:.1} GiB; kernel {}", kernel.trim()),
    ]
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dd_summary_gives_megabytes_per_second() {
        let stderr = "1024+0 records in\n1024+0 records out\n\
                      1073741824 bytes (1.1 GB, 1.0 GiB) copied, 0.5 s, 2.1 GB/s\n";
        let rate = parse_dd(stderr).unwrap();
        assert!((rate - 2147.483648).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_dd_failure_text_has_no_rate() {
        assert_eq!(parse_dd("dd: failed to open 'x': Permission denied"), None);
    }
}
