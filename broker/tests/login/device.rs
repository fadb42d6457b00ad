//! Device codes: a headless CLI gets a code, a signed-in person approves it.

use palisade_broker::audit::EventKind;
use serde_json::{Value, json};

use crate::support::{Browser, Cli, Idp, Key, TestBroker, csr, exchange, mfa_mode, person};
use crate::webauthn_cases::{at_mfa, signed_up};

async fn issue(broker: &TestBroker) -> Value {
    let r = broker.browser().post_json(&broker.url("/api/v1/login/device"), &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn poll(broker: &TestBroker, device_code: &str) -> (u16, Value) {
    let body = json!({ "device_code": device_code, "csr_pem": csr() });
    let r = broker.browser().post_json(&broker.url("/api/v1/login/device/token"), &body).await;
    (r.status, r.json())
}

/// A portal session for `user` (signed up with `key` first if needed).
async fn portal(broker: &TestBroker, user: &str, key: &mut Key) -> Browser {
    let browser = at_mfa(broker, user).await;
    let finish = crate::support::authenticate(&browser, broker, key).await;
    assert_eq!(finish.status, 200, "{}", finish.body);
    browser
}

async fn approve(broker: &TestBroker, browser: &Browser, user_code: &str) -> u16 {
    let page = browser.get(&broker.url(&format!("/device?user_code={user_code}"))).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let at = page.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &page.body[at..at + 64];
    let form = [("user_code", user_code), ("csrf", csrf)];
    browser.post_form_same_origin(&broker.url("/device/approve"), &form).await.status
}

#[tokio::test]
async fn a_device_code_binds_to_the_person_who_approves_it() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let (mut alice_key, mut bob_key) = (Key::new(), Key::new());
    let alice = signed_up(&broker, "alice", &mut alice_key).await;
    let bob = signed_up(&broker, "bob", &mut bob_key).await;
    let code = issue(&broker).await;
    assert_eq!(code["interval"], 2);
    assert_eq!(code["expires_in"], 600);
    assert!(code["verification_uri"].as_str().unwrap().ends_with("/device"));
    let device_code = code["device_code"].as_str().unwrap();
    let user_code = code["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(poll(&broker, device_code).await, (400, json!({ "error": "authorization_pending" })));

    // Not signed in: /device sends the browser to sign in first, and back.
    let anonymous = broker.browser().get(&broker.url(&format!("/device?user_code={user_code}"))).await;
    assert_eq!(anonymous.status, 303);
    assert!(anonymous.location.unwrap().as_str().contains("return_to=%2Fdevice%3Fuser_code%3D"));

    // Without the CSRF token, or without the same-origin headers: refused.
    let bob_browser = portal(&broker, "bob", &mut bob_key).await;
    let forged = bob_browser
        .post_form_same_origin(&broker.url("/device/approve"), &[("user_code", user_code), ("csrf", "x")])
        .await;
    assert_eq!(forged.status, 403);
    let page = bob_browser.get(&broker.url(&format!("/device?user_code={user_code}"))).await;
    let at = page.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let token = &page.body[at..at + 64];
    assert!(
        page.body.contains("aria-label=\"Main\"") && page.body.contains("/console/static/console.css"),
        "a console page"
    );
    assert!(page.body.contains("is waiting for this code"), "the waiting sign-in is described: {}", page.body);
    let no_origin =
        bob_browser.post_form(&broker.url("/device/approve"), &[("user_code", user_code), ("csrf", token)]).await;
    assert_eq!(no_origin.status, 403, "a post that does not say it came from the broker's page");

    // Bob approves alice's terminal: the certificate is bob's, not alice's.
    assert_eq!(approve(&broker, &bob_browser, user_code).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, answer) = poll(&broker, device_code).await;
    assert_eq!(status, 200, "{answer}");
    let peer = person(&broker, &answer);
    assert_eq!(peer.id().id, bob);
    assert_ne!(peer.id().id, alice);
    assert!(peer.auth_methods().contains(&"device_code".to_owned()));
    let alice_browser = portal(&broker, "alice", &mut alice_key).await;
    assert_eq!(approve(&broker, &alice_browser, user_code).await, 401, "a code is approved once");
    broker.assert_failed("device", "user_code_used_or_expired").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(poll(&broker, device_code).await.1, json!({ "error": "access_denied" }), "redeemed once");
}

#[tokio::test]
async fn device_codes_expire_refuse_wrong_codes_and_slow_down_fast_pollers() {
    // 6 s: the two quick polls below must both land before the code expires, even on a machine so
    // loaded that issuing and polling take seconds (3 s was once too short in a full parallel run).
    let broker = TestBroker::start(Idp::Real, |c| c.login.device_code_ttl = std::time::Duration::from_secs(6)).await;
    let code = issue(&broker).await;
    let device_code = code["device_code"].as_str().unwrap();
    assert_eq!(poll(&broker, device_code).await.1, json!({ "error": "authorization_pending" }));
    assert_eq!(poll(&broker, device_code).await.1, json!({ "error": "slow_down" }));
    assert_eq!(poll(&broker, "not-a-device-code").await, (400, json!({ "error": "invalid_grant" })));
    tokio::time::sleep(std::time::Duration::from_millis(7100)).await;
    assert_eq!(poll(&broker, device_code).await.1, json!({ "error": "expired_token" }));
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let browser = portal(&broker, "alice", &mut key).await;
    let user_code = code["user_code"].as_str().unwrap();
    assert_eq!(approve(&broker, &browser, user_code).await, 401, "an expired code cannot be approved");
    assert_eq!(approve(&broker, &browser, "BBBB-CCCC").await, 401, "nor a wrong one");
    broker.assert_failed("device", "user_code_unknown").await;
}

/// OIDC-16, guessing: wrong user codes from one address are refused (401)
/// until the failure bucket (10, then one every 30 s) runs out; then every
/// approval from there is 429, the right code included, and nothing is bound.
#[tokio::test]
async fn guessing_user_codes_runs_into_a_rate_limit_that_stops_the_right_code_too() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let code = issue(&broker).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let browser = portal(&broker, "alice", &mut key).await;
    let sessions = broker.count("SELECT COUNT(*) FROM sessions").await;

    let mut statuses = Vec::new();
    for guess in "BCDFGHJKLMNP".chars() {
        statuses.push(approve(&broker, &browser, &format!("BBBB-CCC{guess}")).await);
    }
    eprintln!("OIDC-16 guesses: {statuses:?}");
    let refused = statuses.iter().take_while(|&&s| s == 401).count();
    assert_eq!(refused, 10, "10 wrong guesses are answered, no more: {statuses:?}");
    assert!(statuses[refused..].iter().all(|&s| s == 429), "then every guess is throttled: {statuses:?}");
    let user_code = code["user_code"].as_str().unwrap();
    assert_eq!(approve(&broker, &browser, user_code).await, 429, "the right code waits too");
    assert_eq!(broker.count("SELECT COUNT(*) FROM sessions").await, sessions, "no device session was created");
    broker.assert_failed("device", "user_code_unknown").await;
}

/// L-03: one address asking for 40 device codes gets the burst of the
/// sign-in start bucket (30, then one every 2 s) and 429 after; only the
/// codes it was given are stored, and a browser sign-in start from the same
/// address is throttled by the same bucket.
#[tokio::test]
async fn a_flood_of_sign_in_starts_gets_429_and_stores_a_bounded_number() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let browser = broker.browser();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(browser.post_json(&broker.url("/api/v1/login/device"), &json!({})).await.status);
    }
    let issued = statuses.iter().filter(|&&s| s == 200).count();
    eprintln!("L-03 device code requests: {statuses:?}");
    assert!((30..=32).contains(&issued), "the burst is 30 (plus what refilled meanwhile): {statuses:?}");
    assert!(statuses[issued..].iter().all(|&s| s == 429), "then 429: {statuses:?}");
    assert_eq!(broker.count("SELECT COUNT(*) FROM device_codes").await, i64::try_from(issued).unwrap());

    let pending = broker.count("SELECT COUNT(*) FROM pending_logins").await;
    assert_eq!(browser.get(&broker.url("/login")).await.status, 429, "the sign-in page's start shares the bucket");
    assert_eq!(broker.count("SELECT COUNT(*) FROM pending_logins").await, pending, "no pending login stored");
}

