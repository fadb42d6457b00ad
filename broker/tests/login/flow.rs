//! The whole sign-in: OIDC at the real provider, a passkey registered at the
//! first sign-in and used at the second, the CLI exchange, a certificate.

use palisade_broker::audit::EventKind;
use palisade_broker::db::credentials;

use crate::support::{Browser, Cli, Idp, Key, TestBroker, authenticate, exchange, mfa_mode, person, register};

async fn first_cli_login(broker: &TestBroker, user: &str, key: &mut Key) -> (Browser, serde_json::Value) {
    let browser = broker.browser();
    let cli = Cli::new();
    let mfa = browser.sign_in(&broker.url(&cli.start_path()), user).await;
    assert_eq!(mfa.url.path(), "/login/mfa");
    assert_eq!(mfa_mode(&mfa), "register");
    let finish = register(&browser, broker, key).await;
    let code = cli.code(&finish);
    let answer = exchange(&browser, broker, &code, &cli.verifier).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    (browser, answer.json())
}

#[tokio::test]
async fn a_person_signs_in_registers_a_passkey_and_gets_a_certificate() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let (_, answer) = first_cli_login(&broker, "alice", &mut key).await;

    let peer = person(&broker, &answer);
    assert_eq!(peer.id().uri(), answer["identity"].as_str().unwrap());
    assert_eq!(peer.name(), "alice");
    assert_eq!(peer.groups(), ["ml-team"]);
    assert_eq!(peer.session(), answer["session_id"].as_str());
    assert_eq!(peer.auth_methods(), ["oidc", "webauthn"]);
    let now = palisade_broker::db::unix_seconds(std::time::SystemTime::now());
    let mfa_at = i64::try_from(peer.mfa_at().unwrap()).unwrap();
    assert!((now - mfa_at).abs() < 30);
    let session_end = answer["session_expires_unix"].as_u64().unwrap();
    let not_after = answer["not_after_unix"].as_u64().unwrap();
    assert!(not_after <= session_end, "the certificate outlives its session");
    assert!(not_after <= u64::try_from(now).unwrap() + 8 * 3600 + 5);
    assert_eq!(answer["quic_addr"], broker.ready.quic.to_string());
    assert_eq!(broker.sessions().await, 1);
    assert_eq!(broker.events(EventKind::SessionCreated).await.len(), 1);
    assert_eq!(broker.events(EventKind::CredentialRegistered).await.len(), 1);

    // Second sign-in: the portal, with the passkey.
    let browser = broker.browser();
    let mfa = browser.sign_in(&broker.url("/login?return_to=/after/login"), "alice").await;
    assert_eq!(mfa_mode(&mfa), "authenticate");
    let login_cookie = browser.cookie(&broker.url("/"), "__Host-palisade-login").unwrap();
    let finish = authenticate(&browser, &broker, &mut key).await;
    assert_eq!(finish.status, 200, "{}", finish.body);
    assert_eq!(finish.json()["redirect"], "/after/login");
    assert!(browser.cookie(&broker.url("/"), "__Host-palisade-login").is_none(), "the pre-login cookie is replaced");
    let session_cookie = browser.cookie(&broker.url("/"), "__Host-palisade-session").unwrap();
    assert_ne!(session_cookie, login_cookie);
    let home = browser.get(&broker.url("/")).await;
    assert!(home.body.contains("Signed in") && home.body.contains("ml-team"), "{}", home.body);
    assert_eq!(broker.sessions().await, 2);

    // WA-08: the counter the authenticator reported is stored.
    let alice = peer.id().id.clone();
    let creds = credentials::all_for(&broker.db, &alice).await.unwrap();
    let stored = serde_json::to_value(&creds[0].passkey).unwrap();
    assert_eq!(stored["cred"]["counter"], 1, "{stored}");
    assert!(creds[0].last_used_at.is_some());
}

#[tokio::test]
async fn login_pages_carry_strict_headers_and_host_cookies() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let browser = broker.browser();
    let start = browser.get(&broker.url("/login")).await;
    assert_eq!(start.status, 303, "{}", start.body);
    assert!(start.location.unwrap().as_str().starts_with(crate::support::provider()));
    let raw = reqwest::Client::builder()
        .use_preconfigured_tls(palisade_proto::tls::https_client_config(&broker.trust()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(broker.url("/login"))
        .send()
        .await
        .unwrap();
    let cookie = raw.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-palisade-login="), "{cookie}");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let csp = raw.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline")
    );
    let script = browser.get(&broker.url("/login/static/webauthn.js")).await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("parseCreationOptionsFromJSON"));
}
