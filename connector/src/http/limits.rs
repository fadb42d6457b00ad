//! Per-identity limits on HTTP services, written as annotations on the
//! permit policy that allows the request, so they travel in the signed
//! bundle with the rule they belong to:
//!
//! ```cedar
//! @id("ml-team-inference-endpoints")
//! @requests_per_second("5")     // token bucket refill rate
//! @burst("10")                   // bucket size (default: requests_per_second, at least 1)
//! @max_in_flight("4")            // concurrent requests
//! @tokens_per_window("20000")    // prompt + completion tokens from `usage`
//! @token_window("1m")            // the quota window (default 1h)
//! permit (principal in Group::"ml-team", action == Action::"http", resource in Segment::"inference")
//! when { ... };
//! ```
//!
//! Budgets are kept per (identity, service, policy) in this connector
//! process. A policy with a malformed limit annotation, or limits on a
//! policy without an `@id`, makes every request it permits fail closed.
//!
//! Tokens count as soon as the connector sees them: at the end of a JSON
//! answer, and at every `usage` a server-sent-event stream reports on the
//! way. Every count is announced on a watch channel, so a response still
//! streaming for the same identity is cut the moment its window goes past
//! the quota, whichever stream used it up.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cedar_policy::PolicySet;
use palisade_policies::Engine;
use tokio::sync::watch;

const DEFAULT_WINDOW: Duration = Duration::from_secs(3_600);
const ANNOTATIONS: [&str; 5] = ["requests_per_second", "burst", "max_in_flight", "tokens_per_window", "token_window"];

/// The limits one policy sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LimitSpec {
    pub(crate) requests_per_second: Option<f64>,
    pub(crate) burst: Option<u32>,
    pub(crate) max_in_flight: Option<u32>,
    pub(crate) tokens_per_window: Option<u64>,
    pub(crate) token_window: Option<Duration>,
}

/// Limits could not be read from the bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LimitError {
    #[error("policy {policy}: @{key}({value:?}) is not valid: {reason}")]
    Value { policy: String, key: &'static str, value: String, reason: &'static str },
    #[error("a policy in {file} sets limits but has no @id to attach them to")]
    NoId { file: String },
    #[error("policy file {file} does not parse: {message}")]
    Parse { file: String, message: String },
}

/// The limit annotations of every policy in a bundle, by policy id.
pub(crate) fn limits_of(engine: &Engine) -> Result<HashMap<String, LimitSpec>, LimitError> {
    let mut limits = HashMap::new();
    for file in &engine.bundle().files {
        let set = PolicySet::from_str(&file.text)
            .map_err(|e| LimitError::Parse { file: file.name.clone(), message: e.to_string() })?;
        for policy in set.policies() {
            if ANNOTATIONS.iter().all(|key| policy.annotation(key).is_none()) {
                continue;
            }
            let id = policy.annotation("id").ok_or_else(|| LimitError::NoId { file: file.name.clone() })?;
            let spec = parse_spec(id, |key| policy.annotation(key))?;
            limits.insert(id.to_owned(), spec);
        }
    }
    Ok(limits)
}

fn parse_spec<'a>(id: &str, get: impl Fn(&str) -> Option<&'a str>) -> Result<LimitSpec, LimitError> {
    let bad = |key: &'static str, value: &str, reason: &'static str| LimitError::Value {
        policy: id.to_owned(),
        key,
        value: value.to_owned(),
        reason,
    };
    let positive = |key: &'static str| -> Result<Option<u64>, LimitError> {
        get(key)
            .map(|v| v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| bad(key, v, "a whole number > 0")))
            .transpose()
    };
    let rate = get("requests_per_second")
        .map(|v| {
            let rate = v.trim().parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
            rate.ok_or_else(|| bad("requests_per_second", v, "a number > 0"))
        })
        .transpose()?;
    let small = |key: &'static str| -> Result<Option<u32>, LimitError> {
        positive(key)?.map(|n| u32::try_from(n).map_err(|_| bad(key, &n.to_string(), "at most 4294967295"))).transpose()
    };
    let window = get("token_window")
        .map(|v| {
            let window = humantime::parse_duration(v.trim()).ok().filter(|d| !d.is_zero());
            window.ok_or_else(|| bad("token_window", v, "a duration such as 1m or 1h"))
        })
        .transpose()?;
    Ok(LimitSpec {
        requests_per_second: rate,
        burst: small("burst")?,
        max_in_flight: small("max_in_flight")?,
        tokens_per_window: positive("tokens_per_window")?,
        token_window: window,
    })
}

