use palisade_proto::id::DecisionId;
use serde_json::json;

use super::*;
use crate::testing::{TestCa, bundle};
use palisade_policies::PolicyFile;

const AGENT_ID: &str = "5b0c33f4-5f0b-4a8e-9a53-0d7e0c4c2f11";

fn services() -> Vec<ServiceConfig> {
    vec![ServiceConfig { name: "llm-prod".parse().expect("name"), upstream: "127.0.0.1:1".into() }]
}

fn dispatch(chain: Vec<Vec<u8>>, service: &str) -> Dispatch {
    Dispatch {
        decision_id: DecisionId::random(),
        service: service.parse().expect("service"),
        policy_version: 1,
        caller_chain: chain,
        source_addr: "203.0.113.7:50000".into(),
    }
}

struct Fixture {
    ca: TestCa,
    policy: PolicyState,
    services: Vec<ServiceConfig>,
}

impl Fixture {
    fn new() -> Self {
        Self { ca: TestCa::new(), policy: PolicyState::default(), services: services() }
    }

    fn agent_chain(&self) -> Vec<Vec<u8>> {
        vec![self.ca.issue(PeerRole::Machine, AGENT_ID, "summariser", &["ml-agents"]).der.to_vec()]
    }

    fn apply(&self, bundle: serde_json::Value) -> Result<BundleApplied, BundleError> {
        let verified = self
            .ca
            .sign_bundle(&bundle, SystemTime::now())
            .verify(std::slice::from_ref(&self.ca.der))
            .expect("verifies");
        self.policy.apply(&verified, SystemTime::now())
    }

    fn check(&self, d: &Dispatch) -> Result<Authorized<'_>, Denied> {
        let (engine, local) = (self.policy.current(SystemTime::now()), self.policy.local());
        let engines = Engines {
            bundle: engine.as_deref(),
            local: local.as_deref(),
            revoked: Some(&self.policy),
            cache: Some(self.policy.decisions()),
        };
        authorize(d, &Callers::new(self.ca.trust()), engines, &self.services, SystemTime::now())
    }
}

#[test]
fn a_machine_in_a_permitted_group_is_allowed() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let ok = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect("allowed");
    assert_eq!(ok.grant.service(), "llm-prod");
    assert_eq!(ok.grant.policy_ids(), ["agents"]);
    assert_eq!(ok.peer.id().id, AGENT_ID);
    assert_eq!(ok.upstream.upstream, "127.0.0.1:1");
}

#[test]
fn denied_when_the_bundle_does_not_permit() {
    let f = Fixture::new();
    f.apply(bundle(1, "someone-else")).expect("bundle");
    let denied = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect_err("denied");
    assert_eq!(denied.code(), "no_policy");
}

#[test]
fn denied_when_no_bundle_has_arrived() {
    let f = Fixture::new();
    let denied = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect_err("denied");
    assert!(matches!(denied, Denied::NoBundle), "{denied:?}");
}

#[test]
fn denied_for_a_certificate_from_another_ca() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let other = TestCa::new();
    let chain = vec![other.issue(PeerRole::Machine, AGENT_ID, "summariser", &["ml-agents"]).der.to_vec()];
    let denied = f.check(&dispatch(chain, "llm-prod")).expect_err("denied");
    assert!(matches!(denied, Denied::Identity(VerifyPeerError::Chain(_))), "{denied:?}");
}

#[test]
fn denied_for_a_connector_certificate_as_caller() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let chain = vec![f.ca.issue(PeerRole::Connector, AGENT_ID, "gpu-rack", &["ml-agents"]).der.to_vec()];
    let denied = f.check(&dispatch(chain, "llm-prod")).expect_err("denied");
    assert!(matches!(denied, Denied::Identity(VerifyPeerError::WrongRole { .. })), "{denied:?}");
    assert_eq!(denied.code(), "identity_rejected");
}

#[test]
fn denied_for_a_service_this_connector_does_not_serve() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let denied = f.check(&dispatch(f.agent_chain(), "vector-db")).expect_err("denied");
    assert!(matches!(denied, Denied::NotServed(_)), "{denied:?}");
}

#[test]
fn a_rollback_bundle_is_refused_and_the_current_one_stays() {
    let f = Fixture::new();
    f.apply(bundle(5, "ml-agents")).expect("bundle");
    let err = f.apply(bundle(4, "someone-else")).expect_err("rollback");
    assert!(matches!(err, BundleError::Rollback { offered: 4, current: 5 }), "{err}");
    assert_eq!(f.policy.current(SystemTime::now()).map(|e| e.version()), Some(5));
    assert!(f.check(&dispatch(f.agent_chain(), "llm-prod")).is_ok());
}

#[test]
fn an_invalid_bundle_is_refused_and_the_current_one_stays() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let mut broken = bundle(2, "ml-agents");
    broken["files"][0]["text"] = json!("permit (principal, action, resource) when { nonsense };");
    assert!(matches!(f.apply(broken), Err(BundleError::Invalid { version: 2, .. })));
    let mut unknown_field = bundle(3, "ml-agents");
    unknown_field["admin"] = json!(true);
    assert!(matches!(f.apply(unknown_field), Err(BundleError::Malformed(_))));
    assert_eq!(f.policy.current(SystemTime::now()).map(|e| e.version()), Some(1));
}

