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
//! @requests_per_window("500")    // requests in the quota window
//! @token_window("1m")            // the quota window, for both (default 1h)
//! permit (principal in Group::"ml-team", action == Action::"http", resource in Segment::"inference")
//! when { ... };
//! ```
//!
//! Budgets are kept per (identity, service, policy). Request rates and
//! in-flight slots are this connector process's own. Quota windows
//! (`@tokens_per_window`, `@requests_per_window`) are aligned to the Unix
//! epoch and shared, approximately, by the connector replicas of a service
//! through the broker ([`budget`], [`shared`], `super::usage`): a window's
//! count is this process's own plus what the other instances reported.
//! A policy with a malformed limit annotation, or limits on a
//! policy without an `@id`, makes every request it permits fail closed.
//!
//! Tokens count as soon as the connector sees them: at the end of a JSON
//! answer, and at every `usage` a server-sent-event stream reports on the
//! way, in the window the request was admitted in. Every count is
//! announced on a watch channel, so a response still streaming for the same
//! identity is cut the moment its window goes past the quota, whichever
//! stream (or replica) used it up.

mod budget;
mod shared;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cedar_policy::PolicySet;
use palisade_policies::Engine;

pub(crate) use budget::{Admission, Limiter, Now};
pub(crate) use shared::instance;

const DEFAULT_WINDOW: Duration = Duration::from_secs(3_600);
const ANNOTATIONS: [&str; 6] =
    ["requests_per_second", "burst", "max_in_flight", "tokens_per_window", "requests_per_window", "token_window"];

/// The limits one policy sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LimitSpec {
    pub(crate) requests_per_second: Option<f64>,
    pub(crate) burst: Option<u32>,
    pub(crate) max_in_flight: Option<u32>,
    pub(crate) tokens_per_window: Option<u64>,
    pub(crate) requests_per_window: Option<u64>,
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
        requests_per_window: positive("requests_per_window")?,
        token_window: window,
    })
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
