//! The report: every figure's median and spread for each registry, the ratio Bulwark /
//! Distribution, and issue 5's target for it, as Markdown tables that paste into
//! `docs/PERFORMANCE.md`.
//!
//! Invariants:
//! - `FIGURES` is the one list of figures: their labels, units, which direction is better,
//!   and their targets. A figure a run produced but this list lacks is still printed, last.
//! - A target is judged only on medians of one run of the harness (both registries measured
//!   alternately on the same machine); missing data is "n/a", never "met".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::limits::Limits;
use crate::scenarios::Results;
use crate::server::Kind;
use crate::stats::{ratio, Spread};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Bulwark / Distribution at least this.
    RatioAtLeast(f64),
    /// Bulwark / Distribution at most this.
    RatioAtMost(f64),
    /// Bulwark's median at most this, in the figure's unit.
    AtMost(f64),
    /// Bulwark / Distribution at least `ratio`, and Bulwark at least `fraction` of a limit.
    RatioAndLimit {
        ratio: f64,
        limit: &'static str,
        fraction: f64,
    },
}

/// One figure of the report.
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub target: Option<Target>,
}

const fn figure(key: &'static str, label: &'static str, unit: &'static str) -> Figure {
    Figure {
        key,
        label,
        unit,
        target: None,
    }
}

const fn with(figure: Figure, target: Target) -> Figure {
    Figure {
        target: Some(target),
        ..figure
    }
}

const PUSH_TARGET: Target = Target::RatioAndLimit {
    ratio: 3.0,
    limit: "sha256_mbps",
    fraction: 0.6,
};
const CPU_TARGET: Target = Target::RatioAtMost(1.0 / 3.0);
const RATE_TARGET: Target = Target::RatioAtLeast(10.0);
const P99_TARGET: Target = Target::RatioAtMost(1.0);