/// WA-12: a person who finished the provider's sign-in but not the second
/// factor holds a pending login, not a session. From there nothing hands
/// out a certificate: the CLI exchange has no code to redeem (guesses and
/// the CLI's own state are refused), the device page sends them to sign in
/// and an approval post is refused, the account API answers 401, and no
/// session or certificate comes into being.
#[tokio::test]
async fn a_sign_in_that_stopped_after_the_provider_gets_no_certificate() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let (sessions, issued) = (broker.sessions().await, broker.events(EventKind::CertificateIssued).await.len());

    let cli = Cli::new();
    let pending = broker.browser();
    let mfa = pending.sign_in(&broker.url(&cli.start_path()), "alice").await;
    assert_eq!(mfa_mode(&mfa), "authenticate", "the provider's sign-in is done, the second factor is not");
    for code in ["", "cli-state-1", "0000000000", &cli.verifier] {
        let answer = exchange(&pending, &broker, code, &cli.verifier).await;
        assert!((400..500).contains(&answer.status), "exchange with {code:?}: {} {}", answer.status, answer.body);
    }

    let code = issue(&broker).await;
    let user_code = code["user_code"].as_str().unwrap();
    let page = pending.get(&broker.url(&format!("/device?user_code={user_code}"))).await;
    assert_eq!(page.status, 303, "a pending login is sent to sign in first: {}", page.body);
    let form = [("user_code", user_code), ("csrf", "x")];
    let post = pending.post_form_same_origin(&broker.url("/device/approve"), &form).await;
    assert!(matches!(post.status, 401 | 403), "approving from a pending login: {} {}", post.status, post.body);
    let (status, answer) = poll(&broker, code["device_code"].as_str().unwrap()).await;
    assert_eq!((status, answer), (400, json!({ "error": "authorization_pending" })), "nothing was approved");

    let me = pending.get(&broker.url("/api/v1/me/credentials")).await;
    assert_eq!(me.status, 401, "the account API needs a session: {}", me.body);
    assert_eq!(broker.sessions().await, sessions, "no session was created");
    assert_eq!(broker.events(EventKind::CertificateIssued).await.len(), issued, "no certificate was issued");
}

