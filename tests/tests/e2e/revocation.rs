//! Revocation cuts live tunnels: revoking a person's session, disabling a
//! person or a machine closes their open connections within a second of the
//! admin command returning, while bytes are flowing, and refuses new ones.
//!
//! Connectors also refuse revoked sessions on their own, for a broker that
//! did not; a healthy broker always refuses first, so that decision is
//! covered by the connector's unit tests (connector/src/authorize/tests.rs).
//! Here we check that the revocation reaches the connector.

use std::time::{Duration, Instant};

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, AuditLog, CliOutput, EchoUpstream, Flow, TestEnv, assert_eventually, within};

use crate::login::broker_for_people;

/// The bound, measured from the moment the admin command returns.
const CUT_WITHIN: Duration = Duration::from_secs(1);

/// Runs the admin command while `flow` is moving bytes and asserts the
/// tunnel closes within [`CUT_WITHIN`] of the command returning.
async fn assert_cut_within_a_second(flow: &Flow, admin: impl Future<Output = CliOutput>) {
    let asked = Instant::now();
    let out = admin.await;
    out.expect_success();
    let returned = Instant::now();
    let echoed = flow.echoed();
    let end = within("the live tunnel to close after the revocation", CUT_WITHIN, flow.ended()).await;
    assert!(end.at >= asked, "the tunnel broke before the revocation was asked for: {}", end.how);
    eprintln!(
        "{}: cut {:?} after it returned ({}, {echoed} bytes echoed before)",
        out.program,
        end.at.saturating_duration_since(returned),
        end.how
    );
}

/// Whether the broker audited closing live connections for this revocation target.
fn tunnels_revoked(audit: &AuditLog, field: &str, target: &str) -> bool {
    audit.of_kind("tunnels.revoked").iter().any(|row| {
        row.detail[field].as_array().is_some_and(|ids| ids.iter().any(|id| id == target))
            && row.detail["connections_closed"].as_u64().is_some_and(|n| n >= 1)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_session_cuts_its_live_tunnel_within_a_second_and_refuses_new_ones() {
    let env = TestEnv::new();
    let broker = broker_for_people(&env).await;
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let alice = broker.person("alice").login().await;
    let forward = alice.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    let sessions = broker.active_sessions("alice").await;
    assert_eq!(sessions, [alice.session_id()], "`palisade-broker session list` shows alice's session");
    assert_cut_within_a_second(&flow, broker.cli(&["session", "revoke", &sessions[0]])).await;

    let err = alice.tunnel_exchange("echo", b"one more?").await.expect_err("the session was revoked");
    assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(forward.exchange(b"one more?").await.unwrap_or_default().is_empty(), "a revoked session carried data");
    assert_eventually!(
        forward.process().stderr().contains("revoked"),
        "`palisade connect` should say the session was revoked; stderr:\n{}",
        forward.process().stderr()
    );
    assert_eq!(upstream.accepted(), 1, "no new connection reaches the workload");

    let audit = broker.audit_events().await;
    assert!(tunnels_revoked(&audit, "sessions", alice.session_id()), "{}", audit.summary());
    let refused = audit.of_kind("quic.refused");
    assert!(refused.iter().any(|r| r.detail_str("reason") == Some("session revoked")), "{}", audit.summary());
    assert_eventually!(
        connector.process().stderr().contains("revocations received sessions=1"),
        "the connector should hear of the revoked session; stderr:\n{}",
        connector.process().stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_person_cuts_their_live_tunnel_within_a_second_and_refuses_new_ones() {
    let env = TestEnv::new();
    let broker = broker_for_people(&env).await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let alice = broker.person("alice").login().await;
    let forward = alice.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    assert_cut_within_a_second(&flow, broker.cli(&["user", "disable", "alice"])).await;

    let err = alice.tunnel_exchange("echo", b"one more?").await.expect_err("alice is disabled");
    assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(broker.active_sessions("alice").await.is_empty(), "disabling revokes every session");
    assert_eq!(upstream.accepted(), 1, "no new connection reaches the workload");
    let audit = broker.audit_events().await;
    assert!(tunnels_revoked(&audit, "identities", &alice.identity_id()), "{}", audit.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_machine_cuts_its_live_tunnel_within_a_second_and_refuses_new_ones() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    let spiffe = agent.spiffe_id();
    let id = spiffe.rsplit('/').next().expect("a SPIFFE id has segments");
    assert_cut_within_a_second(&flow, broker.cli(&["identity", "disable", "--id", id])).await;

    let err = agent.tunnel_exchange("echo", b"one more?").await.expect_err("the machine is disabled");
    assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{err}");
    assert!(forward.exchange(b"one more?").await.unwrap_or_default().is_empty(), "a disabled machine carried data");
    assert_eq!(upstream.accepted(), 1, "no new connection reaches the workload");
    let audit = broker.audit_events().await;
    assert!(tunnels_revoked(&audit, "identities", id), "{}", audit.summary());
}

/// revocations outlive restarts. A revoked session and a disabled
/// machine stay refused after the broker and the connector have both been
/// killed and started again, the restarted connector is told of them when
/// it links, and identities that were not revoked carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_hold_after_the_broker_and_the_connector_restart() {
    let env = TestEnv::new();
    let provider = palisade_tests::OidcProvider::shared().await;
    let mut broker = env
        .broker()
        .oidc(&provider)
        .service("echo", "inference")
        .policy("ml-team.cedar", palisade_tests::ALLOW_ML_TEAM_WITH_MFA)
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let mut connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let alice = broker.person("alice").login().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let other = broker.machine("agent-2").group("ml-agents").enroll().await;
    for (who, reply) in
        [("alice", alice.tunnel_exchange("echo", b"a").await), ("agent", agent.tunnel_exchange("echo", b"a").await)]
    {
        assert_eq!(reply.unwrap_or_else(|e| panic!("{who} before: {e}")), b"a");
    }

    broker.cli(&["session", "revoke", alice.session_id()]).await.expect_success();
    let spiffe = agent.spiffe_id();
    let machine_id = spiffe.rsplit('/').next().expect("a SPIFFE id has segments");
    broker.cli(&["identity", "disable", "--id", machine_id]).await.expect_success();
    broker.restart().await;
    connector.restart().await;

    assert_eventually!(
        connector.process().stderr().contains("revocations received sessions=1 identities=1"),
        "the restarted connector should be told of both revocations when it links; stderr:\n{}",
        connector.process().stderr()
    );
    let reply = within("another machine after the restarts", Duration::from_secs(20), async {
        loop {
            match other.tunnel_exchange("echo", b"other").await {
                Ok(reply) => break reply,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert_eq!(reply, b"other", "an identity that was not revoked carries on");
    let accepted = upstream.accepted();
    for (who, result) in
        [("alice", alice.tunnel_exchange("echo", b"x").await), ("agent", agent.tunnel_exchange("echo", b"x").await)]
    {
        let err = result.expect_err(who);
        assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{who}: {err}");
    }
    assert_eq!(upstream.accepted(), accepted, "nothing revoked reaches the workload after the restarts");
}