/// Every figure, in report order, with issue 5's targets.
pub const FIGURES: &[Figure] = &[
    with(
        figure(
            "push_monolithic_mbps",
            "push 1 GiB, monolithic (POST + PUT)",
            "MB/s",
        ),
        PUSH_TARGET,
    ),
    with(
        figure(
            "push_patch_mbps",
            "push 1 GiB, one streamed PATCH (docker)",
            "MB/s",
        ),
        PUSH_TARGET,
    ),
    with(
        figure("push_chunked_mbps", "push 1 GiB, 16 MiB chunks", "MB/s"),
        Target::RatioAtLeast(4.0),
    ),
    with(
        figure("pull_mbps", "pull 1 GiB", "MB/s"),
        Target::RatioAtLeast(1.3),
    ),
    with(
        figure(
            "push_monolithic_cpu",
            "server CPU per GiB, monolithic push",
            "CPU-s",
        ),
        CPU_TARGET,
    ),
    with(
        figure(
            "push_patch_cpu",
            "server CPU per GiB, single-PATCH push",
            "CPU-s",
        ),
        CPU_TARGET,
    ),
    with(
        figure(
            "push_chunked_cpu",
            "server CPU per GiB, chunked push",
            "CPU-s",
        ),
        CPU_TARGET,
    ),
    figure("pull_cpu", "server CPU per GiB pulled", "CPU-s"),
    with(
        figure("rss_peak_push_mib", "peak RSS while pushing 1 GiB", "MiB"),
        Target::AtMost(64.0),
    ),
    figure("blob_head_rps", "blob HEAD, c=1", "req/s"),
    figure("blob_head_p50_ms", "blob HEAD p50, c=1", "ms"),
    figure("blob_head_p99_ms", "blob HEAD p99, c=1", "ms"),
    with(
        figure("manifest_put_c16_rps", "manifest PUT by tag, c=16", "req/s"),
        Target::RatioAtLeast(5.0),
    ),
    figure("manifest_put_c16_p50_ms", "manifest PUT p50, c=16", "ms"),
    figure("manifest_put_c16_p99_ms", "manifest PUT p99, c=16", "ms"),
    figure("manifest_get_c1_rps", "manifest GET by tag, c=1", "req/s"),
    figure("manifest_get_c1_p50_ms", "manifest GET p50, c=1", "ms"),
    figure("manifest_get_c1_p99_ms", "manifest GET p99, c=1", "ms"),
    with(
        figure("manifest_get_c16_rps", "manifest GET by tag, c=16", "req/s"),
        RATE_TARGET,
    ),
    figure("manifest_get_c16_p50_ms", "manifest GET p50, c=16", "ms"),
    with(
        figure("manifest_get_c16_p99_ms", "manifest GET p99, c=16", "ms"),
        P99_TARGET,
    ),
    with(
        figure("manifest_get_c64_rps", "manifest GET by tag, c=64", "req/s"),
        RATE_TARGET,
    ),
    figure("manifest_get_c64_p50_ms", "manifest GET p50, c=64", "ms"),
    with(
        figure("manifest_get_c64_p99_ms", "manifest GET p99, c=64", "ms"),
        P99_TARGET,
    ),
    figure("manifest_head_c1_rps", "manifest HEAD by tag, c=1", "req/s"),
    figure("manifest_head_c1_p50_ms", "manifest HEAD p50, c=1", "ms"),
    figure("manifest_head_c1_p99_ms", "manifest HEAD p99, c=1", "ms"),
    with(
        figure(
            "manifest_head_c16_rps",
            "manifest HEAD by tag, c=16",
            "req/s",
        ),
        RATE_TARGET,
    ),
    figure("manifest_head_c16_p50_ms", "manifest HEAD p50, c=16", "ms"),
    with(
        figure("manifest_head_c16_p99_ms", "manifest HEAD p99, c=16", "ms"),
        P99_TARGET,
    ),
    with(
        figure(
            "manifest_head_c64_rps",
            "manifest HEAD by tag, c=64",
            "req/s",
        ),
        RATE_TARGET,
    ),
    figure("manifest_head_c64_p50_ms", "manifest HEAD p50, c=64", "ms"),
    with(
        figure("manifest_head_c64_p99_ms", "manifest HEAD p99, c=64", "ms"),
        P99_TARGET,
    ),
    with(
        figure("image_push_s", "image of 100 × 100 KiB layers, pushed", "s"),
        Target::RatioAtMost(1.0 / 3.0),
    ),
    with(
        figure("pushers_mbps", "32 concurrent pushers of 10 MiB", "MB/s"),
        Target::RatioAtLeast(3.0),
    ),
    figure("pushers_cpu", "server CPU per GiB, 32 pushers", "CPU-s"),
    figure(
        "rss_peak_pushers_mib",
        "peak RSS, 32 concurrent pushers",
        "MiB",
    ),
    with(
        figure("rss_idle_mib", "RSS idle after start", "MiB"),
        Target::RatioAtMost(1.0),
    ),
    with(
        figure(
            "cold_start_ms",
            "cold start to first /v2/ answer (empty data dir)",
            "ms",
        ),
        Target::RatioAtMost(1.0),
    ),
    figure(
        "restart_ms",
        "restart to first /v2/ answer (after the run)",
        "ms",
    ),
];

/// Labels of the machine limits, in report order.
pub const LIMITS: &[(&str, &str, &str)] = &[
    ("sha256_mbps", "SHA-256, one core (sha2 crate)", "MB/s"),
    (
        "generator_mbps",
        "bench payload generator, one core",
        "MB/s",
    ),
    (
        "disk_direct_mbps",
        "disk write 1 GiB, dd oflag=direct",
        "MB/s",
    ),
    (
        "disk_fdatasync_mbps",
        "disk write 1 GiB, dd conv=fdatasync",
        "MB/s",
    ),
    (
        "disk_buffered_mbps",
        "disk write 1 GiB, dd buffered",
        "MB/s",
    ),
    (
        "tls_download_mbps",
        "loopback TLS, trivial server → bench client, 1 GiB",
        "MB/s",
    ),
    (
        "tls_upload_mbps",
        "loopback TLS, bench client (generating) → trivial sink, 1 GiB",
        "MB/s",
    ),
    (
        "tls_small_get_c1_rps",
        "loopback TLS, 512-byte GET, trivial server, c=1",
        "req/s",
    ),
    (
        "tls_small_get_c16_rps",
        "loopback TLS, 512-byte GET, trivial server, c=16",
        "req/s",
    ),
];

