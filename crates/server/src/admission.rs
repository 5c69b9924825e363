//! Admission of client connections: at most `limits.max_connections` open in all, and at most
//! `limits.max_connections_per_client` from one client network, so one client (or one broken
//! CI fleet behind an address) cannot take every connection the server can hold.
//!
//! Invariants:
//! - A connection is counted from accept until its `Admitted` guard is dropped, lingering
//!   included; a refused one is closed at once, before any TLS work.
//! - A client network is an IPv4 address or an IPv6 /64 (`registry::throttle::network`).
//!   Peers that are trusted proxies count only towards the total: their clients are many.
//! - Memory is bounded by the connections admitted: a network's count is removed with its
//!   last connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `max_connections`.
    Full,
    /// The client's network holds `max_connections_per_client`.
    ClientFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_network: HashMap<String, usize>,
}

/// The connection counts of one listener.
#[derive(Debug, Clone)]
pub struct Admission {
    max_total: usize,
    max_per_client: usize,
    counts: Arc<Mutex<Counts>>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<Mutex<Counts>>,
    network: Option<String>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_client: usize) -> Admission {
        Admission {
            max_total,
            max_per_client,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `peer` (`proxy`: a trusted proxy, counted only in the total).
    pub fn admit(&self, peer: IpAddr, proxy: bool) -> Result<Admitted, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refusal::Full);
        }
        let network = if proxy {
            None
        } else {
            let network = registry::throttle::network(peer);
            let count = counts.by_network.entry(network.clone()).or_insert(0);
            if *count >= self.max_per_client {
                return Err(Refusal::ClientFull);
            }
            *count += 1;
            Some(network)
        };
        counts.total += 1;
        Ok(Admitted {
            counts: self.counts.clone(),
            network,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(network) = self.network.take() {
            if let Some(count) = counts.by_network.get_mut(&network) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.by_network.remove(&network);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn one_client_cannot_take_every_connection() {
        let admission = Admission::new(5, 2);
        let first = admission.admit(address(1), false).expect("first");
        let second = admission.admit(address(1), false).expect("second");
        assert_eq!(
            admission.admit(address(1), false).err(),
            Some(Refusal::ClientFull)
        );
        let other = admission.admit(address(2), false).expect("another client");
        drop(first);
        let again = admission
            .admit(address(1), false)
            .expect("a place came free");
        drop((second, other, again));
        assert!(
            admission
                .counts
                .lock()
                .expect("counts")
                .by_network
                .is_empty(),
            "a network's count goes with its last connection"
        );
    }

    #[test]
    fn the_total_bounds_everyone_and_proxies_count_only_there() {
        let admission = Admission::new(3, 1);
        let proxied: Vec<Admitted> = (0..2)
            .map(|_| {
                admission
                    .admit(address(9), true)
                    .expect("a proxy's connection")
            })
            .collect();
        let client = admission.admit(address(1), false).expect("a client");
        assert_eq!(
            admission.admit(address(2), false).err(),
            Some(Refusal::Full)
        );
        assert_eq!(admission.admit(address(9), true).err(), Some(Refusal::Full));
        drop((proxied, client));
        assert_eq!(admission.counts.lock().expect("counts").total, 0);
    }
}
