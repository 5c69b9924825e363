//! Request rates per client network: a token bucket each, for endpoints that cost the server
//! more than they cost a client (the token service signs, and may hash a password).
//!
//! Invariants:
//! - A network (`throttle::network`: an IPv4 address or an IPv6 /64) may make `per_second`
//!   requests a second on average, in bursts of `BURST_SECONDS` worth; beyond, a request is
//!   refused with the whole seconds until the next one would be admitted.
//! - Memory is bounded: at most `MAX_NETWORKS` buckets. Full buckets carry no state worth
//!   keeping (a new bucket starts full), so they are dropped to make room, at most once a
//!   second; if the table is still full, an unknown network is admitted without a bucket
//!   rather than refused, so a flood of addresses cannot lock out everyone else.
//! - Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::throttle::network;

/// A burst may spend this many seconds' worth of requests at once.
pub const BURST_SECONDS: u32 = 5;
const MAX_NETWORKS: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    /// Requests that may still be made, as of `at`.
    tokens: f64,
    at: Instant,
}

/// Request rates of client networks against one limit.
#[derive(Debug)]
pub struct RequestRate {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, Bucket>,
    pruned_at: Option<Instant>,
}

impl RequestRate {
    /// A limit of `per_second` requests per second per network; 0 admits everything.
    pub fn new(per_second: u32) -> RequestRate {
        RequestRate {
            per_second: f64::from(per_second),
            burst: f64::from(per_second) * f64::from(BURST_SECONDS),
            buckets: HashMap::new(),
            pruned_at: None,
        }
    }

    /// Admits a request from `client` at `now`, or says how long until one would be.
    pub fn admit(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let key = network(client);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_NETWORKS {
            self.prune(now);
            if self.buckets.len() >= MAX_NETWORKS {
                return Ok(());
            }
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / per_second;
        Err(Duration::from_secs(wait.ceil().max(1.0) as u64))
    }

    /// Drops the buckets that have refilled, at most once a second.
    fn prune(&mut self, now: Instant) {
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.pruned_at = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * per_second < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds() {
        let mut rate = RequestRate::new(2);
        let start = Instant::now();
        for i in 0..10 {
            assert_eq!(
                rate.admit(client(1), start),
                Ok(()),
                "request {i} of the burst"
            );
        }
        assert_eq!(rate.admit(client(1), start), Err(Duration::from_secs(1)));
        // Another network has its own bucket.
        assert_eq!(rate.admit(client(2), start), Ok(()));
        // Half a second refills one request at two per second.
        let later = start + Duration::from_millis(500);
        assert_eq!(rate.admit(client(1), later), Ok(()));
        assert_eq!(rate.admit(client(1), later), Err(Duration::from_secs(1)));
        // A quiet minute refills the burst, no more.
        let quiet = later + Duration::from_secs(60);
        for i in 0..10 {
            assert_eq!(
                rate.admit(client(1), quiet),
                Ok(()),
                "request {i} after a pause"
            );
        }
        assert!(rate.admit(client(1), quiet).is_err());
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let mut rate = RequestRate {
            per_second: 0.1,
            burst: 1.0,
            buckets: HashMap::new(),
            pruned_at: None,
        };
        let start = Instant::now();
        assert_eq!(rate.admit(client(1), start), Ok(()));
        assert_eq!(rate.admit(client(1), start), Err(Duration::from_secs(10)));
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let mut rate = RequestRate::new(1);
        let start = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("an address");
        let other: IpAddr = "2001:db8:1:2::ffff".parse().expect("an address");
        for _ in 0..5 {
            assert_eq!(rate.admit(one, start), Ok(()));
        }
        assert!(rate.admit(other, start).is_err(), "the same /64");
    }

    #[test]
    fn zero_admits_everything() {
        let mut rate = RequestRate::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            assert_eq!(rate.admit(client(1), start), Ok(()));
        }
    }
}
