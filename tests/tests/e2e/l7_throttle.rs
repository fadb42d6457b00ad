//! Throttles after extraction alerts (`[alerts] throttle_after_alert`): an
//! identity whose prompt sweep raises `alert.model_extraction` is held to
//! the throttle rate on that service by the connector (429 with a JSON body
//! and `Retry-After`) while other identities are served, until an admin
//! clears it with `palisade-broker alerts clear`; both steps are audited.
//! A connector cannot get callers of services it does not serve throttled.

use std::time::{Duration, Instant};

use palisade_proto::control::{ConnectorToBroker, HttpRequestRecord};
use palisade_proto::id::DecisionId;
use palisade_tests::{Broker, Connector, OpenAiUpstream, QuicProbe, TestEnv, assert_eventually, within};
use serde_json::{Value, json};

use crate::l7::{AI_HTTP, http};

const ALERTS: &str = "[alerts]\nthrottle_after_alert = true\nthrottle_requests_per_minute = 1\n";

/// A broker with throttling after alerts on and `llm-prod` an HTTP service.
async fn throttling_broker(env: &TestEnv) -> Broker {
    let mut broker = env
        .broker()
        .service("llm-prod", "inference")
        .policy("ai-http.cedar", AI_HTTP)
        .extra_config(ALERTS)
        .spawn()
        .await;
    broker.cli(&["service", "assign", "llm-prod", "inference", "--protocol", "http"]).await.expect_success();
    broker.restart().await;
    broker
}

/// As `l7::deployment`, with throttling after alerts on.
async fn deployment(env: &TestEnv, upstream: &OpenAiUpstream) -> (Broker, Connector) {
    let broker = throttling_broker(env).await;
    let connector = broker.connector("rack-1").service("llm-prod", upstream.addr()).spawn().await;
    (broker, connector)
}

async fn ask(base: &str, prompt: &str) -> reqwest::Response {
    let body = json!({ "model": "llama-3.1-8b", "messages": [{ "role": "user", "content": prompt }] });
    http().post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap()
}

