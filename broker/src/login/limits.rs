//! Rate limits for the sign-in endpoints: in-memory token buckets per client
//! address and per account, in a bounded map whose idle entries are evicted.
//!
//! Failures are counted when they happen ([`Limits::take`]) and checked
//! before the next attempt ([`Limits::allows`]); starts consume a token each.
//! A full map refuses new keys (deny on doubt) instead of growing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::http::HeaderMap;

/// Most keys tracked at once.
pub const MAX_KEYS: usize = 10_000;

/// What is being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Sign-in starts and device-code requests, per address.
    Start,
    /// Failed steps (callback, WebAuthn, exchange, device), per address.
    Failure,
    /// Failed steps, per account.
    AccountFailure,
    /// Device-code token polls, per address.
    Poll,
}

impl Bucket {
    /// (burst, tokens per second).
    fn rule(self) -> (f64, f64) {
        match self {
            Self::Start => (30.0, 0.5),
            Self::Failure => (10.0, 1.0 / 30.0),
            Self::AccountFailure => (10.0, 1.0 / 60.0),
            Self::Poll => (120.0, 2.0),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

/// The buckets, shared by every handler.
#[derive(Debug)]
pub struct Limits {
    buckets: Mutex<HashMap<(Bucket, String), State>>,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    /// Empty buckets; `trusted_proxies` are believed about `X-Forwarded-For`.
    #[must_use]
    pub fn new(trusted_proxies: Vec<IpAddr>) -> Self {
        Self { buckets: Mutex::new(HashMap::new()), trusted_proxies }
    }

    /// The configured trusted proxies.
    #[must_use]
    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// Whether `key` has a token left in `bucket` (nothing is consumed).
    pub fn allows(&self, bucket: Bucket, key: &str) -> bool {
        self.with(bucket, key, Instant::now(), |s| s.tokens >= 1.0)
    }

    /// Consumes a token; false if there was none.
    pub fn take(&self, bucket: Bucket, key: &str) -> bool {
        self.with(bucket, key, Instant::now(), |s| {
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    fn with(&self, bucket: Bucket, key: &str, now: Instant, f: impl FnOnce(&mut State) -> bool) -> bool {
        let (burst, rate) = bucket.rule();
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (bucket, key.to_owned());
        if !map.contains_key(&id) && map.len() >= MAX_KEYS {
            evict_idle(&mut map, now);
            if map.len() >= MAX_KEYS {
                return false;
            }
        }
        let state = map.entry(id).or_insert(State { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(burst);
        state.at = now;
        f(state)
    }
}

/// Drops entries that have refilled completely: they carry no information.
fn evict_idle(map: &mut HashMap<(Bucket, String), State>, now: Instant) {
    map.retain(|(bucket, _), s| {
        let (burst, rate) = bucket.rule();
        s.tokens + now.saturating_duration_since(s.at).as_secs_f64() * rate < burst
    });
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy.
#[must_use]
pub fn client_addr(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    Some(forwarded.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        let stranger: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(client_addr(Some(stranger), &headers, &[proxy]), Some(stranger));
        assert_eq!(client_addr(Some(proxy), &headers, &[proxy]), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(client_addr(Some(proxy), &HeaderMap::new(), &[proxy]), Some(proxy));
    }

    #[test]
    fn failures_run_out_and_refill() {
        let limits = Limits::new(Vec::new());
        for _ in 0..10 {
            assert!(limits.take(Bucket::Failure, "a"));
        }
        assert!(!limits.allows(Bucket::Failure, "a"));
        assert!(limits.allows(Bucket::Failure, "b"));
        let later = Instant::now() + std::time::Duration::from_secs(31);
        assert!(limits.with(Bucket::Failure, "a", later, |s| s.tokens >= 1.0));
    }

    /// L-01: ten failures against an account, whoever sends them, then one
    /// a minute; never a lockout that outlasts the refill.
    #[test]
    fn an_account_recovers_as_its_bucket_refills() {
        let limits = Limits::new(Vec::new());
        for _ in 0..10 {
            assert!(limits.take(Bucket::AccountFailure, "alice"));
        }
        assert!(!limits.allows(Bucket::AccountFailure, "alice"));
        assert!(limits.allows(Bucket::AccountFailure, "bob"), "other accounts are not affected");
        let now = Instant::now();
        let at = |secs: u64| now + std::time::Duration::from_secs(secs);
        assert!(!limits.with(Bucket::AccountFailure, "alice", at(30), |s| s.tokens >= 1.0), "not within the minute");
        let take = |s: &mut State| {
            if s.tokens < 1.0 {
                return false;
            }
            s.tokens -= 1.0;
            true
        };
        assert!(limits.with(Bucket::AccountFailure, "alice", at(61), take), "one attempt a minute later");
        assert!(!limits.with(Bucket::AccountFailure, "alice", at(62), take), "and only one");
        assert!(limits.with(Bucket::AccountFailure, "alice", at(62 + 600), |s| s.tokens >= 10.0), "full after 10 min");
    }

    #[test]
    fn the_map_is_bounded() {
        let limits = Limits::new(Vec::new());
        for i in 0..MAX_KEYS {
            assert!(limits.take(Bucket::Start, &i.to_string()));
        }
        assert!(!limits.take(Bucket::Start, "one more"), "a full map refuses new keys");
        let later = Instant::now() + std::time::Duration::from_secs(120);
        assert!(limits.with(Bucket::Start, "one more", later, |_| true), "idle entries are evicted");
    }
}
