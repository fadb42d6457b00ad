//! Local accounts: an invite link, a passkey with user verification, then
//! passkey-only sign-in (discoverable credential).

use palisade_broker::db::credentials;
use palisade_broker::login::local::create_invite;
use webauthn_rs::prelude::Uuid;

use crate::support::{Idp, Key, TestBroker, auth_finish, auth_start, mfa_mode, register};

#[tokio::test]
async fn an_invited_person_registers_a_passkey_and_signs_in_with_it_alone() {
    let broker = TestBroker::start(Idp::None, |_| {}).await;
    let invited = create_invite(&broker.db, &broker.origin(), "carol@example.com", None, &["ml-team".into()], "test")
        .await
        .unwrap();
    assert!(invited.link.starts_with(&broker.url("/invite/")), "{}", invited.link);
    let browser = broker.browser();
    let mfa = browser.sign_in(&invited.link, "-").await;
    assert_eq!(mfa_mode(&mfa), "register");
    let start = browser.post_json(&broker.url("/login/webauthn/register/start"), &serde_json::json!({})).await;
    let ccr: serde_json::Value = start.json();
    assert_eq!(ccr["publicKey"]["authenticatorSelection"]["residentKey"], "required");
    assert_eq!(ccr["publicKey"]["authenticatorSelection"]["userVerification"], "required");
    let mut key = Key::new();
    let browser = broker.browser();
    browser.sign_in(&invited.link, "-").await;
    let finish = register(&browser, &broker, &mut key).await;
    assert_eq!(finish.status, 200, "{}", finish.body);
    assert_eq!(finish.json()["redirect"], "/");

    // The link works once.
    let again = broker.browser().sign_in(&invited.link, "-").await;
    assert_eq!(again.status, 401);
    broker.assert_failed("invite", "used_or_expired").await;

    // Passkey sign-in: the authenticator names the account.
    let cred = credentials::all_for(&broker.db, &invited.identity_id).await.unwrap().remove(0);
    let raw = cred.passkey.cred_id().clone();
    let browser = broker.browser();
    let page = browser.sign_in(&broker.url("/login/local"), "-").await;
    assert_eq!(mfa_mode(&page), "discoverable");
    let mut rcr = auth_start(&browser, &broker).await;
    assert!(rcr.public_key.allow_credentials.is_empty());
    rcr.public_key.allow_credentials.push(allow(&raw));
    let mut assertion = key.assert(&broker.origin(), rcr);
    let uuid = Uuid::parse_str(&invited.identity_id).unwrap();
    assertion.response.user_handle = Some(uuid.as_bytes().to_vec());
    let finish = auth_finish(&browser, &broker, &assertion).await;
    assert_eq!(finish.status, 200, "{}", finish.body);
    let home = browser.get(&broker.url("/")).await;
    assert!(home.body.contains("carol_example.com") && home.body.contains("ml-team"), "{}", home.body);
    let methods: String = sqlx::query_scalar("SELECT auth_methods FROM sessions ORDER BY created_at DESC LIMIT 1")
        .fetch_one(broker.db.pool())
        .await
        .unwrap();
    assert_eq!(methods, "[\"webauthn\"]");

    // WA-09: a user handle naming someone else.
    let browser = broker.browser();
    browser.sign_in(&broker.url("/login/local"), "-").await;
    let mut rcr = auth_start(&browser, &broker).await;
    rcr.public_key.allow_credentials.push(allow(&raw));
    let mut assertion = key.assert(&broker.origin(), rcr);
    assertion.response.user_handle = Some(Uuid::new_v4().as_bytes().to_vec());
    let refused = auth_finish(&browser, &broker, &assertion).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    broker.assert_failed("webauthn", "user_handle_mismatch").await;
}

/// Puts the credential into the (empty) allow list: SoftToken keeps no resident
/// keys, so the test plays the part of the authenticator's credential lookup.
fn allow<T: serde::de::DeserializeOwned>(raw: &[u8]) -> T {
    use base64::Engine as _;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    serde_json::from_value(serde_json::json!({ "type": "public-key", "id": id })).unwrap()
}

#[tokio::test]
async fn unknown_invites_and_accounts_get_the_same_generic_answer() {
    let broker = TestBroker::start(Idp::None, |_| {}).await;
    let browser = broker.browser();
    let unknown = browser.get(&broker.url("/invite/not-a-real-token")).await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("Sign-in failed"));
    broker.assert_failed("invite", "unknown").await;
    // L-04: the passkey page and its challenge do not depend on who comes.
    let a = browser.sign_in(&broker.url("/login/local"), "-").await;
    let b = broker.browser().sign_in(&broker.url("/login/local"), "-").await;
    assert_eq!(a.body, b.body);
}
