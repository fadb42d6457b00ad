//! Why a decision came out as it did: which policies permitted or forbade,
//! and, for a deny, how far each permit got.
//!
//! Cedar reports only the policies that applied (`diagnostics().reason()`)
//! and those that failed to evaluate. To say *why* a permit did not apply,
//! every policy is evaluated again in pieces: its scope alone, each scope
//! constraint alone, then the scope with one condition clause at a time.
//! A piece that does not hold is the reason. When no single piece can be
//! blamed, the trace says so ([`PolicyOutcome::NotApplicable`]) instead of
//! guessing.

use std::fmt;

use cedar_policy::{Authorizer, Entities, Policy, PolicyId, PolicySet, Request};
use serde_json::{Value, json};

use crate::{AccessRequest, Decision, Engine, PolicyEffect, PolicyInfo};

/// A decision and the part every policy played in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// What [`Engine::decide`] answers for the request.
    pub decision: Decision,
    /// Every policy of the bundle, in file order.
    pub policies: Vec<PolicyTrace>,
}

/// One policy's part in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTrace {
    /// The policy's id.
    pub id: String,
    /// The file that holds it.
    pub file: String,
    /// 1-based line where it starts.
    pub line: usize,
    /// Permit or forbid.
    pub effect: PolicyEffect,
    /// Annotated `@mode("dry_run")`: reported, never part of the decision.
    pub dry_run: bool,
    /// What happened when it was evaluated.
    pub outcome: PolicyOutcome,
}

/// How one policy fared against the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// The scope and every condition held: the policy applied.
    Applied,
    /// The scope does not cover the request.
    ScopeMismatch {
        /// The constraints that do not hold, in `principal, action, resource` order.
        parts: Vec<ScopePart>,
    },
    /// The scope covers the request but a condition clause does not hold.
    ConditionFailed {
        /// 1-based index of the first clause that fails.
        clause: usize,
        /// The clause as Cedar prints it, e.g. `when { context has mfa_age_secs }`.
        text: String,
    },
    /// The scope covers the request and the policy did not apply, but no
    /// single clause could be blamed.
    NotApplicable,
    /// The policy failed to evaluate (Cedar skips it).
    Error(String),
    /// The request could not be evaluated at all (unknown service, or a
    /// request that does not fit the schema): see the decision.
    NotEvaluated,
}

/// A constraint of a policy's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopePart {
    /// `principal ...`
    Principal,
    /// `action ...`
    Action,
    /// `resource ...`
    Resource,
}

impl ScopePart {
    const ALL: [ScopePart; 3] = [ScopePart::Principal, ScopePart::Action, ScopePart::Resource];

    fn key(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Action => "action",
            Self::Resource => "resource",
        }
    }
}

impl Explanation {
    /// The permits that applied (on an allow, those that granted).
    #[must_use]
    pub fn permitted_by(&self) -> Vec<&str> {
        self.applied(PolicyEffect::Permit)
    }

    /// The forbids that applied.
    #[must_use]
    pub fn forbidden_by(&self) -> Vec<&str> {
        self.applied(PolicyEffect::Forbid)
    }

    /// For a request no permit granted: the permits that came closest.
    /// Those whose scope covers the request (a condition failed) come
    /// first; otherwise those with the fewest scope constraints not holding.
    /// Empty when a permit applied or the request was not evaluated.
    #[must_use]
    pub fn closest_permits(&self) -> Vec<&PolicyTrace> {
        let rank = |trace: &PolicyTrace| match &trace.outcome {
            PolicyOutcome::ConditionFailed { .. } | PolicyOutcome::NotApplicable | PolicyOutcome::Error(_) => Some(0),
            PolicyOutcome::ScopeMismatch { parts } => Some(parts.len()),
            PolicyOutcome::Applied | PolicyOutcome::NotEvaluated => None,
        };
        let permits = || self.policies.iter().filter(|t| t.effect == PolicyEffect::Permit && !t.dry_run);
        if permits().any(|t| t.outcome == PolicyOutcome::Applied) {
            return Vec::new();
        }
        let Some(best) = permits().filter_map(rank).min() else {
            return Vec::new();
        };
        permits().filter(|t| rank(t) == Some(best)).collect()
    }