/// Why a request is over a limit, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OverLimit {
    pub(crate) what: &'static str,
    pub(crate) retry_after: Duration,
}

#[derive(Debug)]
struct Budget {
    bucket: f64,
    refilled: Instant,
    in_flight: u32,
    window_start: Instant,
    tokens_used: u64,
}

type Key = (String, String, String);

/// Every budget in this connector, keyed by (identity, service, policy).
#[derive(Debug)]
pub(crate) struct Limiter {
    budgets: Mutex<HashMap<Key, Budget>>,
    /// Bumped after every change to a token count.
    counted: watch::Sender<u64>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self { budgets: Mutex::default(), counted: watch::Sender::new(0) }
    }
}

/// One budget an admitted request draws on.
#[derive(Debug)]
struct Drawn {
    key: Key,
    holds_slot: bool,
    /// The quota and its window, if the policy sets one.
    quota: Option<(u64, Duration)>,
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
    quotas: Vec<(Key, u64, Duration)>,
}

impl Limiter {
    /// Takes a request slot from every limited policy, or says which limit is hit.
    pub(crate) fn admit(
        self: &Arc<Self>,
        identity: &str,
        service: &str,
        specs: &[(String, LimitSpec)],
        now: Instant,
    ) -> Result<Admission, OverLimit> {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<_> =
            specs.iter().map(|(policy, _)| (identity.to_owned(), service.to_owned(), policy.clone())).collect();
        for (key, (_, spec)) in keys.iter().zip(specs) {
            let budget = budgets.entry(key.clone()).or_insert_with(|| Budget::new(spec, now));
            budget.check(spec, now)?;
        }
        for (key, (_, spec)) in keys.iter().zip(specs) {
            if let Some(budget) = budgets.get_mut(key) {
                budget.take(spec);
            }
        }
        let drawn = keys
            .into_iter()
            .zip(specs)
            .map(|(key, (_, spec))| Drawn {
                key,
                holds_slot: spec.max_in_flight.is_some(),
                quota: spec.tokens_per_window.map(|quota| (quota, spec.token_window.unwrap_or(DEFAULT_WINDOW))),
            })
            .collect();
        Ok(Admission { limiter: self.clone(), drawn, counted: 0 })
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Budget>> {
        self.budgets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Budget {
    fn new(spec: &LimitSpec, now: Instant) -> Self {
        Self { bucket: capacity(spec), refilled: now, in_flight: 0, window_start: now, tokens_used: 0 }
    }

    fn check(&mut self, spec: &LimitSpec, now: Instant) -> Result<(), OverLimit> {
        if let Some(rate) = spec.requests_per_second {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.bucket = (self.bucket + elapsed * rate).min(capacity(spec));
            self.refilled = now;
            if self.bucket < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - self.bucket) / rate);
                return Err(OverLimit { what: "requests per second", retry_after });
            }
        }
        if spec.max_in_flight.is_some_and(|max| self.in_flight >= max) {
            return Err(OverLimit { what: "concurrent requests", retry_after: Duration::from_secs(1) });
        }
        if let Some(quota) = spec.tokens_per_window {
            let window = spec.token_window.unwrap_or(DEFAULT_WINDOW);
            if now.saturating_duration_since(self.window_start) >= window {
                self.window_start = now;
                self.tokens_used = 0;
            }
            if self.tokens_used >= quota {
                let retry_after = window.saturating_sub(now.saturating_duration_since(self.window_start));
                return Err(OverLimit { what: "tokens in this window", retry_after });
            }
        }
        Ok(())
    }

