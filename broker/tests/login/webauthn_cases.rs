//! WA-01 … WA-11: the second factor's ceremonies under attack.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_broker::audit::EventKind;
use palisade_broker::db::credentials;
use serde_json::Value;
use webauthn_rs::prelude::PublicKeyCredential;

use crate::forge;
use crate::support::{Browser, Idp, Key, TestBroker, auth_finish, auth_start, authenticate, mfa_mode, register};

/// First sign-in of `user` through the portal, registering `key`. Returns the person's id.
pub async fn signed_up(broker: &TestBroker, user: &str, key: &mut Key) -> String {
    let browser = broker.browser();
    let mfa = browser.sign_in(&broker.url("/login"), user).await;
    assert_eq!(mfa_mode(&mfa), "register");
    let finish = register(&browser, broker, key).await;
    assert_eq!(finish.status, 200, "{}", finish.body);
    broker.count("SELECT COUNT(*) FROM users").await;
    let id: String = sqlx::query_scalar("SELECT identity_id FROM users WHERE subject = $1")
        .bind(user)
        .fetch_one(broker.db.pool())
        .await
        .unwrap();
    id
}

/// A browser that has passed the OIDC step and waits for the passkey.
pub async fn at_mfa(broker: &TestBroker, user: &str) -> Browser {
    let browser = broker.browser();
    let mfa = browser.sign_in(&broker.url("/login"), user).await;
    assert_eq!(mfa_mode(&mfa), "authenticate");
    browser
}

/// `user` signed up with `key`, then signed in again with it: a browser
/// holding a session with a fresh second factor.
pub async fn signed_in(broker: &TestBroker, user: &str, key: &mut Key) -> Browser {
    signed_up(broker, user, key).await;
    let browser = at_mfa(broker, user).await;
    assert_eq!(authenticate(&browser, broker, key).await.status, 200);
    browser
}

#[tokio::test]
async fn wa_01_an_assertion_works_once_even_in_parallel() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;

    let browser = at_mfa(&broker, "alice").await;
    let replayer = browser.fork();
    let rcr = auth_start(&browser, &broker).await;
    let cred = key.assert(&broker.origin(), rcr);
    assert_eq!(auth_finish(&browser, &broker, &cred).await.status, 200);
    let replay = auth_finish(&replayer, &broker, &cred).await;
    assert_eq!(replay.status, 400, "{}", replay.body);

    let browser = at_mfa(&broker, "alice").await;
    let twin = browser.fork();
    let rcr = auth_start(&browser, &broker).await;
    let cred = key.assert(&broker.origin(), rcr);
    let (a, b) = tokio::join!(auth_finish(&browser, &broker, &cred), auth_finish(&twin, &broker, &cred));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "exactly one of two parallel finishes wins");
    assert_eq!(broker.sessions().await, 3, "sign-up + one per ceremony");
    let failures = broker.failures().await;
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|(step, reason)| step == "webauthn" && (reason == "no_pending_login" || reason == "no_ceremony"))
    );
}

#[tokio::test]
async fn wa_02_wa_09_another_users_challenge_or_credential_is_refused() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut alice_key = Key::new();
    let mut bob_key = Key::new();
    signed_up(&broker, "alice", &mut alice_key).await;
    let bob = signed_up(&broker, "bob", &mut bob_key).await;
    let bob_cred = credentials::all_for(&broker.db, &bob).await.unwrap().remove(0);
    let sessions = broker.sessions().await;

    // Bob's authenticator answers a challenge issued to alice's sign-in.
    let browser = at_mfa(&broker, "alice").await;
    let mut rcr = auth_start(&browser, &broker).await;
    let bob_raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&bob_cred.id).unwrap();
    rcr.public_key.allow_credentials[0].id = bob_raw;
    let cred = bob_key.assert(&broker.origin(), rcr);
    let refused = auth_finish(&browser, &broker, &cred).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    broker.assert_failed("webauthn", "credential_not_owned").await;
    assert_eq!(broker.sessions().await, sessions);
}

