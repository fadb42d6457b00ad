//! Bulk what-if: which principals gain or lose which services when one
//! policy set replaces another.

use std::fmt;

use crate::{AccessRequest, Action, Decision, Engine, Principal, PrincipalKind, RequestContext};

/// One (principal, service) pair whose answer differs between two sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessChange {
    /// Who.
    pub principal: Principal,
    /// Which service.
    pub service: String,
    /// The answer of the current set.
    pub before: Decision,
    /// The answer of the proposed set.
    pub after: Decision,
}

/// The result of [`compare`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Denied before, allowed after.
    pub gained: Vec<AccessChange>,
    /// Allowed before, denied after.
    pub lost: Vec<AccessChange>,
    /// How many pairs were decided.
    pub pairs: usize,
}

impl Comparison {
    /// Whether no pair changes.
    #[must_use]
    pub fn is_unchanged(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty()
    }
}

/// Decides `action` for every (principal, service) pair under `context`
/// with both engines and reports the pairs whose allow/deny answer differs.
/// Pairs are in principal order, then service order. A change only in
/// *which* policy allows is not reported.
#[must_use]
pub fn compare(
    before: &Engine,
    after: &Engine,
    principals: &[Principal],
    services: &[String],
    action: &Action,
    context: &RequestContext,
) -> Comparison {
    let mut comparison = Comparison::default();
    for principal in principals {
        for service in services {
            let request = AccessRequest { principal, action: action.clone(), service, context };
            let (was, will) = (before.decide(&request), after.decide(&request));
            comparison.pairs += 1;
            let change = || AccessChange {
                principal: principal.clone(),
                service: service.clone(),
                before: was.clone(),
                after: will.clone(),
            };
            match (was.is_allow(), will.is_allow()) {
                (false, true) => comparison.gained.push(change()),
                (true, false) => comparison.lost.push(change()),
                (true, true) | (false, false) => {}
            }
        }
    }
    comparison
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} pairs decided: {} gain access, {} lose access",
            self.pairs,
            self.gained.len(),
            self.lost.len()
        )?;
        for change in &self.gained {
            writeln!(f, "  + {change}")?;
        }
        for change in &self.lost {
            writeln!(f, "  - {change}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AccessChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.principal.kind {
            PrincipalKind::User => "user",
            PrincipalKind::Machine => "machine",
        };
        let why = match (&self.before, &self.after) {
            (Decision::Deny(reason), Decision::Allow(grant)) => {
                format!("was {}, now permitted by {}", reason.code(), grant.policy_ids().join(", "))
            }
            (Decision::Allow(grant), Decision::Deny(reason)) => {
                format!("was permitted by {}, now {reason}", grant.policy_ids().join(", "))
            }
            (Decision::Allow(_), Decision::Allow(_)) | (Decision::Deny(_), Decision::Deny(_)) => String::new(),
        };
        write!(f, "{kind}:{} ({}) -> {}: {why}", self.principal.name, self.principal.id, self.service)
    }
}
