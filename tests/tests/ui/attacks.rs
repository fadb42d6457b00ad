//! The console from the attacker's side: hostile text from people, the
//! identity provider (a display name given by the real OIDC provider) and
//! browsers renders as text; cross-site and
//! token-less posts change nothing; every page carries the security
//! headers; a person who is not an admin gets a 403 that explains nothing.

use palisade_tests::webdriver::Chrome;
use palisade_tests::{OidcProvider, open_db};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::deployment::{HOSTILE_USER_AGENT, Ui, http_client};
use crate::policies::HOSTILE_COMMENT;

pub(crate) const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
/// An email without whitespace (the invite checks for it) that is still markup.
const HOSTILE_EMAIL: &str = "<img/src=x/onerror=alert(1)>@evil.example";

/// Asserts the page runs no injected markup: no image element, no dialog.
pub(crate) async fn assert_inert(ui: &Ui, page: &str) {
    assert_inert_in(&ui.chrome, page).await;
}

async fn assert_inert_in(chrome: &Chrome, page: &str) {
    let images = chrome.client().execute("return document.images.length", vec![]).await.unwrap();
    assert_eq!(images.as_u64(), Some(0), "{page}: an <img> from hostile text became an element");
    assert_eq!(chrome.dialog().await, None, "{page}: a script opened a dialog");
}

/// Eve, whose name at the identity provider is markup, signs in through the
/// provider in a second browser: her portal shows the name as text.
async fn eve_signs_in_with_a_hostile_name_from_the_provider(ui: &Ui, chrome: &Chrome) {
    OidcProvider::shared().await.set_user_named("eve", &["ml-team"], HOSTILE_NAME).await;
    chrome.goto(&ui.url("/portal")).await;
    chrome.fill("input[name=username]", "eve").await;
    chrome.fill("input[name=password]", &OidcProvider::password("eve")).await;
    chrome.click_and_load("button[type=submit]").await;
    chrome.wait_for_path("/login/mfa").await;
    chrome.click("#go").await;
    chrome.wait_for_path("/portal").await;
    assert_eq!(chrome.text("#whoami").await, HOSTILE_NAME, "the header shows the provider's name as text");
    assert_eq!(chrome.text("#me-name").await, HOSTILE_NAME, "the portal shows it as text");
    assert_inert_in(chrome, "eve's /portal").await;
    chrome.screenshot("10b-hostile-name-portal").await;
    chrome.click_and_load("header.top .me button").await;
}

