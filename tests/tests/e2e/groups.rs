//! Group membership changed live: an admin takes a machine out of a group
//! and its tunnels that needed the group close within a second, audited
//! with the change, while a tunnel another group allows keeps flowing; a
//! group added by an admin gives nothing the certificate does not carry,
//! but a group that forbids counts at once; bad input changes nothing; and
//! a change through one replica is enforced by another within 2 s.

use std::time::{Duration, Instant};

use palisade_broker::admin::{self, AdminRequest};
use palisade_proto::reject::RejectCode;
use palisade_tests::{DEFAULT_TIMEOUT, EchoUpstream, Flow, TestEnv, store, wait_for, wait_for_some, within};

/// The issue's bound for cutting a tunnel after a change.
const CUT_WITHIN: Duration = Duration::from_secs(1);
/// How soon a change written through one replica holds on another.
const ACROSS_REPLICAS: Duration = Duration::from_secs(2);

/// `ml` reaches the inference segment, `ops` the tools segment, and nobody
/// in `quarantine` reaches anything.
const BY_GROUP: &str = r#"@id("ml-inference")
permit (principal in Group::"ml", action == Action::"connect", resource in Segment::"inference");

@id("ops-tools")
permit (principal in Group::"ops", action == Action::"connect", resource in Segment::"tools");

@id("gpu-inference")
permit (principal in Group::"gpu", action == Action::"connect", resource in Segment::"inference");

