//! Observability: the broker's and the connector's metrics listeners
//! (`/metrics`, `/healthz`, `/readyz`) after a real flow, and JSON log lines
//! that carry the audit trail's decision id.

use std::net::SocketAddr;

use palisade_telemetry::Series;
use palisade_tests::scrape::{Scrape, http_get, json_log_lines};
use palisade_tests::wait::{POLL_INTERVAL, wait_for_some};
use palisade_tests::{ALLOW_ML_AGENTS, Broker, Connector, DEFAULT_TIMEOUT, EchoUpstream, TestEnv, assert_eventually};

const PAYLOAD: &[u8] = b"forty-two bytes through an observed tunnel";

/// Every series the program declares appears in its scrape with its type.
fn assert_declares(scrape: &Scrape, series: &[Series]) {
    for s in series {
        assert_eq!(scrape.kind(s.name), Some(s.metric.kind()), "{} missing from:\n{}", s.name, scrape.text());
    }
}

async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let scrape = Scrape::from(addr).await;
        if ok(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEFAULT_TIMEOUT:?}; last scrape:\n{}",
            scrape.text()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// What a process started by this test picks with no worker count configured:
/// tokio's variable if this test runs with it, else one less than the CPUs.
fn default_workers() -> usize {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(set) => set.trim().parse().expect("TOKIO_WORKER_THREADS is a number"),
        Err(_) => std::thread::available_parallelism().map_or(1, |cpus| cpus.get().saturating_sub(1).max(1)),
    }
}

