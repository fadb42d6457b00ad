//! A bounded cache of verdicts, so a hot client's streams do not each run
//! Cedar.
//!
//! An entry is keyed by everything the verdict depends on: the principal
//! (kind, id, name, groups), the service, the action, and the context
//! fields the policy set can see. The cache belongs to one engine at a time,
//! identified by its version and digest (policy files and service catalog):
//! the first lookup with any other engine empties it, so a verdict can never
//! outlive the version it was computed for.
//!
//! Time is the subtle part: `mfa_age_secs` grows every second, and the hour
//! and day of week change too. The engine reports which context fields its
//! policies mention ([`ContextUse`]); those are part of the key, exactly
//! (a set that tests `mfa_age_secs` gets hits only within the same second).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::request::hour_and_weekday;
use crate::{AccessRequest, Action, Engine, PrincipalKind, Verdict};

/// Which time-dependent context fields a policy set reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextUse {
    /// `context.mfa_age_secs` (or `context has mfa_age_secs`).
    pub mfa_age: bool,
    /// `context.hour` or `context.day_of_week`.
    pub clock: bool,
    /// `context` used in any other way (say, compared whole): every field,
    /// and the exact second, are then part of the key.
    pub whole: bool,
}

impl ContextUse {
    /// Conservatively scans policy texts: every occurrence of the word
    /// `context` that is not `context.<field>` or `context has <field>`
    /// (comments and strings included) counts as a use of the whole record.
    pub(crate) fn scan<'a>(texts: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut usage = Self::default();
        for text in texts {
            let Some(text) = text else {
                usage.whole = true;
                continue;
            };
            let mut from = 0;
            while let Some(at) = text.get(from..).and_then(|rest| rest.find("context")).map(|at| from + at) {
                from = at + "context".len();
                if is_word_byte(text.as_bytes(), at.checked_sub(1)) || is_word_byte(text.as_bytes(), Some(from)) {
                    continue;
                }
                match field_after(&text[from..]) {
                    Some("mfa_age_secs") => usage.mfa_age = true,
                    Some("hour" | "day_of_week") => usage.clock = true,
                    Some(_) => {}
                    None => usage.whole = true,
                }
            }
        }
        usage
    }
}

fn is_word_byte(text: &[u8], at: Option<usize>) -> bool {
    at.and_then(|i| text.get(i)).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// The field named by `.field`, `has field` or `has "field"` at the start of `rest`.
fn field_after(rest: &str) -> Option<&str> {
    let rest = rest.trim_start();
    let name = if let Some(after) = rest.strip_prefix('.') {
        after.trim_start()
    } else {
        let after = rest.strip_prefix("has")?;
        if !after.starts_with(char::is_whitespace) {
            return None;
        }
        let after = after.trim_start();
        after.strip_prefix('"').unwrap_or(after)
    };
    let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: PrincipalKind,
    id: String,
    name: String,
    groups: Vec<String>,
    service: String,
    action: Action,
    auth_methods: Vec<String>,
    source_ip: Option<IpAddr>,
    client_version: Option<String>,
    mfa_age_secs: Option<Option<u64>>,
    clock: Option<(u64, u64)>,
    now: Option<u64>,
}

impl Key {
    fn of(request: &AccessRequest<'_>, usage: ContextUse) -> Self {
        let ctx = request.context;
        let mut groups = request.principal.groups.clone();
        groups.sort();
        groups.dedup();
        let mut auth_methods = ctx.auth_methods.clone();
        auth_methods.sort();
        auth_methods.dedup();
        Self {
            kind: request.principal.kind,
            id: request.principal.id.clone(),
            name: request.principal.name.clone(),
            groups,
            service: request.service.to_owned(),
            action: request.action.clone(),
            auth_methods,
            source_ip: ctx.source_ip,
            client_version: ctx.client_version.clone(),
            mfa_age_secs: (usage.mfa_age || usage.whole).then_some(ctx.mfa_age_secs),
            clock: (usage.clock || usage.whole).then(|| hour_and_weekday(ctx.now_unix_secs)),
            now: usage.whole.then_some(ctx.now_unix_secs),
        }
    }
}

#[derive(Default)]
struct Entries {
    /// The engine the entries were computed with: version and digest.
    generation: Option<(u64, String)>,
    map: HashMap<Key, Verdict>,
}

/// A bounded verdict cache for one engine at a time. Cheap to share.
pub struct DecisionCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl DecisionCache {
    /// A cache holding at most `capacity` verdicts; when full it starts over.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The verdict of `engine` for `request`, from the cache when `engine`
    /// decided the same key before; entries of any other engine are dropped.
    #[must_use]
    pub fn verdict(&self, engine: &Engine, request: &AccessRequest<'_>) -> Verdict {
        let key = Key::of(request, engine.context_use());
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let current =
                entries.generation.as_ref().is_some_and(|(v, d)| *v == engine.version() && d == engine.digest());
            if !current {
                entries.map.clear();
                entries.generation = Some((engine.version(), engine.digest().to_owned()));
            } else if let Some(verdict) = entries.map.get(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return verdict.clone();
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let verdict = engine.verdict(request);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // The engine may have been replaced while Cedar ran: store only
        // under the generation the verdict belongs to.
        if entries.generation.as_ref().is_some_and(|(v, d)| *v == engine.version() && d == engine.digest()) {
            if entries.map.len() >= self.capacity {
                entries.map.clear();
            }
            entries.map.insert(key, verdict.clone());
        }
        verdict
    }

    /// How many lookups were answered from the cache, and how many ran Cedar.
    #[must_use]
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// How many verdicts are held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).map.len()
    }

    /// Whether the cache holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::ContextUse;

    fn scan(text: &str) -> ContextUse {
        ContextUse::scan([Some(text)])
    }

    #[test]
    fn context_fields_are_found_and_anything_else_counts_as_whole() {
        assert_eq!(scan("permit(principal, action, resource);"), ContextUse::default());
        let mfa = scan(
            "permit(principal, action, resource) when { context has mfa_age_secs && context.mfa_age_secs < 900 };",
        );
        assert_eq!(mfa, ContextUse { mfa_age: true, clock: false, whole: false });
        let clock = scan("forbid(principal, action, resource) unless { context . hour >= 8 };");
        assert_eq!(clock, ContextUse { mfa_age: false, clock: true, whole: false });
        assert!(scan("permit(principal, action, resource) when { context == {} };").whole);
        assert!(scan("permit(principal, action, resource) when { context[\"hour\"] == 1 };").whole);
        assert!(!scan("permit(principal, action, resource) when { context.source_ip.isLoopback() };").whole);
        assert!(!scan("permit(principal, action, resource) when { principal.mycontext == \"x\" };").whole);
        assert!(ContextUse::scan([None]).whole);
    }
}
