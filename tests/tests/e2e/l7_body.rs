//! L7 decisions on what an OpenAI-compatible request asks for: the
//! connector reads the JSON body (model, max_tokens, n, logprobs, stream)
//! and policies decide on it; malformed or ambiguous bodies are refused;
//! token quotas cut responses in progress; upstream connections are reused.

use std::time::{Duration, Instant};

use palisade_tests::openai::{COMPLETION_TOKENS, KeepAlive, PROMPT_TOKENS, raw_json, raw_request};
use palisade_tests::{OpenAiUpstream, TestEnv, assert_eventually, within};
use serde_json::{Value, json};

use super::l7::{AI_HTTP, CHAT, deployment_with, http};

const OPENAI_FIELDS: &str = include_str!("../../../policies/examples/ai-http/openai-fields.cedar");

async fn post(base: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let answer = http()
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a JSON answer ({e}): {text:?}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_fields_decide_requests_and_only_valid_allowed_bodies_reach_the_workload_unchanged() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let policies = [("ai-http.cedar", AI_HTTP), ("openai-fields.cedar", OPENAI_FIELDS)];
    let (broker, _connector) = deployment_with(&env, &upstream, &policies).await;
    let worker = broker.machine("worker").group("ml-team").enroll().await;
    let evaluator = broker.machine("evaluator").group("ml-team").group("eval").enroll().await;
    let (worker_fw, eval_fw) = (worker.connect("llm-prod").await, evaluator.connect("llm-prod").await);
    let (worker_url, eval_url) = (format!("http://{}", worker_fw.addr()), format!("http://{}", eval_fw.addr()));
    let chat = "/v1/chat/completions";

    let denied = [
        (r#"{"model":"llama-3.1-8b","messages":[],"logprobs":true}"#, "application/json"),
        (r#"{"model":"llama-3.1-8b","messages":[],"top_logprobs":2}"#, "text/plain"),
        (r#"{"model":"llama-3.1-70b","messages":[]}"#, "application/json"),
        (r#"{"model":"llama-3.1-8b","messages":[],"max_tokens":5000}"#, "application/json"),
        (r#"{"model":"llama-3.1-8b","messages":[],"max_completion_tokens":10,"max_tokens":5000}"#, "application/json"),
        (r#"{"model":"llama-3.1-8b","messages":[],"n":2}"#, "application/json"),
        (r#"{"messages":[]}"#, "application/json"),
    ];
    for (body, content_type) in denied {
        let (status, answer) = post(&worker_url, chat, content_type, body).await;
        assert_eq!(status, 403, "{body} ({content_type}): {answer}");
        assert_eq!(answer["error"]["type"], "permission_error", "{answer}");
    }
    let malformed = [
        r#"{"model":"llama-3.1-8b","messages":["#,
        r#"{"model":"llama-3.1-8b","n":"5"}"#,
        r#"{"model":"llama-3.1-8b","max_tokens":-1}"#,
        r#"{"model":"llama-3.1-8b","max_tokens":1e99}"#,
        r#"{"model":"llama-3.1-8b","max_tokens":9223372036854775808}"#,
        r#"{"model":"llama-3.1-8b","model":"llama-3.1-70b"}"#,
        r#"{"model":"llama-3.1-8b","logprobs":false,"logprobs":true}"#,
        r#"{"model":"llama-3.1-8b","stream":"false"}"#,
        r#"["model","llama-3.1-8b"]"#,
    ];
    for body in malformed {
        for content_type in ["application/json", "text/plain"] {
            let (status, answer) = post(&eval_url, chat, content_type, body).await;
            assert_eq!(status, 400, "{body} ({content_type}): {answer}");
            assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
        }
    }
    assert!(upstream.for_callers().is_empty(), "a refused request reached the workload: {:?}", upstream.targets());

    // Allowed bodies go through byte for byte: spacing, escapes, key order and unknown fields untouched.
    let odd = "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"caf\\u00e9 \u{1F600}\"} ],\n\t\"model\":\"llama-3.1-8b\", \"max_tokens\": 4096, \"x-extra\": {\"a\": [1, 2.50]} }";
    let with_logprobs = r#"{"model":"llama-3.1-70b","messages":[],"logprobs":true,"top_logprobs":5,"n":3}"#;
    for (base, body) in [(&worker_url, odd), (&worker_url, CHAT), (&eval_url, with_logprobs)] {
        let (status, answer) = post(base, chat, "application/json", body).await;
        assert_eq!(status, 200, "{body}: {answer}");
        let seen = upstream.for_callers().pop().expect("the workload got it");
        assert_eq!(seen.body, body.as_bytes(), "the body reached the workload changed");
    }
    let (status, answer) = post(&worker_url, "/v1/embeddings", "application/json", r#"{"model":"gpt-4o"}"#).await;
    assert_eq!(status, 403, "a model on no list: {answer}");
    let (status, answer) = raw_request(eval_fw.addr(), &raw_json("POST", chat, r#"{"model":"e5-large"} x"#)).await;
    assert_eq!(status, 400, "trailing bytes: {answer}");
    assert_eq!(upstream.for_callers().len(), 3, "{:?}", upstream.targets());

    assert_eventually!(
        broker.audit_events().await.of_kind("connector.http_request").iter().any(|row| {
            row.detail["decision"] == "deny"
                && row.detail["logprobs"] == true
                && row.detail["model"] == "llama-3.1-8b"
                && row.detail["policy_ids"] == json!(["logprobs-only-for-eval"])
        }),
        "the logprobs denial audited with the deciding policy; audit:\n{}",
        broker.audit_events().await.summary()
    );
    let bad_json = |audit: &palisade_tests::AuditLog| {
        audit.of_kind("connector.http_request").iter().filter(|r| r.detail["reason"] == "bad_json").count()
    };
    assert_eventually!(
        bad_json(&broker.audit_events().await) == malformed.len() * 2 + 1,
        "every malformed body audited; audit:\n{}",
        broker.audit_events().await.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_one_tunnel_reuse_one_upstream_connection() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let (broker, _connector) = deployment_with(&env, &upstream, &[("ai-http.cedar", AI_HTTP)]).await;
    let agent = broker.machine("trainer").group("ml-team").enroll().await;
    let forward = agent.connect("llm-prod").await;
    let mut tunnel = KeepAlive::connect(forward.addr()).await;
    let ask = async |tunnel: &mut KeepAlive| {
        let (status, answer) = tunnel.json("POST", "/v1/chat/completions", CHAT).await;
        assert_eq!(status, 200, "{answer}");
    };
    ask(&mut tunnel).await;
    // The tunnel's first request also makes the connector fetch the model list, maybe on a connection of its own.
    assert_eventually!(upstream.own_requests().len() == 1, "the model inventory fetch");
    for _ in 0..3 {
        ask(&mut tunnel).await;
    }
    let connections: Vec<u64> = upstream.for_callers().iter().map(|r| r.connection).collect();
    assert_eq!(connections.len(), 4);
    assert!(
        connections[1..].iter().all(|c| *c == connections[1]),
        "sequential requests, new connections: {connections:?}"
    );
    let mut all: Vec<u64> = upstream.seen().iter().map(|r| r.connection).collect();
    all.sort_unstable();
    all.dedup();
    assert!(all.len() <= 2, "five requests took {} upstream connections", all.len());
    let audit = within("the request records", Duration::from_secs(10), async {
        loop {
            let audit = broker.audit_events().await;
            if audit.of_kind("connector.http_request").len() >= 4 {
                return audit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let tunnels: std::collections::HashSet<_> =
        audit.of_kind("connector.http_request").iter().map(|r| r.decision_id.clone()).collect();
    assert_eq!(tunnels.len(), 1, "the requests went over one tunnel: {tunnels:?}");
}

/// ml-team may use 30 tokens an hour; every JSON answer uses 18.
const QUOTA: &str = r#"@id("connect-inference")
permit (principal, action == Action::"connect", resource in Segment::"inference");

@id("ml-team-token-quota")
@tokens_per_window("30")
@token_window("1h")
permit (principal in Group::"ml-team", action == Action::"http", resource in Segment::"inference")
when { context.method == "POST" && context.path == "/v1/chat/completions" };
"#;

async fn start_stream(base: &str, events: u64, usage_in_every_chunk: bool) -> reqwest::Response {
    let mut body = json!({ "model": "llama-3.1-8b", "stream": true, "max_tokens": events, "messages": [] });
    if usage_in_every_chunk {
        body["stream_options"] = json!({ "include_usage": true, "continuous_usage_stats": true });
    }
    let url = format!("{base}/v1/chat/completions");
    let mut answer = http().post(url).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.chunk().await.unwrap().expect("the stream started");
    answer
}

/// Reads the stream to its end: whether it ended cleanly (`[DONE]`), and when.
async fn drain(answer: &mut reqwest::Response) -> (bool, Instant) {
    let mut text = Vec::new();
    within("the stream to end", Duration::from_secs(20), async {
        loop {
            match answer.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                Ok(None) => return (String::from_utf8_lossy(&text).contains("[DONE]"), Instant::now()),
                Err(_) => return (false, Instant::now()),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_progress_is_cut_when_its_identitys_token_quota_is_exceeded() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(200)).await;
    let (broker, _connector) = deployment_with(&env, &upstream, &[("quota.cedar", QUOTA)]).await;
    let alice = broker.machine("alice-agent").group("ml-team").enroll().await;
    let bob = broker.machine("bob-agent").group("ml-team").enroll().await;
    let (alice_stream_fw, alice_chat_fw) = (alice.connect("llm-prod").await, alice.connect("llm-prod").await);
    let bob_fw = bob.connect("llm-prod").await;
    let alice_chat = format!("http://{}", alice_chat_fw.addr());

    let mut alice_stream = start_stream(&format!("http://{}", alice_stream_fw.addr()), 100, false).await;
    let mut bob_stream = start_stream(&format!("http://{}", bob_fw.addr()), 8, false).await;
    assert_eq!(post(&alice_chat, "/v1/chat/completions", "application/json", CHAT).await.0, 200);
    alice_stream.chunk().await.unwrap().expect("18 of 30 tokens: the stream goes on");
    assert_eq!(post(&alice_chat, "/v1/chat/completions", "application/json", CHAT).await.0, 200);
    let exceeded = Instant::now();
    let (clean, ended) = drain(&mut alice_stream).await;
    assert!(!clean, "the stream ran to its end");
    let cut_after = ended.duration_since(exceeded);
    assert!(cut_after < Duration::from_secs(1), "the stream ran on for {cut_after:?} past the quota");
    assert_eq!(post(&alice_chat, "/v1/chat/completions", "application/json", CHAT).await.0, 429);
    assert!(drain(&mut bob_stream).await.0, "bob's stream is not alice's quota");

    // A stream that reports usage as it goes is cut by its own tokens: 18, 25, then 32 of 30.
    let carol = broker.machine("carol-agent").group("ml-team").enroll().await;
    let carol_fw = carol.connect("llm-prod").await;
    let mut carol_stream = start_stream(&format!("http://{}", carol_fw.addr()), 100, true).await;
    assert!(!drain(&mut carol_stream).await.0, "carol's stream went past her quota");

    assert_eventually!(
        broker
            .audit_events()
            .await
            .of_kind("connector.http_request")
            .iter()
            .filter(|row| row.detail["reason"] == "quota_exceeded_mid_response" && row.detail["cut"] == true)
            .count()
            == 2,
        "both cut streams audited; audit:\n{}",
        broker.audit_events().await.summary()
    );
    let audit = broker.audit_events().await;
    let carol_record = audit
        .of_kind("connector.http_request")
        .into_iter()
        .find(|r| r.actor.as_deref() == Some(carol.spiffe_id().as_str()) && r.detail["cut"] == true)
        .unwrap_or_else(|| panic!("carol's cut stream; audit:\n{}", audit.summary()));
    assert_eq!(carol_record.detail["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(carol_record.detail["completion_tokens"], 3 * COMPLETION_TOKENS, "cut at the first usage past 30");
}
