//! The client's address when requests arrive through load balancers or reverse proxies.
//!
//! Throttling failed logins and the audit log key on the client's address. Behind a balancer
//! in HTTP mode the TCP peer is the balancer, which would make every client one client; the
//! balancer says who it forwarded in `X-Forwarded-For`. Anyone can send that header, so it is
//! believed only as far as the hops that appended to it are trusted.
//!
//! Invariants:
//! - With no trusted proxies configured, the client is the TCP peer, whatever the headers say.
//! - Otherwise the address list (`X-Forwarded-For`, every line, left to right, then the peer)
//!   is walked from the right while the current hop is trusted; the first untrusted address
//!   is the client. An entry that does not parse stops the walk at the hop that appended it.
//! - IPv4-mapped IPv6 addresses are compared as the IPv4 address they carry.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                masked(u128::from(u32::from(network)), 32, self.prefix)
                    == masked(u128::from(u32::from(address)), 32, self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                masked(u128::from(network), 128, self.prefix)
                    == masked(u128::from(address), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit value.
fn masked(value: u128, width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width - prefix.min(width));
    value.checked_shr(host_bits).unwrap_or(0)
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let address = canonical(address);
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={width}"))?,
        };
        Ok(Network { address, prefix })
    }
}

/// The proxies whose `X-Forwarded-For` entries are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    pub fn new(networks: Vec<Network>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(address))
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if self.0.is_empty() {
            return client;
        }
        // Split as bytes: a line is one header however the client's part of it is spelled,
        // and an entry that is not text stops the walk like any other unparsable one.
        let forwarded: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .collect();
        for entry in forwarded.iter().rev() {
            if !self.trusts(client) {
                break;
            }
            match parse_entry(entry) {
                Some(address) => client = canonical(address),
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            networks
                .iter()
                .map(|n| n.parse().expect("a network"))
                .collect(),
        )
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(line).expect("a header"),
            );
        }
        headers
    }

    #[test]
    fn networks_parse_and_contain_their_addresses() {
        let net: Network = "10.1.0.0/16".parse().expect("v4");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "mapped v4");
        let one: Network = "192.0.2.7".parse().expect("one address");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let v6: Network = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let all: Network = "0.0.0.0/0".parse().expect("everything v4");
        assert!(all.contains(ip("203.0.113.1")));
        assert!(!all.contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "proxy", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.5"), &headers),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_trusted_balancer_names_the_client() {
        let trusted = proxies(&["10.0.0.0/24"]);
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        // An untrusted peer's header is not believed.
        assert_eq!(
            trusted.client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        // No header: the balancer itself.
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn entries_a_client_made_up_are_not_believed() {
        let trusted = proxies(&["10.0.0.0/24"]);
        // The client sent "X-Forwarded-For: 1.1.1.1"; the balancer appended the real address.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        // Two trusted hops, several header lines, ports.
        let headers = forwarded(&["1.1.1.1", "203.0.113.9:4711, 10.0.0.7"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        // Garbage appended by a trusted hop stops at that hop.
        let headers = forwarded(&["203.0.113.9, unknown"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("10.0.0.5"));
        // Every hop trusted: the leftmost.
        let headers = forwarded(&["10.0.0.8, 10.0.0.7"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("10.0.0.8"));
        // Bytes a client put in front of the balancer's entry do not hide it.
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xe9, 203.0.113.9").expect("obs-text is allowed"),
        );
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        let v6 = forwarded(&["[2001:db8::1]:443"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &v6), ip("2001:db8::1"));
    }

    #[test]
    fn the_forwarded_fuzz_corpus_replays() {
        crate::fuzz::replay("forwarded", crate::fuzz::forwarded);
    }
}
