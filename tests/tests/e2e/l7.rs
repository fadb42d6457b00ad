//! L7 (HTTP) services: client → broker → connector → an OpenAI-compatible
//! workload, with a plain HTTP client on the `palisade connect` port. The
//! connector decides every request with the Cedar `http` action on the
//! canonical path, refuses ambiguous paths (Q-10), replaces identity headers
//! with a signed assertion (Q-11), streams SSE unbuffered and cuts a stream
//! when the caller is revoked.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use palisade_tests::openai::{COMPLETION_TOKENS, KeepAlive, PROMPT_TOKENS, raw_json, raw_request};
use palisade_tests::{Broker, Connector, OpenAiUpstream, TestEnv, assert_eventually, within};
use serde_json::{Value, json};

pub(crate) const AI_HTTP: &str = include_str!("../../../policies/examples/ai-http/ai-http.cedar");
pub(crate) const CHAT: &str = r#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#;

/// A broker whose `llm-prod` is an HTTP service (set with `service assign --protocol http`), the ai-http example policies, a connector in front of `upstream`.
async fn deployment(env: &TestEnv, upstream: &OpenAiUpstream) -> (Broker, Connector) {
    deployment_with(env, upstream, &[("ai-http.cedar", AI_HTTP)]).await
}

/// As [`deployment`], with these policy files.
pub(crate) async fn deployment_with(
    env: &TestEnv,
    upstream: &OpenAiUpstream,
    policies: &[(&str, &str)],
) -> (Broker, Connector) {
    let mut builder = env.broker().service("llm-prod", "inference");
    for (name, text) in policies {
        builder = builder.policy(name, text);
    }
    let mut broker = builder.spawn().await;
    // The service catalog lives in the database once seeded; restart so the bundle carries the protocol from the start.
    broker.cli(&["service", "assign", "llm-prod", "inference", "--protocol", "http"]).await.expect_success();
    broker.restart().await;
    let connector = broker.connector("rack-1").service("llm-prod", upstream.addr()).spawn().await;
    (broker, connector)
}

fn http_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A plain-HTTP client (reqwest needs a TLS configuration even when it never uses it).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().build_with_tls(http_tls())
}

trait BuildWithTls {
    fn build_with_tls(self, tls: rustls::ClientConfig) -> reqwest::Client;
}

