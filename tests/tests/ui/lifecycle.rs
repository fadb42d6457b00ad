//! A policy's life and the admin's levers on live tunnels, each checked by
//! its effect on real tunnels: a new version opens the inference segment to
//! agents again, and the explain page names the policy that decides; moving
//! the service to another segment takes it out of their reach and back;
//! "Kill" cuts one live tunnel (its TCP connection closes) without revoking
//! anything; disabling a machine cuts its tunnel and refuses new ones; a
//! rollback makes the older version active again, enforced.

use std::time::Duration;

use palisade_proto::reject::RejectCode;
use palisade_tests::{Agent, Flow, wait_for, within};

use crate::deployment::Ui;

/// Agents (both groups) may reach the inference segment again.
const REOPENED: &str = "@id(\"ml-agents-inference\")\npermit (\n  principal in Group::\"ml-agents\",\n  action == Action::\"connect\",\n  resource in Segment::\"inference\"\n);\n\n@id(\"batch-agents-inference\")\npermit (\n  principal in Group::\"batch-agents\",\n  action == Action::\"connect\",\n  resource in Segment::\"inference\"\n);\n";

async fn reaches_echo(agent: &Agent) -> bool {
    agent.tunnel_exchange("echo", b"ping").await.is_ok_and(|echo| echo == b"ping")
}

/// Waits until `agent` can (or cannot) open a tunnel to echo: the broker and
/// the connector both take a new policy or catalog within moments.
async fn until_echo(agent: &Agent, reachable: bool, what: &str) {
    wait_for(what, Duration::from_secs(10), || async { reaches_echo(agent).await == reachable }).await;
}

/// The newest policy version on the history page.
async fn newest_version(ui: &Ui) -> String {
    ui.chrome.goto(&ui.url("/admin/policies/history")).await;
    let row = ui.chrome.find("#policy-history tbody tr:first-child").await;
    row.attr("data-version").await.unwrap().expect("a version number")
}

/// What the explain page says about `principal` reaching echo.
async fn explain(ui: &Ui, principal: &str) -> String {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/policies")).await;
    chrome.fill("#explain-principal", principal).await;
    chrome.fill("#explain-service", "echo").await;
    chrome.click_and_load("form[action='/admin/policies/explain'] button").await;
    chrome.text("#explanation").await
}

pub(crate) async fn admin_reopens_explains_moves_kills_disables_and_rolls_back(ui: &Ui) {
    let fixed = newest_version(ui).await;
    assert!(!reaches_echo(&ui.agent).await, "the fixed version refuses agent-1");

    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/policies?file=agents.cedar")).await;
    chrome.fill("#policy-text", REOPENED).await;
    chrome.fill("#policy-comment", "agents back on inference").await;
    ui.admin_write("#btn-apply", "/admin/policies").await;
    assert!(chrome.text("#policy-result").await.contains("is active"), "the new version is active");
    until_echo(&ui.agent, true, "agent-1 to reach echo under the reopened version").await;
    let reopened = newest_version(ui).await;
    assert_ne!(reopened, fixed);

    let why = explain(ui, "machine:agent-1").await;
    assert!(why.starts_with("allow: permitted by ml-agents-inference"), "the deciding policy is named: {why}");
    chrome.screenshot("18-admin-explain").await;

    a_service_moved_to_another_segment_is_out_of_reach_until_moved_back(ui).await;
    killing_a_tunnel_closes_its_connection_and_revokes_nothing(ui).await;
    disabling_a_machine_cuts_its_tunnel_and_refuses_new_ones(ui).await;

    chrome.goto(&ui.url("/admin/policies/history")).await;
    let back = format!("#policy-history tr[data-version='{fixed}'] button");
    ui.admin_write(&back, "/admin/policies/history").await;
    until_echo(&ui.agent, false, "agent-1 to be refused again after the rollback").await;
    let err = ui.agent.tunnel_exchange("echo", b"after the rollback").await.expect_err("refused");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    let rolled = newest_version(ui).await;
    let row = chrome.text(&format!("#policy-history tr[data-version='{rolled}']")).await;
    assert!(row.contains("active") && row.contains(&format!("rollback to version {fixed}")), "history: {row}");
    let why = explain(ui, "machine:agent-1").await;
    assert!(why.starts_with("deny"), "the older version decides again: {why}");
    let audit = ui.broker.audit_events().await;
    let activated = audit.last_of_kind("policy.activated").expect("the rollback is audited");
    assert_eq!(activated.detail_str("comment"), Some(format!("rollback to version {fixed}").as_str()));
}

