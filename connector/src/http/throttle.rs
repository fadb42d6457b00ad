//! Throttles the broker set after an extraction or abuse alert: an
//! identity's requests to a service held to a rate per sliding minute,
//! until an admin clears the throttle on the broker.
//!
//! The broker sends the whole set on every control link
//! ([`palisade_proto::control::BrokerToConnector::Throttles`]); each set
//! replaces the last. Without any link the connector keeps the set it last
//! heard: a throttle is not lifted because the broker is unreachable.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use palisade_proto::throttle::{MAX_THROTTLES, Throttle};

/// The sliding window a throttle's rate counts in.
const WINDOW_MS: u64 = 60_000;

/// A request refused by a throttle, and when the identity may try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub(crate) requests_per_minute: u32,
    pub(crate) retry_after: Duration,
}

#[derive(Debug)]
struct Held {
    requests_per_minute: u32,
    /// When admitted requests were made (unix ms), oldest first.
    admitted: VecDeque<u64>,
}

/// The throttles in force, keyed by (service, identity).
#[derive(Debug, Default)]
pub(crate) struct Throttles {
    held: Mutex<HashMap<(String, String), Held>>,
}

/// This process's throttles.
pub(crate) fn throttles() -> &'static Throttles {
    static THROTTLES: OnceLock<Throttles> = OnceLock::new();
    THROTTLES.get_or_init(Throttles::default)
}

impl Throttles {
    /// Replaces the set; a throttle kept from the last set keeps its count.
    pub(crate) fn replace(&self, set: Vec<Throttle>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(set.len().min(MAX_THROTTLES));
        for throttle in set.into_iter().take(MAX_THROTTLES) {
            let key = (throttle.service, throttle.identity);
            let admitted = held.remove(&key).map(|h| h.admitted).unwrap_or_default();
            next.insert(key, Held { requests_per_minute: throttle.requests_per_minute, admitted });
        }
        let (before, after) = (held.len(), next.len());
        if before != after {
            tracing::info!(before, after, "throttles after alerts updated");
        }
        *held = next;
    }

    /// Counts a request of `identity` to `service`, or refuses it if a
    /// throttle holds the identity and its minute is full.
    pub(crate) fn admit(&self, service: &str, identity: &str, now_ms: u64) -> Result<(), Throttled> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(h) = held.get_mut(&(service.to_owned(), identity.to_owned())) else { return Ok(()) };
        while h.admitted.front().is_some_and(|at| at.saturating_add(WINDOW_MS) <= now_ms) {
            h.admitted.pop_front();
        }
        if h.admitted.len() < h.requests_per_minute as usize {
            h.admitted.push_back(now_ms);
            return Ok(());
        }
        let oldest = h.admitted.front().copied().unwrap_or(now_ms);
        let retry_after = Duration::from_millis(oldest.saturating_add(WINDOW_MS).saturating_sub(now_ms));
        Err(Throttled { requests_per_minute: h.requests_per_minute, retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(service: &str, identity: &str, rate: u32) -> Throttle {
        Throttle { service: service.into(), identity: identity.into(), requests_per_minute: rate }
    }

    #[test]
    fn a_throttled_identity_gets_its_rate_per_sliding_minute_and_others_are_untouched() {
        let t = Throttles::default();
        t.replace(vec![throttle("llm", "thief", 2)]);
        assert_eq!(t.admit("llm", "thief", 1_000), Ok(()));
        assert_eq!(t.admit("llm", "thief", 11_000), Ok(()));
        let refused = t.admit("llm", "thief", 20_000).expect_err("the minute is full");
        assert_eq!(refused, Throttled { requests_per_minute: 2, retry_after: Duration::from_secs(41) });
        for i in 0..100 {
            assert_eq!(t.admit("llm", "colleague", 20_000 + i), Ok(()), "another identity is not throttled");
            assert_eq!(t.admit("other-svc", "thief", 20_000 + i), Ok(()), "another service is not throttled");
        }
        assert_eq!(t.admit("llm", "thief", 61_000), Ok(()), "the first request left the window");
        assert!(t.admit("llm", "thief", 61_001).is_err());
    }

    #[test]
    fn a_new_set_keeps_counts_of_kept_throttles_and_lifts_cleared_ones() {
        let t = Throttles::default();
        t.replace(vec![throttle("llm", "a", 1), throttle("llm", "b", 1)]);
        assert_eq!(t.admit("llm", "a", 0), Ok(()));
        assert_eq!(t.admit("llm", "b", 0), Ok(()));
        t.replace(vec![throttle("llm", "a", 1)]);
        assert!(t.admit("llm", "a", 1).is_err(), "a resent throttle keeps its count");
        assert_eq!(t.admit("llm", "b", 1), Ok(()), "a cleared throttle stops applying");
        assert_eq!(t.admit("llm", "b", 2), Ok(()));
        t.replace(Vec::new());
        assert_eq!(t.admit("llm", "a", 2), Ok(()), "an empty set clears all");
    }

    #[test]
    fn a_zero_rate_refuses_every_request_rather_than_none() {
        let t = Throttles::default();
        t.replace(vec![throttle("llm", "a", 0)]);
        let refused = t.admit("llm", "a", 0).expect_err("deny on doubt");
        assert_eq!(refused.retry_after, Duration::from_secs(60));
    }
}