impl BuildWithTls for reqwest::ClientBuilder {
    fn build_with_tls(self, tls: rustls::ClientConfig) -> reqwest::Client {
        self.use_preconfigured_tls(tls).timeout(Duration::from_secs(30)).build().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_decided_per_path_and_ambiguous_paths_are_refused() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let (broker, _connector) = deployment(&env, &upstream).await;
    let agent = broker.machine("trainer").group("ml-team").enroll().await;
    let forward = agent.connect("llm-prod").await;
    let base = format!("http://{}", forward.addr());

    let chat = http().post(format!("{base}/v1/chat/completions")).header("content-type", "application/json");
    let answer = chat.body(CHAT).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], PROMPT_TOKENS);
    let models = http().get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    for (method, path) in [("POST", "/v1/fine_tuning/jobs"), ("POST", "/api/pull"), ("DELETE", "/api/delete")] {
        let (status, answer) = raw_request(forward.addr(), &raw_json(method, path, "{}")).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer.contains("permission_error"), "{answer}");
    }

    // Q-10: resolved paths are decided (and forwarded) in canonical form...
    let (status, answer) = raw_request(forward.addr(), &raw_json("POST", "/v1/../v1/fine_tuning/jobs", "{}")).await;
    assert_eq!(status, 403, "a dot segment must not dodge the forbid: {answer}");
    let (status, answer) = raw_request(forward.addr(), &raw_json("POST", "//v1//chat/completions", CHAT)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = raw_request(forward.addr(), &raw_json("POST", "/v1/%63hat/completions", CHAT)).await;
    assert_eq!(status, 200);
    // ...ambiguous ones are refused before any policy or workload sees them.
    for target in [
        "/v1/%2e%2e/fine_tuning/jobs",
        "/v1%2Ffine_tuning/jobs",
        "/v1/fine_tuning%2fjobs",
        "/v1/chat/completions;x",
        "/v1/chat/completions/..%5c..%5cfine_tuning",
        "/v1/%00/chat/completions",
        "/v1/%C0%AE%C0%AE/fine_tuning/jobs",
        "/../v1/chat/completions",
    ] {
        let (status, answer) = raw_request(forward.addr(), &raw_json("POST", target, CHAT)).await;
        assert_eq!(status, 400, "{target}: {answer}");
    }
    let long = format!("/v1/chat/completions/{}", "a".repeat(3000));
    assert_eq!(raw_request(forward.addr(), &raw_json("POST", &long, CHAT)).await.0, 400, "overlong path");
    let two_hosts = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\nhost: b\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
        CHAT.len()
    );
    assert_eq!(raw_request(forward.addr(), two_hosts.as_bytes()).await.0, 400, "duplicate Host");
    let twice = r#"{"model":"small","model":"llama-3.1-405b"}"#;
    assert_eq!(raw_request(forward.addr(), &raw_json("POST", "/v1/chat/completions", twice)).await.0, 400);

    // The caller may speak HTTP/2 inside the tunnel; the workload still gets HTTP/1.1.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build_with_tls(http_tls());
    let answer = h2.get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!((answer.version(), answer.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let answer = h2.post(format!("{base}/v1/fine_tuning/jobs")).send().await.unwrap();
    assert_eq!(answer.status(), 403, "HTTP/2 requests are decided like HTTP/1.1 ones");

    assert_eq!(
        upstream.targets(),
        ["/v1/chat/completions", "/v1/models", "/v1/chat/completions", "/v1/chat/completions", "/v1/models"],
        "only allowed requests reach the workload, in canonical form"
    );
    assert_eventually!(
        broker.audit_events().await.of_kind("connector.http_request").iter().any(|row| {
            row.detail["path"] == "/v1/chat/completions"
                && row.detail["model"] == "llama-3.1-8b"
                && row.detail["prompt_tokens"] == PROMPT_TOKENS
                && row.detail["completion_tokens"] == COMPLETION_TOKENS
                && row.detail["decision"] == "allow"
        }),
        "a model-access audit event with model and tokens; audit:\n{}",
        broker.audit_events().await.summary()
    );
    assert_eventually!(
        broker.audit_events().await.of_kind("connector.models").iter().any(|row| {
            row.subject.as_deref() == Some("llm-prod") && row.detail["models"] == json!(["llama-3.1-8b"])
        }),
        "the upstream's models in the inventory; audit:\n{}",
        broker.audit_events().await.summary()
    );
    assert_eq!(upstream.own_requests().len(), 1, "the connector asks for the model list once per link and hour");
    let audit = broker.audit_events().await;
    let denied = audit.of_kind("connector.http_request");
    assert!(
        denied.iter().any(|r| r.detail["path"] == "/v1/fine_tuning/jobs" && r.detail["decision"] == "deny"),
        "{}",
        audit.summary()
    );
}

/// Verifies an ES256 JWT against a JWKS and returns its claims.
fn verify_against_jwks(token: &str, jwks: &Value) -> Value {
    let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let key = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).expect("kid in the JWKS");
    let mut point = vec![4u8];
    point.extend(B64.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(B64.decode(key["y"].as_str().unwrap()).unwrap());
    let (input, signature) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &B64.decode(signature).unwrap())
        .expect("the assertion verifies against the broker's JWKS");
    serde_json::from_slice(&B64.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn jwks(broker: &Broker) -> Value {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(broker.ca_der()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap();
    let url = format!("{}/.well-known/palisade/jwks.json", broker.https_url());
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_are_replaced_by_an_assertion_the_jwks_verifies() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let (broker, _connector) = deployment(&env, &upstream).await;
    let agent = broker.machine("trainer").group("ml-team").enroll().await;
    let forward = agent.connect("llm-prod").await;

    let answer = http()
        .post(format!("http://{}/v1/chat/completions", forward.addr()))
        .header("content-type", "application/json")
        .header("x-palisade-identity", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.")
        .header("x-forwarded-user", "admin")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let request_id = answer.headers()["x-palisade-request-id"].to_str().unwrap().to_owned();
    // The connector's own `/v1/models` inventory fetch may arrive after it: pick the caller's request.
    let seen = upstream
        .seen()
        .into_iter()
        .rfind(|r| r.target == "/v1/chat/completions")
        .expect("the workload got the request");
    assert!(seen.header_values("x-forwarded-user").is_empty(), "a forged identity header reached the workload");
    let tokens = seen.header_values("x-palisade-identity");
    assert_eq!(tokens.len(), 1, "exactly one assertion, the connector's");
    let token = tokens[0];
    let jwks = within("the connector's key in the JWKS", Duration::from_secs(10), async {
        loop {
            let jwks = jwks(&broker).await;
            if jwks["keys"].as_array().is_some_and(|k| !k.is_empty()) {
                return jwks;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let claims = verify_against_jwks(token, &jwks);
    assert_eq!(claims["sub"], agent.spiffe_id());
    assert_eq!(claims["aud"], "llm-prod");
    assert_eq!(claims["segment"], "inference");
    assert_eq!(claims["groups"], json!(["ml-team"]));
    assert_eq!(claims["jti"], request_id.as_str());
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 60, "assertions are short-lived, got {lifetime}s");
    let mut forged = token.split('.').map(str::to_owned).collect::<Vec<_>>();
    forged[1] = B64.encode(
        B64.decode(&forged[1]).unwrap().iter().copied().map(|b| if b == b'm' { b'M' } else { b }).collect::<Vec<_>>(),
    );
    let forged = forged.join(".");
    assert!(std::panic::catch_unwind(|| verify_against_jwks(&forged, &jwks)).is_err(), "a tampered assertion verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_produced_and_revoking_the_caller_cuts_the_stream_within_a_second() {
    let env = TestEnv::new();
    let gap = Duration::from_millis(300);
    let upstream = OpenAiUpstream::spawn(gap).await;
    let (broker, _connector) = deployment(&env, &upstream).await;
    let agent = broker.machine("streamer").group("ml-team").enroll().await;
    let forward = agent.connect("llm-prod").await;
    let url = format!("http://{}/v1/chat/completions", forward.addr());
    let stream_body = |events: u64| {
        json!({ "model": "llama-3.1-8b", "stream": true, "max_tokens": events, "messages": [] }).to_string()
    };

    let asked = Instant::now();
    let mut answer =
        http().post(&url).header("content-type", "application/json").body(stream_body(5)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let first = answer.chunk().await.unwrap().expect("a first event");
    let first_at = asked.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("t0"), "{first:?}");
    let mut rest = Vec::new();
    while let Some(chunk) = answer.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let done_at = asked.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    assert!(
        first_at + gap * 3 < done_at,
        "first event after {first_at:?}, end after {done_at:?}: the stream was buffered"
    );
    assert_eventually!(
        broker
            .audit_events()
            .await
            .of_kind("connector.http_request")
            .iter()
            .any(|row| { row.detail["stream"] == true && row.detail["completion_tokens"] == 5 * COMPLETION_TOKENS }),
        "usage from the last SSE chunk in the audit; audit:\n{}",
        broker.audit_events().await.summary()
    );

    let mut answer =
        http().post(&url).header("content-type", "application/json").body(stream_body(100)).send().await.unwrap();
    answer.chunk().await.unwrap().expect("the long stream started");
    let spiffe = agent.spiffe_id();
    let id = spiffe.rsplit('/').next().unwrap();
    broker.cli(&["identity", "disable", "--id", id]).await.expect_success();
    let disabled = Instant::now();
    let ended = within("the stream to be cut", Duration::from_secs(5), async {
        loop {
            match answer.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Instant::now(),
            }
        }
    })
    .await;
    let cut_after = ended.duration_since(disabled);
    assert!(cut_after < Duration::from_secs(1), "the stream ran on for {cut_after:?} after the revocation");
}

/// The ai-http rules with limits: ml-team has a token quota, ml-burst a request rate.
const LIMITED: &str = r#"@id("connect-inference")
permit (principal, action == Action::"connect", resource in Segment::"inference");

@id("ml-team-token-quota")
@tokens_per_window("30")
@token_window("3s")
permit (principal in Group::"ml-team", action == Action::"http", resource in Segment::"inference")
when { context.method == "POST" && context.path == "/v1/chat/completions" };

@id("ml-burst-rate")
@requests_per_second("1")
@burst("2")
permit (principal in Group::"ml-burst", action == Action::"http", resource in Segment::"inference")
when { context.method == "POST" && context.path == "/v1/chat/completions" };
"#;

async fn chat(base: &str) -> reqwest::Response {
    let url = format!("{base}/v1/chat/completions");
    http().post(url).header("content-type", "application/json").body(CHAT).send().await.unwrap()
}

async fn assert_429(answer: reqwest::Response, what: &str) -> u64 {
    assert_eq!(answer.status(), 429, "{what}");
    let retry_after: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{what}: Retry-After {retry_after}");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{what}: {body}");
    retry_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_quotas_and_request_rates_are_per_identity_and_reset_with_the_window() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let mut broker = env.broker().service("llm-prod", "inference").policy("limited.cedar", LIMITED).spawn().await;
    broker.cli(&["service", "assign", "llm-prod", "inference", "--protocol", "http"]).await.expect_success();
    broker.restart().await;
    let _connector = broker.connector("rack-1").service("llm-prod", upstream.addr()).spawn().await;
    let alice = broker.machine("alice-agent").group("ml-team").enroll().await;
    let bob = broker.machine("bob-agent").group("ml-team").enroll().await;
    let burst = broker.machine("burst-agent").group("ml-burst").enroll().await;
    let (alice_fw, bob_fw, burst_fw) =
        (alice.connect("llm-prod").await, bob.connect("llm-prod").await, burst.connect("llm-prod").await);
    let (alice_url, bob_url, burst_url) = (
        format!("http://{}", alice_fw.addr()),
        format!("http://{}", bob_fw.addr()),
        format!("http://{}", burst_fw.addr()),
    );

    // Each answer uses PROMPT_TOKENS + COMPLETION_TOKENS = 18 tokens of a 30-token quota:
    // the second request crosses the quota, the third is refused.
    assert_eq!(PROMPT_TOKENS + COMPLETION_TOKENS, 18);
    // Quota windows are aligned to the clock (so replicas agree on them):
    // start just after one begins, so both answers fall in the same window.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let next_window = u64::try_from((now_ms / 3_000 + 1) * 3_000 + 50).unwrap();
    palisade_tests::wait_until_clock_passes(std::time::UNIX_EPOCH + Duration::from_millis(next_window)).await;
    let started = Instant::now();
    assert_eq!(chat(&alice_url).await.status(), 200);
    assert_eq!(chat(&alice_url).await.status(), 200);
    let retry_after = assert_429(chat(&alice_url).await, "alice past her token quota").await;
    assert!(retry_after <= 3, "Retry-After {retry_after} is beyond the 3 s window");
    assert_eq!(chat(&bob_url).await.status(), 200, "bob's quota is not alice's");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(200)).await;
    assert_eq!(chat(&alice_url).await.status(), 200, "the window reset");

    // One request per second with a burst of two: the third at once is refused.
    assert_eq!(chat(&burst_url).await.status(), 200);
    assert_eq!(chat(&burst_url).await.status(), 200);
    assert_429(chat(&burst_url).await, "past the burst").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&burst_url).await.status(), 200, "the bucket refilled");

    let forwarded = upstream.targets().len();
    assert_eq!(forwarded, 7, "refused requests never reach the workload");
    assert_eventually!(
        broker
            .audit_events()
            .await
            .of_kind("connector.http_request")
            .iter()
            .filter(|r| r.detail["decision"] == "limited")
            .count()
            == 2,
        "two limited requests audited; audit:\n{}",
        broker.audit_events().await.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sweep_of_distinct_prompts_raises_an_extraction_alert_and_normal_use_does_not() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let (broker, _connector) = deployment(&env, &upstream).await;
    let thief = broker.machine("sweeper").group("ml-team").enroll().await;
    let normal = broker.machine("assistant").group("ml-team").enroll().await;
    let (thief_fw, normal_fw) = (thief.connect("llm-prod").await, normal.connect("llm-prod").await);
    let client = http();
    let ask = |base: String, prompt: String| {
        let body = json!({ "model": "llama-3.1-8b", "messages": [{ "role": "user", "content": prompt }] });
        client.post(format!("{base}/v1/chat/completions")).json(&body).send()
    };

    for i in 0..10 {
        let answer = ask(format!("http://{}", normal_fw.addr()), format!("question {}", i % 3)).await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    within("the sweep", Duration::from_secs(50), async {
        for i in 0..110 {
            let answer = ask(format!("http://{}", thief_fw.addr()), format!("probe {i}")).await.unwrap();
            assert_eq!(answer.status(), 200);
        }
    })
    .await;

    assert_eventually!(
        broker.audit_events().await.of_kind("alert.model_extraction").iter().any(|row| {
            row.actor.as_deref() == Some(thief.spiffe_id().as_str()) && row.detail["rule"] == "prompt_sweep"
        }),
        "a prompt_sweep alert for the sweeper; audit:\n{}",
        broker.audit_events().await.summary()
    );
    let audit = broker.audit_events().await;
    let alerts = audit.of_kind("alert.model_extraction");
    assert_eq!(alerts.len(), 1, "one alert for the sweep, none for normal use: {alerts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_applies_to_the_next_request_on_an_open_keep_alive_tunnel() {
    let env = TestEnv::new();
    let upstream = OpenAiUpstream::spawn(Duration::from_millis(10)).await;
    let (broker, connector) = deployment(&env, &upstream).await;
    let agent = broker.machine("trainer").group("ml-team").enroll().await;
    let forward = agent.connect("llm-prod").await;
    // One connection to the forward is one tunnel; a pooling client might open a second one.
    let mut tunnel = KeepAlive::connect(forward.addr()).await;
    let embedding = json!({ "model": "e5", "input": "hello" }).to_string();
    assert_eq!(tunnel.json("POST", "/v1/embeddings", &embedding).await.0, 200);

    // The tunnel stays allowed (connect), but embeddings are no longer permitted.
    let without_embeddings = AI_HTTP.replace(r#" || context.path == "/v1/embeddings""#, "");
    assert_ne!(without_embeddings, AI_HTTP, "the edit must change the policy");
    broker.write_policy("ai-http.cedar", &without_embeddings);
    broker.reload_policies().await.expect_success();
    // Until the connector holds the new bundle, an embedding may still pass;
    // every one that passed must be one the workload saw, and no other.
    let mut allowed = 1;
    assert_eventually!(
        {
            let status = tunnel.json("POST", "/v1/embeddings", &embedding).await.0;
            allowed += usize::from(status == 200);
            status == 403
        },
        "the new bundle decides the next request on the same tunnel; connector stderr:\n{}",
        connector.process().stderr()
    );
    let (status, answer) = tunnel.json("POST", "/v1/chat/completions", CHAT).await;
    assert_eq!(status, 200, "the tunnel itself still works: {answer}");
    let reached = upstream.targets().iter().filter(|t| *t == "/v1/embeddings").count();
    assert_eq!(reached, allowed, "exactly the embeddings the connector allowed reached the workload");
    let audit = within("the request records", Duration::from_secs(10), async {
        loop {
            let audit = broker.audit_events().await;
            if audit.of_kind("connector.http_request").iter().any(|r| r.detail["path"] == "/v1/chat/completions") {
                return audit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let tunnels: std::collections::HashSet<_> =
        audit.of_kind("connector.http_request").iter().map(|r| r.decision_id.clone()).collect();
    assert_eq!(tunnels.len(), 1, "every request went over one tunnel: {tunnels:?}");
}