/// One registry's results from one repetition.
pub struct Run {
    pub kind: Kind,
    pub repetition: usize,
    /// `/proc/loadavg` just before it started.
    pub load_before: String,
    pub results: Results,
}

/// The verdict on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    Unknown,
}

impl Verdict {
    fn text(&self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::Unknown => "n/a",
        }
    }
}

/// Judges `target` on the medians of Bulwark and Distribution.
pub fn judge(
    target: &Target,
    bulwark: Option<f64>,
    distribution: Option<f64>,
    limits: &Limits,
) -> Verdict {
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => Verdict::Met,
        Some(false) => Verdict::NotMet,
        None => Verdict::Unknown,
    };
    let r = ratio(bulwark, distribution);
    match *target {
        Target::RatioAtLeast(want) => verdict(r.map(|r| r >= want)),
        Target::RatioAtMost(want) => verdict(r.map(|r| r <= want)),
        Target::AtMost(want) => verdict(bulwark.map(|b| b <= want)),
        Target::RatioAndLimit {
            ratio: want,
            limit,
            fraction,
        } => {
            let of_limit = match (bulwark, limits.get(limit)) {
                (Some(b), Some(l)) if *l > 0.0 => Some(b / l >= fraction),
                _ => None,
            };
            verdict(match (r.map(|r| r >= want), of_limit) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            })
        }
    }
}

fn describe(target: &Target) -> String {
    match *target {
        Target::RatioAtLeast(want) => format!("≥ {}×", number(want)),
        Target::RatioAtMost(want) if (want - 1.0 / 3.0).abs() < 1e-9 => "≤ ⅓×".into(),
        Target::RatioAtMost(want) => format!("≤ {}×", number(want)),
        Target::AtMost(want) => format!("≤ {}", number(want)),
        Target::RatioAndLimit {
            ratio, fraction, ..
        } => format!(
            "≥ {}× and ≥ {:.0}% of SHA-256",
            number(ratio),
            fraction * 100.0
        ),
    }
}

/// A number with about three significant digits.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn spread_text(spread: Option<Spread>) -> String {
    match spread {
        Some(s) => format!("{} ({}–{})", number(s.median), number(s.min), number(s.max)),
        None => "–".into(),
    }
}

/// The values of `key` across the runs of `kind`.
fn values(runs: &[Run], kind: Kind, key: &str) -> Vec<f64> {
    runs.iter()
        .filter(|run| run.kind == kind)
        .filter_map(|run| run.results.figures.get(key).copied())
        .collect()
}

