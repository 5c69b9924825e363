//! Throttling failed logins, without letting a stranger lock anyone out.
//!
//! Failures count against keys; a key with more than `FREE_FAILURES` recent failures is locked
//! for a doubling time (2 s, 4 s … at most `MAX_LOCK_SECS`), and every login naming a locked
//! key waits that long (429).
//!
//! Invariants:
//! - A password login counts against the client's network (`password:<network>`) and against
//!   the account (`account:<name>`), unless the account knows that network: a network that
//!   logged in to the account with its password within `KNOWN_SECS`. So guessing is slow from
//!   anywhere, and a stranger's failures cannot lock the owner out where they usually log in.
//! - An API secret (a personal access token or robot secret: 256 random bits, nothing to
//!   guess) counts only against the client's network, under a key of its own
//!   (`secret:<network>`): bad secrets sent in a robot's name never lock the robot, and never
//!   hold up password logins. A secret login that succeeds clears its network's secret key, so
//!   a CI job that sent a stale secret recovers as soon as the right one is used.
//! - Failures are forgotten after `MAX_LOCK_SECS` without another one, so old mistakes do not
//!   make the next one lock for five minutes.
//! - A network is an IPv4 address or an IPv6 /64 (one host usually has a whole /64).
//! - Memory is bounded: at most `MAX_KEYS` failure records. When full, records neither locked
//!   nor recent are dropped (at most once a second, so a full table does not cost a scan per
//!   failure); if it is still full, new keys are not recorded until room is made, while the
//!   keys already recorded (a victim account's count among them) keep counting. At most
//!   `KNOWN_PER_ACCOUNT` known networks per account (its oldest make room) and at most
//!   `MAX_KNOWN_ACCOUNTS` accounts with known networks (when full, no new account gets an
//!   exemption; existing ones are never wiped, so logging in from many addresses cannot clear
//!   anyone else's).

use std::collections::HashMap;
use std::net::IpAddr;

const FREE_FAILURES: u32 = 5;
pub(crate) const MAX_LOCK_SECS: i64 = 300;
const MAX_KEYS: usize = 100_000;
/// How long a network that logged in to an account stays exempt from the account's lock.
pub(crate) const KNOWN_SECS: i64 = 30 * 86_400;
const KNOWN_PER_ACCOUNT: usize = 16;
const MAX_KNOWN_ACCOUNTS: usize = 100_000;

/// What a login presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presented {
    Password,
    Secret,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    last: i64,
    locked_until: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    failures: HashMap<String, Failures>,
    /// When the full failure table was last pruned.
    pruned_at: i64,
    /// By account: the networks that logged in to it with its password, and until when they
    /// count as known.
    known: HashMap<String, Vec<(String, i64)>>,
}

impl Throttle {
    /// The keys a login counts against and may be held by.
    pub(crate) fn keys(
        &self,
        username: &str,
        presented: Presented,
        client: Option<IpAddr>,
        now: i64,
    ) -> Vec<String> {
        let network = client.map(network);
        let mut keys = Vec::with_capacity(2);
        match presented {
            Presented::Password => {
                let known = network.as_deref().is_some_and(|network| {
                    self.known.get(username).is_some_and(|networks| {
                        networks
                            .iter()
                            .any(|(n, until)| n == network && *until > now)
                    })
                });
                if !known {
                    keys.push(format!("account:{username}"));
                }
                keys.extend(network.map(|network| format!("password:{network}")));
            }
            Presented::Secret => keys.extend(network.map(|network| format!("secret:{network}"))),
        }
        keys
    }

    /// How long a login with `keys` must wait, if any of them is locked.
    pub(crate) fn retry_after(&self, keys: &[String], now: i64) -> Option<u64> {
        keys.iter()
            .filter_map(|key| self.failures.get(key))
            .map(|f| f.locked_until - now)
            .filter(|wait| *wait > 0)
            .max()
            .map(|wait| u64::try_from(wait).unwrap_or(1))
    }

