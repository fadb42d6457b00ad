//! The budgets of one connector process, and what crosses replicas.
//!
//! Request rates (a token bucket) and in-flight slots are this process's
//! own. Quota windows (tokens, requests per window) are aligned to the
//! Unix epoch, so every replica agrees on them, and a window's count is
//! this process's own count plus what the broker says the other
//! connector instances counted ([`Shared`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_proto::usage::{MAX_WINDOW_MS, UsageDelta, UsageElsewhere, UsageKey, window_start};
use tokio::sync::watch;

use super::shared::{Shared, Usage};
use super::{DEFAULT_WINDOW, LimitSpec};

/// A moment on both clocks: the monotonic one for request rates, the wall
/// clock (unix milliseconds) for quota windows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) unix_ms: u64,
}

impl Now {
    pub(crate) fn current() -> Self {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self { at: Instant::now(), unix_ms: u64::try_from(unix_ms).unwrap_or(u64::MAX) }
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Now;
    fn add(self, d: Duration) -> Now {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Now { at: self.at + d, unix_ms: self.unix_ms.saturating_add(ms) }
    }
}

/// Why a request is over a limit, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OverLimit {
    pub(crate) what: &'static str,
    pub(crate) retry_after: Duration,
    /// This process's own count was within the limit: other replicas' usage made the difference.
    pub(crate) with_other_replicas: bool,
}

/// A quota window's own count.
#[derive(Debug, Default)]
struct Counted {
    start_ms: u64,
    usage: Usage,
}

#[derive(Debug)]
struct Budget {
    bucket: f64,
    refilled: Instant,
    in_flight: u32,
    window: Counted,
}

type Key = (String, String, String);

#[derive(Debug, Default)]
struct Inner {
    budgets: HashMap<Key, Budget>,
    shared: Shared,
}

/// Every budget in this connector, keyed by (identity, service, policy).
#[derive(Debug)]
pub(crate) struct Limiter {
    inner: Mutex<Inner>,
    /// Bumped after every change to a token count.
    counted: watch::Sender<u64>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self { inner: Mutex::default(), counted: watch::Sender::new(0) }
    }
}

/// The quota window a request was admitted in: its tokens count there.
#[derive(Clone, Debug)]
struct Window {
    shared: UsageKey,
    tokens: Option<u64>,
    /// Whether other replicas hear of it (windows over 400 days stay local).
    shares: bool,
}

/// One budget an admitted request draws on.
#[derive(Debug)]
struct Drawn {
    key: Key,
    holds_slot: bool,
    window: Option<Window>,
}

/// Holds one in-flight slot and counts the response's tokens as they are reported.
#[derive(Debug)]
pub(crate) struct Admission {
    limiter: Arc<Limiter>,
    drawn: Vec<Drawn>,
    /// Tokens of this response already counted.
    counted: u64,
}

/// Waits for an identity's token quota to be exceeded.
#[derive(Debug)]
pub(crate) struct QuotaWatch {
    limiter: Arc<Limiter>,
    quotas: Vec<(Key, u64, UsageKey)>,
}

impl Limiter {
    /// Takes a request slot from every limited policy, or says which limit is hit.
    pub(crate) fn admit(
        self: &Arc<Self>,
        identity: &str,
        service: &str,
        specs: &[(String, LimitSpec)],
        now: Now,
    ) -> Result<Admission, OverLimit> {
        let mut inner = self.lock();
        let drawn: Vec<Drawn> = specs
            .iter()
            .map(|(policy, spec)| Drawn {
                key: (identity.to_owned(), service.to_owned(), policy.clone()),
                holds_slot: spec.max_in_flight.is_some(),
                window: window_of(service, identity, policy, spec, now.unix_ms),
            })
            .collect();
        for (d, (_, spec)) in drawn.iter().zip(specs) {
            let elsewhere = d.window.as_ref().filter(|w| w.shares).map(|w| inner.shared.elsewhere(&w.shared));
            let budget = inner.budgets.entry(d.key.clone()).or_insert_with(|| Budget::new(spec, now));
            budget.check_rate(spec, now.at)?;
            if let Some(window) = &d.window {
                budget.check_window(spec, window, now.unix_ms, elsewhere.unwrap_or_default())?;
            }
        }
        for (d, (_, spec)) in drawn.iter().zip(specs) {
            if let Some(budget) = inner.budgets.get_mut(&d.key) {
                budget.take(spec);
            }
            if let Some(window) = d.window.as_ref().filter(|w| w.shares) {
                inner.shared.count(window.shared.clone(), Usage { tokens: 0, requests: 1 });
            }
        }
        Ok(Admission { limiter: self.clone(), drawn, counted: 0 })
    }