    /// Enforced policies only: a dry-run policy never permits or forbids.
    fn applied(&self, effect: PolicyEffect) -> Vec<&str> {
        self.policies
            .iter()
            .filter(|t| t.effect == effect && !t.dry_run && t.outcome == PolicyOutcome::Applied)
            .map(|t| t.id.as_str())
            .collect()
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decision {
            Decision::Allow(grant) => writeln!(f, "allow: permitted by {}", grant.policy_ids().join(", "))?,
            Decision::Deny(reason) => writeln!(f, "deny ({}): {reason}", reason.code())?,
        }
        let closest = self.closest_permits();
        if !closest.is_empty() {
            writeln!(f, "closest permits:")?;
            for trace in closest {
                writeln!(f, "  {trace}")?;
            }
        }
        writeln!(f, "every policy:")?;
        for trace in &self.policies {
            writeln!(f, "  {trace}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicyTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            PolicyEffect::Permit => "permit",
            PolicyEffect::Forbid => "forbid",
        };
        write!(f, "{effect} {} ({}:{}): {}", self.id, self.file, self.line, self.outcome)?;
        if self.dry_run {
            f.write_str(" [dry-run: reported only, not part of the decision]")?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied => f.write_str("applies"),
            Self::ScopeMismatch { parts } => {
                let parts: Vec<&str> = parts.iter().map(|p| p.key()).collect();
                write!(f, "does not cover this request ({} constraint does not match)", parts.join(", "))
            }
            Self::ConditionFailed { clause, text } => write!(f, "condition {clause} does not hold: {text}"),
            Self::NotApplicable => f.write_str("scope matches, conditions do not hold (no single clause to blame)"),
            Self::Error(message) => write!(f, "failed to evaluate: {message}"),
            Self::NotEvaluated => f.write_str("not evaluated"),
        }
    }
}

impl Engine {
    /// Decides `request` like [`Engine::decide`] and explains the decision
    /// policy by policy.
    #[must_use]
    pub fn explain(&self, request: &AccessRequest<'_>) -> Explanation {
        let decision = self.decide(request);
        let policies = match self.prepare(request) {
            Ok((cedar_request, entities)) => {
                let probe = Probe { request: &cedar_request, entities: &entities, authorizer: Authorizer::new() };
                self.policies().iter().map(|info| trace(info, self.policy_set(), &probe)).collect()
            }
            Err(_) => self.policies().iter().map(|info| traced(info, PolicyOutcome::NotEvaluated)).collect(),
        };
        Explanation { decision, policies }
    }
}

fn traced(info: &PolicyInfo, outcome: PolicyOutcome) -> PolicyTrace {
    PolicyTrace {
        id: info.id.clone(),
        file: info.file.clone(),
        line: info.line,
        effect: info.effect,
        dry_run: info.dry_run,
        outcome,
    }
}

struct Probe<'a> {
    request: &'a Request,
    entities: &'a Entities,
    authorizer: Authorizer,
}

impl Probe<'_> {
    /// Whether `policy` alone applies: `Ok(true)` if it does, `Err` if it
    /// fails to evaluate.
    fn applies(&self, policy: &Policy) -> Result<bool, String> {
        let mut set = PolicySet::new();
        set.add(policy.clone()).map_err(|e| e.to_string())?;
        let response = self.authorizer.is_authorized(self.request, &set, self.entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(error.to_string());
        }
        Ok(response.diagnostics().reason().next().is_some())
    }
}

fn trace(info: &PolicyInfo, set: &PolicySet, probe: &Probe<'_>) -> PolicyTrace {
    let Some(policy) = set.policy(&PolicyId::new(&info.id)) else {
        return traced(info, PolicyOutcome::NotApplicable);
    };
    let outcome = match probe.applies(policy) {
        Ok(true) => PolicyOutcome::Applied,
        Err(message) => PolicyOutcome::Error(message),
        Ok(false) => why_not(policy, probe),
    };
    traced(info, outcome)
}

/// The policy did not apply: find the scope constraint or clause that fails.
fn why_not(policy: &Policy, probe: &Probe<'_>) -> PolicyOutcome {
    let Ok(json) = policy.to_json() else {
        return PolicyOutcome::NotApplicable;
    };
    let holds = |variant: Option<Policy>| variant.map(|p| probe.applies(&p));
    match holds(variant(&json, &ScopePart::ALL, Some(&[]))) {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            let parts: Vec<ScopePart> = ScopePart::ALL
                .into_iter()
                .filter(|part| matches!(holds(variant(&json, &[*part], Some(&[]))), Some(Ok(false))))
                .collect();
            return if parts.is_empty() {
                PolicyOutcome::NotApplicable
            } else {
                PolicyOutcome::ScopeMismatch { parts }
            };
        }
        Some(Err(message)) => return PolicyOutcome::Error(message),
        None => return PolicyOutcome::NotApplicable,
    }
    let clauses = json.get("conditions").and_then(Value::as_array).map_or(0, Vec::len);
    for clause in 0..clauses {
        match holds(variant(&json, &ScopePart::ALL, Some(&[clause]))) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let text = variant(&json, &[], Some(&[clause])).map_or_else(String::new, |p| clause_text(&p));
                return PolicyOutcome::ConditionFailed { clause: clause + 1, text };
            }
            Some(Err(message)) => return PolicyOutcome::Error(message),
            None => return PolicyOutcome::NotApplicable,
        }
    }
    PolicyOutcome::NotApplicable
}

/// The policy with only the `keep` scope constraints (the others widened
/// to "all") and, if given, only the `clauses` condition clauses.
fn variant(json: &Value, keep: &[ScopePart], clauses: Option<&[usize]>) -> Option<Policy> {
    let mut json = json.clone();
    let object = json.as_object_mut()?;
    object.remove("annotations");
    for part in ScopePart::ALL {
        if !keep.contains(&part) {
            object.insert(part.key().to_owned(), json!({ "op": "All" }));
        }
    }
    if let Some(clauses) = clauses {
        let all = object.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let kept: Vec<Value> =
            all.into_iter().enumerate().filter(|(i, _)| clauses.contains(i)).map(|(_, c)| c).collect();
        object.insert("conditions".to_owned(), Value::Array(kept));
    }
    // The probe's id; the set it goes into holds nothing else.
    Policy::from_json(Some(PolicyId::new("explain-probe")), json).ok()
}

/// `when { ... }` or `unless { ... }` of a policy with an open scope and one clause.
fn clause_text(policy: &Policy) -> String {
    let printed = policy.to_string();
    let start = [printed.find("when"), printed.find("unless")].into_iter().flatten().min().unwrap_or(0);
    let clause = printed[start..].trim().trim_end_matches(';');
    clause.split_whitespace().collect::<Vec<_>>().join(" ")
}