/// WA-02, same person: an assertion signed over the challenge issued to
/// alice's sign-in in browser A, finished in her sign-in in browser B (which
/// has a ceremony of its own), is refused and spends B's ceremony; the same
/// assertion then works in A.
#[tokio::test]
async fn wa_02_an_assertion_for_another_sign_ins_challenge_is_refused_for_the_same_person() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let sessions = broker.sessions().await;
    let first = at_mfa(&broker, "alice").await;
    let second = at_mfa(&broker, "alice").await;
    let for_first = auth_start(&first, &broker).await;
    let _for_second = auth_start(&second, &broker).await;

    let cred = key.assert(&broker.origin(), for_first);
    let refused = auth_finish(&second, &broker, &cred).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    broker.assert_failed("webauthn", "challenge").await;
    assert_eq!(broker.sessions().await, sessions, "no session from another sign-in's challenge");

    let again = auth_finish(&second, &broker, &cred).await;
    assert_eq!(again.status, 400, "the second sign-in's ceremony was spent: {}", again.body);
    // The assertion itself was genuine: in the sign-in it was made for, it works.
    let own = auth_finish(&first, &broker, &cred).await;
    assert_eq!(own.status, 200, "{}", own.body);
}

#[tokio::test]
async fn wa_03_an_expired_ceremony_is_refused_and_purged() {
    let broker = TestBroker::start(Idp::Real, |c| c.login.ceremony_ttl = std::time::Duration::from_secs(1)).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let browser = at_mfa(&broker, "alice").await;
    let rcr = auth_start(&browser, &broker).await;
    let cred = key.assert(&broker.origin(), rcr);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let late = auth_finish(&browser, &broker, &cred).await;
    assert_eq!(late.status, 401, "{}", late.body);
    broker.assert_failed("webauthn", "ceremony_expired").await;
    assert_eq!(broker.count("SELECT COUNT(*) FROM webauthn_ceremonies").await, 0);
    assert_eq!(auth_finish(&browser, &broker, &cred).await.status, 400);
}

fn edit_client_data(cred: &PublicKeyCredential, edit: impl FnOnce(&mut Value)) -> PublicKeyCredential {
    let mut cred = cred.clone();
    let mut data: Value = serde_json::from_slice(&cred.response.client_data_json).unwrap();
    edit(&mut data);
    cred.response.client_data_json = serde_json::to_vec(&data).unwrap();
    cred
}

#[tokio::test]
async fn wa_04_wa_05_wrong_origin_or_type_is_refused() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;

    let browser = at_mfa(&broker, "alice").await;
    let rcr = auth_start(&browser, &broker).await;
    let other_port = url::Url::parse(&format!("https://localhost:{}", broker.ready.https.port() + 1)).unwrap();
    let cred = key.assert(&other_port, rcr);
    assert_eq!(auth_finish(&browser, &broker, &cred).await.status, 401);
    broker.assert_failed("webauthn", "origin").await;

    for (field, value, reason) in [
        ("origin", format!("http://localhost:{}", broker.ready.https.port()), "origin"),
        ("origin", format!("https://evil.localhost:{}", broker.ready.https.port()), "origin"),
        ("type", "webauthn.create".to_owned(), "client_data_type"),
    ] {
        let browser = at_mfa(&broker, "alice").await;
        let rcr = auth_start(&browser, &broker).await;
        let cred = edit_client_data(&key.assert(&broker.origin(), rcr), |d| d[field] = Value::String(value.clone()));
        let r = auth_finish(&browser, &broker, &cred).await;
        assert_eq!(r.status, 401, "{field}={value}: {}", r.body);
        broker.assert_failed("webauthn", reason).await;
    }
    let browser = at_mfa(&broker, "alice").await;
    let rcr = auth_start(&browser, &broker).await;
    let cred = edit_client_data(&key.assert(&broker.origin(), rcr), |d| d["crossOrigin"] = Value::Bool(true));
    assert_eq!(auth_finish(&browser, &broker, &cred).await.status, 401);
    assert_eq!(broker.sessions().await, 1);
}

