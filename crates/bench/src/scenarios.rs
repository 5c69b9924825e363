//! The scenarios of issue 5, run in order against one registry: three ways of pushing a large
//! blob, pulling it, blob `HEAD` latency, manifest writes and reads at several concurrencies,
//! a 100-layer image, and many concurrent pushers.
//!
//! Invariants:
//! - Every blob's digest is computed before anything is timed (`Blobs::prepare`); bodies are
//!   generated while they are sent, never held whole.
//! - A figure is only recorded when every request of its scenario succeeded.
//! - When the server's process id is known, each scenario also records the server's CPU
//!   seconds and (for pushes) its peak RSS; the load generator's own CPU use is recorded for
//!   every scenario, so a reader can tell whether the client was the bottleneck.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::BoxFuture;
use reqwest::Method;

use crate::client::Client;
use crate::payload::{digest_of, Payload};
use crate::server::{reset_peak, Usage};
use crate::stats::Latencies;

pub const GIB: u64 = 1024 * 1024 * 1024;
pub const MIB: u64 = 1024 * 1024;

/// The sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The large blob pushed three ways and pulled.
    pub blob_size: u64,
    /// The chunk of the chunked push.
    pub chunk_size: u64,
    /// How long each request-rate scenario runs.
    pub rate_duration: Duration,
    pub layers: usize,
    pub layer_size: u64,
    pub pushers: usize,
    pub pusher_size: u64,
    /// The groups of scenarios to run; empty means all.
    pub only: Vec<Group>,
}

/// Groups of scenarios, to run a few of them (e.g. under a profiler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// The three 1 GiB pushes.
    Pushes,
    /// The 1 GiB pull (pushes the blob first, untimed, if `pushes` is not run).
    Pull,
    /// Blob `HEAD` latency (likewise).
    Head,
    /// Manifest `PUT`, `GET` and `HEAD` rates.
    Manifests,
    /// The 100-layer image.
    Image,
    /// The concurrent pushers.
    Pushers,
}

impl Plan {
    pub fn includes(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            blob_size: GIB,
            chunk_size: 16 * MIB,
            rate_duration: Duration::from_secs(3),
            layers: 100,
            layer_size: 100 * 1024,
            pushers: 32,
            pusher_size: 10 * MIB,
            only: Vec::new(),
        }
    }
}

/// Repositories the scenarios use; a token covers all of them.
pub const REPOSITORIES: [&str; 4] = [
    "bench/push",
    "bench/manifests",
    "bench/image",
    "bench/pushers",
];

/// The scopes to ask a token service for.
pub fn scopes() -> Vec<String> {
    REPOSITORIES
        .iter()
        .map(|r| format!("repository:{r}:pull,push"))
        .collect()
}

/// A blob and its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub payload: Payload,
    pub digest: String,
}

impl Blob {
    fn new(seed: u64, size: u64) -> Blob {
        let payload = Payload::new(seed, size);
        Blob {
            digest: payload.digest(),
            payload,
        }
    }
}

/// Every blob of a run, hashed up front. The same contents go to both registries (each starts
/// empty), so they are hashed once per harness run.
pub struct Blobs {
    pub monolithic: Blob,
    pub streamed: Blob,
    pub chunked: Blob,
    pub layers: Vec<Blob>,
    pub pushers: Vec<Blob>,
    /// The one small layer the manifests of the manifest scenarios reference.
    pub manifest_layer: Blob,
}

impl Blobs {
    /// Generates and hashes every blob, on all cores.
    pub async fn prepare(plan: &Plan) -> anyhow::Result<Blobs> {
        let big = |seed: u64| {
            let size = plan.blob_size;
            tokio::task::spawn_blocking(move || Blob::new(seed, size))
        };
        let (monolithic, streamed, chunked) = (big(1), big(2), big(3));
        let (layers, pushers) = {
            let plan = plan.clone();
            tokio::task::spawn_blocking(move || {
                let layers = (0..plan.layers as u64)
                    .map(|i| Blob::new(1000 + i, plan.layer_size))
                    .collect();
                let pushers = (0..plan.pushers as u64)
                    .map(|i| Blob::new(2000 + i, plan.pusher_size))
                    .collect();
                (layers, pushers)
            })
            .await?
        };
        Ok(Blobs {
            monolithic: monolithic.await?,
            streamed: streamed.await?,
            chunked: chunked.await?,
            layers,
            pushers,
            manifest_layer: Blob::new(3000, 4096),
        })
    }
}

