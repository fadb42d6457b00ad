//! The per-request decision: Cedar's `http` action with the method, the
//! canonical path and the JSON body's fields, against the bundle in force at the moment of the
//! request (not the one the tunnel was opened with), then the local
//! guardrails. A revoked caller is refused before Cedar is asked.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_policies::{
    AccessRequest, Action, BodyFields, Decision, DenyReason, Engine, Grant, Principal, PrincipalKind, RequestContext,
};
use palisade_proto::identity::{PeerRole, VerifiedPeer};

use crate::authorize::PolicyState;

/// Who is calling over this tunnel, fixed when the tunnel was authorized.
#[derive(Debug)]
pub(crate) struct Caller {
    pub(crate) peer: VerifiedPeer,
    pub(crate) principal: Principal,
    pub(crate) source_ip: Option<IpAddr>,
}

impl Caller {
    /// `None` for a role that never calls services (the tunnel's own check refuses those first).
    pub(crate) fn new(peer: VerifiedPeer, source_addr: &str) -> Option<Self> {
        let kind = match peer.role() {
            PeerRole::User => PrincipalKind::User,
            PeerRole::Machine => PrincipalKind::Machine,
            PeerRole::Connector | PeerRole::Broker => return None,
        };
        let principal =
            Principal { kind, id: peer.id().id.clone(), name: peer.name().to_owned(), groups: peer.groups().to_vec() };
        let source_ip =
            source_addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| source_addr.parse()).ok();
        Some(Self { peer, principal, source_ip })
    }
}

/// Why one request was refused by policy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestDenied {
    #[error("no valid policy bundle younger than the maximum age")]
    NoBundle,
    #[error("the caller's session or identity was revoked")]
    Revoked,
    #[error("{0}")]
    Policy(DenyReason),
    #[error("local guardrail: {0}")]
    Local(DenyReason),
}

impl RequestDenied {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NoBundle => "no_policy_bundle",
            Self::Revoked => "revoked",
            Self::Policy(reason) => reason.code(),
            Self::Local(_) => "local_guardrail",
        }
    }

    pub(crate) fn policy_ids(&self) -> Vec<String> {
        match self {
            Self::Policy(reason) | Self::Local(reason) => reason.policy_ids().to_vec(),
            Self::NoBundle | Self::Revoked => Vec::new(),
        }
    }
}

/// One request as policies see it.
pub(crate) struct HttpCall<'a> {
    pub(crate) method: &'a str,
    /// The canonical, decoded path.
    pub(crate) path: &'a str,
    /// The fields of the JSON body, if one was read.
    pub(crate) body: Option<BodyFields>,
}

/// Asks the bundle (and the guardrails) whether `caller` may make `call` to `service`.
pub(crate) fn decide(
    policy: &PolicyState,
    caller: &Caller,
    service: &str,
    call: HttpCall<'_>,
    now: SystemTime,
) -> Result<(Grant, Arc<Engine>), RequestDenied> {
    if policy.is_revoked(&caller.peer) {
        return Err(RequestDenied::Revoked);
    }
    let engine = policy.current(now).ok_or(RequestDenied::NoBundle)?;
    let now_unix_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let context = RequestContext {
        source_ip: caller.source_ip,
        now_unix_secs,
        mfa_age_secs: caller.peer.mfa_age_secs(now_unix_secs),
        auth_methods: caller.peer.auth_methods().to_vec(),
        client_version: None,
    };
    let request = AccessRequest {
        principal: &caller.principal,
        action: Action::Http { method: call.method.to_owned(), path: call.path.to_owned(), body: call.body },
        service,
        context: &context,
    };
    let grant = match engine.decide(&request) {
        Decision::Allow(grant) => grant,
        Decision::Deny(reason) => return Err(RequestDenied::Policy(reason)),
    };
    if let Some(Decision::Deny(reason)) = policy.local().map(|local| local.decide(&request)) {
        return Err(RequestDenied::Local(reason));
    }
    Ok((grant, engine))
}

/// Whether the bundle in force says `service` speaks HTTP.
pub(crate) fn is_http_service(policy: &PolicyState, service: &str, now: SystemTime) -> bool {
    policy.current(now).is_some_and(|engine| engine.service(service).is_some_and(|s| s.protocol == "http"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn ai_http_example_policies_pass_their_cases() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/ai-http");
        let files = palisade_policies::read_policy_dir(&dir).expect("the ai-http examples load");
        let reports = palisade_policies::run_case_dir(&files, &dir.join("cases")).expect("cases run");
        let names: Vec<&str> = reports.iter().map(|r| r.file.as_str()).collect();
        assert_eq!(names, ["ai-http.toml", "openai-fields.toml"]);
        for report in &reports {
            assert!(report.outcomes.len() >= 9, "only {} cases in {}", report.outcomes.len(), report.file);
            assert!(report.passed(), "{report}");
        }
    }
}