    /// A login with `keys` failed.
    pub(crate) fn fail(&mut self, keys: &[String], now: i64) {
        if self.failures.len() >= MAX_KEYS && now > self.pruned_at {
            self.pruned_at = now;
            self.failures
                .retain(|_, f| f.locked_until > now || now - f.last <= MAX_LOCK_SECS);
        }
        for key in keys {
            if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(key) {
                continue;
            }
            let entry = self.failures.entry(key.clone()).or_default();
            if now - entry.last > MAX_LOCK_SECS {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count > FREE_FAILURES {
                let exponent = (entry.count - FREE_FAILURES).min(9);
                entry.locked_until = now + (1i64 << exponent).min(MAX_LOCK_SECS);
            }
        }
    }

    /// A login succeeded.
    pub(crate) fn succeed(
        &mut self,
        username: &str,
        presented: Presented,
        client: Option<IpAddr>,
        now: i64,
    ) {
        let network = client.map(network);
        match presented {
            Presented::Secret => {
                if let Some(network) = network {
                    self.failures.remove(&format!("secret:{network}"));
                }
            }
            Presented::Password => {
                // The network's own failures stay: one good password of one's own must not
                // reset a count that guesses at other accounts built up.
                self.failures.remove(&format!("account:{username}"));
                if let Some(network) = network {
                    self.know(username, network, now);
                }
            }
        }
    }

    fn know(&mut self, username: &str, network: String, now: i64) {
        if !self.known.contains_key(username) && self.known.len() >= MAX_KNOWN_ACCOUNTS {
            self.known.retain(|_, networks| {
                networks.retain(|(_, until)| *until > now);
                !networks.is_empty()
            });
            if self.known.len() >= MAX_KNOWN_ACCOUNTS {
                return;
            }
        }
        let networks = self.known.entry(username.to_owned()).or_default();
        networks.retain(|(n, until)| *n != network && *until > now);
        if networks.len() >= KNOWN_PER_ACCOUNT {
            // The one known the longest ago (the soonest to expire) makes room.
            if let Some(oldest) = networks
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(index, _)| index)
            {
                networks.swap_remove(oldest);
            }
        }
        networks.push((network, now + KNOWN_SECS));
    }
}

