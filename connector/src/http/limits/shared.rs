//! The part of the quota counts that crosses connector replicas: what this
//! process counted and has not reported yet, and what the broker says the
//! other connector instances counted. Both maps are bounded; when one is
//! full, counts for new keys stay local (the limits get looser, never
//! stricter, and a warning says so).

use std::collections::HashMap;
use std::sync::OnceLock;

use palisade_proto::usage::{CLOCK_SLACK_MS, UsageDelta, UsageElsewhere, UsageKey};

/// The most keys waiting to be reported.
pub(crate) const MAX_PENDING: usize = 4_096;
/// The most keys of other instances' usage kept.
pub(crate) const MAX_ELSEWHERE: usize = 16_384;

/// Tokens and requests in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) tokens: u64,
    pub(crate) requests: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pending: HashMap<UsageKey, Usage>,
    elsewhere: HashMap<UsageKey, Usage>,
    /// Whether a full map was already logged (once per time it fills).
    warned_full: bool,
}

impl Shared {
    /// Counts usage of this instance, to be reported.
    pub(crate) fn count(&mut self, key: UsageKey, usage: Usage) {
        if usage == Usage::default() {
            return;
        }
        let full = self.pending.len() >= MAX_PENDING;
        match self.pending.get_mut(&key) {
            Some(pending) => pending.add(usage),
            None if full => self.warn_full("unreported usage"),
            None => {
                self.pending.insert(key, usage);
            }
        }
    }

    /// What other instances counted for `key`, as last heard.
    pub(crate) fn elsewhere(&self, key: &UsageKey) -> Usage {
        self.elsewhere.get(key).copied().unwrap_or_default()
    }

    /// Takes in the broker's counts of other instances; returns whether any rose.
    ///
    /// Counts only grow within a window, so the larger of what was known and
    /// what arrives wins: an older answer (from another broker replica, or
    /// delayed) never lowers a count.
    pub(crate) fn learn(&mut self, entries: Vec<UsageElsewhere>, now_ms: u64) -> bool {
        self.elsewhere.retain(|key, _| !ended(key, now_ms));
        let mut rose = false;
        for entry in entries {
            if ended(&entry.key, now_ms) {
                continue;
            }
            let usage = Usage { tokens: entry.tokens, requests: entry.requests };
            let full = self.elsewhere.len() >= MAX_ELSEWHERE;
            match self.elsewhere.get_mut(&entry.key) {
                Some(known) => {
                    rose |= usage.tokens > known.tokens || usage.requests > known.requests;
                    known.tokens = known.tokens.max(usage.tokens);
                    known.requests = known.requests.max(usage.requests);
                }
                None if full => self.warn_full("other connectors' usage"),
                None => {
                    rose = true;
                    self.elsewhere.insert(entry.key, usage);
                }
            }
        }
        rose
    }

    /// Up to `max` counts to report, taken out of the pending map; counts
    /// of windows that ended too long ago for the broker to take are dropped.
    pub(crate) fn take_report(&mut self, now_ms: u64, max: usize) -> Vec<UsageDelta> {
        self.pending.retain(|key, _| !ended(key, now_ms));
        let keys: Vec<UsageKey> = self.pending.keys().take(max).cloned().collect();
        if self.pending.len() < MAX_PENDING {
            self.warned_full = false;
        }
        keys.into_iter()
            .filter_map(|key| {
                let usage = self.pending.remove(&key)?;
                Some(UsageDelta { key, tokens: usage.tokens, requests: usage.requests })
            })
            .collect()
    }

    /// A report that could not be sent: its counts wait for the next one.
    pub(crate) fn put_back(&mut self, entries: Vec<UsageDelta>) {
        for entry in entries {
            self.count(entry.key, Usage { tokens: entry.tokens, requests: entry.requests });
        }
    }

    fn warn_full(&mut self, what: &str) {
        if !self.warned_full {
            self.warned_full = true;
            tracing::warn!(
                what,
                "too many identities to share quota counts for; new ones are counted on this connector only for now"
            );
        }
    }
}

/// Whether the window ended long enough ago that nobody asks about it any more.
fn ended(key: &UsageKey, now_ms: u64) -> bool {
    key.window_end_ms().saturating_add(CLOCK_SLACK_MS / 2) < now_ms
}

/// This process's instance id: the broker keeps each instance's counts apart,
/// so a restarted connector's earlier counts are "elsewhere" to it.
pub(crate) fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| uuid::Uuid::new_v4().to_string())
}