#[tokio::test]
async fn wa_06_user_verification_is_required() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    // Registration without UV.
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), "alice").await), "register");
    let start = browser.post_json(&broker.url("/login/webauthn/register/start"), &serde_json::json!({})).await;
    let mut ccr: webauthn_rs::prelude::CreationChallengeResponse = serde_json::from_str(&start.body).unwrap();
    ccr.public_key.authenticator_selection.as_mut().unwrap().user_verification = discouraged();
    let mut key = Key::new();
    let reg = key.register(&broker.origin(), ccr);
    let r = browser.post_json(&broker.url("/login/webauthn/register/finish"), &reg).await;
    assert_eq!(r.status, 401, "{}", r.body);
    broker.assert_failed("webauthn", "user_not_verified").await;

    // Authentication without UV.
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let browser = at_mfa(&broker, "alice").await;
    let mut rcr = auth_start(&browser, &broker).await;
    rcr.public_key.user_verification = discouraged();
    let cred = key.assert(&broker.origin(), rcr);
    let r = auth_finish(&browser, &broker, &cred).await;
    assert_eq!(r.status, 401, "{}", r.body);
    broker.assert_failed("webauthn", "user_not_verified").await;
    assert_eq!(broker.sessions().await, 1);
}

#[tokio::test]
async fn wa_07_a_counter_regression_disables_the_credential_and_alerts() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let alice = signed_up(&broker, "alice", &mut key).await;
    let mut clone = key.clone_key();
    for _ in 0..2 {
        let browser = at_mfa(&broker, "alice").await;
        assert_eq!(authenticate(&browser, &broker, &mut key).await.status, 200);
    }
    let browser = at_mfa(&broker, "alice").await;
    let r = authenticate(&browser, &broker, &mut clone).await;
    assert_eq!(r.status, 401, "{}", r.body);
    broker.assert_failed("webauthn", "counter_regression").await;
    let creds = credentials::all_for(&broker.db, &alice).await.unwrap();
    assert_eq!(creds[0].disabled_reason.as_deref(), Some("counter regression"));
    let alerts = broker.events(EventKind::CredentialAlert).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["reason"], "counter_regression");
    // The genuine key no longer works either until an admin resets the person.
    let browser = broker.browser();
    let page = browser.sign_in(&broker.url("/login"), "alice").await;
    assert_eq!(page.status, 401, "a person whose only credential is disabled cannot register a new one: {}", page.body);
}

/// `userVerification: "discouraged"`: the authenticator then signs with UV=0.
fn discouraged<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_value(Value::String("discouraged".into())).unwrap()
}

// ------------------------------------------------------- WA-10, WA-11: bodies

const REGISTER_START: &str = "/login/webauthn/register/start";
const REGISTER: &str = "/login/webauthn/register/finish";
const AUTHENTICATE: &str = "/login/webauthn/authenticate/finish";
const ACCOUNT_START: &str = "/api/v1/me/credentials/register/start";
const ACCOUNT_FINISH: &str = "/api/v1/me/credentials/register/finish";
/// The "huge attestationObject" of WA-11: 2 MiB before base64.
const HUGE: usize = 2 * 1024 * 1024;

/// What a refusal must leave alone: every stored credential (key, counter) and the session count.
async fn stored(broker: &TestBroker) -> (Vec<(String, String, String)>, i64) {
    let sql = "SELECT id, identity_id, passkey FROM webauthn_credentials ORDER BY id";
    let creds = sqlx::query_as(sql).fetch_all(broker.db.pool()).await.unwrap();
    (creds, broker.sessions().await)
}

