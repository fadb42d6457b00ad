//! The web console seen from a browser: the install command an admin
//! copies (CA-11) and a session cookie kept after its session ended (UI-10).

use palisade_broker::login::manage;

use crate::support::{Browser, Idp, Key, Resp, TestBroker};
use crate::webauthn_cases::{at_mfa, signed_in};

/// The CSRF token of a console page.
fn csrf(page: &Resp) -> String {
    assert_eq!(page.status, 200, "{}", page.body);
    let at = page.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no form: {}", page.body)) + 19;
    page.body[at..at + page.body[at..].find('"').unwrap()].to_owned()
}

/// The text of `<pre … id="install-command"><code>…</code></pre>`, if the page has one.
fn install_command(page: &Resp) -> Option<String> {
    let at = page.body.find("id=\"install-command\"")?;
    let code = at + page.body[at..].find("<code>")? + 6;
    let end = code + page.body[code..].find("</code>")?;
    Some(page.body[code..end].to_owned())
}

async fn connectors_with_tokens(broker: &TestBroker) -> i64 {
    broker.count("SELECT COUNT(*) FROM enrollment_tokens").await
}

/// CA-11 in the console: a connector name that means something to a shell
/// (or is 10 kB long) is refused with a message and no token; a good one
/// gets a command made of the broker's address and the token alone.
#[tokio::test]
async fn the_install_command_carries_no_name_and_hostile_names_get_no_token() {
    let broker = TestBroker::start(Idp::Real, |c| c.console.admin_users = vec!["alice@example.com".into()]).await;
    let admin = signed_in(&broker, "alice", &mut Key::new()).await;
    let token = csrf(&admin.get(&broker.url("/admin/connectors")).await);
    let post = |name: String| {
        let (admin, url, token) = (admin.clone(), broker.url("/admin/connectors/token"), token.clone());
        async move { admin.post_form_same_origin(&url, &[("name", &name), ("csrf", &token)]).await }
    };
    for hostile in ["$(reboot)".to_owned(), "gpu;id".into(), "`id`".into(), "a b".into(), "a".repeat(10 * 1024)] {
        let page = post(hostile.clone()).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("invalid identity name"), "{:.80}: the notice names the problem", hostile);
        assert!(install_command(&page).is_none(), "{:.80}: no command shown", hostile);
    }
    assert_eq!(connectors_with_tokens(&broker).await, 0);

    let page = post("gpu-rack-1".into()).await;
    let command = install_command(&page).unwrap_or_else(|| panic!("no command: {}", page.body));
    let words: Vec<&str> = command.split(' ').collect();
    assert_eq!(words[..4], ["palisade-connector", "enroll", "--broker", &format!("https://{}", broker.ready.quic)]);
    assert_eq!(words[4], "--token");
    assert_eq!(words.len(), 6, "{command}");
    assert!(
        words[5].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "the token needs no quoting in a shell: {command}"
    );
    assert!(!command.contains("gpu-rack-1"), "the name is not part of the command");
    assert_eq!(connectors_with_tokens(&broker).await, 1);
}

/// What a kept copy of a session cookie gets: a page sends it to sign in,
/// a form post and the JSON API answer 401.
async fn refused_everywhere(broker: &TestBroker, copy: &Browser, token: &str) {
    let page = copy.get(&broker.url("/portal")).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location.unwrap().path(), "/login");
    let post = copy.post_form_same_origin(&broker.url("/portal/logout"), &[("csrf", token)]).await;
    assert_eq!(post.status, 401, "{}", post.body);
    assert_eq!(copy.get(&broker.url("/api/v1/me/credentials")).await.status, 401);
}

async fn session_ids(broker: &TestBroker) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM sessions WHERE revoked_at IS NULL").fetch_all(broker.db.pool()).await.unwrap()
}

/// UI-10: the portal's session cookie, replayed after its session ended by
/// logout, by the person from another browser, or by an admin, is refused.
#[tokio::test]
async fn a_kept_session_cookie_is_refused_after_logout_or_revocation() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut key = Key::new();
    let browser = signed_in(&broker, "alice", &mut key).await;
    let copy = browser.fork();
    let token = csrf(&browser.get(&broker.url("/portal")).await);
    assert_eq!(copy.get(&broker.url("/portal")).await.status, 200, "the copy works while the session lives");
    let out = browser.post_form_same_origin(&broker.url("/portal/logout"), &[("csrf", &token)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(browser.cookie(&broker.url("/"), "__Host-palisade-session").is_none(), "the logout clears the cookie");
    refused_everywhere(&broker, &copy, &token).await;

    // Ended from another of her browsers.
    let (kept, kept_id) = sign_in_again(&broker, &mut key).await;
    let (other, other_id) = sign_in_again(&broker, &mut key).await;
    let other_token = csrf(&other.get(&broker.url("/portal/sessions")).await);
    let kept_token = csrf(&kept.get(&broker.url("/portal")).await);
    let revoke = other
        .post_form_same_origin(&broker.url(&format!("/portal/sessions/{kept_id}/revoke")), &[("csrf", &other_token)])
        .await;
    assert_eq!(revoke.status, 303, "{}", revoke.body);
    refused_everywhere(&broker, &kept, &kept_token).await;

    // Ended by an admin.
    assert!(!session_ids(&broker).await.contains(&kept_id), "the revoke ended the kept session");
    manage::revoke_session(&broker.db, &other_id, "cli").await.unwrap();
    refused_everywhere(&broker, &other, &other_token).await;
    assert!(!session_ids(&broker).await.contains(&other_id));
}

/// Another sign-in of alice: its browser and the id of its new session.
async fn sign_in_again(broker: &TestBroker, key: &mut Key) -> (Browser, String) {
    let before = session_ids(broker).await;
    let browser = at_mfa(broker, "alice").await;
    assert_eq!(crate::support::authenticate(&browser, broker, key).await.status, 200);
    let id = session_ids(broker).await.into_iter().find(|id| !before.contains(id)).unwrap();
    (browser, id)
}