    /// Up to `max` counts not yet reported to the broker.
    pub(crate) fn take_report(&self, now_ms: u64, max: usize) -> Vec<UsageDelta> {
        self.lock().shared.take_report(now_ms, max)
    }

    /// A report that could not be sent: counted again with the next one.
    pub(crate) fn put_back(&self, entries: Vec<UsageDelta>) {
        self.lock().shared.put_back(entries);
    }

    /// Takes in other instances' counts; a stream over its quota because of them is cut.
    pub(crate) fn learn(&self, entries: Vec<UsageElsewhere>, now_ms: u64) {
        if self.lock().shared.learn(entries, now_ms) {
            self.counted.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The window in force at `now_ms` for a policy with a windowed limit.
fn window_of(service: &str, identity: &str, policy: &str, spec: &LimitSpec, now_ms: u64) -> Option<Window> {
    if spec.tokens_per_window.is_none() && spec.requests_per_window.is_none() {
        return None;
    }
    let length = spec.token_window.unwrap_or(DEFAULT_WINDOW);
    let window_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
    let shared = UsageKey {
        service: service.to_owned(),
        identity: identity.to_owned(),
        policy: policy.to_owned(),
        window_ms,
        window_start_ms: window_start(now_ms, window_ms),
    };
    Some(Window { shared, tokens: spec.tokens_per_window, shares: window_ms <= MAX_WINDOW_MS })
}

impl Budget {
    fn new(spec: &LimitSpec, now: Now) -> Self {
        Self { bucket: capacity(spec), refilled: now.at, in_flight: 0, window: Counted::default() }
    }

    fn check_rate(&mut self, spec: &LimitSpec, now: Instant) -> Result<(), OverLimit> {
        if let Some(rate) = spec.requests_per_second {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.bucket = (self.bucket + elapsed * rate).min(capacity(spec));
            self.refilled = now;
            if self.bucket < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - self.bucket) / rate);
                return Err(OverLimit { what: "requests per second", retry_after, with_other_replicas: false });
            }
        }
        if spec.max_in_flight.is_some_and(|max| self.in_flight >= max) {
            let retry_after = Duration::from_secs(1);
            return Err(OverLimit { what: "concurrent requests", retry_after, with_other_replicas: false });
        }
        Ok(())
    }

    /// Refuses when this window's own count plus other replicas' reaches a quota.
    fn check_window(
        &mut self,
        spec: &LimitSpec,
        window: &Window,
        now_ms: u64,
        elsewhere: Usage,
    ) -> Result<(), OverLimit> {
        if self.window.start_ms != window.shared.window_start_ms {
            self.window = Counted { start_ms: window.shared.window_start_ms, usage: Usage::default() };
        }
        let own = self.window.usage;
        let retry_after = Duration::from_millis(window.shared.window_end_ms().saturating_sub(now_ms));
        let over = |what, limit: Option<u64>, own: u64, other: u64| match limit {
            Some(limit) if own.saturating_add(other) >= limit => {
                Err(OverLimit { what, retry_after, with_other_replicas: own < limit })
            }
            _ => Ok(()),
        };
        over("tokens in this window", spec.tokens_per_window, own.tokens, elsewhere.tokens)?;
        over("requests in this window", spec.requests_per_window, own.requests, elsewhere.requests)
    }

