//! An admin edits a policy with an error, sees it at its line, fixes it,
//! previews and applies it; a machine's tunnel that was allowed is refused.

use palisade_proto::reject::RejectCode;

use crate::deployment::Ui;

/// The machines' policy with a syntax error on line 4 (a doubled comma).
const BROKEN: &str = "@id(\"ml-agents-inference\")\npermit (\n  principal in Group::\"ml-agents\",\n  action == Action::\"connect\",,\n  resource in Segment::\"inference\"\n);\n";

/// The fix: only a group nobody is in may reach the segment.
const FIXED: &str = "@id(\"ml-agents-inference\")\npermit (\n  principal in Group::\"ml-agents-retired\",\n  action == Action::\"connect\",\n  resource in Segment::\"inference\"\n);\n";

/// A comment with markup: the history must show it as text.
pub(crate) const HOSTILE_COMMENT: &str = "agents lose inference <img src=x onerror=alert(1)>";

pub(crate) async fn admin_fixes_a_policy_error_at_its_line_applies_it_and_a_tunnel_is_refused(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin")).await;
    let tiles = chrome.text(".tiles").await;
    assert!(tiles.contains("1 / 1"), "one service, served by an online connector: {tiles}");
    chrome.screenshot("05-admin-overview").await;

    chrome.goto(&ui.url("/admin/policies?file=agents.cedar")).await;
    let text = chrome.find("#policy-text").await.prop("value").await.unwrap().unwrap_or_default();
    assert!(text.contains("ml-agents"), "the editor shows the active agents.cedar: {text}");
    chrome.fill("#policy-text", BROKEN).await;
    chrome.click_and_load("#btn-validate").await;
    let marked = chrome.find("#error-line").await;
    assert_eq!(marked.attr("data-line").await.unwrap().as_deref(), Some("4"), "the error is marked at line 4");
    let message = chrome.text("#policy-result").await;
    assert!(message.contains("Line 4"), "the message names the line: {message}");
    chrome.screenshot("06-admin-policy-error").await;

    let kept = chrome.find("#policy-text").await.prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(kept, BROKEN, "the edited text is kept after a refusal");
    chrome.fill("#policy-text", FIXED).await;
    chrome.fill("#policy-comment", HOSTILE_COMMENT).await;
    chrome.click_and_load("#btn-diff").await;
    let diff = chrome.text("#policy-diff").await;
    assert!(diff.contains("ml-agents-retired"), "the diff shows the change: {diff}");
    chrome.click_and_load("#btn-preview").await;
    let preview = chrome.text("#policy-preview").await;
    assert!(preview.contains("loses") && preview.contains("agent-1"), "agent-1 loses echo: {preview}");
    chrome.click_and_load("#btn-apply").await;
    let applied = chrome.text("#policy-result").await;
    assert!(applied.contains("is active"), "the new version is active: {applied}");

    let err = ui.agent.tunnel_exchange("echo", b"after the change").await.expect_err("the policy no longer allows it");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    assert!(ui.agent_forward.exchange(b"x").await.unwrap_or_default().is_empty(), "no byte passes the old forward");
    let audit = ui.broker.audit_events().await;
    let activated = audit.last_of_kind("policy.activated").expect("the apply is audited");
    assert_eq!(activated.detail_str("comment"), Some(HOSTILE_COMMENT), "{}", audit.summary());

    chrome.goto(&ui.url("/admin/policies/history")).await;
    chrome.find("#policy-history tr[data-version='1']").await;
    chrome.screenshot("06b-admin-policy-history").await;
}
