//! Ending access tokens before they expire, without a database read per request.
//!
//! The store keeps one revocation epoch per revocable subject (`user:<name>`, `robot:<name>`,
//! `token:<id>` of a personal access token, `refresh:<id>` of a refresh token, `key:<kid>` of a
//! signing key), drawn from one counter that only grows: disabling a user, revoking or
//! rotating a robot, revoking an access or refresh token moves the subject's epoch above every
//! epoch before. An access token carries the highest epoch its issuer read from the store
//! (`Claims::epoch`), so it is ended exactly by the revocations recorded after it was signed.
//! Each replica holds the epochs in memory (`Revocations`) and refreshes them with one query
//! for what changed since the highest epoch it has seen.
//!
//! Invariants:
//! - Epochs are compared, never clocks: a replica whose clock is off neither ends a token
//!   early nor keeps one alive.
//! - A token is honoured only while the epochs were read recently (`max_age`): a replica
//!   that cannot read the store says so (`Refusal::Unconfirmed`) instead of honouring
//!   revoked tokens, and honours them again as soon as a read succeeds. Time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::token::Claims;

/// Why a verified token is not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its subject, or a credential it came from, was revoked after it was signed.
    Revoked,
    /// The epochs were not read within `max_age`: whether it was revoked is unknown.
    Unconfirmed,
}

/// One revocation as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub subject: String,
    pub epoch: i64,
}

/// The revocation epochs a replica knows, and when it last read them.
#[derive(Debug, Clone)]
pub struct Revocations {
    epochs: HashMap<String, i64>,
    seen: i64,
    read_at: Option<Instant>,
    max_age: Duration,
}

impl Revocations {
    /// Nothing known yet: every token is `Unconfirmed` until the first `apply`.
    pub fn new(max_age: Duration) -> Revocations {
        Revocations {
            epochs: HashMap::new(),
            seen: 0,
            read_at: None,
            max_age,
        }
    }

    /// The highest epoch applied: the next read asks for what is above it.
    pub fn seen(&self) -> i64 {
        self.seen
    }

    /// Applies what a read that started at `started` returned (everything above `seen`).
    pub fn apply(&mut self, changes: &[Revocation], started: Instant) {
        for change in changes {
            let epoch = self.epochs.entry(change.subject.clone()).or_insert(0);
            *epoch = (*epoch).max(change.epoch);
            self.seen = self.seen.max(change.epoch);
        }
        // A slower read that started earlier does not make the epochs look newer than they are.
        if self.read_at.is_none_or(|read_at| started > read_at) {
            self.read_at = Some(started);
        }
    }

    /// Whether the epochs are too old to decide with at `now`.
    pub fn stale(&self, now: Instant) -> bool {
        self.read_at
            .is_none_or(|read_at| now.saturating_duration_since(read_at) > self.max_age)
    }

