//! Sessions after sign-in: revocation through the feed (admin, disable, a
//! group lost at the provider), the person's own credentials, MFA refresh.

use palisade_broker::admin;
use palisade_broker::audit::EventKind;
use palisade_broker::db::revocations;
use palisade_broker::login::manage;
use serde_json::json;

use crate::support::{Cli, Idp, Key, TestBroker, authenticate, exchange, mfa_mode, person, set_groups};
use crate::webauthn_cases::{at_mfa, signed_in, signed_up};

async fn feed(broker: &TestBroker) -> Vec<(String, String)> {
    revocations::after(&broker.db, 0).await.unwrap().into_iter().map(|r| (r.target, r.reason)).collect()
}

#[tokio::test]
async fn a_group_lost_at_the_provider_revokes_the_sessions_at_the_next_sign_in() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    set_groups("bob", &["ml-team", "gpu"]).await;
    let mut key = Key::new();
    let bob = signed_up(&broker, "bob", &mut key).await;
    let first: String = sqlx::query_scalar("SELECT id FROM sessions").fetch_one(broker.db.pool()).await.unwrap();
    set_groups("bob", &["gpu"]).await;
    let browser = at_mfa(&broker, "bob").await;
    set_groups("bob", &[]).await;
    let feed = feed(&broker).await;
    assert_eq!(feed, vec![(first.clone(), "groups removed: ml-team".to_owned())]);
    let identity = palisade_broker::db::identities::get_any(&broker.db, &bob).await.unwrap().unwrap();
    assert_eq!(identity.groups, ["gpu"]);
    assert!(authenticate(&browser, &broker, &mut key).await.status == 200);
    assert_eq!(broker.events(EventKind::SessionRevoked).await.len(), 1);
}

#[tokio::test]
async fn admins_revoke_sessions_disable_people_and_reset_credentials() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let alice = signed_up(&broker, "alice", &mut key).await;
    let session: String = sqlx::query_scalar("SELECT id FROM sessions").fetch_one(broker.db.pool()).await.unwrap();

    manage::revoke_session(&broker.db, &session, "cli").await.unwrap();
    assert!(manage::revoke_session(&broker.db, &session, "cli").await.is_err(), "revoked once");
    assert_eq!(feed(&broker).await, vec![(session.clone(), "revoked by an admin".to_owned())]);

    // A reset removes the credential: the next sign-in registers again.
    let user = manage::find_user(&broker.db, "alice").await.unwrap();
    let reset = manage::reset_credentials(&broker.db, &user, &broker.origin(), "cli").await.unwrap();
    assert_eq!(reset.removed, 1);
    assert!(reset.invite_link.is_none(), "an OIDC person registers again at sign-in");
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), "alice").await), "register");

    // Disabled: the feed names the identity and the sign-in stops at the provider's answer.
    admin::disable_identity(&broker.db, &alice, "cli").await.unwrap();
    manage::revoke_sessions_of(&broker.db, &alice, "cli", "identity disabled").await.unwrap();
    assert!(feed(&broker).await.contains(&(alice.clone(), "identity disabled".to_owned())));
    let refused = broker.browser().sign_in(&broker.url("/login"), "alice").await;
    assert_eq!(refused.status, 401);
    broker.assert_failed("callback", "identity_disabled").await;
}

#[tokio::test]
async fn a_person_adds_and_removes_credentials_but_not_the_last_without_fresh_mfa() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let browser = signed_in(&broker, "alice", &mut key).await;
    assert_eq!(broker.browser().get(&broker.url("/api/v1/me/credentials")).await.status, 401);

    // A second key, added from the signed-in session.
    let start = browser.post_json(&broker.url("/api/v1/me/credentials/register/start"), &json!({})).await;
    assert_eq!(start.status, 200, "{}", start.body);
    let mut second = Key::new();
    let reg = second.register(&broker.origin(), serde_json::from_str(&start.body).unwrap());
    let added = browser.post_json(&broker.url("/api/v1/me/credentials/register/finish"), &reg).await;
    assert_eq!(added.status, 200, "{}", added.body);
    let list = browser.get(&broker.url("/api/v1/me/credentials")).await.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let browser2 = at_mfa(&broker, "alice").await;
    assert_eq!(authenticate(&browser2, &broker, &mut second).await.status, 200, "either key signs in");

    // With a stale second factor: no new key, no removal of the last one.
    sqlx::query("UPDATE sessions SET mfa_at = mfa_at - 3600").execute(broker.db.pool()).await.unwrap();
    let stale = browser.post_json(&broker.url("/api/v1/me/credentials/register/start"), &json!({})).await;
    assert_eq!(stale.status, 403);
    let (first, last) = (list[0]["id"].as_str().unwrap(), list[1]["id"].as_str().unwrap());
    assert_eq!(browser.delete(&broker.url(&format!("/api/v1/me/credentials/{first}"))).await.status, 204);
    let refused = browser.delete(&broker.url(&format!("/api/v1/me/credentials/{last}"))).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    broker.assert_failed("account", "fresh_mfa_required").await;
    sqlx::query("UPDATE sessions SET mfa_at = mfa_at + 3600").execute(broker.db.pool()).await.unwrap();
    assert_eq!(browser.delete(&broker.url(&format!("/api/v1/me/credentials/{last}"))).await.status, 204);
    assert_eq!(broker.events(EventKind::CredentialRemoved).await.len(), 2);
    assert_eq!(broker.events(EventKind::CredentialRegistered).await.len(), 2);
}