/// CA-07: a session revoked after the second factor gets nothing more. The
/// CLI's one-time code minted at that sign-in no longer redeems, and a
/// portal whose session was revoked cannot approve a device code.
#[tokio::test]
async fn a_revoked_session_gets_no_certificate_by_exchange_or_device_approval() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let alice = signed_up(&broker, "alice", &mut key).await;
    let cli = Cli::new();
    let browser = broker.browser();
    let mfa = browser.sign_in(&broker.url(&cli.start_path()), "alice").await;
    assert_eq!(mfa_mode(&mfa), "authenticate");
    let finish = crate::support::authenticate(&browser, &broker, &mut key).await;
    let code = cli.code(&finish);
    let portal = portal(&broker, "alice", &mut key).await;
    let issued = broker.events(EventKind::CertificateIssued).await.len();

    palisade_broker::login::manage::revoke_sessions_of(&broker.db, &alice, "cli", "test").await.unwrap();
    let answer = exchange(&browser, &broker, &code, &cli.verifier).await;
    assert!((400..500).contains(&answer.status), "exchange after the revocation: {} {}", answer.status, answer.body);
    let device = issue(&broker).await;
    let user_code = device["user_code"].as_str().unwrap();
    let page = portal.get(&broker.url(&format!("/device?user_code={user_code}"))).await;
    assert_eq!(page.status, 303, "a revoked session is sent to sign in again: {}", page.body);
    let form = [("user_code", user_code), ("csrf", "x")];
    let post = portal.post_form_same_origin(&broker.url("/device/approve"), &form).await;
    assert!(matches!(post.status, 401 | 403), "approving from a revoked session: {} {}", post.status, post.body);
    let (status, pending) = poll(&broker, device["device_code"].as_str().unwrap()).await;
    assert_eq!((status, pending), (400, json!({ "error": "authorization_pending" })), "nothing was approved");
    assert_eq!(broker.events(EventKind::CertificateIssued).await.len(), issued, "no certificate was issued");
}
