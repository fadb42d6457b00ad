//! Continuous enforcement: a policy change that no longer allows a live
//! tunnel closes it within a second, and the audit trail names the change.

use std::time::{Duration, Instant};

use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, wait_for_some};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ONLY_GPU_TEAM: &str = r#"@id("gpu-team-only")
permit (principal in Group::"gpu-team", action == Action::"connect", resource in Segment::"inference");
"#;

/// The issue's bound for cutting a tunnel after a change.
const CUT_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_live_tunnels_it_no_longer_allows() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;

    let mut tunnel = tokio::net::TcpStream::connect(forward.addr()).await.expect("connect to the forward");
    tunnel.write_all(b"streaming").await.expect("write");
    let mut buf = [0u8; 9];
    tunnel.read_exact(&mut buf).await.expect("the tunnel echoes");

    broker.write_policy("allow.cedar", ONLY_GPU_TEAM);
    broker.reload_policies().await.expect_success();
    let applied = Instant::now();

    // Keep the stream busy; it must end (EOF or reset) within the bound.
    let closed_after = tokio::time::timeout(CUT_WITHIN * 3, async {
        let mut buf = [0u8; 64];
        loop {
            if tunnel.write_all(b"still here?").await.is_err() {
                return applied.elapsed();
            }
            match tunnel.read(&mut buf).await {
                Ok(0) | Err(_) => return applied.elapsed(),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the tunnel was still open 3 s after the policy change");
    assert!(closed_after <= CUT_WITHIN, "the tunnel closed {closed_after:?} after the change (bound {CUT_WITHIN:?})");

    assert!(!forward.echoes(b"a new connection").await, "new connections must be denied by the new set");
    let revoked =
        wait_for_some("a tunnels.revoked event naming the policy version", Duration::from_secs(5), || async {
            broker.audit_events().await.last_of_kind("tunnels.revoked").cloned()
        })
        .await;
    assert_eq!(revoked.detail_str("reason"), Some("policy change"));
    assert!(revoked.detail.get("policy_version").and_then(serde_json::Value::as_u64).is_some(), "{revoked:?}");
    assert_eq!(revoked.detail.get("streams_closed").and_then(serde_json::Value::as_u64), Some(1));
}

/// REV-02: when the broker cannot read the revocation feed, it cannot know
/// whether a session was revoked, so after a short bound it refuses new
/// streams (deny on doubt), and serves again once the feed is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_are_refused_while_the_revocation_feed_cannot_be_read() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"before the outage").await;

    let db = palisade_tests::open_db(broker.database_url()).await;
    sqlx::query("ALTER TABLE revocations RENAME TO revocations_unavailable")
        .execute(&db)
        .await
        .expect("break the feed");
    palisade_tests::wait_for("new streams refused while the feed is unreadable", Duration::from_secs(10), || async {
        !forward.echoes(b"during the outage").await
    })
    .await;
    let err = agent.tunnel_exchange("echo", b"library view").await.expect_err("refused while the feed is unreadable");
    assert_eq!(err.reject_code(), Some(palisade_proto::reject::RejectCode::Stale), "{err}");
    let denied = broker.audit_events().await;
    assert!(
        denied.of_kind("stream.denied").iter().any(|r| r.detail_str("reason") == Some("broker_stale")),
        "{}",
        denied.summary()
    );

    sqlx::query("ALTER TABLE revocations_unavailable RENAME TO revocations").execute(&db).await.expect("restore");
    palisade_tests::wait_for("streams served again once the feed is readable", Duration::from_secs(10), || async {
        forward.echoes(b"after the outage").await
    })
    .await;
}
