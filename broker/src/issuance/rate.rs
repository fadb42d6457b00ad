//! How often one identity may be issued a certificate (CA-08).
//!
//! A stolen connector or person certificate must not turn the CA into a
//! signing oracle or fill the certificate table: every issuance for an
//! existing identity (connector renewals, a person's certificate after a
//! sign-in or device approval) takes a token from that identity's bucket.
//! Enrollment needs a one-time token per identity and is not counted here.
//!
//! The map is bounded: buckets that have refilled are evicted first (a full
//! bucket is the same as no bucket), and when every tracked identity is
//! still draining, a new identity is refused rather than the map growing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most identities tracked at once.
pub const MAX_TRACKED: usize = 100_000;

/// Issuances one identity may get in a burst.
pub const BURST: f64 = 10.0;

/// Per-identity issuance buckets.
#[derive(Debug)]
pub struct IssuanceLimits {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl IssuanceLimits {
    /// Up to [`BURST`] issuances at once, refilled at `per_hour`.
    #[must_use]
    pub fn new(per_hour: u32) -> Self {
        Self { per_second: f64::from(per_hour) / 3600.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one issuance for `identity`, or says how long until one is free.
    ///
    /// # Errors
    /// The identity has used its burst; the value is when to retry.
    pub fn take(&self, identity: &str) -> Result<(), Duration> {
        self.take_at(identity, Instant::now())
    }

    fn take_at(&self, identity: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(identity) && buckets.len() >= MAX_TRACKED {
            self.evict_refilled(&mut buckets, now);
            if buckets.len() >= MAX_TRACKED {
                return Err(Duration::from_secs(60));
            }
        }
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket { tokens: BURST, at: now });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64(((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0)))
        } else {
            Err(Duration::from_secs(3600))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(BURST)
    }

    fn evict_refilled(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(*b, now) < BURST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_then_refill_and_identities_do_not_share() {
        let limits = IssuanceLimits::new(3600);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limits.take_at("connector/a", start).is_ok());
        }
        let wait = limits.take_at("connector/a", start).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limits.take_at("connector/b", start).is_ok(), "another identity has its own bucket");
        assert!(limits.take_at("connector/a", start + Duration::from_secs(1)).is_ok(), "one token refilled");
        assert!(limits.take_at("connector/a", start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn the_map_is_bounded_and_refilled_buckets_make_room() {
        let limits = IssuanceLimits::new(3600);
        let start = Instant::now();
        {
            let mut buckets = limits.buckets.lock().expect("lock");
            for i in 0..MAX_TRACKED {
                buckets.insert(format!("id-{i}"), Bucket { tokens: 0.0, at: start });
            }
        }
        assert!(limits.take_at("newcomer", start).is_err(), "a full map of draining buckets refuses a newcomer");
        assert!(limits.take_at("id-1", start + Duration::from_secs(2)).is_ok(), "a tracked identity still refills");
        assert!(limits.take_at("newcomer", start + Duration::from_secs(20)).is_ok(), "refilled buckets were evicted");
    }
}
