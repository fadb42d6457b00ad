//! Every event class of the audit catalogue, produced by real flows against
//! a real broker and validated against `docs/audit-events.schema.json`:
//! sign-in (success and failure), stream allow / deny, tunnel end with bytes
//! and duration, admin changes, the connector's lifecycle and alerts (a burst
//! of failed sign-ins, a connector offline past the threshold and back).
//! Normal sign-ins raise no new-device or new-address alert.

use std::time::{Duration, Instant};

use palisade_tests::{ALLOW_ML_AGENTS, Browser, EchoUpstream, OidcProvider, TestEnv, assert_eventually};

/// Waits up to `secs` for the audit trail to hold an event of `kind`.
async fn wait_for_kind(broker: &palisade_tests::Broker, kind: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !broker.audit_events().await.has_kind(kind) {
        assert!(Instant::now() < deadline, "no {kind} within {secs} s:\n{}", broker.audit_events().await.summary());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_class_from_real_flows_matches_the_documented_schema() {
    let env = TestEnv::new();
    let provider = OidcProvider::shared().await;
    let mut broker =
        env.broker().oidc(&provider).service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    // A short offline threshold, so the connector alert fires within the test.
    let config_path = broker.data_dir().join("broker.toml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str("\n[audit]\nconnector_offline_alert = \"1s\"\ncheckpoint_interval = \"2s\"\n");
    std::fs::write(&config_path, config).unwrap();
    broker.restart().await;

    let upstream = EchoUpstream::spawn().await;
    let mut connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let intruder = broker.machine("intruder").group("web").enroll().await;
    assert_eventually!(agent.tunnel_exchange("echo", b"bytes through the tunnel").await.is_ok());
    intruder.tunnel_exchange("echo", b"denied").await.expect_err("the intruder is denied");

    // People: a normal first sign-in each (no alert), and failed sign-ins.
    let alice = broker.person("alice").login().await;
    let _bob = broker.person("bob").login().await;
    let browser = Browser::new(&broker.ca_der());
    for i in 0..5 {
        let bogus = format!("{}/login/oidc/callback?state=forged-{i}&code=nothing", broker.public_url());
        let page = browser.get(&bogus.parse().unwrap()).await;
        assert!(page.status >= 400, "a forged callback must fail: {}", page.status);
    }
    wait_for_kind(&broker, "alert.login_failures", 30).await;

    // Admin changes: a policy version, a disabled identity.
    broker.write_policy("allow.cedar", &format!("{ALLOW_ML_AGENTS}\n// reviewed\n"));
    broker.reload_policies().await.expect_success();
    let intruder_id = intruder.spiffe_id().rsplit('/').next().unwrap().to_owned();
    broker.cli(&["identity", "disable", "--id", &intruder_id]).await.expect_success();

    // `connector list` shows the link, through this broker, and the version.
    let listed = broker.cli(&["connector", "list"]).await.expect_success();
    let rack = listed.lines().find(|l| l.starts_with("rack-1 ")).unwrap_or_else(|| panic!("rack-1 listed:\n{listed}"));
    let via = format!(":{} ", broker.quic_addr().port());
    assert!(rack.contains("online via ") && rack.contains(&via), "linked through this broker: {listed}");
    assert!(rack.contains(env!("CARGO_PKG_VERSION")) && rack.contains("enabled"), "{listed}");

    // The connector goes away for longer than the threshold, then comes back.
    connector.kill().await;
    wait_for_kind(&broker, "connector.offline", 40).await;
    let listed = broker.cli(&["connector", "list"]).await.expect_success();
    let rack = listed.lines().find(|l| l.starts_with("rack-1 ")).unwrap_or_else(|| panic!("rack-1 listed:\n{listed}"));
    assert!(rack.contains("offline") && !rack.contains("online via"), "offline once its link timed out: {listed}");
    assert!(rack.split_whitespace().any(|w| w.contains('T') && w.ends_with('Z')), "a last-seen time: {listed}");
    wait_for_kind(&broker, "alert.connector_offline", 30).await;
    connector.restart().await;
    wait_for_kind(&broker, "alert.connector_back_online", 30).await;
    assert_eventually!(agent.tunnel_exchange("echo", b"back again").await.is_ok());
    wait_for_kind(&broker, "stream.ended", 30).await;

    let audit = broker.audit_events().await;
    let violations = audit.schema_violations();
    assert!(violations.is_empty(), "events that do not match the schema:\n{}", violations.join("\n"));
    // The check has teeth: a stream end without its byte count, with a
    // decision's outcome and no decision id, is three violations.
    let mut forged = audit.last_of_kind("stream.ended").unwrap().clone();
    forged.detail.as_object_mut().unwrap().remove("bytes_up");
    forged.outcome = Some("allow".into());
    forged.decision_id = None;
    let caught = palisade_tests::AuditLog(vec![forged]).schema_violations();
    assert_eq!(caught.len(), 3, "{caught:?}");
    for kind in [
        "token.created",
        "token.redeemed",
        "certificate.issued",
        "quic.accepted",
        "connector.online",
        "connector.offline",
        "stream.allowed",
        "stream.denied",
        "stream.ended",
        "login.succeeded",
        "login.failed",
        "session.created",
        "credential.registered",
        "policy.activated",
        "identity.disabled",
        "alert.login_failures",
        "alert.connector_offline",
        "alert.connector_back_online",
    ] {
        assert!(audit.has_kind(kind), "no {kind} from the flows:\n{}", audit.summary());
    }
    let ended = audit.last_of_kind("stream.ended").unwrap();
    assert!(ended.detail["bytes_up"].as_u64().unwrap() > 0 && ended.detail["bytes_down"].as_u64().unwrap() > 0);
    assert!(ended.detail["duration_ms"].is_u64());
    let offline = audit.last_of_kind("alert.connector_offline").unwrap();
    assert_eq!(offline.subject, audit.last_of_kind("connector.offline").unwrap().actor);
    assert!(
        !audit.has_kind("alert.new_device") && !audit.has_kind("alert.new_address"),
        "first sign-ins set the baseline and must not alert:\n{}",
        audit.summary()
    );
    let session = audit.of_kind("session.created");
    assert!(session.iter().any(|r| r.subject.as_deref() == Some(alice.session_id())));

    // The console's query API, through its CLI: Alice's login trail.
    let alice_id = alice.identity_id();
    let trail = broker.cli(&["audit", "query", "--login-trail", &alice_id]).await.expect_success();
    let attempts: Vec<serde_json::Value> = trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(attempts.iter().any(|a| a["kind"] == "session.created" && a["session"] == alice.session_id()), "{trail}");
    let denied = broker.cli(&["audit", "query", "--outcome", "deny", "--service", "echo"]).await.expect_success();
    let denied: Vec<serde_json::Value> = denied.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!denied.is_empty() && denied.iter().all(|e| e["outcome"] == "deny" && e["subject"] == "echo"));
    broker.cli(&["audit", "verify"]).await.expect_success();
}