fn value(scrape: &Scrape, series: &str) -> f64 {
    scrape.get(series).unwrap_or_else(|| panic!("no {series} in:\n{}", scrape.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_json_logs_follow_a_real_flow() {
    let env = TestEnv::new();
    let mut broker = env
        .broker()
        .service("echo", "inference")
        .service("ledger", "finance")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .metrics()
        .json_logs()
        .run_env(&[("PALISADE_RELAY__WORKER_THREADS", "3".into())])
        .spawn()
        .await;
    let echo = EchoUpstream::spawn().await;
    let mut connector = broker.connector("rack-1").service("echo", echo.addr()).metrics().json_logs().enroll().await;

    // Broker down: the connector is alive but not ready, and says why.
    broker.kill().await;
    connector.start_unlinked().await;
    let connector_metrics = connector.metrics_addr();
    assert_eq!(http_get(connector_metrics, "/healthz").await.status, 200);
    let unready = http_get(connector_metrics, "/readyz").await;
    assert_eq!((unready.status, unready.body.as_str()), (503, "not ready: not linked to a broker\n"));
    assert_eq!(Scrape::from(connector_metrics).await.get("palisade_connector_linked"), Some(0.0));

    broker.restart().await;
    let broker_metrics = broker.metrics_addr();
    assert_eventually!(http_get(connector_metrics, "/readyz").await.status == 200, "the connector links and is ready");
    assert_eq!(http_get(broker_metrics, "/readyz").await, ready());
    assert_eq!(http_get(broker_metrics, "/healthz").await.status, 200);
    scrape_until(broker_metrics, "rack-1's link", |s| {
        s.get(r#"palisade_connector_links{connector="rack-1"}"#) == Some(1.0)
    })
    .await;

    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let echoed = agent.tunnel_exchange("echo", PAYLOAD).await.expect("echo is allowed");
    assert_eq!(echoed, PAYLOAD);
    agent.tunnel_exchange("ledger", b"no").await.expect_err("ledger is in a segment no policy grants");

    let audit = broker.audit_events().await;
    let allowed = audit.last_of_kind("stream.allowed").expect("a stream.allowed event");
    let decision_id = allowed.decision_id.clone().expect("the allowed stream's decision id");
    let deny_reason = audit.last_of_kind("stream.denied").and_then(|r| r.detail_str("reason")).expect("a deny reason");

    let b = scrape_until(broker_metrics, "the ended stream's bytes", |s| {
        s.get(r#"palisade_relay_bytes_total{direction="down"}"#) == Some(PAYLOAD.len() as f64)
            && s.get("palisade_relay_live_tunnels") == Some(0.0)
    })
    .await;
    assert_declares(&b, &palisade_broker::metrics::SERIES);
    assert_eq!(value(&b, r#"palisade_relay_bytes_total{direction="up"}"#), PAYLOAD.len() as f64);
    assert_eq!(value(&b, r#"palisade_relay_stream_opens_total{result="allowed"}"#), 1.0);
    assert_eq!(value(&b, r#"palisade_relay_stream_opens_total{result="denied"}"#), 1.0);
    assert_eq!(value(&b, "palisade_relay_stream_setup_seconds_count"), 1.0);
    assert_eq!(value(&b, r#"palisade_relay_stream_priorities_total{priority="0"}"#), 1.0);
    assert_eq!(value(&b, r#"palisade_relay_stream_setup_seconds_bucket{le="+Inf"}"#), 1.0);
    assert_eq!(value(&b, r#"palisade_decisions_total{point="broker",result="allow",reason="permit"}"#), 1.0);
    let denied = format!(r#"palisade_decisions_total{{point="broker",result="deny",reason="{deny_reason}"}}"#);
    assert_eq!(value(&b, &denied), 1.0);
    assert_eq!(value(&b, r#"palisade_audit_events_total{kind="stream.ended",outcome="success"}"#), 1.0);
    assert!(value(&b, r#"palisade_certificate_issuances_total{result="issued"}"#) >= 1.0, "the agent's certificate");
    assert_eq!(value(&b, "palisade_runtime_worker_threads"), 3.0, "[relay] worker_threads, set from the environment");

    let c = scrape_until(connector_metrics, "the connector's stream", |s| {
        s.get(r#"palisade_connector_streams_total{result="allowed"}"#) == Some(1.0)
    })
    .await;
    assert_declares(&c, &palisade_connector::metrics::SERIES);
    assert_eq!(value(&c, "palisade_connector_linked"), 1.0);
    assert_eq!(value(&c, "palisade_runtime_worker_threads"), default_workers() as f64, "sized from the host");
    assert_eq!(value(&c, r#"palisade_connector_upstream_connect_seconds_count{service="echo"}"#), 1.0);
    assert_eq!(value(&c, r#"palisade_connector_stream_priorities_total{priority="0"}"#), 1.0);
    assert_eq!(
        c.get(r#"palisade_connector_streams_total{result="denied"}"#),
        None,
        "the broker denied, not the connector"
    );

    assert_logs_carry(&broker, &connector, &decision_id).await;
}

fn ready() -> palisade_tests::scrape::HttpAnswer {
    palisade_tests::scrape::HttpAnswer { status: 200, body: "ready\n".into() }
}

/// The broker's "stream allowed" line has the audit event's decision id as a
/// field; the connector's "stream completed" line has it in its span.
/// Informational lines may wait a moment to share a write, so each is awaited.
async fn assert_logs_carry(broker: &Broker, connector: &Connector, decision_id: &str) {
    let line =
        |stderr: String, message: &str| json_log_lines(&stderr).into_iter().find(|l| l["fields"]["message"] == message);
    let allowed = wait_for_some("the broker's \"stream allowed\" line", DEFAULT_TIMEOUT, || async {
        line(broker.process().stderr(), "stream allowed")
    })
    .await;
    assert_eq!(allowed["fields"]["decision_id"], decision_id, "{allowed}");
    let ended = wait_for_some("the broker's \"stream ended\" line", DEFAULT_TIMEOUT, || async {
        line(broker.process().stderr(), "stream ended")
    })
    .await;
    assert_eq!(ended["fields"]["decision_id"], decision_id, "{ended}");
    let completed = wait_for_some("the connector's \"stream completed\" line", DEFAULT_TIMEOUT, || async {
        line(connector.process().stderr(), "stream completed")
    })
    .await;
    assert_eq!(completed["span"]["decision_id"], decision_id, "{completed}");
}

/// A person's sign-in (real provider, software passkey) and an L7 model call
/// show up in the series the operator guide documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_and_model_calls_are_counted() {
    use crate::l7::{AI_HTTP, CHAT, http};

    let env = TestEnv::new();
    let provider = palisade_tests::OidcProvider::shared().await;
    let mut broker = env
        .broker()
        .oidc(&provider)
        .service("llm-prod", "inference")
        .policy("ai-http.cedar", AI_HTTP)
        .metrics()
        .spawn()
        .await;
    broker.cli(&["service", "assign", "llm-prod", "inference", "--protocol", "http"]).await.expect_success();
    broker.restart().await;
    let upstream = palisade_tests::OpenAiUpstream::spawn(std::time::Duration::from_millis(5)).await;
    let connector = broker.connector("rack-1").service("llm-prod", upstream.addr()).metrics().spawn().await;

    let _alice = broker.person("alice").login().await;
    let b = scrape_until(broker.metrics_addr(), "alice's sign-in", |s| {
        s.get(r#"palisade_signins_total{result="success"}"#).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(value(&b, r#"palisade_certificate_issuances_total{result="issued"}"#) >= 1.0, "her certificate");

    let trainer = broker.machine("trainer").group("ml-team").enroll().await;
    let forward = trainer.connect("llm-prod").await;
    let chat = http()
        .post(format!("http://{}/v1/chat/completions", forward.addr()))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("the model answers");
    assert_eq!(chat.status(), 200);
    let c = scrape_until(connector.metrics_addr(), "the model call", |s| {
        s.get(r#"palisade_connector_http_requests_total{service="llm-prod",status="200",decision="allow"}"#)
            == Some(1.0)
    })
    .await;
    let prompt = value(&c, r#"palisade_connector_tokens_total{service="llm-prod",kind="prompt"}"#);
    assert_eq!(prompt, palisade_tests::openai::PROMPT_TOKENS as f64, "tokens from the usage object");
}
