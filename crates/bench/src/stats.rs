//! Statistics over repetitions and over request latencies: medians, spreads, percentiles and
//! the ratio of two medians.
//!
//! Invariants:
//! - Pure functions of their input; no clock, no I/O.
//! - An empty sample has no median, spread or percentile (`None`), never a made-up zero.
//! - Percentiles use the nearest-rank method: the value reported was really observed.

use std::time::Duration;

/// The median, smallest and largest of a set of repetitions of one figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Summarizes `values`; `None` when there are none. NaNs are ignored.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Spread {
            median: median_of_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The median of an already sorted, non-empty slice; the mean of the middle two for an even
/// count.
fn median_of_sorted(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// The `p`-th percentile (0 < p ≤ 100) of `sorted` by nearest rank: the smallest observed
/// value with at least `p`% of the sample at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `numerator / denominator`, or `None` when the denominator is zero or either is missing.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d != 0.0 && d.is_finite() && n.is_finite() => Some(n / d),
        _ => None,
    }
}

/// Latencies of one load run, sorted once.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<Duration>,
}

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Latencies {
        samples.sort_unstable();
        Latencies { sorted: samples }
    }

    /// The percentile in milliseconds, for reports.
    pub fn millis(&self, p: f64) -> Option<f64> {
        percentile(&self.sorted, p).map(|d| d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        let spread = Spread::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            spread,
            Spread {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
    }

    #[test]
    fn an_empty_or_all_nan_sample_has_no_spread() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        assert_eq!(Spread::of(&[f64::NAN, 2.0]).unwrap().median, 2.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_and_observed() {
        let sorted = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let check = |p: f64, expected: u64| {
            assert_eq!(
                percentile(&sorted, p),
                Some(Duration::from_millis(expected)),
                "p{p}"
            );
        };
        check(50.0, 5);
        check(90.0, 9);
        check(99.0, 10);
        check(100.0, 10);
        check(0.1, 1);
    }

    #[test]
    fn p99_of_a_hundred_samples_is_the_ninety_ninth() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
    }

    #[test]
    fn percentile_of_nothing_or_out_of_range_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&ms(&[1]), 0.0), None);
        assert_eq!(percentile(&ms(&[1]), 101.0), None);
    }

    #[test]
    fn latencies_sort_their_samples() {
        let latencies = Latencies::new(ms(&[30, 10, 20]));
        assert_eq!(latencies.millis(50.0), Some(20.0));
        assert_eq!(latencies.millis(99.0), Some(30.0));
    }

    #[test]
    fn ratio_needs_both_sides_and_a_nonzero_denominator() {
        assert_eq!(ratio(Some(6.0), Some(2.0)), Some(3.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(f64::INFINITY), Some(2.0)), None);
    }
}
