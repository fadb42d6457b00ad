//! OIDC-01 … OIDC-13: the provider misbehaves (or the browser does); every
//! case ends in a refusal, no session, and `login.failed` with the reason.

use std::time::Instant;

use palisade_broker::login::rp::{HTTP_TIMEOUT, JWKS_REFETCH_INTERVAL};

use crate::support::{Browser, Idp, TestBroker, jwks_fetches};

/// Signs in against a misbehaving provider; returns the broker, the final answer and the browser.
async fn attempt(mode: &'static str) -> (TestBroker, crate::support::Resp, Browser) {
    let broker = TestBroker::start(Idp::Misbehaving(mode), |_| {}).await;
    let browser = broker.browser();
    let last = browser.sign_in(&broker.url("/login"), "johndoe").await;
    (broker, last, browser)
}

async fn refused(mode: &'static str, step: &str, reason: &str) {
    let (broker, last, _) = attempt(mode).await;
    assert!(last.status >= 400, "{mode}: expected a refusal, got {} {}", last.status, last.body);
    assert!(last.body.contains("Sign-in failed"), "{mode}: {}", last.body);
    assert!(!last.body.contains(reason), "{mode}: the page must not say why");
    assert_eq!(broker.sessions().await, 0, "{mode}: no session");
    assert_eq!(broker.count("SELECT COUNT(*) FROM pending_logins WHERE identity_id IS NOT NULL").await, 0);
    broker.assert_failed(step, reason).await;
}

/// The provider cannot be used at the start of the sign-in: 503, a page
/// saying to try later, no pending login bound to anyone, no session.
async fn unavailable(mode: &'static str, step: &str, reason: &str) {
    let (broker, last, _) = attempt(mode).await;
    assert_eq!(last.status, 503, "{mode}: {}", last.body);
    assert!(last.body.contains("sign-in is unavailable right now; try again later"), "{mode}: {}", last.body);
    assert!(!last.body.contains(reason), "{mode}: the page must not say why");
    assert_eq!(broker.count("SELECT COUNT(*) FROM pending_logins").await, 0, "{mode}: nothing pending");
    assert_eq!(broker.sessions().await, 0, "{mode}: no session");
    broker.assert_failed(step, reason).await;
}

async fn accepted(mode: &'static str) {
    let (broker, last, _) = attempt(mode).await;
    assert_eq!(last.url.path(), "/login/mfa", "{mode}: {} {}", last.status, last.body);
    assert!(broker.failures().await.is_empty(), "{mode}: {:?}", broker.failures().await);
}

#[tokio::test]
async fn a_well_behaved_mock_provider_is_accepted() {
    accepted("good").await;
}

#[tokio::test]
async fn oidc_01_issuer_mismatch() {
    refused("wrong-iss", "id_token", "iss_mismatch").await;
}

#[tokio::test]
async fn oidc_02_audience_and_subject() {
    refused("wrong-aud", "id_token", "aud_mismatch").await;
    refused("multi-aud", "id_token", "aud_mismatch").await;
    refused("missing-aud", "id_token", "aud_missing").await;
    refused("missing-sub", "id_token", "sub_missing").await;
}

#[tokio::test]
async fn oidc_03_issue_and_expiry_times() {
    refused("missing-iat", "id_token", "iat_missing").await;
    refused("future-iat", "id_token", "iat_invalid").await;
    refused("expired", "id_token", "expired").await;
    refused("future-nbf", "id_token", "nbf_future").await;
}

#[tokio::test]
async fn oidc_04_alg_none_and_hs256_with_the_public_key() {
    refused("alg-none", "id_token", "alg_disallowed").await;
    refused("hs256", "id_token", "alg_disallowed").await;
}

#[tokio::test]
async fn oidc_05_bad_signature() {
    refused("bad-sig", "id_token", "bad_signature").await;
}

#[tokio::test]
async fn oidc_06_token_without_kid() {
    accepted("no-kid-one-key").await;
    refused("no-kid-two-keys", "id_token", "ambiguous_kid").await;
}

#[tokio::test]
async fn oidc_07_key_rotation_refetches_the_key_set_once() {
    accepted("rotate").await;
    refused("unknown-kid", "id_token", "unknown_kid").await;
}