/// The whole report as Markdown.
pub fn render(machine: &[String], limits: &Limits, runs: &[Run]) -> String {
    let mut out = String::new();
    let repetitions = runs.iter().map(|r| r.repetition + 1).max().unwrap_or(0);
    let _ = writeln!(out, "## Machine\n");
    for line in machine {
        let _ = writeln!(out, "- {line}");
    }
    if !limits.is_empty() {
        let _ = writeln!(
            out,
            "\n## Machine limits\n\n| limit | figure | unit |\n|---|---:|---|"
        );
        for (key, label, unit) in LIMITS {
            if let Some(value) = limits.get(*key) {
                let _ = writeln!(out, "| {label} | {} | {unit} |", number(*value));
            }
        }
    }

    if runs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n## Results\n\nMedian (min–max) of {repetitions} repetition(s), registries alternating. \
         Ratio = Bulwark / Distribution of the medians.\n"
    );
    let _ = writeln!(
        out,
        "| figure | unit | Bulwark | Distribution | ratio | target | |\n|---|---|---:|---:|---:|---|---|"
    );
    let mut seen = BTreeSet::new();
    for figure in FIGURES {
        seen.insert(figure.key);
        let bulwark = Spread::of(&values(runs, Kind::Bulwark, figure.key));
        let distribution = Spread::of(&values(runs, Kind::Distribution, figure.key));
        if bulwark.is_none() && distribution.is_none() {
            continue;
        }
        let (b, d) = (bulwark.map(|s| s.median), distribution.map(|s| s.median));
        let ratio_text = ratio(b, d).map_or("–".into(), |r| format!("{}×", number(r)));
        let (target_text, verdict) = match &figure.target {
            Some(target) => (describe(target), judge(target, b, d, limits).text()),
            None => (String::new(), ""),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {ratio_text} | {target_text} | {verdict} |",
            figure.label,
            figure.unit,
            spread_text(bulwark),
            spread_text(distribution),
        );
    }
    let others: BTreeSet<&String> = runs
        .iter()
        .flat_map(|run| run.results.figures.keys())
        .filter(|key| !seen.contains(key.as_str()))
        .collect();
    for key in others {
        let bulwark = Spread::of(&values(runs, Kind::Bulwark, key));
        let distribution = Spread::of(&values(runs, Kind::Distribution, key));
        let r = ratio(bulwark.map(|s| s.median), distribution.map(|s| s.median));
        let _ = writeln!(
            out,
            "| {key} | | {} | {} | {} | | |",
            spread_text(bulwark),
            spread_text(distribution),
            r.map_or("–".into(), |r| format!("{}×", number(r)))
        );
    }

    let _ = writeln!(
        out,
        "\n## CPU use\n\nCores used while each scenario ran, medians (2.0 would be both cores of this \
         machine): the bench client's, to show it was not the bottleneck, and the server's.\n\n\
         | scenario | bench client → Bulwark | Bulwark | bench client → Distribution | Distribution |\n\
         |---|---:|---:|---:|---:|"
    );
    // Scenario → [client vs Bulwark, Bulwark, client vs Distribution, Distribution].
    let mut scenarios: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
    for run in runs {
        let column = match run.kind {
            Kind::Bulwark => 0,
            Kind::Distribution => 2,
        };
        for (scenario, cores) in &run.results.client_cores {
            scenarios.entry(scenario).or_default()[column].push(*cores);
        }
        for (scenario, cores) in &run.results.server_cores {
            scenarios.entry(scenario).or_default()[column + 1].push(*cores);
        }
    }
    for (scenario, columns) in scenarios {
        let [a, b, c, d] =
            columns.map(|v| Spread::of(&v).map_or("–".into(), |s| number(s.median)));
        let _ = writeln!(out, "| {scenario} | {a} | {b} | {c} | {d} |");
    }

    let _ = writeln!(
        out,
        "\n## Runs\n\n| repetition | registry | load average before |\n|---:|---|---|"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            run.repetition + 1,
            run.kind.name(),
            run.load_before
        );
    }
    out
}