#[tokio::test]
async fn only_allowed_email_domains_sign_in() {
    let broker = TestBroker::start(Idp::Misbehaving("good"), |c| {
        c.oidc.as_mut().unwrap().allowed_email_domains = vec!["corp.example".into()];
    })
    .await;
    let refused = broker.browser().sign_in(&broker.url("/login"), "johndoe").await;
    assert_eq!(refused.status, 401);
    broker.assert_failed("callback", "email_domain").await;
    let allowed = TestBroker::start(Idp::Misbehaving("good"), |c| {
        c.oidc.as_mut().unwrap().allowed_email_domains = vec!["example.com".into()];
    })
    .await;
    assert_eq!(allowed.browser().sign_in(&allowed.url("/login"), "johndoe").await.url.path(), "/login/mfa");
}

#[tokio::test]
async fn the_cli_exchange_is_single_use_and_needs_the_verifier() {
    let broker = TestBroker::start(Idp::Real, |c| c.login.session_ttl = std::time::Duration::from_secs(3600)).await;
    let mut key = Key::new();
    signed_up(&broker, "alice", &mut key).await;
    let cli = Cli::new();
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url(&cli.start_path()), "alice").await), "authenticate");
    let code = cli.code(&authenticate(&browser, &broker, &mut key).await);
    let wrong = exchange(&browser, &broker, &code, "not-the-verifier").await;
    assert_eq!(wrong.status, 401);
    broker.assert_failed("exchange", "verifier_mismatch").await;
    assert_eq!(exchange(&browser, &broker, &code, &cli.verifier).await.status, 401, "the code is gone");
    broker.assert_failed("exchange", "code_unknown").await;

    // MFA refresh for the session: no OIDC, a fresh mfa_at, the same session; ttl clamped to the session.
    let cli = Cli::new();
    let browser = broker.browser();
    let page = browser.sign_in(&broker.url(&cli.start_path()), "alice").await;
    let code = cli.code(&authenticate(&browser, &broker, &mut key).await);
    let first = exchange(&browser, &broker, &code, &cli.verifier).await.json();
    let session = first["session_id"].as_str().unwrap().to_owned();
    assert!(page.url.path() == "/login/mfa");
    sqlx::query("UPDATE sessions SET mfa_at = mfa_at - 600").execute(broker.db.pool()).await.unwrap();
    let mfa = Cli::new();
    let path = format!("{}&mfa_only=1&session={session}", mfa.start_path());
    let browser = broker.browser();
    let page = browser.get(&broker.url(&path)).await;
    assert_eq!(page.location.unwrap().path(), "/login/mfa", "mfa_only skips the provider");
    let code = mfa.code(&authenticate(&browser, &broker, &mut key).await);
    let refreshed = exchange(&browser, &broker, &code, &mfa.verifier).await.json();
    assert_eq!(refreshed["session_id"], json!(session));
    let before = person(&broker, &first).mfa_at().unwrap();
    let after = person(&broker, &refreshed).mfa_at().unwrap();
    assert!(after >= before, "{before} {after}");
    assert!(refreshed["not_after_unix"].as_u64().unwrap() <= refreshed["session_expires_unix"].as_u64().unwrap());
}

/// UI-02: the JSON endpoints refuse a `text/plain` or form body (what a
/// cross-site form can send without a CORS preflight), even with a valid
/// session cookie, and nothing changes.
#[tokio::test]
async fn json_endpoints_refuse_text_and_form_bodies_and_change_nothing() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let browser = signed_in(&broker, "alice", &mut key).await;
    let credentials_before = broker.events(EventKind::CredentialRegistered).await.len();
    let sessions_before = broker.sessions().await;
    for path in [
        "/api/v1/me/credentials/register/start",
        "/api/v1/me/credentials/register/finish",
        "/login/webauthn/authenticate/start",
        "/login/webauthn/authenticate/finish",
        "/api/v1/login/exchange",
        "/api/v1/enroll",
    ] {
        let url = broker.url(path);
        for (how, answer) in [
            ("text/plain", browser.post_text(&url, "{}").await),
            ("form", browser.post_form(&url, &[("token", "pal1.x"), ("code", "x")]).await),
        ] {
            assert!(answer.status == 415, "{path} with a {how} body answered {}: {}", answer.status, answer.body);
        }
    }
    assert_eq!(broker.events(EventKind::CredentialRegistered).await.len(), credentials_before);
    assert_eq!(broker.sessions().await, sessions_before, "no session was created or ended");
    let list = browser.get(&broker.url("/api/v1/me/credentials")).await;
    assert_eq!(list.status, 200, "the session still works: {}", list.body);
    assert_eq!(list.json().as_array().map(Vec::len), Some(1), "{}", list.body);
}