/// Everything one run of the scenarios measured.
#[derive(Debug, Default, Clone)]
pub struct Results {
    /// Figure key → value, in the units the report names.
    pub figures: BTreeMap<String, f64>,
    /// Scenario → CPU cores the load generator used while it ran.
    pub client_cores: BTreeMap<String, f64>,
    /// Scenario → CPU cores the server used meanwhile (when its process is known).
    pub server_cores: BTreeMap<String, f64>,
}

impl Results {
    pub fn set(&mut self, key: impl Into<String>, value: f64) {
        self.figures.insert(key.into(), value);
    }

    /// Records the CPU both sides used during `scenario`.
    fn cpu(&mut self, scenario: &str, client_cores: f64, server_cores: Option<f64>) {
        self.client_cores.insert(scenario.to_owned(), client_cores);
        if let Some(cores) = server_cores {
            self.server_cores.insert(scenario.to_owned(), cores);
        }
    }
}

/// Measures wall time, the client's CPU and, when known, the server's.
struct Meter {
    pid: Option<u32>,
    started: Instant,
    client_cpu: f64,
    server_cpu: Option<f64>,
}

struct Metered {
    elapsed: Duration,
    client_cores: f64,
    server_cpu_seconds: Option<f64>,
}

impl Metered {
    fn server_cores(&self) -> Option<f64> {
        self.server_cpu_seconds
            .map(|cpu| cpu / self.elapsed.as_secs_f64().max(1e-9))
    }
}

impl Meter {
    fn start(pid: Option<u32>) -> Meter {
        Meter {
            pid,
            client_cpu: Usage::own_cpu_seconds(),
            server_cpu: pid
                .and_then(|pid| Usage::of(pid).ok())
                .map(|u| u.cpu_seconds),
            started: Instant::now(),
        }
    }

    fn stop(self) -> Metered {
        let elapsed = self.started.elapsed();
        let client = Usage::own_cpu_seconds() - self.client_cpu;
        let server = match (self.pid, self.server_cpu) {
            (Some(pid), Some(before)) => Usage::of(pid).ok().map(|u| u.cpu_seconds - before),
            _ => None,
        };
        Metered {
            elapsed,
            client_cores: client / elapsed.as_secs_f64().max(1e-9),
            server_cpu_seconds: server,
        }
    }
}

fn megabytes_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// Records a push or pull: throughput, server CPU per GiB, client share.
fn record_transfer(results: &mut Results, key: &str, bytes: u64, metered: &Metered) {
    results.set(
        format!("{key}_mbps"),
        megabytes_per_second(bytes, metered.elapsed),
    );
    if let Some(cpu) = metered.server_cpu_seconds {
        results.set(format!("{key}_cpu"), cpu / (bytes as f64 / GIB as f64));
    }
    results.cpu(key, metered.client_cores, metered.server_cores());
}

/// Runs every scenario against `client`'s registry, whose process is `pid` when local.
pub async fn run(
    client: &Client,
    plan: &Plan,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let push = REPOSITORIES[0];
    if let Some(pid) = pid {
        if !reset_peak(pid) {
            // Then the peak below also covers start-up: still an upper bound.
            eprintln!("warning: cannot reset the peak RSS of process {pid}");
        }
    }

    if plan.includes(Group::Pushes) {
        pushes(client, plan, blobs, pid, results).await?;
    } else if plan.includes(Group::Pull) || plan.includes(Group::Head) {
        let blob = &blobs.monolithic;
        let upload = client.start_upload(push).await?;
        client
            .put_whole(&upload, &blob.payload, &blob.digest)
            .await?;
    }
    if plan.includes(Group::Pull) {
        pull(client, blobs, pid, results).await?;
    }
    if plan.includes(Group::Head) {
        blob_head(client, plan, blobs, pid, results).await?;
    }
    if plan.includes(Group::Manifests) {
        manifests(client, plan, blobs, pid, results).await?;
    }
    if plan.includes(Group::Image) {
        client.refresh().await?;
        let meter = Meter::start(pid);
        push_image(client, &blobs.layers).await?;
        let metered = meter.stop();
        results.set("image_push_s", metered.elapsed.as_secs_f64());
        results.cpu("image_push", metered.client_cores, metered.server_cores());
    }
    if plan.includes(Group::Pushers) {
        pushers(client, blobs, pid, results).await?;
    }
    Ok(())
}

