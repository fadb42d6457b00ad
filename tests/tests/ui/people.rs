//! A person signs in and sees their services; an admin revokes a session;
//! the audit page shows what happened.

use std::time::Duration;

use palisade_proto::reject::RejectCode;
use palisade_tests::{Flow, within};

use crate::deployment::Ui;

pub(crate) async fn person_signs_in_registers_a_passkey_and_sees_their_services(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/portal")).await;
    chrome.find("input[name=username]").await;
    chrome.screenshot("01-provider-sign-in").await;
    chrome.fill("input[name=username]", "bob").await;
    chrome.fill("input[name=password]", "bob-pw").await;
    chrome.click_and_load("button[type=submit]").await;

    chrome.wait_for_path("/login/mfa").await;
    let mode = chrome.find("#mfa").await.attr("data-mode").await.unwrap();
    assert_eq!(mode.as_deref(), Some("register"), "a first sign-in registers a passkey");
    chrome.screenshot("02-register-passkey").await;
    chrome.click("#go").await;

    chrome.wait_for_path("/portal").await;
    let row = chrome.text("#my-services tr[data-service=echo]").await;
    assert!(row.contains("palisade connect echo --listen 127.0.0.1:"), "the exact command is shown: {row}");
    assert!(row.contains("online"), "the connector serving echo is online: {row}");
    let login = chrome.text("pre.cmd").await;
    assert_eq!(login, format!("palisade login --broker {}", ui.origin()));
    chrome.screenshot("03-portal-my-services").await;

    chrome.goto(&ui.url("/portal/passkeys")).await;
    let passkeys = chrome.find_all("#passkeys tbody tr").await;
    assert_eq!(passkeys.len(), 1, "the passkey registered at sign-in is listed");
    chrome.screenshot("04-portal-passkeys").await;
    let audit = ui.broker.audit_events().await;
    assert!(audit.has_kind("credential.registered"), "{}", audit.summary());
}

pub(crate) async fn admin_revokes_a_session_and_its_tunnel_closes(ui: &Ui) {
    let flow = Flow::start(ui.alice_forward.addr()).await;
    palisade_tests::wait_for("alice's tunnel to carry some bytes", Duration::from_secs(5), || async {
        flow.echoed() >= 8192
    })
    .await;
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/sessions")).await;
    let tunnels = chrome.text("#live-tunnels").await;
    assert!(tunnels.contains("alice"), "alice's live tunnel is listed: {tunnels}");
    assert!(
        [" KiB", " MiB", " GiB"].iter().any(|unit| tunnels.contains(unit)),
        "the bytes her tunnel moved so far are shown: {tunnels}"
    );
    assert!(tunnels.contains(" s") || tunnels.contains(" min"), "how long it has been open is shown: {tunnels}");
    chrome.screenshot("07-admin-sessions").await;

    let row = format!("#active-sessions tr[data-session='{}'] button", ui.alice.session_id());
    chrome.click_and_load(&row).await;
    chrome.wait_for_path("/admin/sessions").await;
    let end = within("alice's live tunnel to close after the revocation", Duration::from_secs(3), flow.ended()).await;
    eprintln!("alice's tunnel ended: {}", end.how);
    let err = ui.alice.tunnel_exchange("echo", b"still there?").await.expect_err("the session was revoked");
    assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{err}");
    let remaining = chrome.find_all(&format!("tr[data-session='{}']", ui.alice.session_id())).await;
    assert!(remaining.is_empty(), "the revoked session is no longer listed as active");
}

pub(crate) async fn audit_page_shows_the_policy_change_and_the_revocation(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/audit")).await;
    let status = chrome.text(".notice").await;
    assert!(status.starts_with("Hash chain intact"), "chain status: {status}");
    chrome.find("#audit-events tr[data-kind='policy.activated']").await;
    chrome.screenshot("08-admin-audit").await;

    chrome.goto(&ui.url("/admin/audit?kind=session.revoked")).await;
    let revoked = chrome.text("#audit-events").await;
    assert!(revoked.contains(ui.alice.session_id()), "the revocation of alice's session: {revoked}");
    for row in chrome.find_all("#audit-events tbody tr").await {
        assert_eq!(row.attr("data-kind").await.unwrap().as_deref(), Some("session.revoked"), "the kind filter holds");
    }

    chrome.goto(&ui.url("/admin/audit?person=alice%40example.com")).await;
    let alice = chrome.text("#audit-events").await;
    assert!(alice.contains("stream.ended") && alice.contains("login.succeeded"), "alice's events: {alice}");
    assert!(!alice.contains("policy.activated"), "the person filter holds: {alice}");

    chrome.goto(&ui.url("/admin/audit?person=bob%40example.com&trail=1")).await;
    let trail = chrome.text("#login-trail").await;
    assert!(trail.contains("login.succeeded") && trail.contains("session.created"), "bob's login trail: {trail}");
    assert!(trail.contains("oidc") && trail.contains("127.0.0.1"), "method and address: {trail}");
    chrome.screenshot("09-admin-login-trail").await;
}

/// The people table is ordered on the server: by name at first, and a
/// header link (clicked, or Enter on it) orders the whole table by that
/// column, again to reverse.
pub(crate) async fn tables_sort_by_a_column_with_the_mouse_and_the_keyboard(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/sessions")).await;
    let names = || async {
        let mut out = Vec::new();
        for cell in chrome.find_all("#people tbody tr td:first-child").await {
            out.push(cell.text().await.expect("a cell's text").to_lowercase());
        }
        out
    };
    let ascending = names().await;
    assert!(ascending.len() >= 2, "several people to sort");
    let mut sorted = ascending.clone();
    sorted.sort();
    assert_eq!(ascending, sorted, "people come by name, A to Z");
    let header = "#people thead th:first-child";
    assert_eq!(chrome.find(header).await.attr("aria-sort").await.unwrap().as_deref(), Some("ascending"));
    chrome.click_and_load(&format!("{header} a")).await;
    sorted.reverse();
    assert_eq!(names().await, sorted, "a click on Name reverses the order");
    assert_eq!(chrome.find(header).await.attr("aria-sort").await.unwrap().as_deref(), Some("descending"));
    chrome.enter_and_load(&format!("{header} a")).await;
    sorted.reverse();
    assert_eq!(names().await, sorted, "Enter on the focused header link orders A to Z again");
}
