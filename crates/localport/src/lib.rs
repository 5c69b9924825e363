//! Loopback ports for child servers that must be told their port before they bind: SeaweedFS,
//! Postgres, HAProxy, the reference registry. (Bulwark itself is started on port 0 and says
//! which port it got.)
//!
//! Asking the kernel for port 0 and releasing it is not enough: that port comes from the
//! ephemeral range, which is also where every outgoing connection gets its source port. Between
//! the pick and the child's `bind`, any connection on the machine (the child's own, between its
//! components, or another test's) can take it, and the child dies with "address already in use".
//!
//! Invariants:
//! - Ports are picked *below* the kernel's ephemeral range (`ip_local_port_range`), where the
//!   kernel never assigns source ports; only an explicit `bind` can take one.
//! - Within a process no port is handed out twice (one counter for the whole process, wrapping
//!   around a band of 16,384 ports), so concurrent tests never pick the same port.
//! - Each process starts at its own place in the band (from its pid), so test binaries run one
//!   after another do not reuse the ports of the previous one.
//! - A port is only handed out if it can be bound on 127.0.0.1 at the time of asking, so ports
//!   other programs listen on are skipped.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used.
const BAND: u32 = 16_384;
/// The lowest port ever used: below it are well-known services.
const LOWEST: u32 = 1_024;
/// Linux's default start of the ephemeral range, when it cannot be read.
const DEFAULT_EPHEMERAL_START: u32 = 32_768;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port on 127.0.0.1 that nothing listens on and that no outgoing connection can take.
///
/// Panics when no port in the band can be bound (a machine that has run out of ports; a
/// test cannot go on without one).
pub fn free_port() -> u16 {
    let (low, width) = band(ephemeral_start());
    for _ in 0..width {
        let port = low + next_offset(width);
        let port = u16::try_from(port).expect("the band lies below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + width)
}

/// The band of ports below the ephemeral range: its first port and its width.
fn band(ephemeral_start: u32) -> (u32, u32) {
    let high = ephemeral_start.clamp(LOWEST + 1, 65_536);
    let low = high.saturating_sub(BAND).max(LOWEST);
    (low, high - low)
}

/// The next offset in the band: the process's starting point on the first call, then one
/// after the other.
fn next_offset(width: u32) -> u32 {
    let start = std::process::id().wrapping_mul(2_654_435_761) % width;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed) % width
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .as_deref()
        .and_then(parse_range_start)
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// The first number of `ip_local_port_range` ("32768\t60999\n").
fn parse_range_start(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_band_ends_where_the_ephemeral_range_starts() {
        assert_eq!(band(32_768), (16_384, 16_384));
        assert_eq!(band(49_152), (32_768, 16_384));
    }

    #[test]
    fn a_low_ephemeral_range_narrows_the_band_instead_of_using_well_known_ports() {
        assert_eq!(band(10_000), (1_024, 8_976));
        assert_eq!(band(0), (1_024, 1));
    }

    #[test]
    fn the_range_file_is_read_by_its_first_number() {
        assert_eq!(parse_range_start("32768\t60999\n"), Some(32_768));
        assert_eq!(parse_range_start(""), None);
        assert_eq!(parse_range_start("many ports"), None);
    }

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let start = ephemeral_start();
        for port in ports {
            assert!(u32::from(port) < start, "{port} is in the ephemeral range");
            assert!(u32::from(port) >= LOWEST, "{port} is a well-known port");
            TcpListener::bind(("127.0.0.1", port)).expect("the port can be bound");
        }
    }
}
