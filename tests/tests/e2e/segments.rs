//! Services and segments as data: moving a service to another segment cuts
//! the live tunnels the new placement no longer allows within a second,
//! audited with the move; a service a connector advertises is unreachable
//! until an admin places it; dry-run policies are audited, never enforced;
//! every decision names the policy version that made it.

use std::time::{Duration, Instant};

use palisade_broker::admin::{self, AdminRequest};
use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, assert_eventually, wait_for_some};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The issue's bound for cutting a tunnel after a change.
const CUT_WITHIN: Duration = Duration::from_secs(1);

/// Keeps `tunnel` busy until it ends; returns how long after `since` it did.
async fn closed_after(tunnel: &mut TcpStream, since: Instant) -> Duration {
    tokio::time::timeout(CUT_WITHIN * 3, async {
        let mut buf = [0u8; 64];
        loop {
            if tunnel.write_all(b"still here?").await.is_err() {
                return since.elapsed();
            }
            match tunnel.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the tunnel was still open 3 s after the change")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_service_to_another_segment_closes_its_live_tunnels_within_a_second() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    let mut tunnel = TcpStream::connect(forward.addr()).await.expect("connect to the forward");
    tunnel.write_all(b"streaming").await.expect("write");
    let mut buf = [0u8; 9];
    tunnel.read_exact(&mut buf).await.expect("the tunnel echoes");

    broker.cli(&["segment", "create", "quarantine", "--description", "cut off"]).await.expect_success();
    let moved = broker.cli(&["service", "assign", "echo", "quarantine"]).await;
    let applied = Instant::now();
    assert!(moved.expect_success().contains("is in segment quarantine"), "{moved}");

    let closed = closed_after(&mut tunnel, applied).await;
    assert!(closed <= CUT_WITHIN, "the tunnel closed {closed:?} after the move (bound {CUT_WITHIN:?})");
    let err = agent.tunnel_exchange("echo", b"after the move").await.expect_err("new streams are denied");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");

    let revoked = wait_for_some("a tunnels.revoked event naming the move", Duration::from_secs(5), || async {
        broker.audit_events().await.last_of_kind("tunnels.revoked").cloned()
    })
    .await;
    assert_eq!(revoked.detail_str("reason"), Some("catalog change"), "{revoked:?}");
    assert_eq!(
        revoked.detail_str("change"),
        Some("service echo moved from segment inference to quarantine"),
        "{revoked:?}"
    );
    assert_eq!(revoked.detail.get("streams_closed").and_then(serde_json::Value::as_u64), Some(1));
    let audit = broker.audit_events().await;
    let move_event = audit
        .of_kind("policy.activated")
        .into_iter()
        .find(|row| row.detail_str("change").is_some_and(|c| c.contains("moved")))
        .unwrap_or_else(|| panic!("the move itself is audited:\n{}", audit.summary()));
    assert!(move_event.actor.as_deref().is_some_and(|a| a.starts_with("cli")), "{move_event:?}");

    // Moving it back restores access (the catalog is data, both ways).
    broker.cli(&["service", "assign", "echo", "inference"]).await.expect_success();
    assert_eventually!(forward.echoes(b"back in inference").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_service_is_unreachable_until_an_admin_places_it() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector =
        broker.connector("rack-1").service("echo", upstream.addr()).service("notebook", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    agent.tunnel_exchange("echo", b"known").await.expect("the configured service works");

    let err = agent.tunnel_exchange("notebook", b"new").await.expect_err("no segment: nobody reaches it");
    assert_eq!(err.reject_code(), Some(RejectCode::UnknownService), "{err}");
    assert_eq!(upstream.accepted(), 1, "the unplaced service was never dialled");

    let listed = broker.cli(&["service", "list", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&listed.expect_success()).expect("service list --json is JSON");
    let row = |name: &str| rows.as_array().and_then(|r| r.iter().find(|s| s["name"] == name)).cloned();
    let notebook = row("notebook").unwrap_or_else(|| panic!("the advertised service is in the inventory: {rows}"));
    assert_eq!(notebook["segment"], serde_json::Value::Null, "{notebook}");
    assert_eq!(notebook["reachability"], "unassigned", "{notebook}");
    assert_eq!(notebook["connectors"][0]["name"], "rack-1", "{notebook}");
    let echo = row("echo").expect("echo is listed");
    assert_eq!(echo["reachability"], "reachable", "{echo}");
    assert_eq!(echo["reachable_by"], serde_json::json!(["machine:agent-1"]), "{echo}");

    // The JSON API on the admin socket: the live view (online) and the same changes.
    let live = admin::request(broker.data_dir(), &AdminRequest::Inventory).await.expect("the admin socket answers");
    let live = live.data.unwrap_or_else(|| panic!("inventory data: {:?}", live.error));
    let notebook = live.as_array().and_then(|r| r.iter().find(|s| s["name"] == "notebook")).expect("listed").clone();
    assert_eq!(notebook["online"], true, "rack-1 is connected and serves it: {notebook}");
    let assign =
        AdminRequest::ServiceAssign { service: "notebook".into(), segment: Some("inference".into()), protocol: None };
    let assigned = admin::request(broker.data_dir(), &assign).await.expect("the admin socket answers");
    assert!(assigned.ok, "{:?}", assigned.error);
    assert_eq!(assigned.data.as_ref().map(|d| d["segment"].clone()), Some("inference".into()), "{assigned:?}");
    // The connector enforces too: it needs the new bundle, pushed right after the change.
    assert_eventually!(agent.tunnel_exchange("notebook", b"placed").await.is_ok());
    let unknown =
        AdminRequest::ServiceAssign { service: "notebook".into(), segment: Some("nowhere".into()), protocol: None };
    let refused = admin::request(broker.data_dir(), &unknown).await.expect("the admin socket answers");
    assert!(!refused.ok && refused.error.as_deref().is_some_and(|e| e.contains("nowhere")), "{refused:?}");
}

const AGENTS_WITH_DRY_RUN_FORBID: &str = r#"@id("ml-agents-inference")
permit (principal in Group::"ml-agents", action == Action::"connect", resource in Segment::"inference");

@id("no-interns-planned")
@mode("dry_run")
forbid (principal in Group::"interns", action, resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_forbid_is_audited_as_would_deny_and_never_enforced() {
    let env = TestEnv::new();
    let broker =
        env.broker().service("echo", "inference").policy("allow.cedar", AGENTS_WITH_DRY_RUN_FORBID).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let intern = broker.machine("intern-bot").group("ml-agents").group("interns").enroll().await;
    let reply = intern.tunnel_exchange("echo", b"dry run only").await.expect("a dry-run policy never denies");
    assert_eq!(reply, b"dry run only");

    let audit = broker.audit_events().await;
    let allowed = audit.last_of_kind("stream.allowed").unwrap_or_else(|| panic!("{}", audit.summary()));
    let dry = &allowed.detail["dry_run"];
    assert_eq!(dry["outcome"], "would_deny", "{}", allowed.detail);
    assert_eq!(dry["changes_decision"], true, "{}", allowed.detail);
    assert_eq!(dry["forbids"], serde_json::json!(["no-interns-planned"]), "{}", allowed.detail);
    assert_eq!(allowed.detail["policy_version"], 1, "the seeded store version decided: {}", allowed.detail);
    assert!(allowed.detail["entity_version"].as_u64().is_some(), "{}", allowed.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_broker_decides_with_the_store_version_applied_from_the_command_line() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    agent.tunnel_exchange("echo", b"v1").await.expect("version 1 allows");

    let proposed = broker.data_dir().join("proposed");
    std::fs::create_dir_all(&proposed).unwrap();
    let gpu_only = ALLOW_ML_AGENTS.replace("ml-agents", "gpu-team");
    std::fs::write(proposed.join("allow.cedar"), gpu_only).unwrap();
    let out = broker.cli(&["policy", "apply", proposed.to_str().unwrap(), "--comment", "gpu team only"]).await;
    assert!(out.expect_success().contains("policy version 2 stored and active"), "{out}");

    let err = agent.tunnel_exchange("echo", b"v2").await.expect_err("version 2 denies at once");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    let audit = broker.audit_events().await;
    let denied = audit.last_of_kind("stream.denied").unwrap_or_else(|| panic!("{}", audit.summary()));
    assert_eq!(denied.detail["policy_version"], 2, "the denial names the version that decided: {}", denied.detail);
}
