//! Deciding: the broker denies by policy, the connector enforces its own,
//! and policy reloads are atomic (a bad set never replaces a good one).

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, assert_eventually};

const FORBID_INTERNS: &str = r#"@id("no-interns")
forbid (principal in Group::"interns", action, resource);
"#;

/// The connector's own, stricter set: only the GPU team.
const ALLOW_GPU_TEAM_ONLY: &str = r#"@id("gpu-team-only")
permit (
  principal in Group::"gpu-team",
  action == Action::"connect",
  resource in Segment::"inference"
);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_policy_deny_is_clear_to_the_client_audited_and_never_reaches_the_workload() {
    let env = TestEnv::new();
    let broker = env
        .broker()
        .service("echo", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .policy("interns.cedar", FORBID_INTERNS)
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let intern = broker.machine("intern-bot").group("ml-agents").group("interns").enroll().await;

    let forward = intern.connect("echo").await;
    let reply = forward.exchange(b"let me in").await.unwrap_or_default();
    assert!(reply.is_empty(), "a denied connection carried data: {reply:?}");
    assert_eventually!(
        forward.process().stderr().contains("denied by policy"),
        "`palisade connect` should say \"denied by policy\"; stderr:\n{}",
        forward.process().stderr()
    );

    let err = intern.tunnel_exchange("echo", b"let me in").await.expect_err("the library must report the refusal");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    assert!(err.to_string().contains("denied by policy"), "{err}");

    // Without any permit, default deny: the same clear refusal.
    let outsider = broker.machine("web-bot").group("web").enroll().await;
    let err = outsider.tunnel_exchange("echo", b"let me in").await.expect_err("default deny");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");

    assert_eq!(upstream.accepted(), 0, "a denied stream must never dial the workload");
    let audit = broker.audit_events().await;
    let denials = audit.of_kind("stream.denied");
    assert!(denials.len() >= 3, "every denial is audited:\n{}", audit.summary());
    let by_forbid = denials
        .iter()
        .find(|row| row.detail["policy_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == "no-interns")))
        .unwrap_or_else(|| panic!("no stream.denied names the forbid policy:\n{}", audit.summary()));
    assert!(
        by_forbid.detail_str("reason").is_some_and(|r| !r.is_empty()),
        "stream.denied must carry the reason: {}",
        by_forbid.detail
    );
    assert!(!audit.has_kind("stream.allowed"), "nothing was allowed:\n{}", audit.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_stricter_than_the_broker_denies_on_its_own() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker
        .connector("rack-1")
        .service("echo", upstream.addr())
        .local_policy("gpu-team-only.cedar", ALLOW_GPU_TEAM_ONLY)
        .spawn()
        .await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let gpu_agent = broker.machine("gpu-agent").group("ml-agents").group("gpu-team").enroll().await;

    // Both sets allow the GPU agent: the connector is not simply broken.
    let reply = gpu_agent.tunnel_exchange("echo", b"both allow").await.expect("allowed by broker and connector");
    assert_eq!(reply, b"both allow");
    assert_eq!(upstream.accepted(), 1);

    // The broker allows the plain agent, the connector does not.
    let err = agent.tunnel_exchange("echo", b"broker says yes").await.expect_err("the connector must refuse");
    assert_eq!(err.reject_code(), Some(RejectCode::ForbiddenByConnector), "{err}");
    assert_eq!(upstream.accepted(), 1, "the connector must not dial the workload for a stream it denies");

    assert_eventually!(broker.audit_events().await.has_kind("connector.stream_denied"));
    let audit = broker.audit_events().await;
    let denied = audit.last_of_kind("connector.stream_denied").unwrap();
    let decision = denied.decision_id.clone().unwrap_or_else(|| panic!("no decision id: {denied:?}"));
    assert!(
        audit.of_kind("stream.allowed").iter().any(|row| row.decision_id.as_deref() == Some(decision.as_str())),
        "the connector's denial must carry the broker's decision id {decision}:\n{}",
        audit.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_is_refused_on_reload_and_a_valid_change_takes_effect() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"allowed before").await;

    broker.write_policy(
        "broken.cedar",
        "// the next line is missing its resource\npermit (principal, action == Action::\"connect\", );\n",
    );
    let out = broker.reload_policies().await;
    assert_eq!(out.code(), Some(1), "an invalid policy must be refused:\n{out}");
    assert!(out.all_output().contains("broken.cedar:2"), "the error must name the file and line:\n{out}");
    forward.assert_echoes(b"the old set still decides").await;

    // A valid change: only the GPU team keeps access, the ML agents lose it.
    broker.remove_policy("broken.cedar");
    broker.write_policy("allow.cedar", ALLOW_GPU_TEAM_ONLY);
    let out = broker.reload_policies().await;
    let stdout = out.expect_success();
    assert!(stdout.contains("policy version") && stdout.contains("active"), "{out}");
    let accepted = upstream.accepted();
    assert_eventually!(
        agent.tunnel_exchange("echo", b"after reload").await.err().and_then(|e| e.reject_code())
            == Some(RejectCode::Forbidden)
    );
    assert_eq!(upstream.accepted(), accepted, "a denied stream must never dial the workload");

    // SIGHUP reloads too: access comes back.
    broker.write_policy("allow.cedar", ALLOW_ML_AGENTS);
    broker.process().signal("HUP").await;
    assert_eventually!(forward.echoes(b"allowed again").await);

    // Both reloads are in the audit trail, the refused one first.
    let audit = broker.audit_events().await;
    let rejected = audit
        .last_of_kind("policy.rejected")
        .unwrap_or_else(|| panic!("the refused reload must be audited as policy.rejected:\n{}", audit.summary()));
    assert!(
        audit.of_kind("policy.activated").iter().any(|row| row.seq > rejected.seq),
        "the valid reload is audited as policy.activated:\n{}",
        audit.summary()
    );
}
