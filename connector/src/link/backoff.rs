//! Reconnect delays: exponential with full jitter.
//!
//! Full jitter (a uniform delay between zero and the current ceiling)
//! spreads a fleet of connectors that lost the same broker at the same
//! moment, so the broker is not hit by all of them at once when it returns.

use std::time::Duration;

use rand::Rng;

const BASE: Duration = Duration::from_millis(200);
const CAP: Duration = Duration::from_secs(10);

/// Reconnect delay state; [`Backoff::reset`] after a healthy connection.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The upper bound of the next delay: 200 ms doubling up to 10 s.
    pub(crate) fn ceiling(&self) -> Duration {
        BASE.saturating_mul(1u32 << self.attempt.min(16)).min(CAP)
    }

    /// The next delay, drawn from the thread's RNG.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// The next delay, uniform in `[0, ceiling]`; raises the ceiling.
    pub(crate) fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// Back to the shortest delay.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ceiling_doubles_and_is_capped() {
        let mut backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay_with(&mut rng);
            assert!(delay <= *ceilings.last().unwrap_or(&CAP), "{delay:?} over the ceiling");
        }
        assert_eq!(ceilings[0], Duration::from_millis(200));
        assert_eq!(ceilings[1], Duration::from_millis(400));
        assert_eq!(ceilings[4], Duration::from_millis(3200));
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ceilings[11], CAP);
        for _ in 0..100 {
            assert!(backoff.next_delay_with(&mut rng) <= CAP);
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = StdRng::seed_from_u64(42);
        let delays: Vec<Duration> = (0..20)
            .map(|_| {
                let mut backoff = Backoff { attempt: 10 };
                backoff.next_delay_with(&mut rng)
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 15, "not jittered: {delays:?}");
        assert!(delays.iter().any(|d| *d < CAP / 2), "full jitter reaches low delays: {delays:?}");
    }
}