pub(crate) async fn hostile_names_and_user_agents_render_as_text(ui: &Ui) {
    let out = ui.broker.cli(&["user", "invite", HOSTILE_EMAIL, "--name", "mallory", "--group", "ml-team"]).await;
    // The CLI reads the configured listen port (0 in tests): keep only the path.
    let printed = out.expect_success();
    let path = &printed[printed.find("/invite/").expect("an invite link")..];
    let link = ui.url(path);
    let second = Chrome::start(&ui.env.fresh_dir("chrome-second"), None).await;
    second.add_virtual_authenticator().await;
    eve_signs_in_with_a_hostile_name_from_the_provider(ui, &second).await;
    let db = open_db(ui.broker.database_url()).await;
    let stored: Option<String> = sqlx::query_scalar("SELECT display_name FROM users WHERE email = 'eve@example.com'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(HOSTILE_NAME), "the name came from the provider, as given");

    let chrome = &ui.chrome;
    let eve = ui.user_id("eve@example.com").await;
    chrome.goto(&ui.url(&format!("/admin/users/{eve}"))).await;
    assert!(chrome.text("main").await.contains(HOSTILE_NAME), "eve's page shows her name as text");
    assert_inert(ui, "eve's person page").await;
    chrome.goto(&ui.url("/admin/audit?person=eve%40example.com&kind=login.succeeded")).await;
    let audit = chrome.text("#audit-events").await;
    assert!(audit.contains(HOSTILE_NAME), "the sign-in's audit event shows the name as text: {audit}");
    assert_inert(ui, "eve's audit events").await;

    chrome.goto(&ui.url("/admin/sessions")).await;
    let people = chrome.text("#people").await;
    assert!(people.contains(HOSTILE_NAME), "the display name is shown as text: {people}");
    assert!(people.contains(HOSTILE_EMAIL), "the email is shown as text: {people}");
    assert_inert(ui, "/admin/sessions").await;
    let agents = chrome.text("#active-sessions").await;
    assert!(agents.contains("</script><img src=x onerror=alert(1)>"), "the user agent is shown as text: {agents}");

    for (path, css) in [
        ("/portal/sessions", "#my-sessions"),
        ("/admin/audit?person=bob%40example.com&trail=1", "#login-trail"),
        ("/admin/policies/history", "#policy-history"),
    ] {
        chrome.goto(&ui.url(path)).await;
        let text = chrome.text(css).await;
        assert!(text.contains("<img src=x onerror=alert(1)>"), "{path} shows the hostile text as text: {text}");
        assert_inert(ui, path).await;
    }
    assert!(chrome.text("#policy-history").await.contains(HOSTILE_COMMENT));
    chrome.goto(&ui.url("/admin/audit?person=bob%40example.com&trail=1")).await;
    assert!(chrome.text("#login-trail").await.contains(HOSTILE_USER_AGENT), "the login trail keeps the user agent");

    mallory_is_not_an_admin(ui, &link, second).await;
}

/// The invited person signs in with a passkey in the second browser (eve
/// signed out of it): their email shows as text, and every admin page is
/// the same bare 403.
async fn mallory_is_not_an_admin(ui: &Ui, link: &str, chrome: Chrome) {
    chrome.goto(link).await;
    chrome.wait_for_path("/login/mfa").await;
    chrome.click("#go").await;
    chrome.wait_for_path("/").await;
    chrome.goto(&ui.url("/portal")).await;
    let me = chrome.text("#whoami").await;
    assert_eq!(me, HOSTILE_EMAIL, "the email is shown as text");
    let source = chrome.client().source().await.unwrap();
    assert!(!source.contains("<img/src"), "raw markup in the page: {source}");
    assert!(chrome.find_all("a[href='/admin']").await.is_empty(), "no admin links for a person who is not an admin");
    let images = chrome.client().execute("return document.images.length", vec![]).await.unwrap();
    assert_eq!(images.as_u64(), Some(0));
    assert_eq!(chrome.dialog().await, None);
    let cookie = chrome.cookie("__Host-palisade-session").await.expect("mallory has a session");
    let admin_pages = [
        "/admin",
        "/admin/policies",
        "/admin/sessions",
        "/admin/machines",
        "/admin/groups",
        "/admin/connectors",
        "/admin/audit",
        "/admin/audit/export?format=jsonl",
    ];
    for path in admin_pages {
        let page = ui.http().get(ui.url(path)).header("cookie", format!("__Host-palisade-session={cookie}")).send();
        let page = page.await.unwrap();
        assert_eq!(page.status(), 403, "{path}");
        let body = page.text().await.unwrap();
        assert!(!body.to_lowercase().contains("admin"), "{path}: the 403 says which check failed: {body}");
    }
    let token = chrome.find("input[name=csrf]").await.attr("value").await.unwrap().expect("a csrf value");
    let bob = ui.broker.active_sessions("bob").await;
    let revoke = ui
        .http()
        .post(ui.url(&format!("/portal/sessions/{}/revoke", bob[0])))
        .header("cookie", format!("__Host-palisade-session={cookie}"))
        .header("origin", ui.origin())
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 404, "another person's session is not found from the portal");
    assert_eq!(ui.broker.active_sessions("bob").await, bob, "bob's session is untouched");
    chrome.goto(&ui.url("/admin/policies")).await;
    assert_eq!(chrome.text("h1").await, "Not allowed");
    chrome.screenshot("11-not-an-admin-403").await;
    chrome.close().await;
}

pub(crate) async fn a_person_who_is_not_an_admin_gets_a_bare_403(ui: &Ui) {
    let anonymous = ui.http().get(ui.url("/admin/policies")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303, "an anonymous browser is sent to sign in");
    let location = anonymous.headers()["location"].to_str().unwrap();
    assert_eq!(location, "/login?return_to=%2Fadmin%2Fpolicies");
    let post = ui.http().post(ui.url("/admin/sessions/x/revoke")).header("origin", ui.origin()).send().await.unwrap();
    assert_eq!(post.status(), 403, "an anonymous post is refused before anything runs");
}

/// The CSRF token on the admin sessions page.
async fn csrf_token(ui: &Ui) -> String {
    ui.chrome.goto(&ui.url("/portal/sessions")).await;
    let field = ui.chrome.find("input[name=csrf]").await;
    field.attr("value").await.unwrap().expect("a csrf value")
}

