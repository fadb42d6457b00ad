//! L-01: failed second factors against one account from many addresses.
//! The per-address bucket does not stop a spread-out attack; the
//! per-account one (`Bucket::AccountFailure`, burst 10, one more a minute,
//! `broker/src/login/limits.rs`) does, without a lasting lockout: nothing
//! about the person or their credential is changed, and another person is
//! served throughout. The refill itself is shown at unit level
//! (`limits.rs::an_account_recovers_as_its_bucket_refills`).

use std::net::IpAddr;

use palisade_broker::db::{credentials, identities};

use crate::forge;
use crate::support::{Browser, Idp, Key, TestBroker, authenticate, mfa_mode};
use crate::webauthn_cases::signed_up;

/// A sign-in of `user` from `addr`, through the provider, up to the passkey.
async fn at_mfa_from(broker: &TestBroker, user: &str, addr: IpAddr) -> Browser {
    let browser = broker.browser_from(addr);
    let page = browser.sign_in(&broker.url("/login"), user).await;
    assert_eq!(mfa_mode(&page), "authenticate");
    browser
}

/// One passkey attempt whose signature does not verify: the status of
/// `authenticate/start` if it refused, else that of the finish.
async fn failed_attempt(broker: &TestBroker, browser: &Browser, key: &mut Key) -> u16 {
    let start = browser.post_json(&broker.url("/login/webauthn/authenticate/start"), &serde_json::json!({})).await;
    if start.status != 200 {
        return start.status;
    }
    let cred = serde_json::to_value(key.assert(&broker.origin(), serde_json::from_str(&start.body).unwrap())).unwrap();
    let bad = forge::edit_bytes(&cred, "/response/signature", |mut sig| {
        *sig.last_mut().unwrap() ^= 0x01;
        sig
    });
    browser.post_json(&broker.url("/login/webauthn/authenticate/finish"), &bad).await.status
}

#[tokio::test]
async fn failures_from_many_addresses_against_one_account_are_slowed_without_locking_it() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let alice = signed_up(&broker, "alice", &mut key).await;
    let mut bob_key = Key::new();
    signed_up(&broker, "bob", &mut bob_key).await;
    let sessions = broker.sessions().await;

    // Five addresses, three failed attempts each: none reaches its own limit of 10.
    let mut statuses = Vec::new();
    for host in 10..15 {
        let addr = IpAddr::from([127, 0, 0, host]);
        let browser = at_mfa_from(&broker, "alice", addr).await;
        for _ in 0..3 {
            statuses.push(failed_attempt(&broker, &browser, &mut key).await);
        }
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 5], "after 10 failures the account is slowed: {statuses:?}");
    let sources: std::collections::BTreeSet<String> = broker
        .events(palisade_broker::audit::EventKind::LoginFailed)
        .await
        .iter()
        .filter(|e| e["reason"] == "assertion_invalid")
        .map(|e| e["source"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sources.len(), 4, "the broker saw the failures come from four addresses: {sources:?}");

    // The genuine key from a fresh address waits too; bob is served from the same address.
    let fresh = IpAddr::from([127, 0, 0, 20]);
    let browser = at_mfa_from(&broker, "alice", fresh).await;
    let start = browser.post_json(&broker.url("/login/webauthn/authenticate/start"), &serde_json::json!({})).await;
    assert_eq!(start.status, 429, "{}", start.body);
    let bob = at_mfa_from(&broker, "bob", fresh).await;
    assert_eq!(authenticate(&bob, &broker, &mut bob_key).await.status, 200);
    assert_eq!(broker.sessions().await, sessions + 1, "bob's sign-in only");

    // Nothing lasting: the credential and the person are as they were.
    let creds = credentials::all_for(&broker.db, &alice).await.unwrap();
    assert!(creds.iter().all(|c| c.disabled_reason.is_none()), "{creds:?}");
    let identity = identities::get_any(&broker.db, &alice).await.unwrap().unwrap();
    assert!(!identity.disabled);
}