/// Sweeps distinct prompts until the connector answers 429; returns that answer and how many were served.
async fn sweep_until_throttled(base: &str) -> (reqwest::Response, usize) {
    within("the sweep and its throttle", Duration::from_secs(90), async {
        for i in 0..1_000 {
            let answer = ask(base, &format!("probe {i}")).await;
            if answer.status() == 429 {
                return (answer, i);
            }
            assert_eq!(answer.status(), 200, "request {i}");
        }
        panic!("1000 distinct prompts and never throttled");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_throttles_the_identity_until_an_admin_clears_it() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(5)).await;
    let (broker, _connector) = deployment(&env, &upstream).await;
    let thief = broker.machine("sweeper").group("ml-team").enroll().await;
    let normal = broker.machine("assistant").group("ml-team").enroll().await;
    let (thief_fw, normal_fw) = (thief.connect("llm-prod").await, normal.connect("llm-prod").await);
    let (thief_url, normal_url) = (format!("http://{}", thief_fw.addr()), format!("http://{}", normal_fw.addr()));

    let (refused, served) = sweep_until_throttled(&thief_url).await;
    assert!(served >= 100, "throttled only after the alert, not after {served} requests");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(ask(&thief_url, "once more").await.status(), 429, "still throttled");
    for i in 0..5 {
        assert_eq!(ask(&normal_url, &format!("question {i}")).await.status(), 200, "another identity is served");
    }

    let id = thief.spiffe_id();
    let audit = broker.audit_events().await;
    let applied = audit.of_kind("throttle.applied");
    assert_eq!(applied.len(), 1, "one throttle for the sweeper: {applied:?}");
    assert_eq!(applied[0].actor.as_deref(), Some(id.as_str()));
    assert_eq!(applied[0].subject.as_deref(), Some("llm-prod"));
    assert_eq!(applied[0].detail["requests_per_minute"], 1);
    assert_eventually!(
        broker.audit_events().await.of_kind("connector.http_request").iter().any(|r| {
            r.actor.as_deref() == Some(id.as_str())
                && r.detail["decision"] == "limited"
                && r.detail["reason"].as_str().is_some_and(|s| s.starts_with("throttled after alert"))
        }),
        "the refused request is audited as throttled after alert"
    );
    let listed = broker.cli(&["alerts", "throttles"]).await.expect_success();
    assert!(listed.contains(&id) && listed.contains("llm-prod") && listed.contains("prompt_sweep"), "{listed}");

    // While the broker cannot read its throttles, the connector keeps the ones it knows.
    let db = palisade_tests::open_db(broker.database_url()).await;
    sqlx::query("ALTER TABLE alert_throttles RENAME TO alert_throttles_away").execute(&db).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(ask(&thief_url, "while the broker cannot read").await.status(), 429, "the throttle is kept");
    sqlx::query("ALTER TABLE alert_throttles_away RENAME TO alert_throttles").execute(&db).await.unwrap();

    let cleared_at = Instant::now();
    let out = broker.cli(&["alerts", "clear", &id, "--service", "llm-prod"]).await.expect_success();
    assert!(out.contains("cleared"), "{out}");
    within("served again after the clear", Duration::from_secs(3), async {
        while ask(&thief_url, "after the clear").await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let took = cleared_at.elapsed();
    assert!(took < Duration::from_secs(3), "the clear took {took:?} to apply");

    let audit = broker.audit_events().await;
    let violations = audit.schema_violations();
    assert!(violations.is_empty(), "events off the documented schema: {violations:#?}");
    let cleared = audit.of_kind("throttle.cleared");
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert!(cleared[0].actor.as_deref().is_some_and(|a| a.starts_with("cli:")), "who cleared it: {:?}", cleared[0]);
    assert_eq!(cleared[0].detail["identity"], id.as_str());
    let again = broker.cli(&["alerts", "clear", &id]).await;
    assert!(!again.success() && again.stderr.contains("no throttle holds"), "{again}");
    assert!(broker.cli(&["alerts", "throttles"]).await.expect_success().contains("no identity is throttled"));
}

fn forged_record(identity: &str, service: &str, i: usize) -> ConnectorToBroker {
    let record = HttpRequestRecord {
        request_id: format!("r{i}"),
        identity: identity.into(),
        session: None,
        service: service.into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        decision: "allow".into(),
        reason: None,
        policy_ids: Vec::new(),
        model: Some("llama-3.1-8b".into()),
        logprobs: false,
        stream: false,
        status: 200,
        prompt_tokens: Some(1),
        completion_tokens: Some(1),
        latency_ms: 1,
        bytes_up: 1,
        bytes_down: 1,
        body_sha256: Some(format!("{i:064x}")),
        cut: false,
    };
    ConnectorToBroker::HttpRequest { decision_id: DecisionId::random(), record: Box::new(record) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_get_callers_of_services_it_does_not_serve_throttled() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(5)).await;
    let broker = throttling_broker(&env).await;
    let rogue = broker.connector("rack-2").service("scratch", upstream.addr()).enroll().await;
    let agent = broker.machine("alice-agent").group("ml-team").enroll().await;
    let alice = agent.spiffe_id();
    let probe = QuicProbe::new(broker.quic_addr(), broker.trust_anchors(&agent.trust_domain()));
    let (mut rogue_link, _) = probe.connector_link(&rogue.identity(), &["scratch"]).await;

    for i in 0..120 {
        rogue_link.send(&forged_record(&alice, "llm-prod", i)).await;
    }
    assert_eventually!(
        broker
            .audit_events()
            .await
            .of_kind("alert.model_extraction")
            .iter()
            .any(|r| r.actor.as_deref() == Some(&alice)),
        "the forged sweep still raises the alert (it is audited for the admin to judge)"
    );
    // The throttle would be written right after the alert; give a slow one time anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(broker.audit_events().await.of_kind("throttle.applied").is_empty(), "no throttle from a foreign service");
    let listed = broker.cli(&["alerts", "throttles"]).await.expect_success();
    assert!(listed.contains("no identity is throttled"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_set_through_one_replica_holds_and_is_cleared_through_another() {
    if !palisade_tests::store::runs_only_on(palisade_tests::store::Store::Postgres, "broker replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let (upstream_a, upstream_b) =
        (OpenAiUpstream::spawn(Duration::from_millis(5)).await, OpenAiUpstream::spawn(Duration::from_millis(5)).await);
    let a = throttling_broker(&env).await;
    let b = env
        .broker()
        .service("llm-prod", "inference")
        .policy("ai-http.cedar", AI_HTTP)
        .extra_config(ALERTS)
        .replica_of(&a)
        .spawn()
        .await;
    // Each connector is linked to one replica only: rack-b hears of the throttle from replica B alone.
    let _rack_a = a.connector("rack-a").service("llm-prod", upstream_a.addr()).spawn().await;
    let _rack_b = b.connector("rack-b").service("llm-prod", upstream_b.addr()).spawn().await;
    let thief = a.machine("sweeper").group("ml-team").enroll().await;
    let thief_via_b = thief.copy_pointed_at(&b, "sweeper-via-b");
    let (fw_a, fw_b) = (thief.connect("llm-prod").await, thief_via_b.connect("llm-prod").await);
    let (via_a, via_b) = (format!("http://{}", fw_a.addr()), format!("http://{}", fw_b.addr()));

    sweep_until_throttled(&via_a).await;
    within("throttled through replica B and rack-b", Duration::from_secs(3), async {
        while ask(&via_b, "through b").await.status() != 429 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    b.cli(&["alerts", "clear", &thief.spiffe_id()]).await.expect_success();
    within("served again through both replicas", Duration::from_secs(3), async {
        for base in [&via_a, &via_b] {
            while ask(base, "after the clear").await.status() != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
}
