//! Dry-run (audit-only) policies: annotated `@mode("dry_run")`, they never
//! change a decision. Each decision also reports which of them matched and
//! what the decision would have been had they been enforced, so an admin can
//! roll a rule out safely: watch the "would deny" events, then enforce it.

use cedar_policy::{Authorizer, Entities, PolicySet, Request};

use crate::{Decision, DenyReason};

/// A decision together with what the dry-run policies made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The decision that counts: dry-run policies never change it.
    pub decision: Decision,
    /// Present when at least one dry-run policy matched the request.
    pub dry_run: Option<DryRun>,
}

/// The dry-run policies that matched one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRun {
    /// Whether the request would be allowed if the dry-run policies were enforced.
    pub would_allow: bool,
    /// The dry-run permits that matched, sorted.
    pub permits: Vec<String>,
    /// The dry-run forbids that matched, sorted.
    pub forbids: Vec<String>,
}

impl DryRun {
    /// `"would_allow"` or `"would_deny"`.
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        if self.would_allow { "would_allow" } else { "would_deny" }
    }

    /// Whether enforcing the dry-run policies would change `decision`.
    #[must_use]
    pub fn changes(&self, decision: &Decision) -> bool {
        self.would_allow != decision.is_allow()
    }

    /// Every matched dry-run policy id, permits first.
    #[must_use]
    pub fn policy_ids(&self) -> Vec<&str> {
        self.permits.iter().chain(&self.forbids).map(String::as_str).collect()
    }
}

/// The dry-run permits and forbids, kept apart: evaluated together, Cedar
/// reports only the forbids when one matches.
pub(crate) struct DryRunSets {
    pub(crate) permits: PolicySet,
    pub(crate) forbids: PolicySet,
}

impl DryRunSets {
    pub(crate) fn is_empty(&self) -> bool {
        self.permits.policies().next().is_none() && self.forbids.policies().next().is_none()
    }

    /// What the dry-run policies make of a request the enforced set decided
    /// as `decision`; `None` if none of them matched. A dry-run policy that
    /// fails to evaluate counts as not matching: it changes nothing anyway.
    pub(crate) fn evaluate(
        &self,
        authorizer: &Authorizer,
        request: &Request,
        entities: &Entities,
        decision: &Decision,
    ) -> Option<DryRun> {
        if self.is_empty() {
            return None;
        }
        let matched = |set: &PolicySet| -> Vec<String> {
            if set.policies().next().is_none() {
                return Vec::new();
            }
            let response = authorizer.is_authorized(request, set, entities);
            let mut ids: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
            ids.sort();
            ids
        };
        let (permits, forbids) = (matched(&self.permits), matched(&self.forbids));
        if permits.is_empty() && forbids.is_empty() {
            return None;
        }
        let would_allow = forbids.is_empty()
            && (decision.is_allow()
                || (matches!(decision, Decision::Deny(DenyReason::NoPolicyPermits)) && !permits.is_empty()));
        Some(DryRun { would_allow, permits, forbids })
    }
}