    fn take(&mut self, spec: &LimitSpec) {
        if spec.requests_per_second.is_some() {
            self.bucket -= 1.0;
        }
        if spec.max_in_flight.is_some() {
            self.in_flight += 1;
        }
        if spec.tokens_per_window.is_some() || spec.requests_per_window.is_some() {
            self.window.usage.requests = self.window.usage.requests.saturating_add(1);
        }
    }
}

fn capacity(spec: &LimitSpec) -> f64 {
    match (spec.burst, spec.requests_per_second) {
        (Some(burst), _) => f64::from(burst),
        (None, Some(rate)) => rate.max(1.0),
        (None, None) => 1.0,
    }
}

impl Admission {
    /// The response has used `total` tokens so far: counts what is new, in
    /// the window the request was admitted in.
    pub(crate) fn progress(&mut self, total: u64) {
        let new = total.saturating_sub(self.counted);
        if new == 0 {
            return;
        }
        self.counted = total;
        {
            let mut inner = self.limiter.lock();
            for drawn in &self.drawn {
                let Some(window) = drawn.window.as_ref().filter(|w| w.tokens.is_some()) else { continue };
                if let Some(budget) = inner.budgets.get_mut(&drawn.key)
                    && budget.window.start_ms == window.shared.window_start_ms
                {
                    budget.window.usage.tokens = budget.window.usage.tokens.saturating_add(new);
                }
                if window.shares {
                    inner.shared.count(window.shared.clone(), Usage { tokens: new, requests: 0 });
                }
            }
        }
        self.limiter.counted.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The response ended having used `total` tokens: counts them and frees the in-flight slot.
    pub(crate) fn finish(mut self, total: u64) {
        self.progress(total);
        self.release();
    }

    fn release(&mut self) {
        if !self.drawn.iter().any(|d| d.holds_slot) {
            return;
        }
        let mut inner = self.limiter.lock();
        for drawn in &mut self.drawn {
            if let (true, Some(budget)) = (drawn.holds_slot, inner.budgets.get_mut(&drawn.key)) {
                budget.in_flight = budget.in_flight.saturating_sub(1);
            }
            drawn.holds_slot = false;
        }
    }

    /// A watch on the token quotas this response draws on, if any.
    pub(crate) fn quota_watch(&self) -> Option<QuotaWatch> {
        let quotas: Vec<_> = self
            .drawn
            .iter()
            .filter_map(|d| {
                let window = d.window.as_ref()?;
                Some((d.key.clone(), window.tokens?, window.shared.clone()))
            })
            .collect();
        (!quotas.is_empty()).then(|| QuotaWatch { limiter: self.limiter.clone(), quotas })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // A request dropped without `finish` (the caller went away) still frees its slot.
        self.release();
    }
}

impl QuotaWatch {
    /// Whether a window this response counts in has more tokens than its quota,
    /// here and on other replicas together.
    fn is_exceeded(&self) -> bool {
        let inner = self.limiter.lock();
        self.quotas.iter().any(|(key, quota, window)| {
            let own = inner
                .budgets
                .get(key)
                .filter(|b| b.window.start_ms == window.window_start_ms)
                .map_or(0, |b| b.window.usage.tokens);
            own.saturating_add(inner.shared.elsewhere(window).tokens) > *quota
        })
    }

    /// Returns once a quota is exceeded. Subscribes before it looks, so a
    /// count made in between is not missed.
    pub(crate) async fn exceeded(self) {
        let mut counted = self.limiter.counted.subscribe();
        while !self.is_exceeded() {
            if counted.changed().await.is_err() {
                // The limiter is gone: nothing can be counted any more, so nothing is known.
                return;
            }
        }
    }
}