@id("quarantine")
forbid (principal in Group::"quarantine", action, resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_machine_from_a_group_cuts_the_tunnels_that_needed_it_within_a_second() {
    let env = TestEnv::new();
    let broker = env
        .broker()
        .service("echo", "inference")
        .service("notes", "tools")
        .policy("groups.cedar", BY_GROUP)
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector =
        broker.connector("rack-1").service("echo", upstream.addr()).service("notes", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml").group("ops").enroll().await;
    let (to_echo, to_notes) = (agent.connect("echo").await, agent.connect("notes").await);
    let (ml_flow, ops_flow) = (Flow::start(to_echo.addr()).await, Flow::start(to_notes.addr()).await);

    let asked = Instant::now();
    let out = broker.cli(&["machine", "groups", "agent-1", "--remove", "ml"]).await;
    assert!(out.expect_success().contains("groups now ops"), "{out}");
    let end = within("the tunnel that needed ml to close", CUT_WITHIN * 3, ml_flow.ended()).await;
    let took = end.at.saturating_duration_since(asked);
    assert!(took <= CUT_WITHIN, "the tunnel closed {took:?} after the change (bound {CUT_WITHIN:?}): {}", end.how);
    let err = agent.tunnel_exchange("echo", b"after").await.expect_err("new connections need ml");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    let before = ops_flow.echoed();
    wait_for("the tunnel ops allows to keep flowing", DEFAULT_TIMEOUT, || async { ops_flow.echoed() > before + 4096 })
        .await;
    assert!(ops_flow.end().is_none(), "{:?}", ops_flow.end().map(|e| e.how));

    let revoked = wait_for_some("a tunnels.revoked event naming the group change", DEFAULT_TIMEOUT, || async {
        broker.audit_events().await.last_of_kind("tunnels.revoked").cloned()
    })
    .await;
    assert_eq!(revoked.detail_str("reason"), Some("groups changed"), "{revoked:?}");
    assert_eq!(revoked.detail["groups_removed"], serde_json::json!(["ml"]), "{revoked:?}");
    assert_eq!(revoked.detail["streams_closed"], 1, "only the echo tunnel: {revoked:?}");
    let audit = broker.audit_events().await;
    let ended = audit
        .of_kind("stream.ended")
        .into_iter()
        .find(|e| e.detail_str("closed_by").is_some())
        .unwrap_or_else(|| panic!("the stream's end names the change:\n{}", audit.summary()));
    assert_eq!(ended.detail_str("closed_by"), Some("groups changed: removed from ml"), "{ended:?}");
    let updated = audit.last_of_kind("identity.updated").unwrap_or_else(|| panic!("{}", audit.summary()));
    assert_eq!(updated.actor.as_deref(), Some("cli"), "{updated:?}");
    assert_eq!(updated.detail["groups_before"], serde_json::json!(["ml", "ops"]), "{updated:?}");
    assert_eq!(updated.detail["groups_after"], serde_json::json!(["ops"]), "{updated:?}");
    let violations = audit.schema_violations();
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_person_from_a_group_cuts_their_tunnel_and_keeps_their_session() {
    let env = TestEnv::new();
    let provider = palisade_tests::OidcProvider::shared().await;
    let broker = env
        .broker()
        .oidc(&provider)
        .service("echo", "inference")
        .policy("ml-team.cedar", palisade_tests::ALLOW_ML_TEAM_WITH_MFA)
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let alice = broker.person("alice").login().await;
    let forward = alice.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    let asked = Instant::now();
    let out = broker.cli(&["user", "groups", "alice@example.com", "--remove", "ml-team"]).await;
    assert!(out.expect_success().contains("groups now none"), "{out}");
    let end = within("alice's tunnel to close", CUT_WITHIN * 3, flow.ended()).await;
    let took = end.at.saturating_duration_since(asked);
    assert!(took <= CUT_WITHIN, "the tunnel closed {took:?} after the change: {}", end.how);
    let err = alice.tunnel_exchange("echo", b"after").await.expect_err("no longer in ml-team");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    assert!(!broker.active_sessions("alice").await.is_empty(), "only the group went, not the session");
    let who = alice.cli(&["whoami", "--json"]).await.expect_success();
    let who: serde_json::Value = serde_json::from_str(&who).unwrap_or_else(|e| panic!("{e}: {who}"));
    assert_eq!(who["groups"], serde_json::json!([]), "the broker shows the groups that count: {who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_group_grants_nothing_the_certificate_lacks_but_forbids_at_once() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("groups.cedar", BY_GROUP).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let outsider = broker.machine("outsider").group("ops").enroll().await;
    let insider = broker.machine("insider").group("ml").enroll().await;
    let forward = insider.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    // `gpu` would permit, but the outsider's certificate does not carry it.
    broker.cli(&["machine", "groups", "outsider", "--add", "gpu"]).await.expect_success();
    let err = outsider.tunnel_exchange("echo", b"let me in").await.expect_err("not with the old certificate");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    let audit = broker.audit_events().await;
    let denied = audit.last_of_kind("stream.denied").unwrap_or_else(|| panic!("{}", audit.summary()));
    assert_eq!(denied.detail["effective_groups"], serde_json::json!(["ops"]), "{denied:?}");
    assert_eq!(upstream.accepted(), 1, "only the insider's flow reached the workload");

    // A group that forbids counts at once, old certificate or not.
    let asked = Instant::now();
    broker.cli(&["machine", "groups", "insider", "--add", "quarantine"]).await.expect_success();
    let end = within("the quarantined machine's tunnel to close", CUT_WITHIN * 3, flow.ended()).await;
    assert!(end.at.saturating_duration_since(asked) <= CUT_WITHIN, "{}", end.how);
    let err = insider.tunnel_exchange("echo", b"still?").await.expect_err("quarantined");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    broker.cli(&["machine", "groups", "insider", "--remove", "quarantine"]).await.expect_success();
    wait_for("access back once out of quarantine", DEFAULT_TIMEOUT, || async {
        insider.tunnel_exchange("echo", b"back").await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_changes_are_refused_clearly_and_change_nothing() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("groups.cedar", BY_GROUP).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml").enroll().await;

    let refusals: [(&[&str], &str); 6] = [
        (&["machine", "groups", "nobody", "--remove", "ml"], "no machine named \"nobody\""),
        (&["machine", "groups", "agent-1", "--add", ""], "must not be empty"),
        (&["machine", "groups", "agent-1", "--add", "ops,admins"], "invalid group name"),
        (&["machine", "groups", "agent-1", "--remove", "ml-agents"], "is not in group \"ml-agents\" (its groups: ml)"),
        (&["machine", "groups", "agent-1"], "nothing to change"),
        (&["machine", "groups", "rack-1", "--add", "ml"], "no machine named \"rack-1\""),
    ];
    for (args, says) in refusals {
        let out = broker.cli(args).await;
        assert!(!out.success() && out.stderr.contains(says), "expected a refusal saying {says:?}:\n{out}");
    }
    let user = broker.cli(&["user", "groups", "nobody@example.com", "--add", "ml"]).await;
    assert!(!user.success() && user.stderr.contains("no user named"), "{user}");

    // The same operation on the admin socket's JSON API.
    let bad = AdminRequest::IdentityGroups {
        role: "connector".into(),
        who: "rack-1".into(),
        add: vec!["ml".into()],
        remove: vec![],
    };
    let refused = admin::request(broker.data_dir(), &bad).await.expect("the admin socket answers");
    assert!(
        !refused.ok && refused.error.as_deref().is_some_and(|e| e.contains("\"user\" or a \"machine\"")),
        "{refused:?}"
    );
    let audit = broker.audit_events().await;
    assert!(!audit.has_kind("identity.updated"), "a refused change is not audited as a change:\n{}", audit.summary());
    agent.tunnel_exchange("echo", b"unchanged").await.expect("the machine keeps its groups");

    let remove = AdminRequest::IdentityGroups {
        role: "machine".into(),
        who: "agent-1".into(),
        add: vec![],
        remove: vec!["ml".into()],
    };
    let done = admin::request(broker.data_dir(), &remove).await.expect("the admin socket answers");
    assert!(done.ok, "{:?}", done.error);
    assert_eq!(done.data.as_ref().map(|d| d["groups"].clone()), Some(serde_json::json!([])), "{done:?}");
    let err = agent.tunnel_exchange("echo", b"after").await.expect_err("out of ml");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    let updated = broker.audit_events().await.last_of_kind("identity.updated").cloned().expect("audited");
    assert_eq!(updated.actor.as_deref(), Some("admin"), "{updated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_removed_through_one_replica_is_enforced_by_another_within_two_seconds() {
    if !store::runs_only_on(store::Store::Postgres, "broker replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let a = env.broker().service("echo", "inference").policy("groups.cedar", BY_GROUP).spawn().await;
    let b = env.broker().service("echo", "inference").policy("groups.cedar", BY_GROUP).replica_of(&a).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = a.connector("rack-1").service("echo", upstream.addr()).also_linked_to(&b).spawn().await;
    let via_b = b.machine("agent-b").group("ml").enroll().await;
    wait_for("B to reach the service", DEFAULT_TIMEOUT, || async {
        via_b.tunnel_exchange("echo", b"via b").await.is_ok_and(|r| r == b"via b")
    })
    .await;
    let forward = via_b.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;

    let asked = Instant::now();
    a.cli(&["machine", "groups", "agent-b", "--remove", "ml"]).await.expect_success();
    let end =
        within("B to cut the tunnel of the machine taken out of ml through A", ACROSS_REPLICAS, flow.ended()).await;
    assert!(end.at >= asked, "the tunnel broke before the change: {}", end.how);
    eprintln!("a group removed through A cut the tunnel through B after {:?}", end.at.saturating_duration_since(asked));
    let refused = via_b.tunnel_exchange("echo", b"again?").await.expect_err("out of ml");
    assert_eq!(refused.reject_code(), Some(RejectCode::Forbidden), "{refused}");
}