#[test]
fn newer_bundles_replace_and_the_same_bundle_is_a_no_op() {
    let f = Fixture::new();
    assert_eq!(f.apply(bundle(1, "ml-agents")).expect("v1"), BundleApplied::Installed { version: 1, previous: None });
    assert_eq!(f.apply(bundle(1, "ml-agents")).expect("v1 again"), BundleApplied::Unchanged { version: 1 });
    assert!(matches!(f.apply(bundle(1, "someone-else")), Err(BundleError::Conflict { version: 1 })));
    assert_eq!(
        f.apply(bundle(2, "someone-else")).expect("v2"),
        BundleApplied::Installed { version: 2, previous: Some(1) }
    );
    assert!(f.check(&dispatch(f.agent_chain(), "llm-prod")).is_err());
}

#[test]
fn source_addresses_parse() {
    assert_eq!(source_ip("203.0.113.7:443"), "203.0.113.7".parse().ok());
    assert_eq!(source_ip("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
    assert_eq!(source_ip("2001:db8::1"), "2001:db8::1".parse().ok());
    assert_eq!(source_ip("somewhere"), None);
}

fn guardrail(text: &str) -> Vec<PolicyFile> {
    vec![PolicyFile { name: "guardrail.cedar".into(), text: text.into() }]
}

#[test]
fn local_guardrails_deny_what_the_bundle_allows() {
    let mut f = Fixture::new();
    f.policy = PolicyState::with_local(guardrail(
        "@id(\"only-evals\") permit (principal in Group::\"evals\", action, resource in Segment::\"inference\");",
    ))
    .expect("guardrails load");
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let denied = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect_err("denied by the guardrail");
    assert!(matches!(denied, Denied::Local(_)), "{denied:?}");
    assert_eq!(denied.code(), "local_guardrail");
}

#[test]
fn local_guardrails_that_permit_leave_the_bundle_in_charge() {
    let mut f = Fixture::new();
    f.policy = PolicyState::with_local(guardrail(
        "@id(\"agents-ok\") permit (principal in Group::\"ml-agents\", action, resource);",
    ))
    .expect("guardrails load");
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    assert!(f.check(&dispatch(f.agent_chain(), "llm-prod")).is_ok());
    f.apply(bundle(2, "someone-else")).expect("bundle");
    assert!(matches!(f.check(&dispatch(f.agent_chain(), "llm-prod")), Err(Denied::Policy(_))));
}

#[test]
fn invalid_guardrails_are_refused_at_startup() {
    assert!(PolicyState::with_local(guardrail("permit (principal, action, resource) when { nonsense };")).is_err());
}

#[test]
fn revoked_identities_are_denied_even_when_the_bundle_allows() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    assert!(f.check(&dispatch(f.agent_chain(), "llm-prod")).is_ok());
    f.policy.revoke(Vec::new(), vec![AGENT_ID.to_owned()]);
    let denied = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect_err("revoked");
    assert!(matches!(denied, Denied::Revoked), "{denied:?}");
    assert_eq!(denied.code(), "revoked");
}

#[tokio::test]
async fn a_waiting_tunnel_wakes_on_its_own_revocation_only() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("bundle");
    let peer = f.check(&dispatch(f.agent_chain(), "llm-prod")).expect("allowed").peer;
    let waiting = f.policy.revoked(&peer);
    tokio::pin!(waiting);
    let quiet = std::time::Duration::from_millis(50);
    assert!(tokio::time::timeout(quiet, &mut waiting).await.is_err(), "nothing revoked yet");
    f.policy.revoke(vec!["another-session".to_owned()], vec!["another-identity".to_owned()]);
    assert!(tokio::time::timeout(quiet, &mut waiting).await.is_err(), "someone else was revoked");
    f.policy.revoke(Vec::new(), vec![AGENT_ID.to_owned()]);
    tokio::time::timeout(std::time::Duration::from_secs(5), &mut waiting).await.expect("woken by the revocation");
    let late = tokio::time::timeout(quiet, f.policy.revoked(&peer)).await;
    assert!(late.is_ok(), "a tunnel that starts watching after the revocation is cut at once");
}

#[test]
fn a_cached_allow_never_outlives_its_bundle() {
    let f = Fixture::new();
    f.apply(bundle(1, "ml-agents")).expect("v1");
    let d = dispatch(f.agent_chain(), "llm-prod");
    f.check(&d).expect("allowed by v1");
    f.check(&d).expect("allowed by v1 again");
    let (hits, _) = f.policy.decisions().stats();
    assert!(hits >= 1, "the second stream was answered from the cache");
    // v2 grants another group: the cached allow of v1 must not be used.
    f.apply(bundle(2, "interns")).expect("v2");
    assert!(matches!(f.check(&d), Err(Denied::Policy(_))), "v2 decides, not v1's cached verdict");
}