    /// Adds tokens to the window in force at `now` (a new one if the last has ended).
    fn count(&mut self, tokens: u64, window: Duration, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= window {
            self.window_start = now;
            self.tokens_used = 0;
        }
        self.tokens_used = self.tokens_used.saturating_add(tokens);
    }

    fn take(&mut self, spec: &LimitSpec) {
        if spec.requests_per_second.is_some() {
            self.bucket -= 1.0;
        }
        if spec.max_in_flight.is_some() {
            self.in_flight += 1;
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
    /// The response has used `total` tokens so far: counts what is new.
    pub(crate) fn progress(&mut self, total: u64) {
        let new = total.saturating_sub(self.counted);
        if new == 0 {
            return;
        }
        self.counted = total;
        let now = Instant::now();
        {
            let mut budgets = self.limiter.budgets();
            for drawn in &self.drawn {
                if let (Some((_, window)), Some(budget)) = (drawn.quota, budgets.get_mut(&drawn.key)) {
                    budget.count(new, window, now);
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
        let mut budgets = self.limiter.budgets();
        for drawn in &mut self.drawn {
            if let (true, Some(budget)) = (drawn.holds_slot, budgets.get_mut(&drawn.key)) {
                budget.in_flight = budget.in_flight.saturating_sub(1);
            }
            drawn.holds_slot = false;
        }
    }

    /// A watch on the token quotas this response draws on, if any.
    pub(crate) fn quota_watch(&self) -> Option<QuotaWatch> {
        let quotas: Vec<_> =
            self.drawn.iter().filter_map(|d| d.quota.map(|(quota, window)| (d.key.clone(), quota, window))).collect();
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
    /// Whether a window in force at `now` has counted more tokens than its quota.
    fn exceeded_at(&self, now: Instant) -> bool {
        let budgets = self.limiter.budgets();
        self.quotas.iter().any(|(key, quota, window)| {
            budgets
                .get(key)
                .is_some_and(|b| b.tokens_used > *quota && now.saturating_duration_since(b.window_start) < *window)
        })
    }

    /// Returns once a quota is exceeded. Subscribes before it looks, so a
    /// count made in between is not missed.
    pub(crate) async fn exceeded(self) {
        let mut counted = self.limiter.counted.subscribe();
        while !self.exceeded_at(Instant::now()) {
            if counted.changed().await.is_err() {
                // The limiter is gone: nothing can be counted any more, so nothing is known.
                return;
            }
        }
    }
}

/// This connector's budgets, shared by every tunnel.
pub(crate) fn limiter() -> Arc<Limiter> {
    static LIMITER: OnceLock<Arc<Limiter>> = OnceLock::new();
    LIMITER.get_or_init(Arc::default).clone()
}

type Table = Result<Arc<HashMap<String, LimitSpec>>, LimitError>;

/// The limits of the policies that permitted a request, read once per bundle.
pub(crate) fn specs_for(engine: &Engine, policy_ids: &[String]) -> Result<Vec<(String, LimitSpec)>, LimitError> {
    static TABLE: Mutex<Option<(String, Table)>> = Mutex::new(None);
    let table = {
        let mut cached = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        match cached.as_ref() {
            Some((digest, table)) if digest == engine.digest() => table.clone(),
            _ => {
                let table = limits_of(engine).map(Arc::new);
                *cached = Some((engine.digest().to_owned(), table.clone()));
                table
            }
        }
    }?;
    Ok(policy_ids.iter().filter_map(|id| table.get(id).map(|spec| (id.clone(), *spec))).collect())
}

#[cfg(test)]
mod tests;
