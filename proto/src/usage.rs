//! Quota usage shared between the connector replicas of a service.
//!
//! Each connector process (an *instance*) counts tokens and requests per
//! (service, identity, policy, window) and reports what it counted since
//! its last report ([`UsageDelta`], in [`crate::control::ConnectorToBroker::Usage`]).
//! The broker adds a report to that instance's own rows only, and sends
//! every connector what the *other* instances counted for the services it
//! serves ([`UsageElsewhere`]). A connector enforces its own count plus
//! that. Windows are aligned to the Unix epoch (`window_start_ms` is a
//! multiple of `window_ms`), so replicas agree on them without talking.
//!
//! [`check_report`] is what the broker accepts: bounded, well-formed,
//! only services the connector serves, and only windows near `now`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// The most entries in one usage frame, either way.
pub const MAX_ENTRIES: usize = 256;
/// The longest window shared (400 days); a longer one is counted locally only.
pub const MAX_WINDOW_MS: u64 = 400 * 24 * 3_600 * 1_000;
/// The most tokens one entry of a report may add.
pub const MAX_DELTA_TOKENS: u64 = 1_000_000_000_000;
/// The most requests one entry of a report may add.
pub const MAX_DELTA_REQUESTS: u64 = 1_000_000_000;
/// How far a report's windows may lie from the broker's clock (skew, delay).
pub const CLOCK_SLACK_MS: u64 = 120_000;
const MAX_IDENTITY: usize = 512;
const MAX_NAME: usize = 256;
const MAX_INSTANCE: usize = 64;

/// Which count: one identity's use of one service under one policy's limits, in one window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageKey {
    /// The service name.
    pub service: String,
    /// The caller's SPIFFE id.
    pub identity: String,
    /// The `@id` of the policy that sets the limits.
    pub policy: String,
    /// The window's length in milliseconds.
    pub window_ms: u64,
    /// When the window began (unix milliseconds, a multiple of `window_ms`).
    pub window_start_ms: u64,
}

impl UsageKey {
    /// When the window ends (unix milliseconds).
    #[must_use]
    pub fn window_end_ms(&self) -> u64 {
        self.window_start_ms.saturating_add(self.window_ms)
    }
}

/// What one connector instance counted for a key since its last report (connector → broker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageDelta {
    /// The count.
    pub key: UsageKey,
    /// Tokens (prompt + completion) to add.
    pub tokens: u64,
    /// Requests to add.
    pub requests: u64,
}

/// What the other connector instances counted for a key (broker → connector).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageElsewhere {
    /// The count.
    pub key: UsageKey,
    /// Tokens counted by every other instance in the window.
    pub tokens: u64,
    /// Requests counted by every other instance in the window.
    pub requests: u64,
}

/// Why a usage report was refused; the broker then changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageReportError {
    /// More than [`MAX_ENTRIES`] entries.
    #[error("a usage report may have at most {MAX_ENTRIES} entries, not {0}")]
    Size(usize),
    /// The instance id is empty, too long or not `[A-Za-z0-9-]`.
    #[error("the instance id must be 1 to {MAX_INSTANCE} letters, digits or '-'")]
    Instance,
    /// An entry names a service this connector did not say it serves.
    #[error("entry {0}: service {1:?} is not one this connector serves")]
    NotServed(usize, String),
    /// An entry's identity or policy is empty or too long.
    #[error("entry {0}: the identity or policy is empty or too long")]
    Name(usize),
    /// An entry's window is zero, too long, or its start not aligned.
    #[error("entry {0}: the window is not a multiple of its length, or not 1 ms to 400 days long")]
    Window(usize),
    /// An entry's window is far from now (ended long ago, or in the future).
    #[error("entry {0}: the window is not current")]
    Stale(usize),
    /// An entry adds nothing, or more than a report may add.
    #[error(
        "entry {0}: the counts must be above zero and at most {MAX_DELTA_TOKENS} tokens, {MAX_DELTA_REQUESTS} requests"
    )]
    Count(usize),
    /// The same key twice in one report.
    #[error("entry {0}: the same count appears twice")]
    Duplicate(usize),
}

/// Checks a whole report: it is taken entirely or not at all. A report
/// without entries only says which instance the link reports for.
///
/// # Errors
/// The first problem found, as a [`UsageReportError`].
pub fn check_report(
    instance: &str,
    entries: &[UsageDelta],
    served: &[String],
    now_ms: u64,
) -> Result<(), UsageReportError> {
    if entries.len() > MAX_ENTRIES {
        return Err(UsageReportError::Size(entries.len()));
    }
    let instance_ok = !instance.is_empty()
        && instance.len() <= MAX_INSTANCE
        && instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !instance_ok {
        return Err(UsageReportError::Instance);
    }
    let mut seen = HashSet::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        check_entry(i, entry, served, now_ms)?;
        if !seen.insert(&entry.key) {
            return Err(UsageReportError::Duplicate(i));
        }
    }
    Ok(())
}

fn check_entry(i: usize, entry: &UsageDelta, served: &[String], now_ms: u64) -> Result<(), UsageReportError> {
    let key = &entry.key;
    if !served.contains(&key.service) {
        return Err(UsageReportError::NotServed(i, key.service.chars().take(MAX_NAME).collect()));
    }
    let name_ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    if !name_ok(&key.identity, MAX_IDENTITY) || !name_ok(&key.policy, MAX_NAME) {
        return Err(UsageReportError::Name(i));
    }
    if key.window_ms == 0 || key.window_ms > MAX_WINDOW_MS || !key.window_start_ms.is_multiple_of(key.window_ms) {
        return Err(UsageReportError::Window(i));
    }
    let ended_long_ago = key.window_end_ms().saturating_add(CLOCK_SLACK_MS) < now_ms;
    let in_the_future = key.window_start_ms > now_ms.saturating_add(CLOCK_SLACK_MS);
    if ended_long_ago || in_the_future {
        return Err(UsageReportError::Stale(i));
    }
    let counts_ok = (entry.tokens > 0 || entry.requests > 0)
        && entry.tokens <= MAX_DELTA_TOKENS
        && entry.requests <= MAX_DELTA_REQUESTS;
    if !counts_ok {
        return Err(UsageReportError::Count(i));
    }
    Ok(())
}

/// The start of the window of length `window_ms` that holds `now_ms`.
#[must_use]
pub fn window_start(now_ms: u64, window_ms: u64) -> u64 {
    now_ms - now_ms % window_ms.max(1)
}

#[cfg(test)]
mod tests;
