//! `palisade login --device` approved from the console: the real CLI asks
//! for a code, the signed-in person opens the address it prints, sees a
//! console page (navigation, who they are, where the request comes from),
//! approves, and the CLI gets its certificate for a session of theirs. A
//! code nobody is waiting for is refused on the same page.

use palisade_tests::open_db;

use crate::deployment::Ui;

pub(crate) async fn person_approves_a_device_login_on_a_console_page(ui: &Ui) {
    let device = ui.broker.person("bob").start_device_login().await;
    let chrome = &ui.chrome;
    chrome.goto(device.approval_url()).await;
    chrome.wait_for_path("/device").await;
    chrome.find("header.top nav[aria-label=Main] a[href='/portal/sessions']").await;
    assert_eq!(chrome.text("#whoami").await, "Bob Example", "the console header names who approves");
    assert_eq!(chrome.text("h1").await, "Approve a device");
    let waiting = chrome.text("#device-approval .notice.info").await;
    assert!(waiting.contains("127.0.0.1") && waiting.contains("waiting"), "where the request comes from: {waiting}");
    let code = chrome.find("#user-code").await.prop("value").await.unwrap().unwrap_or_default();
    assert!(device.approval_url().ends_with(&code), "the code from the address is filled in: {code}");
    chrome.screenshot("03b-portal-device-approval").await;

    chrome.click_and_load("#btn-approve").await;
    assert_eq!(chrome.text("h1").await, "Device approved");
    let person = device.finish().await;
    assert!(
        ui.broker.active_sessions("bob").await.iter().any(|s| s == person.session_id()),
        "the CLI's certificate names a new session of bob's"
    );
    let audit = ui.broker.audit_events().await;
    let approved = audit.last_of_kind("device_code.approved").expect("the approval is audited");
    assert_eq!(approved.subject.as_deref(), Some(person.session_id()), "{}", audit.summary());

    let used = open_db(ui.broker.database_url()).await;
    let redeemed: Option<i64> = sqlx::query_scalar("SELECT redeemed_at FROM device_codes WHERE user_code = $1")
        .bind(&code)
        .fetch_one(&used)
        .await
        .unwrap();
    assert!(redeemed.is_some(), "the code was redeemed once");
    chrome.goto(&ui.url(&format!("/device?user_code={code}"))).await;
    let gone = chrome.text("#device-approval .notice.error").await;
    assert!(gone.contains("No sign-in is waiting for this code"), "a used code is not offered again: {gone}");
    chrome.click_and_load("#btn-approve").await;
    let refused = chrome.text("#device-approval .notice.error").await;
    assert!(refused.contains("No sign-in is waiting"), "approving a used code is refused on the page: {refused}");
    let audit = ui.broker.audit_events().await;
    let failed = audit.of_kind("login.failed");
    assert!(
        failed.iter().any(|r| r.detail["step"] == "device" && r.detail["reason"] == "user_code_used_or_expired"),
        "the refusal is audited with its reason: {}",
        audit.summary()
    );
}
