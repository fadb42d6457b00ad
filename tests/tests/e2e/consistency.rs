//! How current a broker's view of the shared database is, and what it does
//! when it cannot tell (`[consistency]`, `broker/src/sync`): change
//! notifications with a periodic resync that repairs a lost one, strict mode
//! refusing new streams on a replica that lost the database, and best-effort
//! mode going on and saying so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_tests::scrape::{Scrape, http_get};
use palisade_tests::{
    ALLOW_ML_AGENTS, Broker, CutProxy, DEFAULT_TIMEOUT, EchoUpstream, Flow, TestEnv, store, wait_for, within,
};

/// How soon a change written through one replica holds on another.
const ACROSS_REPLICAS: Duration = Duration::from_secs(2);

const FORBID_ML_AGENTS: &str = "@id(\"freeze\")\nforbid (principal in Group::\"ml-agents\", action, resource);\n";

/// The `host:port` of a `postgres://user@host:port/db` URL.
fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().expect("a host");
    host_port.parse().unwrap_or_else(|e| panic!("{host_port}: {e}"))
}

async fn listener_sessions(a: &Broker, b: &Broker) -> i64 {
    let db = palisade_tests::open_db(a.database_url()).await;
    let name = format!("palisade-broker-listen {}", b.quic_addr());
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(name)
        .fetch_one(&db)
        .await
        .expect("count the listener sessions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_are_repaired_and_a_replica_without_its_database_refuses_until_it_caught_up() {
    if !store::runs_only_on(store::Store::Postgres, "notifications between replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let a = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    // B reaches the same database through a proxy the test can cut.
    let proxy = CutProxy::spawn(pg_addr(a.database_url())).await;
    let b_url = a.database_url().replacen(&pg_addr(a.database_url()).to_string(), &proxy.addr().to_string(), 1);
    let b = env
        .broker()
        .service("echo", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .replica_of(&a)
        .database_url(&b_url)
        .extra_config("[consistency]\nmax_staleness = \"1s\"\n")
        .metrics()
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = a.connector("rack-1").service("echo", upstream.addr()).also_linked_to(&b).spawn().await;
    let doomed = b.machine("agent-doomed").group("ml-agents").enroll().await;
    let bystander = b.machine("agent-bystander").group("ml-agents").enroll().await;
    wait_for("B to reach the service", DEFAULT_TIMEOUT, || async {
        bystander.tunnel_exchange("echo", b"via b").await.is_ok_and(|r| r == b"via b")
    })
    .await;

    // B's notification session is terminated: B listens again.
    wait_for("B to listen for changes", DEFAULT_TIMEOUT, || async { listener_sessions(&a, &b).await == 1 }).await;
    let db = palisade_tests::open_db(a.database_url()).await;
    let name = format!("palisade-broker-listen {}", b.quic_addr());
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
        .bind(&name)
        .execute(&db)
        .await
        .expect("terminate B's notification session");
    wait_for("B to listen again", DEFAULT_TIMEOUT, || async { listener_sessions(&a, &b).await == 1 }).await;

    // Notifications are lost (the triggers are off): a policy applied
    // through A still holds on B within 2 s, by the periodic resync.
    let triggers = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::query(sql).execute(&db).await.expect("switch the policy notification trigger") }
    };
    triggers("ALTER TABLE policy_active DISABLE TRIGGER palisade_notify_policy_active").await;
    a.write_policy("freeze.cedar", FORBID_ML_AGENTS);
    a.reload_policies().await.expect_success();
    let code = || async { bystander.tunnel_exchange("echo", b"frozen?").await.err().and_then(|e| e.reject_code()) };
    wait_for("B to enforce the policy applied through A", ACROSS_REPLICAS, || async {
        code().await == Some(palisade_proto::reject::RejectCode::Forbidden)
    })
    .await;
    triggers("ALTER TABLE policy_active ENABLE TRIGGER palisade_notify_policy_active").await;
    a.remove_policy("freeze.cedar");
    a.reload_policies().await.expect_success();
    wait_for("B to lift it again", ACROSS_REPLICAS, || async { code().await.is_none() }).await;

    // B loses its database. A revocation written through A meanwhile cannot
    // reach it; after max_staleness B refuses new streams and says why.
    let doomed_forward = doomed.connect("echo").await;
    let flow = Flow::start(doomed_forward.addr()).await;
    wait_for("the doomed flow through B to carry bytes", DEFAULT_TIMEOUT, || async { flow.echoed() > 0 }).await;
    let held = bystander.connect("echo").await;
    held.assert_echoes(b"before the cut").await;
    proxy.cut();
    let id = doomed.spiffe_id().rsplit('/').next().expect("a SPIFFE id has segments").to_owned();
    a.cli(&["identity", "disable", "--id", &id]).await.expect_success();
    wait_for("B to refuse new streams while it cannot confirm it is current", DEFAULT_TIMEOUT * 2, || async {
        !held.echoes(b"during the cut").await && held.process().stderr().contains("cannot reach its database")
    })
    .await;
    let ready = http_get(b.metrics_addr(), "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("stale"), "{}", ready.body);
    wait_for("B to report itself stale", DEFAULT_TIMEOUT, || async {
        Scrape::from(b.metrics_addr()).await.get("palisade_broker_stale") == Some(1.0)
    })
    .await;

    // The database comes back: B catches up on what it missed (the doomed
    // machine's tunnel through B is cut) and serves again.
    proxy.restore();
    let restored = Instant::now();
    let end = within("B to apply the revocation it missed", DEFAULT_TIMEOUT, flow.ended()).await;
    eprintln!("B applied the missed revocation {:?} after the database came back", end.at - restored);
    wait_for("B to serve new streams again", DEFAULT_TIMEOUT, || async { held.echoes(b"after the cut").await }).await;
    assert_eq!(http_get(b.metrics_addr(), "/readyz").await.status, 200);
    let verify = a.cli(&["audit", "verify"]).await;
    assert!(verify.expect_success().starts_with("audit chain intact"), "{verify}");
}

/// Best effort: a broker that cannot read the revocation feed keeps
/// serving on its last known state, marks those decisions in the audit
/// trail and reports itself stale; strict is covered by
/// `enforcement::new_streams_are_refused_while_the_revocation_feed_cannot_be_read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_mode_keeps_serving_while_stale_and_says_so() {
    let env = TestEnv::new();
    let broker = env
        .broker()
        .service("echo", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .extra_config("[consistency]\nmax_staleness = \"1s\"\nmode = \"best-effort\"\n")
        .metrics()
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"before").await;

    let db = palisade_tests::open_db(broker.database_url()).await;
    sqlx::query("ALTER TABLE revocations RENAME TO revocations_unavailable").execute(&db).await.expect("break");
    wait_for("the broker to report itself stale", DEFAULT_TIMEOUT, || async {
        Scrape::from(broker.metrics_addr()).await.get("palisade_broker_stale") == Some(1.0)
    })
    .await;
    forward.assert_echoes(b"while stale").await;
    assert_eq!(http_get(broker.metrics_addr(), "/readyz").await.status, 200, "best effort stays in rotation");
    let events = broker.audit_events().await;
    let marked = events.of_kind("stream.allowed").iter().any(|e| e.detail.get("stale_view_ms").is_some());
    assert!(marked, "a decision taken while stale is marked in the trail:\n{}", events.summary());

    sqlx::query("ALTER TABLE revocations_unavailable RENAME TO revocations").execute(&db).await.expect("restore");
    wait_for("the broker to be current again", DEFAULT_TIMEOUT, || async {
        Scrape::from(broker.metrics_addr()).await.get("palisade_broker_stale") == Some(0.0)
    })
    .await;
}