async fn a_service_moved_to_another_segment_is_out_of_reach_until_moved_back(ui: &Ui) {
    ui.broker.cli(&["segment", "create", "staging", "--description", "not for agents"]).await.expect_success();
    let chrome = &ui.chrome;
    let select = "#inventory-services tr[data-service=echo] select[name=segment]";
    let move_to = |segment: &'static str| async move {
        chrome.goto(&ui.url("/admin/connectors")).await;
        chrome.find(select).await.select_by_value(segment).await.expect("pick a segment");
        ui.admin_write("#inventory-services tr[data-service=echo] button", "/admin/connectors").await;
        let said = chrome.text("#connector-result").await;
        assert!(said.contains(&format!("echo is now in {segment}")), "the page says what moved: {said}");
    };
    move_to("staging").await;
    let row = chrome.text("#inventory-services tr[data-service=echo]").await;
    assert!(row.contains("staging") && row.contains("nobody"), "echo in staging, out of everyone's reach: {row}");
    until_echo(&ui.agent, false, "agent-1 to lose echo with the move").await;
    let err = ui.agent.tunnel_exchange("echo", b"in staging").await.expect_err("out of the segment agents reach");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    chrome.screenshot("19-admin-service-moved").await;
    move_to("inference").await;
    until_echo(&ui.agent, true, "agent-1 to reach echo once it is back in inference").await;
}

async fn killing_a_tunnel_closes_its_connection_and_revokes_nothing(ui: &Ui) {
    let flow = Flow::start(ui.agent_forward.addr()).await;
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/sessions")).await;
    let kill = "#live-tunnels tr[data-identity='agent-1'][data-service=echo] button";
    ui.admin_write(kill, "/admin/sessions").await;
    let end = within("agent-1's tunnel to close after the kill", Duration::from_secs(5), flow.ended()).await;
    eprintln!("agent-1's tunnel ended: {}", end.how);
    assert!(chrome.find_all(kill).await.is_empty(), "the killed tunnel is no longer listed");
    assert!(reaches_echo(&ui.agent).await, "a kill cuts the tunnel, it does not revoke agent-1");
    let audit = ui.broker.audit_events().await;
    let killed = audit.last_of_kind("tunnels.revoked").expect("the kill is audited");
    assert_eq!(killed.detail["via"], "console", "{}", audit.summary());
    assert!(killed.detail["tunnels"].as_u64() >= Some(1), "{}", audit.summary());
}

async fn disabling_a_machine_cuts_its_tunnel_and_refuses_new_ones(ui: &Ui) {
    until_echo(&ui.batch, true, "batch-1 to reach echo under the reopened version").await;
    let forward = ui.batch.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/machines")).await;
    let disable = "#machines tr[data-machine='batch-1'] form[action$='/disable'] button";
    ui.admin_write(disable, "/admin/machines").await;
    let end = within("batch-1's tunnel to close once it is disabled", Duration::from_secs(5), flow.ended()).await;
    eprintln!("batch-1's tunnel ended: {}", end.how);
    let row = chrome.text("#machines tr[data-machine='batch-1']").await;
    assert!(row.contains("disabled"), "the machine is shown disabled: {row}");
    let err = ui.batch.tunnel_exchange("echo", b"still me?").await.expect_err("a disabled machine gets no tunnel");
    eprintln!("batch-1 refused: {err}");
    assert!(reaches_echo(&ui.agent).await, "other machines keep their access");
    assert!(ui.broker.audit_events().await.has_kind("identity.disabled"), "the disable is audited");
}
