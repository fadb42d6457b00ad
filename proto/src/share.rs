//! Dividing one broker–connector link between the identities that use it.
//!
//! Every tunnel to a connector travels on one QUIC connection, and QUIC
//! sends the streams of equal priority in turn. An identity that opens
//! thousands of streams therefore puts thousands of turns ahead of anyone
//! else's next stream: with 10,000 unread streams holding a few KiB each,
//! another person's one-line request waited for all of them to be sent first.
//!
//! Both ends of a link count the streams each identity has open on it and
//! give every new stream a send priority from that count: an identity with
//! few streams goes first, one with many yields. The tiers are powers of
//! eight (8, 64, 512, 4,096 streams), so a person with a handful of tunnels
//! is never queued behind a client with hundreds, while the busy client's
//! own streams differ by only a few steps. Priority in QUIC is strict: while
//! a lighter identity's streams have bytes ready, a busier one's wait, so a
//! few bulk transfers at full speed slow a busy identity's many streams
//! rather than the other way round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Streams an identity may have open on a link before its next one yields.
const FIRST_TIER: usize = 8;
/// The lowest priority a stream is given.
const LOWEST: i32 = -4;

/// The send priority of a stream whose identity already has `open` streams
/// on the same link: 0 for the first 8, then one step lower each time the
/// count grows eightfold (−1 from 8, −2 from 64, −3 from 512, −4 from 4,096).
#[must_use]
pub fn priority_for(open: usize) -> i32 {
    let mut tier = 0;
    let mut bound = FIRST_TIER;
    while open >= bound && tier > LOWEST {
        tier -= 1;
        bound = bound.saturating_mul(FIRST_TIER);
    }
    tier
}

/// The streams each identity has open on one link.
#[derive(Debug, Default)]
pub struct LinkShares {
    open: Mutex<HashMap<String, usize>>,
}

impl LinkShares {
    /// Counts a new stream of `identity` until the returned share is dropped.
    #[must_use]
    pub fn enter(self: &Arc<Self>, identity: &str) -> Share {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(identity.to_owned()).or_default();
        let priority = priority_for(*count);
        *count += 1;
        Share { shares: Arc::clone(self), identity: identity.to_owned(), priority }
    }

    /// How many streams `identity` has open on this link.
    #[must_use]
    pub fn open(&self, identity: &str) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(identity).copied().unwrap_or(0)
    }

    /// How many identities have a stream open on this link.
    #[must_use]
    pub fn identities(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn leave(&self, identity: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(identity);
            }
        }
    }
}

/// One stream's place in its identity's share of a link; dropping it ends the stream's count.
#[derive(Debug)]
pub struct Share {
    shares: Arc<LinkShares>,
    identity: String,
    priority: i32,
}

impl Share {
    /// The send priority for the stream (QUIC sends higher first).
    #[must_use]
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The priority as a metrics label value.
    #[must_use]
    pub fn label(&self) -> &'static str {
        ["0", "-1", "-2", "-3", "-4"].get(self.priority.unsigned_abs() as usize).copied().unwrap_or("-4")
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shares.leave(&self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_step_down_each_time_the_count_grows_eightfold() {
        let cases = [(0, 0), (7, 0), (8, -1), (63, -1), (64, -2), (511, -2), (512, -3), (4_095, -3), (4_096, -4)];
        for (open, want) in cases {
            assert_eq!(priority_for(open), want, "{open} streams open");
        }
        assert_eq!(priority_for(usize::MAX), LOWEST);
    }

    #[test]
    fn a_light_identity_keeps_the_first_tier_beside_a_heavy_one() {
        let shares = Arc::new(LinkShares::default());
        let greedy: Vec<Share> = (0..1_000).map(|_| shares.enter("greedy")).collect();
        assert_eq!(greedy.first().map(Share::priority), Some(0));
        assert_eq!(greedy.last().map(Share::priority), Some(-3));
        let other = shares.enter("other");
        assert_eq!(other.priority(), 0, "another identity is not ranked by the greedy one's streams");
        assert_eq!((other.label(), greedy[999].label()), ("0", "-3"));
        assert_eq!((shares.open("greedy"), shares.open("other"), shares.identities()), (1_000, 1, 2));
    }

    #[test]
    fn ended_streams_give_their_place_back_and_idle_identities_are_forgotten() {
        let shares = Arc::new(LinkShares::default());
        let mut held: Vec<Share> = (0..64).map(|_| shares.enter("busy")).collect();
        assert_eq!(shares.enter("busy").priority(), -2, "the 65th stream while 64 are open");
        held.truncate(3);
        assert_eq!(shares.open("busy"), 3);
        assert_eq!(shares.enter("busy").priority(), 0, "back in the first tier once most have ended");
        drop(held);
        assert_eq!((shares.open("busy"), shares.identities()), (0, 0), "no entry is kept for an idle identity");
    }
}