/// The large blob pushed monolithically, in one streamed `PATCH`, and in chunks.
async fn pushes(
    client: &Client,
    plan: &Plan,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let push = REPOSITORIES[0];
    client.refresh().await?;
    let blob = &blobs.monolithic;
    let meter = Meter::start(pid);
    let upload = client.start_upload(push).await?;
    client
        .put_whole(&upload, &blob.payload, &blob.digest)
        .await
        .context("monolithic push")?;
    record_transfer(results, "push_monolithic", blob.payload.size, &meter.stop());

    client.refresh().await?;
    let blob = &blobs.streamed;
    let meter = Meter::start(pid);
    client
        .push_streamed(push, &blob.payload, &blob.digest)
        .await
        .context("single-PATCH push")?;
    record_transfer(results, "push_patch", blob.payload.size, &meter.stop());

    client.refresh().await?;
    let blob = &blobs.chunked;
    let meter = Meter::start(pid);
    let mut upload = client.start_upload(push).await?;
    let mut offset = 0;
    while offset < blob.payload.size {
        let end = (offset + plan.chunk_size).min(blob.payload.size);
        upload = client
            .patch_range(&upload, &blob.payload, offset..end)
            .await
            .with_context(|| format!("chunk at {offset}"))?;
        offset = end;
    }
    client.finish_upload(&upload, &blob.digest).await?;
    record_transfer(results, "push_chunked", blob.payload.size, &meter.stop());
    if let Some(pid) = pid {
        let usage = Usage::of(pid)?;
        results.set("rss_peak_push_mib", usage.peak_bytes as f64 / MIB as f64);
    }
    Ok(())
}

async fn pull(
    client: &Client,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let push = REPOSITORIES[0];
    client.refresh().await?;
    let blob = &blobs.monolithic;
    let meter = Meter::start(pid);
    let pulled = client.pull_blob(push, &blob.digest).await?;
    if pulled != blob.payload.size {
        bail!("pulled {pulled} bytes of a {}-byte blob", blob.payload.size);
    }
    record_transfer(results, "pull", pulled, &meter.stop());
    Ok(())
}

async fn blob_head(
    client: &Client,
    plan: &Plan,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let push = REPOSITORIES[0];
    let blob = &blobs.monolithic;
    client.refresh().await?;
    let head = {
        let client = client.clone();
        let digest = blob.digest.clone();
        move |_: usize, _: u64| -> BoxFuture<'static, anyhow::Result<()>> {
            let client = client.clone();
            let digest = digest.clone();
            Box::pin(async move {
                if !client.blob_exists(push, &digest).await? {
                    bail!("the pushed blob is missing");
                }
                Ok(())
            })
        }
    };
    let run = load(1, plan.rate_duration, pid, head).await?;
    run.record(results, "blob_head");
    Ok(())
}

async fn pushers(
    client: &Client,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    client.refresh().await?;
    if let Some(pid) = pid {
        reset_peak(pid);
    }
    let meter = Meter::start(pid);
    let mut tasks = Vec::new();
    for blob in &blobs.pushers {
        let client = client.clone();
        let blob = blob.clone();
        tasks.push(tokio::spawn(async move {
            client
                .push_streamed(REPOSITORIES[3], &blob.payload, &blob.digest)
                .await
        }));
    }
    for task in tasks {
        task.await?.context("a concurrent pusher")?;
    }
    let total: u64 = blobs.pushers.iter().map(|b| b.payload.size).sum();
    record_transfer(results, "pushers", total, &meter.stop());
    if let Some(pid) = pid {
        let usage = Usage::of(pid)?;
        results.set("rss_peak_pushers_mib", usage.peak_bytes as f64 / MIB as f64);
    }
    Ok(())
}

/// An OCI image manifest of `config` and `layers`, with an annotation making it unique.
fn manifest(config: &(Vec<u8>, String), layers: &[&Blob], note: &str) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|blob| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": blob.digest,
                "size": blob.payload.size,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::client::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.1,
            "size": config.0.len(),
        },
        "layers": layers,
        "annotations": { "org.example.bench": note },
    }))
    .expect("a JSON value serializes")
}

/// An image configuration naming `layers` diff ids (their digests: the layers are plain tar).
fn image_config(layers: &[&Blob]) -> (Vec<u8>, String) {
    let diff_ids: Vec<&str> = layers.iter().map(|b| b.digest.as_str()).collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    }))
    .expect("a JSON value serializes");
    let digest = digest_of(&bytes);
    (bytes, digest)
}

/// Pushes a small in-memory blob the way docker does (POST, PATCH, PUT).
async fn push_small(
    client: &Client,
    repository: &str,
    bytes: &[u8],
    digest: &str,
) -> anyhow::Result<()> {
    let upload = client.start_upload(repository).await?;
    let upload = client.patch_bytes(&upload, bytes.to_vec()).await?;
    client.finish_upload(&upload, digest).await
}

