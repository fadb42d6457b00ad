//! One person, as an admin sees them: who they are, their groups (add and
//! remove them here), and their passkeys and security keys, so an admin
//! knows what a person has before resetting them. The reset is
//! [`crate::login::manage::reset_credentials`], as `palisade-broker user
//! reset-credentials` does it: every credential deleted, every session
//! revoked, and a local account gets a new invite link.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use palisade_proto::identity::PeerRole;

use super::group_edit::{self, GroupForm};
use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::stepup;
use crate::console::viewer::{Admin, Viewer};
use crate::db::credentials::{self, StoredCredential};
use crate::db::users::{self, UserRecord};
use crate::login::manage;

fn here(id: &str) -> String {
    format!("/admin/users/{id}")
}

async fn person(broker: &Broker, id: &str) -> Result<UserRecord, Response> {
    let mut conn = broker.db().pool().acquire().await.map_err(|e| layout::internal(&e))?;
    users::get_in(&mut conn, id).await.map_err(|e| layout::internal(&e))?.ok_or_else(layout::not_found)
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    match person(&broker, &id).await {
        Ok(user) => render(&broker, &viewer, &user, html! {}).await,
        Err(response) => response,
    }
}

async fn render(broker: &Broker, viewer: &Viewer, user: &UserRecord, result: Markup) -> Response {
    let creds = match credentials::all_for(broker.db(), &user.identity.id).await {
        Ok(creds) => creds,
        Err(e) => return layout::internal(&e),
    };
    let id = &user.identity.id;
    let name = user.display_name.as_deref().or(user.email.as_deref()).unwrap_or(&user.identity.name);
    let body = html! {
        (stepup::banner(viewer, &here(id)))
        div #person-result { (result) }
        p { a href="/admin/sessions" { "← All people and sessions" } }
        dl.facts #person {
            dt { "Name" } dd { (name) }
            dt { "Email" } dd { (user.email.as_deref().unwrap_or("-")) }
            dt { "Account" } dd { @if user.issuer == users::LOCAL_ISSUER { "local (invite and passkey)" } @else { "identity provider: " (user.issuer) } }
            dt { "Last sign-in" } dd { (user.last_login.map_or_else(|| "never".to_owned(), layout::when)) }
            dt { "State" } dd { @if user.identity.disabled { span.bad { "disabled" } } @else { span.ok { "active" } } }
        }
        h2 { "Groups" }
        p.groups #person-groups {
            (group_edit::tags(viewer, &format!("{}/groups", here(id)), &user.identity.groups))
            " " (group_edit::add_form(viewer, &format!("{}/groups", here(id)), name))
        }
        @if user.issuer != users::LOCAL_ISSUER {
            p.muted { "The identity provider sets this person's groups again at each sign-in." }
        }
        h2 { "Passkeys and security keys" }
        (credential_table(&creds))
        section.card {
            h2 { "Reset credentials" }
            p { "Deletes every passkey and security key above and ends all of this person's sessions. "
                "They register a new passkey at their next sign-in"
                @if user.issuer == users::LOCAL_ISSUER { ", through a new invite link shown here once" } "." }
            (layout::button_form(viewer, &format!("{}/reset", here(id)), "Reset credentials", "danger"))
        }
    };
    layout::page(viewer, Nav::People, name, body)
}

fn credential_table(creds: &[StoredCredential]) -> Markup {
    html! {
        @if creds.is_empty() {
            p.empty { "No passkey or security key. This person registers one at their next sign-in." }
        } @else {
            table #credentials {
                thead { tr { th { "Label" } th { "Credential id" } th { "Added" } th { "Last used" } th { "Counter" } th { "State" } } }
                tbody {
                    @for c in creds {
                        tr data-credential=(c.id) {
                            td { (c.label) }
                            td { code title=(c.id) { (c.id.chars().take(12).collect::<String>()) "…" } }
                            td { (layout::when(c.created_at)) }
                            td { (c.last_used_at.map_or_else(|| "never".to_owned(), layout::when)) }
                            td.num { (c.counter().map_or_else(|| "-".to_owned(), |n| n.to_string())) }
                            td { @if let Some(r) = &c.disabled_reason { span.bad { "disabled: " (r) } } @else { span.ok { "active" } } }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn groups(
    State(broker): State<Broker>,
    Admin(viewer): Admin,
    Path(id): Path<String>,
    Form(form): Form<GroupForm>,
) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(&here(&id))).into_response();
    }
    let result = match group_edit::apply(&broker, &viewer, PeerRole::User, &id, &form).await {
        Ok(result) => result,
        Err(response) => return response,
    };
    match person(&broker, &id).await {
        Ok(user) => render(&broker, &viewer, &user, result).await,
        Err(response) => response,
    }
}

pub(crate) async fn reset(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(&here(&id))).into_response();
    }
    let user = match person(&broker, &id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    if user.identity.id == viewer.identity.id {
        let refused = layout::notice("error", "Manage your own passkeys from your portal; nothing was changed.");
        return render(&broker, &viewer, &user, refused).await;
    }
    let public_url = broker.config().public_url();
    let done = match manage::reset_credentials(broker.db(), &user, &public_url, &viewer.actor()).await {
        Ok(done) => done,
        Err(e) => return layout::internal(&e),
    };
    // Cut the tunnels of the revoked sessions now rather than at the next resync.
    broker.sync().announce();
    let result = html! {
        (layout::notice("ok", &format!(
            "Removed {} and ended {}.",
            count(done.removed, "credential"),
            count(u64::try_from(done.sessions.len()).unwrap_or(u64::MAX), "session"),
        )))
        @if let Some(link) = &done.invite_link {
            p { "Send this invite link to the person; it is shown only once:" }
            pre.cmd #invite-link { code { (link) } }
        }
    };
    render(&broker, &viewer, &user, result).await
}

/// `1 credential`, `2 sessions`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}