async fn ceremonies(broker: &TestBroker) -> i64 {
    broker.count("SELECT COUNT(*) FROM webauthn_ceremonies").await
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Starts a registration at `start` and has a fresh software authenticator
/// answer it; the answer (JSON) is not posted.
async fn genuine_registration(broker: &TestBroker, browser: &Browser, start: &str) -> Value {
    let r = browser.post_json(&broker.url(start), &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{start}: {}", r.body);
    Key::new().register(&broker.origin(), serde_json::from_str(&r.body).unwrap())
}

/// POSTs `body` to `path` and checks the status, the JSON error code and the
/// reason of the `login.failed` just recorded; returns that event's detail.
async fn refused(broker: &TestBroker, browser: &Browser, path: &str, body: Vec<u8>, want: (u16, &str)) -> String {
    let (status, reason) = want;
    let r = browser.post_raw_json(&broker.url(path), body).await;
    assert_eq!(r.status, status, "{path} ({reason}): {}", r.body);
    let code = match status {
        400 => "bad_request",
        413 => "too_large",
        _ => "login_failed",
    };
    assert_eq!(r.json()["error"], code, "{}", r.body);
    let last = broker.events(EventKind::LoginFailed).await.remove(0);
    assert_eq!(last["reason"], reason, "{last}");
    last["detail"].as_str().unwrap_or_default().to_owned()
}

/// Finish bodies that fail before any ceremony is taken: cut-off JSON, not
/// UTF-8, wrong JSON types, and the genuine answer with 2 MiB at `field`.
fn unparsable_bodies(genuine: &Value, field: &str) -> Vec<(Vec<u8>, (u16, &'static str))> {
    let wrong_types = serde_json::json!({
        "id": 7, "rawId": ["AAAA"], "type": "public-key",
        "response": { "attestationObject": 1, "authenticatorData": true, "clientDataJSON": null },
    });
    let huge = forge::edit_bytes(genuine, field, |_| vec![0xa5; HUGE]);
    vec![
        (br#"{"id": "AAAA", "rawId":"#.to_vec(), (400, "malformed")),
        (vec![0xff, 0xfe, 0x00, b'{'], (400, "malformed")),
        (bytes(&wrong_types), (400, "malformed")),
        (bytes(&huge), (413, "too_large")),
    ]
}

/// Refuses every unparsable body at `finish`, then a copy of `genuine` cut
/// short at `field` (it parses as JSON, so the ceremony is taken and spent),
/// then `genuine` itself: no ceremony is left for it.
async fn malformed_bodies_spend_nothing_but_a_parsed_one(
    broker: &TestBroker,
    browser: &Browser,
    finish: &str,
    (genuine, field): (&Value, &str),
) -> String {
    for (body, want) in unparsable_bodies(genuine, field) {
        refused(broker, browser, finish, body, want).await;
    }
    assert_eq!(ceremonies(broker).await, 1, "a body that does not parse leaves the ceremony alone");
    let cut = forge::edit_bytes(genuine, field, |b| b[..b.len() / 2].to_vec());
    let detail = refused(broker, browser, finish, bytes(&cut), (400, "malformed")).await;
    assert_eq!(ceremonies(broker).await, 0, "the cut-off answer spent the ceremony");
    refused(broker, browser, finish, bytes(genuine), (400, "no_ceremony")).await;
    detail
}

#[tokio::test]
async fn wa_11_malformed_or_oversized_registration_bodies_are_4xx_and_store_nothing() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), "alice").await), "register");
    let reg = genuine_registration(&broker, &browser, REGISTER_START).await;
    let before = stored(&broker).await;
    let detail = malformed_bodies_spend_nothing_but_a_parsed_one(
        &broker,
        &browser,
        REGISTER,
        (&reg, "/response/attestationObject"),
    )
    .await;
    assert!(detail.contains("ParseCBORFailure"), "truncated CBOR: {detail}");
    assert_eq!(stored(&broker).await, before);
    assert_eq!(broker.count("SELECT COUNT(*) FROM webauthn_credentials").await, 0);
}

#[tokio::test]
async fn wa_11_rsa_1024_and_unsupported_cose_algorithms_are_refused() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), "alice").await), "register");
    let before = stored(&broker).await;
    for (key, want, error) in [
        (forge::rsa_key(1024), (400, "key_unsupported"), "COSEKeyRSANEInvalid"),
        (forge::ec2_key(999), (400, "key_unsupported"), "COSEKeyInvalidAlgorithm"),
        // webauthn-rs refuses an Ed25519 key while converting it, before the algorithm check.
        (forge::ed25519_key(), (401, "assertion_invalid"), "SshPublicKeyEDUnsupported"),
    ] {
        let reg = genuine_registration(&broker, &browser, REGISTER_START).await;
        let forged = forge::registration(&reg, &forge::cred_id(), &key);
        let detail = refused(&broker, &browser, REGISTER, bytes(&forged), want).await;
        assert!(detail.contains(error), "{error}: {detail}");
        assert_eq!(ceremonies(&broker).await, 0);
        assert_eq!(stored(&broker).await, before);
    }
    // The same forgery carrying a P-256 ES256 key is taken: the key alone was refused above.
    let reg = genuine_registration(&broker, &browser, REGISTER_START).await;
    let es256 = forge::registration(&reg, &forge::cred_id(), &forge::ec2_key(-7));
    let taken = browser.post_json(&broker.url(REGISTER), &es256).await;
    assert_eq!(taken.status, 200, "{}", taken.body);
}

