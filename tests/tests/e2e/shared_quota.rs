//! Per-identity quotas shared by the connector replicas of an HTTP service
//! through the broker (#8, #9): an identity that used its token quota
//! through one connector is refused (429) by another within 2 s, on one
//! broker and across broker replicas on PostgreSQL; another identity is
//! not; and a connector cannot write, lower or reset counts it does not own.

use std::time::{Duration, Instant};

use palisade_proto::control::{BrokerToConnector, ConnectorToBroker};
use palisade_proto::usage::{UsageDelta, UsageKey, window_start};
use palisade_tests::{Broker, ControlLink, OpenAiUpstream, QuicProbe, TestEnv, assert_eventually, store, wait_for};
use serde_json::Value;

use crate::l7::http;

/// How soon a count made through one connector holds on another.
const ACROSS_REPLICAS: Duration = Duration::from_secs(2);

/// One chat answer is 18 tokens: one answer uses up a 10-token quota.
const SHARED_QUOTA: &str = r#"@id("connect-inference")
permit (principal, action == Action::"connect", resource in Segment::"inference");

@id("ml-team-token-quota")
@tokens_per_window("10")
@token_window("1h")
permit (principal in Group::"ml-team", action == Action::"http", resource in Segment::"inference")
when { context.method == "POST" && context.path == "/v1/chat/completions" };
"#;

const CHAT: &str = r#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#;

async fn chat(base: &str) -> reqwest::Response {
    let url = format!("{base}/v1/chat/completions");
    http().post(url).header("content-type", "application/json").body(CHAT).send().await.unwrap()
}

async fn http_service_broker(env: &TestEnv) -> Broker {
    let mut broker = env.broker().service("llm-prod", "inference").policy("quota.cedar", SHARED_QUOTA).spawn().await;
    broker.cli(&["service", "assign", "llm-prod", "inference", "--protocol", "http"]).await.expect_success();
    broker.restart().await;
    broker
}

/// The tokens the broker's database holds for an identity, over every connector.
async fn stored_tokens(broker: &Broker, identity: &str) -> i64 {
    let db = palisade_tests::open_db(broker.database_url()).await;
    let sum: Option<i64> =
        sqlx::query_scalar("SELECT CAST(SUM(tokens) AS BIGINT) FROM quota_usage WHERE identity = $1")
            .bind(identity)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    sum.unwrap_or(0)
}

/// Sleeps until `deadline`; says how late it already is if it passed.
async fn at(deadline: Instant, what: &str) {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) => tokio::time::sleep(left).await,
        None => eprintln!("{what}: already {:?} past the deadline", deadline.elapsed()),
    }
}

