//! The web console in a real browser: Debian's chromium driven through
//! chromedriver, signing in at the real OpenID provider with a WebAuthn
//! virtual authenticator, against a real broker, connector and clients.
//!
//! One browser session walks the whole story (starting chromium and a
//! deployment is the expensive part): a person signs in and registers a
//! passkey, sees their services, and approves `palisade login --device` for
//! another machine; as an admin they fix a broken policy and apply it (a
//! machine's tunnel is refused afterwards), apply a newer version, explain
//! a decision, move a service out of its segment and back, kill a live
//! tunnel, disable a machine and roll the policy back (each checked on real
//! tunnels), revoke another person's session (their live tunnel closes),
//! and find both in the audit trail; they take a machine out of a group
//! (audited), read the groups and their members, reset a person's
//! passkeys, and page through long tables from the keyboard. Then the
//! attacks: hostile names (one from the real identity provider) and user
//! agents render as text, a stored bad group name can still be removed,
//! cross-site and token-less posts change nothing, and every page carries
//! the security headers. Screenshots land in `target/ui-screenshots/`.
//!
//! Needs `scripts/setup-test-deps` (chromium, chromium-driver, node).

#![allow(clippy::unwrap_used)]

mod attacks;
mod connectors;
mod deployment;
mod device;
mod lifecycle;
mod machines;
mod paging;
mod people;
mod policies;

use deployment::Ui;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_from_sign_in_to_audit_and_under_attack() {
    let ui = Ui::start().await;

    people::person_signs_in_registers_a_passkey_and_sees_their_services(&ui).await;
    device::person_approves_a_device_login_on_a_console_page(&ui).await;
    policies::admin_fixes_a_policy_error_at_its_line_applies_it_and_a_tunnel_is_refused(&ui).await;
    lifecycle::admin_reopens_explains_moves_kills_disables_and_rolls_back(&ui).await;
    connectors::a_stale_passkey_proof_sends_an_admin_write_through_step_up(&ui).await;
    connectors::admin_enrolls_a_connector_with_the_printed_command_and_reads_the_inventory(&ui).await;
    people::admin_revokes_a_session_and_its_tunnel_closes(&ui).await;
    people::tables_sort_by_a_column_with_the_mouse_and_the_keyboard(&ui).await;
    people::audit_page_shows_the_policy_change_and_the_revocation(&ui).await;
    machines::admin_takes_a_machine_out_of_a_group_after_step_up_and_the_audit_shows_it(&ui).await;
    machines::groups_page_lists_each_group_with_its_members(&ui).await;
    machines::admin_reads_a_persons_passkeys_and_resets_them(&ui).await;
    paging::long_tables_page_on_the_server_from_the_keyboard(&ui).await;

    attacks::hostile_names_and_user_agents_render_as_text(&ui).await;
    machines::hostile_machine_names_and_group_edits_render_as_text_or_are_refused(&ui).await;
    attacks::cross_site_and_tokenless_posts_change_nothing(&ui).await;
    attacks::every_page_carries_the_security_headers(&ui).await;
    attacks::a_person_who_is_not_an_admin_gets_a_bare_403(&ui).await;

    ui.finish().await;
}