/// Every raw value, for keeping beside the report.
pub fn raw_json(machine: &[String], limits: &Limits, runs: &[Run]) -> serde_json::Value {
    serde_json::json!({
        "machine": machine,
        "limits": limits,
        "runs": runs.iter().map(|run| serde_json::json!({
            "registry": run.kind.name(),
            "repetition": run.repetition + 1,
            "load_before": run.load_before,
            "figures": run.results.figures,
            "client_cores": run.results.client_cores,
            "server_cores": run.results.server_cores,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sha: f64) -> Limits {
        Limits::from([("sha256_mbps".to_owned(), sha)])
    }

    #[test]
    fn ratio_targets_compare_the_ratio_of_medians() {
        let at_least = Target::RatioAtLeast(3.0);
        let none = Limits::new();
        assert_eq!(
            judge(&at_least, Some(300.0), Some(100.0), &none),
            Verdict::Met
        );
        assert_eq!(
            judge(&at_least, Some(299.0), Some(100.0), &none),
            Verdict::NotMet
        );
        assert_eq!(judge(&at_least, None, Some(100.0), &none), Verdict::Unknown);
        let at_most = Target::RatioAtMost(1.0 / 3.0);
        assert_eq!(judge(&at_most, Some(1.0), Some(3.0), &none), Verdict::Met);
        assert_eq!(
            judge(&at_most, Some(1.5), Some(3.0), &none),
            Verdict::NotMet
        );
    }

    #[test]
    fn an_absolute_target_needs_only_bulwark() {
        let target = Target::AtMost(64.0);
        assert_eq!(
            judge(&target, Some(64.0), None, &Limits::new()),
            Verdict::Met
        );
        assert_eq!(
            judge(&target, Some(65.0), Some(1.0), &Limits::new()),
            Verdict::NotMet
        );
    }

    #[test]
    fn a_push_target_needs_the_ratio_and_the_fraction_of_sha256() {
        // 3× Distribution and 60% of a 1000 MB/s core: 600 MB/s is enough against 200.
        assert_eq!(
            judge(&PUSH_TARGET, Some(600.0), Some(200.0), &limits(1000.0)),
            Verdict::Met
        );
        // 3× but only 45% of SHA-256.
        assert_eq!(
            judge(&PUSH_TARGET, Some(450.0), Some(150.0), &limits(1000.0)),
            Verdict::NotMet
        );
        // 60% of SHA-256 but only 2×.
        assert_eq!(
            judge(&PUSH_TARGET, Some(600.0), Some(300.0), &limits(1000.0)),
            Verdict::NotMet
        );
        // Without the limit, a failing ratio still fails; a passing one is unknown.
        assert_eq!(
            judge(&PUSH_TARGET, Some(100.0), Some(300.0), &Limits::new()),
            Verdict::NotMet
        );
        assert_eq!(
            judge(&PUSH_TARGET, Some(900.0), Some(300.0), &Limits::new()),
            Verdict::Unknown
        );
    }

    #[test]
    fn numbers_keep_about_three_significant_digits() {
        assert_eq!(number(1234.5), "1234");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.12345), "0.123");
    }

    #[test]
    fn the_table_shows_median_spread_ratio_and_verdict() {
        let run = |kind, repetition, value: f64| Run {
            kind,
            repetition,
            load_before: "1.00 1.00 1.00".into(),
            results: Results {
                figures: BTreeMap::from([("pull_mbps".to_owned(), value)]),
                client_cores: BTreeMap::from([("pull".to_owned(), 0.5)]),
                server_cores: BTreeMap::from([("pull".to_owned(), value / 1000.0)]),
            },
        };
        let runs = vec![
            run(Kind::Bulwark, 0, 2000.0),
            run(Kind::Distribution, 0, 1000.0),
            run(Kind::Distribution, 1, 1200.0),
            run(Kind::Bulwark, 1, 1800.0),
            run(Kind::Bulwark, 2, 1900.0),
            run(Kind::Distribution, 2, 1400.0),
        ];
        let text = render(&[], &Limits::new(), &runs);
        assert!(
            text.contains("| pull 1 GiB | MB/s | 1900 (1800–2000) | 1200 (1000–1400) | 1.58× | ≥ 1.30× | met |"),
            "{text}"
        );
        assert!(
            text.contains("| pull | 0.500 | 1.90 | 0.500 | 1.20 |"),
            "{text}"
        );
        assert!(
            text.contains("Median (min–max) of 3 repetition(s)"),
            "{text}"
        );
    }

    #[test]
    fn every_figure_key_is_listed_once() {
        let keys: BTreeSet<&str> = FIGURES.iter().map(|f| f.key).collect();
        assert_eq!(keys.len(), FIGURES.len());
    }
}