async fn assert_quota_429(answer: reqwest::Response, what: &str) {
    assert_eq!(answer.status(), 429, "{what}");
    let retry_after: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{what}: Retry-After {retry_after}");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_quota_used_through_one_connector_is_enforced_by_the_other_within_two_seconds() {
    let env = TestEnv::new();
    let (upstream_1, upstream_2) = (
        OpenAiUpstream::spawn(Duration::from_millis(10)).await,
        OpenAiUpstream::spawn(Duration::from_millis(10)).await,
    );
    let broker = http_service_broker(&env).await;
    let mut rack_1 = broker.connector("rack-1").service("llm-prod", upstream_1.addr()).spawn().await;
    let mut rack_2 = broker.connector("rack-2").service("llm-prod", upstream_2.addr()).spawn().await;
    let alice = broker.machine("alice-agent").group("ml-team").enroll().await;
    let bob = broker.machine("bob-agent").group("ml-team").enroll().await;
    let (alice_fw, bob_fw) = (alice.connect("llm-prod").await, bob.connect("llm-prod").await);
    let (alice_url, bob_url) = (format!("http://{}", alice_fw.addr()), format!("http://{}", bob_fw.addr()));

    // One answer (18 tokens) uses up alice's 10-token quota, on whichever connector served it.
    assert_eq!(chat(&alice_url).await.status(), 200);
    let used = Instant::now();
    let via_1 = upstream_1.targets().len() == 1;
    let other_upstream = if via_1 { &upstream_2 } else { &upstream_1 };
    wait_for("the broker to store alice's usage", ACROSS_REPLICAS, || async {
        stored_tokens(&broker, &alice.spiffe_id()).await >= 18
    })
    .await;
    eprintln!("alice's usage reached the broker's database after {:?}", used.elapsed());
    // The connector that counted it stops: the next requests go to the other one.
    if via_1 {
        rack_1.stop().await
    } else {
        rack_2.stop().await
    };

    at(used + ACROSS_REPLICAS, "refused by the other connector").await;
    assert_quota_429(chat(&alice_url).await, "alice, through the connector that never served her").await;
    assert!(other_upstream.targets().is_empty(), "the other connector forwarded alice's request");
    assert_eq!(chat(&bob_url).await.status(), 200, "bob's quota is his own");
    assert_eq!(other_upstream.targets().len(), 1, "bob went through the other connector");
    assert_eventually!(
        broker.audit_events().await.of_kind("connector.http_request").iter().any(|r| {
            r.detail["decision"] == "limited"
                && r.detail["reason"].as_str().is_some_and(|reason| reason.contains("other connectors"))
        }),
        "the limited request's record says other connectors' usage counted; audit:\n{}",
        broker.audit_events().await.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_quota_used_through_one_broker_replica_is_enforced_through_another() {
    if !store::runs_only_on(store::Store::Postgres, "broker replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let (upstream_a, upstream_b) = (
        OpenAiUpstream::spawn(Duration::from_millis(10)).await,
        OpenAiUpstream::spawn(Duration::from_millis(10)).await,
    );
    let a = http_service_broker(&env).await;
    let b =
        env.broker().service("llm-prod", "inference").policy("quota.cedar", SHARED_QUOTA).replica_of(&a).spawn().await;
    // Each connector is linked to one replica only, so the replica decides which connector serves.
    let _rack_a = a.connector("rack-a").service("llm-prod", upstream_a.addr()).spawn().await;
    let _rack_b = b.connector("rack-b").service("llm-prod", upstream_b.addr()).spawn().await;
    let alice = a.machine("alice-agent").group("ml-team").enroll().await;
    let alice_via_b = alice.copy_pointed_at(&b, "alice-via-b");
    let bob = b.machine("bob-agent").group("ml-team").enroll().await;

    let via_a = alice.connect("llm-prod").await;
    assert_eq!(chat(&format!("http://{}", via_a.addr())).await.status(), 200);
    let used = Instant::now();
    assert_eq!(upstream_a.targets().len(), 1, "replica A sends alice to rack-a");
    let via_b = alice_via_b.connect("llm-prod").await;
    at(used + ACROSS_REPLICAS, "refused through replica B").await;
    assert_quota_429(chat(&format!("http://{}", via_b.addr())).await, "alice through replica B and rack-b").await;
    assert!(upstream_b.targets().is_empty(), "rack-b forwarded alice's request");
    let bob_fw = bob.connect("llm-prod").await;
    assert_eq!(chat(&format!("http://{}", bob_fw.addr())).await.status(), 200, "bob's quota is his own");
}

fn usage(service: &str, identity: &str, tokens: u64) -> UsageDelta {
    let now_ms =
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let key = UsageKey {
        service: service.into(),
        identity: identity.into(),
        policy: "ml-team-token-quota".into(),
        window_ms: 3_600_000,
        window_start_ms: window_start(now_ms, 3_600_000),
    };
    UsageDelta { key, tokens, requests: 1 }
}

/// The tokens other connectors counted for `identity`, as the broker tells `link`.
async fn told(link: &mut ControlLink, identity: &str) -> u64 {
    loop {
        if let BrokerToConnector::UsageElsewhere { entries } = link.next().await {
            return entries.iter().filter(|e| e.key.identity == identity).map(|e| e.tokens).sum();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_foreign_usage_reports_change_no_count() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let broker = http_service_broker(&env).await;
    let honest = broker.connector("rack-1").service("llm-prod", upstream.addr()).enroll().await;
    let rogue = broker.connector("rack-2").service("llm-prod", upstream.addr()).enroll().await;
    let (honest_id, rogue_id) = (honest.identity(), rogue.identity());
    let agent = broker.machine("alice-agent").group("ml-team").enroll().await;
    let probe = QuicProbe::new(broker.quic_addr(), broker.trust_anchors(&agent.trust_domain()));
    let (mut watcher, _) = probe.connector_link(&honest_id, &["llm-prod"]).await;
    watcher.send(&ConnectorToBroker::Usage { instance: "watcher".into(), entries: Vec::new() }).await;
    let (mut rogue_link, _) = probe.connector_link(&rogue_id, &["llm-prod"]).await;
    let alice = &agent.spiffe_id();

    rogue_link
        .send(&ConnectorToBroker::Usage { instance: "rogue".into(), entries: vec![usage("llm-prod", alice, 5)] })
        .await;
    assert_eq!(told(&mut watcher, alice).await, 5, "a well-formed report counts");

    let refused = [
        vec![usage("llm-prod", alice, 100), usage("billing", alice, 100)],
        vec![usage("llm-prod", alice, 100); palisade_proto::usage::MAX_ENTRIES + 1],
        vec![usage("llm-prod", alice, 100), usage("llm-prod", alice, 0)],
        {
            let mut unaligned = usage("llm-prod", alice, 100);
            unaligned.key.window_start_ms += 1;
            vec![unaligned]
        },
    ];
    for entries in refused {
        rogue_link.send(&ConnectorToBroker::Usage { instance: "rogue".into(), entries }).await;
    }
    // Another instance's name on the same link is refused too.
    rogue_link
        .send(&ConnectorToBroker::Usage { instance: "watcher".into(), entries: vec![usage("llm-prod", alice, 100)] })
        .await;
    rogue_link
        .send(&ConnectorToBroker::Usage { instance: "rogue".into(), entries: vec![usage("llm-prod", alice, 1)] })
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while told(&mut watcher, alice).await != 6 {
        assert!(Instant::now() < deadline, "the last good report never counted");
    }
    assert_eq!(stored_tokens(&broker, alice).await, 6, "nothing of the refused reports was stored");
}