/// Two sign-ins whose ID tokens name a key the provider never published:
/// the first refetches the key set once, the second (within
/// `JWKS_REFETCH_INTERVAL`) fetches nothing, so forged `kid`s cannot make
/// the broker hammer the provider.
#[tokio::test]
async fn oidc_07_unknown_key_ids_refetch_the_key_set_at_most_once_per_interval() {
    let mode = "unknown-kid-counted";
    let broker = TestBroker::start(Idp::Misbehaving(mode), |_| {}).await;
    let started = Instant::now();
    let mut fetched = Vec::new();
    for _ in 0..2 {
        let last = broker.browser().sign_in(&broker.url("/login"), "johndoe").await;
        assert_eq!(last.status, 401, "{}", last.body);
        fetched.push(jwks_fetches(mode).await);
    }
    assert!(started.elapsed() < JWKS_REFETCH_INTERVAL, "both sign-ins must fall within one interval");
    assert_eq!(fetched, [2, 2], "one fetch at discovery, one refetch for the first unknown kid, none for the second");
    let failures = broker.failures().await;
    assert_eq!(failures, vec![("id_token".to_owned(), "unknown_kid".to_owned()); 2]);
    assert_eq!(broker.sessions().await, 0);
}

#[tokio::test]
async fn oidc_08_token_endpoint_failures_fail_closed() {
    refused("token-500", "token", "http_status").await;
    refused("token-html", "token", "malformed").await;
    refused("token-huge", "token", "body_too_large").await;
}

#[tokio::test]
async fn oidc_08_discovery_and_key_set_failures_fail_closed() {
    unavailable("discovery-500", "discovery", "http_status").await;
    unavailable("discovery-html", "discovery", "not_json").await;
    unavailable("jwks-500", "jwks", "http_status").await;
    unavailable("jwks-html", "jwks", "not_json").await;
    // The key set was served at discovery; the refetch an unknown kid asks for fails.
    let (broker, last, _) = attempt("refetch-500").await;
    assert_eq!(last.status, 503, "{}", last.body);
    assert_eq!(broker.sessions().await, 0);
    assert_eq!(broker.count("SELECT COUNT(*) FROM pending_logins WHERE identity_id IS NOT NULL").await, 0);
    broker.assert_failed("jwks", "http_status").await;
}

async fn timed(check: impl std::future::Future<Output = ()>) -> std::time::Duration {
    let started = Instant::now();
    check.await;
    started.elapsed()
}

/// A provider that accepts the connection and never answers: every call
/// gives up after `HTTP_TIMEOUT` (10 s, not configurable) and the sign-in
/// fails closed. The three hangs run at once, so the test takes ~10 s.
#[tokio::test]
async fn oidc_08_a_provider_that_hangs_is_given_up_on_after_the_timeout() {
    let (discovery, jwks, token) = tokio::join!(
        timed(unavailable("discovery-hang", "discovery", "timeout")),
        timed(unavailable("jwks-hang", "jwks", "timeout")),
        timed(refused("token-hang", "token", "timeout")),
    );
    for (what, took) in [("discovery", discovery), ("jwks", jwks), ("token", token)] {
        assert!(took >= HTTP_TIMEOUT, "{what}: gave up after {took:?}, before the timeout");
        assert!(took < HTTP_TIMEOUT * 3, "{what}: took {took:?}: the timeout did not stop the call");
    }
}

#[tokio::test]
async fn oidc_09_nonce() {
    refused("wrong-nonce", "id_token", "nonce_mismatch").await;
    refused("missing-nonce", "id_token", "nonce_mismatch").await;
}

#[tokio::test]
async fn oidc_10_userinfo_subject_mismatch() {
    refused("userinfo-sub", "userinfo", "sub_mismatch").await;
}

#[tokio::test]
async fn oidc_12_discovery_issuer_mismatch_and_mix_up() {
    refused("discovery-issuer", "discovery", "issuer_mismatch").await;
    refused("mix-up", "callback", "iss_mismatch").await;
}

/// The callback the provider sends the browser to, without following it.
async fn callback_url(broker: &TestBroker, browser: &Browser) -> String {
    let start = browser.get(&broker.url("/login")).await;
    let authorize = browser.get(start.location.unwrap().as_str()).await;
    let callback = authorize.location.unwrap();
    assert_eq!(callback.path(), "/login/oidc/callback");
    callback.to_string()
}