#[tokio::test]
async fn wa_11_malformed_or_oversized_assertions_are_4xx_and_change_nothing() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let browser = at_mfa(&broker, "alice").await;
    let rcr = auth_start(&browser, &broker).await;
    let cred = serde_json::to_value(key.assert(&broker.origin(), rcr)).unwrap();
    let before = stored(&broker).await;
    let detail = malformed_bodies_spend_nothing_but_a_parsed_one(
        &broker,
        &browser,
        AUTHENTICATE,
        (&cred, "/response/authenticatorData"),
    )
    .await;
    assert!(detail.contains("ParseNOMFailure"), "truncated authenticator data: {detail}");
    assert_eq!(stored(&broker).await, before, "no session, the counter untouched");
    let browser = at_mfa(&broker, "alice").await;
    assert_eq!(authenticate(&browser, &broker, &mut key).await.status, 200, "the genuine key still works");
}

#[tokio::test]
async fn wa_11_malformed_bodies_adding_a_key_from_a_session_store_nothing() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let browser = signed_in(&broker, "alice", &mut key).await;
    let reg = genuine_registration(&broker, &browser, ACCOUNT_START).await;
    let before = stored(&broker).await;
    let detail = malformed_bodies_spend_nothing_but_a_parsed_one(
        &broker,
        &browser,
        ACCOUNT_FINISH,
        (&reg, "/response/attestationObject"),
    )
    .await;
    assert!(detail.contains("ParseCBORFailure"), "truncated CBOR: {detail}");
    let reg = genuine_registration(&broker, &browser, ACCOUNT_START).await;
    let rsa = forge::registration(&reg, &forge::cred_id(), &forge::rsa_key(1024));
    let detail = refused(&broker, &browser, ACCOUNT_FINISH, bytes(&rsa), (400, "key_unsupported")).await;
    assert!(detail.contains("COSEKeyRSANEInvalid"), "{detail}");
    assert_eq!(stored(&broker).await, before);
}

#[tokio::test]
async fn wa_10_a_registered_credential_id_is_refused_for_another_person_and_its_owner() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let alice = signed_in(&broker, "alice", &mut key).await;
    let (creds, _) = stored(&broker).await;
    let taken = URL_SAFE_NO_PAD.decode(&creds[0].0).unwrap();
    let before = stored(&broker).await;

    // Bob's own registration ceremony, answered with alice's credential id
    // (fmt "none" signs nothing, so anyone can claim any id).
    let bob = broker.browser();
    assert_eq!(mfa_mode(&bob.sign_in(&broker.url("/login"), "bob").await), "register");
    let reg = genuine_registration(&broker, &bob, REGISTER_START).await;
    let claim = forge::registration(&reg, &taken, &forge::ec2_key(-7));
    refused(&broker, &bob, REGISTER, bytes(&claim), (401, "credential_taken")).await;
    assert_eq!(stored(&broker).await, before, "alice's credential untouched, no credential or session for bob");

    // Alice, adding a key from her session, names the one she has: excluded.
    let reg = genuine_registration(&broker, &alice, ACCOUNT_START).await;
    let again = forge::registration(&reg, &taken, &forge::ec2_key(-7));
    let detail = refused(&broker, &alice, ACCOUNT_FINISH, bytes(&again), (401, "registration_invalid")).await;
    assert!(detail.contains("CredentialAlteredAlgFromRequest"), "excludeCredentials: {detail}");
    assert_eq!(stored(&broker).await, before);

    let browser = at_mfa(&broker, "alice").await;
    assert_eq!(authenticate(&browser, &broker, &mut key).await.status, 200, "alice's key still signs in");
}