pub(crate) async fn cross_site_and_tokenless_posts_change_nothing(ui: &Ui) {
    let signed_in = ui.broker.active_sessions("bob").await;
    let token = csrf_token(ui).await;
    let cookie = ui.session_cookie().await;
    let versions = || async { ui.broker.audit_events().await.of_kind("policy.activated").len() };
    let before = versions().await;
    let apply = |origin: Option<String>, site: Option<&'static str>, csrf: Option<&str>| {
        let mut form = vec![
            ("file", "agents.cedar"),
            ("text", "permit (principal, action, resource);"),
            ("comment", "open everything"),
            ("action", "apply"),
        ];
        if let Some(t) = csrf {
            form.push(("csrf", t));
        }
        let mut request = ui.http().post(ui.url("/admin/policies")).header("cookie", &cookie).form(&form);
        if let Some(o) = origin {
            request = request.header("origin", o);
        }
        if let Some(s) = site {
            request = request.header("sec-fetch-site", s);
        }
        request.send()
    };
    let cases = [
        ("no token", apply(Some(ui.origin()), Some("same-origin"), None).await.unwrap()),
        ("a wrong token", apply(Some(ui.origin()), Some("same-origin"), Some("0000")).await.unwrap()),
        ("a foreign Origin", apply(Some("https://evil.example".into()), None, Some(&token)).await.unwrap()),
        ("cross-site fetch", apply(Some(ui.origin()), Some("cross-site"), Some(&token)).await.unwrap()),
        ("no Origin", apply(None, None, Some(&token)).await.unwrap()),
    ];
    for (what, response) in cases {
        assert_eq!(response.status(), 403, "{what}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("csrf") && !body.contains("Origin"), "{what}: the 403 names the check: {body}");
    }
    let control = ui
        .http()
        .post(ui.url("/portal/sessions/no-such-session/revoke"))
        .header("cookie", &cookie)
        .header("origin", ui.origin())
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(control.status(), 404, "with every check passed the request reaches the handler");

    cross_site_form_in_the_browser(ui, &token).await;
    assert_eq!(versions().await, before, "no refused post applied a policy");
    let active = ui.broker.active_sessions("bob").await;
    assert_eq!(active, signed_in, "bob's sessions (browser and device) are all still there");
}

/// Another site's page auto-submits a form to the console, even with a leaked token.
async fn cross_site_form_in_the_browser(ui: &Ui, token: &str) {
    let target = ui.url("/portal/logout");
    let page = format!(
        "<!doctype html><form id=f method=post action=\"{target}\"><input name=csrf value=\"{token}\"></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                page.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(page.as_bytes()).await;
        }
    });
    ui.chrome.goto(&format!("http://127.0.0.1:{}/", addr.port())).await;
    ui.chrome.wait_for_path("/portal/logout").await;
    let shown = ui.chrome.text("h1").await;
    assert_eq!(shown, "Not allowed", "the cross-site post is refused");
    ui.chrome.screenshot("10-cross-site-post-refused").await;
    server.abort();
    ui.chrome.goto(&ui.url("/portal")).await;
    ui.chrome.wait_for_path("/portal").await;
}

pub(crate) async fn every_page_carries_the_security_headers(ui: &Ui) {
    let cookie = ui.session_cookie().await;
    let pages = [
        "/portal",
        "/portal/sessions",
        "/portal/passkeys",
        "/admin",
        "/admin/policies",
        "/admin/policies/history",
        "/admin/sessions",
        "/admin/machines",
        "/admin/groups",
        "/admin/connectors",
        "/admin/audit",
        "/admin/audit?person=bob%40example.com&trail=1",
        "/console/step-up",
        "/admin/policies/explain?principal=machine%3Aagent-1&service=echo",
        "/device",
        "/device?user_code=BBBB-BBBB",
        "/admin/sessions?people_size=10&people_page=2",
    ];
    for path in pages {
        let response = ui.http().get(ui.url(path)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(path, response.headers());
    }
    for (path, status) in [
        ("/portal", 303),
        ("/device?user_code=BBBB-BBBB", 303),
        ("/admin/audit/export?format=csv", 303),
        ("/console/static/console.css", 200),
    ] {
        let response = http_client(&ui.broker.ca_der()).get(ui.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path} without a session");
        assert_security_headers(path, response.headers());
    }
    let csv = ui.http().get(ui.url("/admin/audit/export?format=csv")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_security_headers("export", csv.headers());
    let csv = csv.text().await.expect("the whole export arrives");
    let mut lines = csv.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("time,time_ms,seq,kind,")),
        "the CSV header comes first:\n{csv}"
    );
    assert!(lines.any(|l| l.contains("\"login.succeeded\"")), "the admin's own sign-in is in the export:\n{csv}");
    let session = ui.chrome.client().get_named_cookie("__Host-palisade-session").await.unwrap();
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.path(), Some("/"));
    assert!(session.same_site().is_some(), "SameSite is set");
}

fn assert_security_headers(path: &str, h: &reqwest::header::HeaderMap) {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let csp = get("content-security-policy");
    for part in
        ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"]
    {
        assert!(csp.contains(part), "{path}: CSP lacks {part}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(get("referrer-policy"), "same-origin", "{path}");
    assert_eq!(get("x-frame-options"), "DENY", "{path}");
    assert_eq!(get("cache-control"), "no-store", "{path}");
}