#[tokio::test]
async fn oidc_11_state_is_single_use_and_bound_to_the_browser() {
    let broker = TestBroker::start(Idp::Misbehaving("good"), |_| {}).await;
    let browser = broker.browser();

    let missing = browser.get(&broker.url("/login/oidc/callback?code=x")).await;
    assert_eq!(missing.status, 400);
    broker.assert_failed("callback", "state_missing").await;
    let unknown = browser.get(&broker.url("/login/oidc/callback?code=x&state=made-up")).await;
    assert_eq!(unknown.status, 400);
    broker.assert_failed("callback", "state_unknown").await;

    // Another browser presents this browser's callback: refused, and the state is burnt.
    let callback = callback_url(&broker, &browser).await;
    let foreign = browser.fresh().get(&callback).await;
    assert_eq!(foreign.status, 400);
    broker.assert_failed("callback", "state_foreign").await;
    assert_eq!(browser.get(&callback).await.status, 400);

    // Replay of a callback that worked.
    let callback = callback_url(&broker, &browser).await;
    let ok = browser.get(&callback).await;
    assert_eq!(ok.location.unwrap().path(), "/login/mfa");
    let replay = browser.get(&callback).await;
    assert_eq!(replay.status, 400);
    assert_eq!(broker.sessions().await, 0);
    let unknowns = broker.failures().await.iter().filter(|f| f.1 == "state_unknown").count();
    assert!(unknowns >= 3, "{:?}", broker.failures().await);
}

#[tokio::test]
async fn oidc_11_a_used_code_is_refused_by_the_provider() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let browser = broker.browser();
    let mfa = browser.sign_in(&broker.url("/login"), "alice").await;
    assert_eq!(mfa.url.path(), "/login/mfa");
    // The provider remembers alice: a second start goes straight to a callback.
    let second = broker.browser();
    let start = second.get(&broker.url("/login")).await;
    let state = url::Url::parse(start.location.unwrap().as_str()).unwrap();
    let state = state.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    // Hand the new state a code that was already redeemed (from a fresh real sign-in in `second`).
    let third = broker.browser();
    let r = third.get(&broker.url("/login")).await;
    let mut r = third.get(r.location.unwrap().as_str()).await;
    while r.location.as_ref().is_none_or(|l| l.path() != "/login/oidc/callback") {
        r = if r.url.path().starts_with("/interaction/") && r.body.contains("<form") {
            let action = format!("{}/login", r.url.as_str().trim_end_matches('/'));
            third.post_form(&action, &[("username", "alice"), ("password", "alice-pw")]).await
        } else {
            third.get(r.location.unwrap().as_str()).await
        };
    }
    let callback = r.location.unwrap();
    assert_eq!(third.get(callback.as_str()).await.location.unwrap().path(), "/login/mfa");
    let code = callback.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let iss = crate::support::provider();
    let replay = broker.url(&format!("/login/oidc/callback?code={code}&state={state}&iss={iss}"));
    let refused = second.get(&replay).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    broker.assert_failed("token", "http_status").await;
    assert_eq!(broker.sessions().await, 0);
}

#[tokio::test]
async fn oidc_13_return_to_must_be_a_same_origin_path() {
    let broker = TestBroker::start(Idp::Misbehaving("good"), |_| {}).await;
    let browser = broker.browser();
    for bad in
        ["//evil.example", "https://evil.example/", "javascript:alert(1)", "/\\evil.example", "evil", "/%0d%0aX:1\r\n"]
    {
        let q: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", bad).finish();
        let r = browser.get(&broker.url(&format!("/login?{q}"))).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.location.is_none());
    }
    let q: String =
        url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", bad_but_ok()).finish();
    assert_eq!(browser.get(&broker.url(&format!("/login?{q}"))).await.status, 303);
    let failures = broker.failures().await;
    assert_eq!(failures.iter().filter(|f| f.1 == "return_to").count(), 6, "{failures:?}");
}

fn bad_but_ok() -> &'static str {
    "/models/llm?tab=1"
}

#[tokio::test]
async fn repeated_callback_failures_are_rate_limited_per_address() {
    let broker = TestBroker::start(Idp::Misbehaving("good"), |_| {}).await;
    let browser = broker.browser();
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(browser.get(&broker.url(&format!("/login/oidc/callback?code=x&state=guess-{i}"))).await.status);
    }
    assert_eq!(&statuses[..10], &[400; 10]);
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
}