    /// Whether an access token with these (verified) claims may still be honoured at `now`.
    pub fn check(&self, claims: &Claims, now: Instant) -> Result<(), Refusal> {
        let issued_under = claims.epoch.unwrap_or(0);
        let revoked = std::iter::once(&claims.sub)
            .chain(&claims.credentials)
            .any(|subject| {
                self.epochs
                    .get(subject)
                    .is_some_and(|epoch| *epoch > issued_under)
            });
        if revoked {
            return Err(Refusal::Revoked);
        }
        if self.stale(now) {
            return Err(Refusal::Unconfirmed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(5);

    fn claims(sub: &str, epoch: Option<i64>, credentials: &[&str]) -> Claims {
        Claims {
            iss: "bulwark".into(),
            sub: sub.into(),
            aud: "bulwark".into(),
            exp: 300,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            access: Vec::new(),
            cred: None,
            binding: None,
            refresh: false,
            epoch,
            credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn revocation(subject: &str, epoch: i64) -> Revocation {
        Revocation {
            subject: subject.into(),
            epoch,
        }
    }

    /// What `check` says about `claims` after `changes` were read at `start`, `later` after it.
    fn check(changes: &[Revocation], claims: &Claims, later: Duration) -> String {
        let start = Instant::now();
        let mut revocations = Revocations::new(MAX_AGE);
        revocations.apply(changes, start);
        match revocations.check(claims, start + later) {
            Ok(()) => "honoured".into(),
            Err(refusal) => format!("{refusal:?}"),
        }
    }

    #[test]
    fn a_token_is_ended_only_by_revocations_recorded_after_it() {
        let changes = [revocation("user:alice", 7), revocation("robot:ci", 9)];
        let now = Duration::ZERO;
        for (claims, expected) in [
            (claims("user:alice", Some(6), &[]), "Revoked"),
            (claims("user:alice", Some(7), &[]), "honoured"),
            (claims("user:alice", Some(12), &[]), "honoured"),
            (claims("robot:ci", Some(8), &[]), "Revoked"),
            (claims("user:bob", Some(1), &[]), "honoured"),
            (claims("anonymous", Some(0), &[]), "honoured"),
            // A token of the release before epochs: any revocation on record ends it.
            (claims("user:alice", None, &[]), "Revoked"),
            (claims("user:bob", None, &[]), "honoured"),
        ] {
            assert_eq!(check(&changes, &claims, now), expected, "{claims:?}");
        }
    }

    #[test]
    fn revoking_the_credential_a_token_came_from_ends_it() {
        let changes = [revocation("token:t1", 5), revocation("refresh:r1", 8)];
        let now = Duration::ZERO;
        for (credentials, expected) in [
            (&["token:t1"][..], "Revoked"),
            (&["token:t2"][..], "honoured"),
            (&["refresh:r1", "token:t2"][..], "Revoked"),
            (&["refresh:r2", "token:t1"][..], "Revoked"),
            (&[][..], "honoured"),
        ] {
            let token = claims("user:erin", Some(4), credentials);
            assert_eq!(check(&changes, &token, now), expected, "{credentials:?}");
        }
        let newer = claims("user:erin", Some(8), &["refresh:r1", "token:t1"]);
        assert_eq!(check(&changes, &newer, now), "honoured");
    }

    #[test]
    fn epochs_too_old_to_decide_with_leave_tokens_unconfirmed_until_read_again() {
        let token = claims("user:alice", Some(3), &[]);
        let fresh = check(&[], &token, MAX_AGE);
        assert_eq!(fresh, "honoured");
        let stale = check(&[], &token, MAX_AGE + Duration::from_millis(1));
        assert_eq!(stale, "Unconfirmed");
        let revoked = check(
            &[revocation("user:alice", 4)],
            &token,
            MAX_AGE + Duration::from_secs(60),
        );
        assert_eq!(revoked, "Revoked", "what is known to be revoked stays so");

        let start = Instant::now();
        let mut revocations = Revocations::new(MAX_AGE);
        assert_eq!(
            revocations.check(&token, start),
            Err(Refusal::Unconfirmed),
            "nothing read yet"
        );
        revocations.apply(&[], start);
        let later = start + MAX_AGE * 3;
        assert_eq!(revocations.check(&token, later), Err(Refusal::Unconfirmed));
        revocations.apply(&[], later);
        assert_eq!(
            revocations.check(&token, later),
            Ok(()),
            "one successful read recovers"
        );
        revocations.apply(&[], start);
        assert!(
            !revocations.stale(later),
            "a read that started earlier does not age the epochs"
        );
    }

    #[test]
    fn reads_advance_what_was_seen_and_never_lower_an_epoch() {
        let start = Instant::now();
        let mut revocations = Revocations::new(MAX_AGE);
        revocations.apply(
            &[revocation("user:alice", 3), revocation("robot:ci", 5)],
            start,
        );
        assert_eq!(revocations.seen(), 5);
        revocations.apply(&[revocation("user:alice", 2)], start);
        assert_eq!(revocations.seen(), 5);
        assert_eq!(
            revocations.check(&claims("user:alice", Some(2), &[]), start),
            Err(Refusal::Revoked)
        );
        revocations.apply(&[revocation("user:alice", 9)], start);
        assert_eq!(revocations.seen(), 9);
        assert_eq!(
            revocations.check(&claims("user:alice", Some(5), &[]), start),
            Err(Refusal::Revoked)
        );
    }
}
