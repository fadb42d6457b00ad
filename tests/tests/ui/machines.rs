//! Machines, groups and one person's credentials: an admin takes a machine
//! out of a group (after a passkey step-up) and finds `identity.updated` in
//! the audit trail; the Groups page lists each group with its members; an
//! admin reads a person's passkeys and resets them; and hostile machine
//! names and group edits render as text or are refused.

use palisade_tests::open_db;

use crate::attacks::{HOSTILE_NAME, assert_inert};
use crate::deployment::Ui;

fn group_button(machine: &str, group: &str) -> String {
    format!("#machines tr[data-machine='{machine}'] form.remove-group[data-group='{group}'] button")
}

pub(crate) async fn admin_takes_a_machine_out_of_a_group_after_step_up_and_the_audit_shows_it(ui: &Ui) {
    let chrome = &ui.chrome;
    let updated = || async { ui.broker.audit_events().await.of_kind("identity.updated").len() };
    let before = updated().await;
    ui.age_passkey_proof().await;
    chrome.goto(&ui.url("/admin/machines")).await;
    let row = chrome.text("#machines tr[data-machine='agent-1']").await;
    assert!(row.contains("ml-agents") && row.contains("enabled"), "agent-1 and its group: {row}");
    let issued = chrome.text("#machines tr[data-machine='agent-1'] td.num").await;
    assert!(issued.trim().parse::<u32>().unwrap() >= 1, "agent-1 was issued a certificate: {issued}");
    chrome.screenshot("13-admin-machines").await;

    chrome.click_and_load(&group_button("agent-1", "ml-agents")).await;
    ui.step_up("/admin/machines").await;
    assert_eq!(updated().await, before, "a write with a stale proof changed a group");
    ui.admin_write(&group_button("agent-1", "ml-agents"), "/admin/machines").await;
    let result = chrome.text("#machine-result").await;
    assert!(result.contains("Removed ml-agents"), "the page says what changed: {result}");
    assert!(chrome.find_all(&group_button("agent-1", "ml-agents")).await.is_empty(), "ml-agents is gone from the row");

    let add = "#machines tr[data-machine='agent-1'] form.add-group";
    chrome.fill(&format!("{add} input[name=add]"), "eval-bots").await;
    ui.admin_write(&format!("{add} button"), "/admin/machines").await;
    chrome.find(&group_button("agent-1", "eval-bots")).await;

    let audit = ui.broker.audit_events().await;
    let events = &audit.of_kind("identity.updated")[before..];
    assert_eq!(events.len(), 2, "{}", audit.summary());
    let bob = format!("user/{}", ui.user_id("bob@example.com").await);
    assert_eq!(events[0].actor.as_deref(), Some(bob.as_str()), "the admin is the actor");
    assert_eq!(events[0].detail["removed"], serde_json::json!(["ml-agents"]));
    assert_eq!(events[0].detail["name"], "agent-1");

    chrome.goto(&ui.url("/admin/audit?kind=identity.updated")).await;
    let trail = chrome.text("#audit-events").await;
    assert!(trail.contains("identity.updated") && trail.contains("agent-1"), "the audit page: {trail}");
    assert!(trail.contains("removed") && trail.contains("ml-agents"), "what was removed: {trail}");
    chrome.screenshot("14-admin-audit-identity-updated").await;
}

pub(crate) async fn groups_page_lists_each_group_with_its_members(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/groups")).await;
    let bots = chrome.text("#groups tr[data-group='eval-bots']").await;
    assert!(bots.contains("agent-1"), "the machine added on the Machines page: {bots}");
    let team = chrome.text("#groups tr[data-group='ml-team'] td.people").await;
    assert!(!team.contains("none"), "ml-team has people (bob): {team}");
    let bob = format!("a[href='/admin/users/{}']", ui.user_id("bob@example.com").await);
    chrome.find(&format!("#groups tr[data-group='ml-team'] td.people {bob}")).await;
    let reach = chrome.text("#groups tr[data-group='ml-team'] td.reach").await;
    assert!(reach.contains("echo"), "ml-team's members reach echo: {reach}");
    assert!(chrome.find_all("#groups tr[data-group='ml-agents']").await.is_empty(), "nobody is left in ml-agents");
    chrome.screenshot("15-admin-groups").await;
}