async fn manifests(
    client: &Client,
    plan: &Plan,
    blobs: &Blobs,
    pid: Option<u32>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let repository = REPOSITORIES[1];
    client.refresh().await?;
    let layer = &blobs.manifest_layer;
    client
        .push_streamed(repository, &layer.payload, &layer.digest)
        .await?;
    let config = Arc::new(image_config(&[layer]));
    push_small(client, repository, &config.0, &config.1).await?;
    client
        .put_manifest(repository, "latest", manifest(&config, &[layer], "latest"))
        .await?;

    let put = {
        let client = client.clone();
        let config = config.clone();
        let layer = layer.clone();
        move |worker: usize, n: u64| -> BoxFuture<'static, anyhow::Result<()>> {
            let client = client.clone();
            let note = format!("{worker}-{n}");
            let body = manifest(&config, &[&layer], &note);
            Box::pin(async move {
                client
                    .put_manifest(repository, &format!("put-{note}"), body)
                    .await
            })
        }
    };
    let run = load(16, plan.rate_duration, pid, put).await?;
    run.record(results, "manifest_put_c16");

    for method in [Method::GET, Method::HEAD] {
        for concurrency in [1, 16, 64] {
            client.refresh().await?;
            let fetch = {
                let client = client.clone();
                let method = method.clone();
                move |_: usize, _: u64| -> BoxFuture<'static, anyhow::Result<()>> {
                    let client = client.clone();
                    let method = method.clone();
                    Box::pin(
                        async move { client.fetch_manifest(method, repository, "latest").await },
                    )
                }
            };
            let run = load(concurrency, plan.rate_duration, pid, fetch).await?;
            let name = format!(
                "manifest_{}_c{concurrency}",
                method.as_str().to_ascii_lowercase()
            );
            run.record(results, &name);
        }
    }
    Ok(())
}

/// Pushes an image the way a client does, one layer after another: `HEAD` (absent), `POST`,
/// one `PATCH`, `PUT ?digest=` for each layer and the config, then the manifest by tag.
async fn push_image(client: &Client, layers: &[Blob]) -> anyhow::Result<()> {
    let repository = REPOSITORIES[2];
    let refs: Vec<&Blob> = layers.iter().collect();
    let config = image_config(&refs);
    for layer in layers {
        if !client.blob_exists(repository, &layer.digest).await? {
            client
                .push_streamed(repository, &layer.payload, &layer.digest)
                .await?;
        }
    }
    if !client.blob_exists(repository, &config.1).await? {
        push_small(client, repository, &config.0, &config.1).await?;
    }
    client
        .put_manifest(repository, "v1", manifest(&config, &refs, "image"))
        .await
}

/// What a fixed-duration load run measured.
pub(crate) struct LoadRun {
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
    pub client_cores: f64,
    pub server_cores: Option<f64>,
}

impl LoadRun {
    fn record(&self, results: &mut Results, name: &str) {
        results.set(
            format!("{name}_rps"),
            self.requests as f64 / self.elapsed.as_secs_f64(),
        );
        if let Some(p50) = self.latencies.millis(50.0) {
            results.set(format!("{name}_p50_ms"), p50);
        }
        if let Some(p99) = self.latencies.millis(99.0) {
            results.set(format!("{name}_p99_ms"), p99);
        }
        results.cpu(name, self.client_cores, self.server_cores);
    }
}

type Operation = dyn Fn(usize, u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync;

/// Runs `operation` from `concurrency` workers for `duration`, each issuing its next request
/// when the last one is answered. Each worker makes one untimed request first, so connections
/// are open before the clock starts.
pub(crate) async fn load<F>(
    concurrency: usize,
    duration: Duration,
    pid: Option<u32>,
    operation: F,
) -> anyhow::Result<LoadRun>
where
    F: Fn(usize, u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static,
{
    let operation: Arc<Operation> = Arc::new(operation);
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let (start_sender, start_receiver) = tokio::sync::watch::channel(None::<Instant>);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let operation = operation.clone();
        let barrier = barrier.clone();
        let mut start = start_receiver.clone();
        workers.push(tokio::spawn(async move {
            let warm_up = operation(worker, 0).await;
            barrier.wait().await;
            warm_up.context("warming up")?;
            let started = start
                .wait_for(Option::is_some)
                .await
                .map(|s| s.expect("set"))
                .context("the start signal")?;
            let deadline = started + duration;
            let mut latencies = Vec::new();
            let mut n = 1;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                operation(worker, n).await?;
                latencies.push(sent.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    barrier.wait().await;
    let meter = Meter::start(pid);
    let started = Instant::now();
    start_sender.send_replace(Some(started));
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let metered = meter.stop();
    Ok(LoadRun {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies: Latencies::new(latencies),
        client_cores: metered.client_cores,
        server_cores: metered.server_cores(),
    })
}