/// The network a client address stands for: an IPv4 address, or an IPv6 /64.
pub fn network(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: [u8; 4] = [10, 0, 0, 1];
    const STRANGER: [u8; 4] = [192, 0, 2, 7];

    fn at(address: [u8; 4]) -> Option<IpAddr> {
        Some(IpAddr::from(address))
    }

    #[test]
    fn password_failures_lock_after_the_free_ones_and_the_lock_grows() {
        let mut throttle = Throttle::default();
        let keys = throttle.keys("alice", Presented::Password, at(CLIENT), 100);
        assert_eq!(keys, vec!["account:alice", "password:10.0.0.1"]);
        for _ in 0..FREE_FAILURES {
            throttle.fail(&keys, 100);
        }
        assert_eq!(throttle.retry_after(&keys, 100), None, "the first are free");
        throttle.fail(&keys, 100);
        assert_eq!(throttle.retry_after(&keys, 100), Some(2));
        throttle.fail(&keys, 100);
        assert_eq!(throttle.retry_after(&keys, 100), Some(4));
        let other_account = throttle.keys("bob", Presented::Password, at(CLIENT), 100);
        assert_eq!(
            throttle.retry_after(&other_account, 100),
            Some(4),
            "the network is held for every account"
        );
        let elsewhere = throttle.keys("alice", Presented::Password, at(STRANGER), 100);
        assert_eq!(
            throttle.retry_after(&elsewhere, 100),
            Some(4),
            "the account is held for networks it does not know"
        );
        let secret = throttle.keys("alice", Presented::Secret, at(CLIENT), 100);
        assert_eq!(
            throttle.retry_after(&secret, 100),
            None,
            "password failures do not hold secret logins"
        );
        throttle.succeed("alice", Presented::Password, at(CLIENT), 100);
        assert_eq!(
            throttle.retry_after(&["account:alice".to_owned()], 100),
            None,
            "a success clears the account"
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_spell() {
        let mut throttle = Throttle::default();
        let keys = throttle.keys("alice", Presented::Password, at(CLIENT), 0);
        for _ in 0..14 {
            throttle.fail(&keys, 0);
        }
        assert_eq!(throttle.retry_after(&keys, 0), Some(MAX_LOCK_SECS as u64));
        let later = 2 * MAX_LOCK_SECS;
        assert_eq!(throttle.retry_after(&keys, later), None);
        throttle.fail(&keys, later);
        assert_eq!(
            throttle.retry_after(&keys, later),
            None,
            "one more failure after a quiet spell is a first failure again"
        );
    }

    #[test]
    fn secrets_hold_only_their_network_and_a_success_releases_it() {
        let mut throttle = Throttle::default();
        let attacker = throttle.keys("robot$team+ci", Presented::Secret, at(STRANGER), 100);
        assert_eq!(attacker, vec!["secret:192.0.2.7"]);
        for _ in 0..20 {
            throttle.fail(&attacker, 100);
        }
        assert!(throttle.retry_after(&attacker, 100).is_some());
        let ci = throttle.keys("robot$team+ci", Presented::Secret, at(CLIENT), 100);
        assert_eq!(
            throttle.retry_after(&ci, 100),
            None,
            "the robot works elsewhere"
        );
        let password = throttle.keys("dev", Presented::Password, at(STRANGER), 100);
        assert_eq!(
            throttle.retry_after(&password, 100),
            None,
            "bad secrets do not hold password logins from the same network"
        );
        assert!(throttle
            .keys("robot$team+ci", Presented::Secret, None, 100)
            .is_empty());

        // A CI job behind one address sent a stale secret a few times, then the right one.
        let job = throttle.keys("robot$team+ci", Presented::Secret, at(CLIENT), 100);
        for _ in 0..FREE_FAILURES + 1 {
            throttle.fail(&job, 100);
        }
        assert!(throttle.retry_after(&job, 100).is_some());
        throttle.succeed("robot$team+ci", Presented::Secret, at(CLIENT), 200);
        assert_eq!(throttle.retry_after(&job, 200), None);
    }

    #[test]
    fn a_known_network_is_not_held_by_a_strangers_failures() {
        let mut throttle = Throttle::default();
        throttle.succeed("admin", Presented::Password, at(CLIENT), 100);
        let stranger = throttle.keys("admin", Presented::Password, at(STRANGER), 200);
        for _ in 0..20 {
            throttle.fail(&stranger, 200);
        }
        assert!(throttle.retry_after(&stranger, 200).is_some());
        let unknown = throttle.keys("admin", Presented::Password, at([10, 0, 0, 2]), 200);
        assert!(
            throttle.retry_after(&unknown, 200).is_some(),
            "any network the account does not know is held"
        );
        let owner = throttle.keys("admin", Presented::Password, at(CLIENT), 200);
        assert_eq!(owner, vec!["password:10.0.0.1"]);
        assert_eq!(throttle.retry_after(&owner, 200), None);
        assert_eq!(
            throttle.keys("admin", Presented::Password, at(CLIENT), 100 + KNOWN_SECS),
            vec!["account:admin", "password:10.0.0.1"],
            "known for a while, not forever"
        );
    }

    #[test]
    fn logging_in_from_many_addresses_keeps_only_the_latest_and_never_clears_others() {
        let mut throttle = Throttle::default();
        throttle.succeed("admin", Presented::Password, at(CLIENT), 100);
        for n in 0..1_000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + n));
            throttle.succeed(
                "mallory",
                Presented::Password,
                Some(address),
                100 + i64::from(n),
            );
        }
        assert_eq!(throttle.known["mallory"].len(), KNOWN_PER_ACCOUNT);
        let latest = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + 999));
        assert_eq!(
            throttle.keys("mallory", Presented::Password, Some(latest), 2_000),
            vec!["password:10.1.3.231"]
        );
        assert_eq!(
            throttle.keys("admin", Presented::Password, at(CLIENT), 2_000),
            vec!["password:10.0.0.1"],
            "the admin's network is still known"
        );
    }

    #[test]
    fn an_ipv6_host_is_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("v6");
        assert_eq!(network(one), "2001:db8:1:2::/64");
        assert_eq!(network(one), network(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert_eq!(network(mapped), "192.0.2.7");
    }

    #[test]
    fn a_full_table_keeps_counting_what_it_holds_and_takes_no_new_keys() {
        let mut throttle = Throttle::default();
        let victim = throttle.keys("admin", Presented::Password, None, 0);
        throttle.fail(&victim, 0);
        for n in 0..MAX_KEYS {
            throttle.fail(&[format!("secret:filler-{n}")], 0);
        }
        assert_eq!(throttle.failures.len(), MAX_KEYS);
        throttle.fail(&["secret:one-too-many".to_owned()], 0);
        assert_eq!(throttle.failures.len(), MAX_KEYS, "no new key while full");
        for _ in 0..FREE_FAILURES {
            throttle.fail(&victim, 0);
        }
        assert!(
            throttle.retry_after(&victim, 0).is_some(),
            "the victim account's count was kept and locks it"
        );
        // Later, the quiet records go and new keys are recorded again.
        let later = 10 * MAX_LOCK_SECS;
        throttle.fail(&["secret:newcomer".to_owned()], later);
        assert!(throttle.failures.contains_key("secret:newcomer"));
    }
}