pub(crate) async fn admin_reads_a_persons_passkeys_and_resets_them(ui: &Ui) {
    let chrome = &ui.chrome;
    let alice = ui.user_id("alice@example.com").await;
    chrome.goto(&ui.url("/admin/sessions")).await;
    chrome.click_and_load(&format!("#people tr[data-user='{alice}'] a")).await;
    let page = format!("/admin/users/{alice}");
    chrome.wait_for_path(&page).await;
    let keys = chrome.find_all("#credentials tbody tr").await;
    assert_eq!(keys.len(), 1, "alice's passkey from her sign-in is listed");
    let row = chrome.text("#credentials tbody tr").await;
    assert!(row.contains("active"), "the passkey is active: {row}");
    chrome.screenshot("16-admin-person-credentials").await;

    ui.admin_write("form[action$='/reset'] button", &page).await;
    let result = chrome.text("#person-result").await;
    assert!(result.contains("Removed 1 credential "), "the reset says what it did: {result}");
    assert!(chrome.find_all("#credentials").await.is_empty(), "no credential is left");
    assert!(chrome.text(".empty").await.contains("next sign-in"), "the empty state says what happens next");
    let audit = ui.broker.audit_events().await;
    let removed = audit.of_kind("credential.removed");
    let subject = format!("user/{alice}");
    assert!(
        removed.iter().any(|r| r.subject.as_deref() == Some(subject.as_str()) && r.detail["reset"] == true),
        "{}",
        audit.summary()
    );

    let bob = ui.user_id("bob@example.com").await;
    chrome.goto(&ui.url(&format!("/admin/users/{bob}"))).await;
    ui.admin_write("form[action$='/reset'] button", &format!("/admin/users/{bob}")).await;
    assert!(chrome.text("#person-result").await.contains("nothing was changed"), "an admin cannot reset themselves");
    assert_eq!(chrome.find_all("#credentials tbody tr").await.len(), 1, "bob keeps his passkey");
}

/// A machine whose name is markup (slipped into the database, since names
/// are checked at enrollment) renders as text on the Machines and Groups
/// pages; a group name that is markup is refused and nothing is stored; and
/// such a name already stored (an older version, a raw write) can be
/// removed from the console.
pub(crate) async fn hostile_machine_names_and_group_edits_render_as_text_or_are_refused(ui: &Ui) {
    let db = open_db(ui.broker.database_url()).await;
    sqlx::query(
        "INSERT INTO identities (id, role, name, groups, disabled, created_at) \
         VALUES ('hostile-machine', 'machine', $1, $2, 1, 0)",
    )
    .bind(HOSTILE_NAME)
    .bind(serde_json::json!(["eval-bots", HOSTILE_NAME]).to_string())
    .execute(&db)
    .await
    .unwrap();
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/machines")).await;
    let machines = chrome.text("#machines").await;
    assert!(machines.contains(HOSTILE_NAME), "the machine's name is shown as text: {machines}");
    assert_inert(ui, "/admin/machines").await;
    chrome.goto(&ui.url("/admin/groups")).await;
    let bots = chrome.text("#groups tr[data-group='eval-bots']").await;
    assert!(bots.contains(HOSTILE_NAME), "a member's name is text: {bots}");
    assert!(chrome.text("#groups").await.contains(HOSTILE_NAME), "a stored group name is text");
    assert_inert(ui, "/admin/groups").await;

    let before = ui.broker.audit_events().await.of_kind("identity.updated").len();
    chrome.goto(&ui.url("/admin/machines")).await;
    let add = "#machines tr[data-machine='agent-1'] form.add-group";
    // The browser's own pattern check would stop the form; the broker must refuse it too.
    chrome
        .client()
        .execute("document.querySelectorAll('input[name=add]').forEach(i => i.removeAttribute('pattern'))", vec![])
        .await
        .unwrap();
    chrome.fill(&format!("{add} input[name=add]"), HOSTILE_NAME).await;
    ui.admin_write(&format!("{add} button"), "/admin/machines").await;
    let refused = chrome.text("#machine-result .notice.error").await;
    assert!(refused.contains(HOSTILE_NAME) && refused.contains("nothing was changed"), "refused, as text: {refused}");
    assert_inert(ui, "/admin/machines (refused edit)").await;
    chrome.screenshot("17-hostile-group-refused").await;
    let after = ui.broker.audit_events().await.of_kind("identity.updated").len();
    assert_eq!(after, before, "the refused edit was not audited as a change");
    let id = ui.machine_id("agent-1").await;
    let groups: String =
        sqlx::query_scalar("SELECT groups FROM identities WHERE id = $1").bind(&id).fetch_one(&db).await.unwrap();
    assert_eq!(groups, r#"["eval-bots"]"#, "agent-1's groups are unchanged");

    let remove = group_button(HOSTILE_NAME, HOSTILE_NAME);
    ui.admin_write(&remove, "/admin/machines").await;
    let removed = chrome.text("#machine-result .notice.ok").await;
    assert!(removed.contains(&format!("Removed {HOSTILE_NAME}")), "the stored bad name is removed: {removed}");
    assert_inert(ui, "/admin/machines (bad name removed)").await;
    assert!(chrome.find_all(&remove).await.is_empty(), "the bad name is gone from the row");
    let groups: String =
        sqlx::query_scalar("SELECT groups FROM identities WHERE id = 'hostile-machine'").fetch_one(&db).await.unwrap();
    assert_eq!(groups, r#"["eval-bots"]"#, "only the bad name was removed");
    let audit = ui.broker.audit_events().await;
    let events = audit.of_kind("identity.updated");
    assert_eq!(events.len(), before + 1, "{}", audit.summary());
    assert_eq!(events[before].detail["removed"], serde_json::json!([HOSTILE_NAME]));
}
