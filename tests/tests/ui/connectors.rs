//! An admin enrolls a connector with the command the console prints, and
//! reads the inventory: segment, connector, who can reach each service.

use palisade_tests::bin_path;

use crate::deployment::Ui;

pub(crate) async fn admin_enrolls_a_connector_with_the_printed_command_and_reads_the_inventory(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/connectors")).await;
    let connectors = chrome.text("#connectors tr[data-connector='rack-1']").await;
    assert!(connectors.contains("echo") && connectors.contains("enabled"), "rack-1 and what it serves: {connectors}");
    assert!(connectors.contains("online") && connectors.contains("via 1 broker"), "rack-1's link: {connectors}");
    let version = chrome.text("#connectors tr[data-connector='rack-1'] td.version").await;
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"), "the version rack-1 announced");
    let echo = chrome.text("#inventory-services tr[data-service=echo]").await;
    assert!(echo.contains("inference") && echo.contains("online"), "echo's segment and connector: {echo}");
    assert!(echo.contains("user:bob"), "bob (ml-team) can reach echo: {echo}");
    assert!(!echo.contains("machine:agent-1"), "agent-1 lost echo with the applied policy: {echo}");

    chrome.fill("#connector-name", "gpu-rack-2").await;
    chrome.click_and_load("#btn-token").await;
    let command = chrome.text("#install-command").await;
    chrome.screenshot("12-admin-connectors").await;
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args[..3], ["palisade-connector", "enroll", "--broker"], "{command}");
    assert_eq!(args[4], "--token", "{command}");
    let state = ui.env.fresh_dir("gpu-rack-2");
    let enrolled = tokio::process::Command::new(bin_path("palisade-connector"))
        .args(&args[1..])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .await
        .expect("run palisade-connector enroll");
    assert!(
        enrolled.status.success(),
        "the printed command enrolls: {command}\n{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let again = tokio::process::Command::new(bin_path("palisade-connector"))
        .args(&args[1..])
        .arg("--state-dir")
        .arg(ui.env.fresh_dir("gpu-rack-2-again"))
        .output()
        .await
        .expect("run palisade-connector enroll");
    assert!(!again.status.success(), "the token works once");
    let audit = ui.broker.audit_events().await;
    assert!(audit.of_kind("token.created").iter().any(|r| r.subject.as_deref() == Some("connector:gpu-rack-2")));
}

/// A write with a passkey proof older than `[console] step_up` goes through
/// the WebAuthn step-up first and changes nothing until it is done.
pub(crate) async fn a_stale_passkey_proof_sends_an_admin_write_through_step_up(ui: &Ui) {
    ui.age_passkey_proof().await;
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/connectors")).await;
    let banner = chrome.text(".notice.info").await;
    assert!(banner.contains("Confirm with your passkey"), "the page says writes need a fresh proof: {banner}");
    chrome.fill("#connector-name", "too-soon").await;
    chrome.click_and_load("#btn-token").await;
    chrome.wait_for_path("/console/step-up").await;
    let audit = ui.broker.audit_events().await;
    assert!(
        !audit.of_kind("token.created").iter().any(|r| r.subject.as_deref() == Some("connector:too-soon")),
        "a write with a stale proof changed something"
    );
    chrome.click_and_load("#step-up").await;
    chrome.wait_for_path("/login/mfa").await;
    let mode = chrome.find("#mfa").await.attr("data-mode").await.unwrap();
    assert_eq!(mode.as_deref(), Some("authenticate"), "step-up asks for the registered passkey");
    chrome.click("#go").await;
    chrome.wait_for_path("/admin/connectors").await;
    assert!(chrome.find_all(".notice.info").await.is_empty(), "the proof is fresh again");
}
