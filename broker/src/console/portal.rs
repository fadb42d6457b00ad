//! The employee portal: what I may reach and the exact command for it, my
//! sessions (revoke one, sign out), my passkeys (add, remove).
//!
//! Every write is a form post that passed [`crate::web::security::csrf_guard`];
//! each handler checks the row it changes belongs to the viewer.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use palisade_policies::{AccessRequest, Action, Decision, Principal, PrincipalKind, RequestContext};
use serde_json::json;

use super::layout::{self, Nav};
use super::viewer::Viewer;
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::{credentials, sessions};
use crate::login::now_unix;
use crate::login::session::{SESSION_COOKIE, clear_cookie};

/// One service the viewer may reach now.
pub(crate) struct Reachable {
    pub(crate) name: String,
    pub(crate) segment: String,
    pub(crate) protocol: String,
    pub(crate) online: bool,
}

/// The services the active policy lets `viewer` connect to, with this session's MFA age.
pub(crate) fn reachable(broker: &Broker, viewer: &Viewer) -> Vec<Reachable> {
    let engine = broker.policy().current();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mfa_at = viewer.session.record.mfa_at.and_then(|m| u64::try_from(m).ok());
    let context = RequestContext {
        mfa_age_secs: mfa_at.map(|m| now.saturating_sub(m)),
        auth_methods: viewer.session.auth_methods.clone(),
        source_ip: None,
        now_unix_secs: now,
        client_version: None,
    };
    let i = &viewer.identity;
    let principal =
        Principal { kind: PrincipalKind::User, id: i.id.clone(), name: i.name.clone(), groups: i.groups.clone() };
    engine
        .bundle()
        .services
        .iter()
        .filter(|s| {
            let request =
                AccessRequest { principal: &principal, action: Action::Connect, service: &s.name, context: &context };
            matches!(engine.decide(&request), Decision::Allow(_))
        })
        .map(|s| Reachable {
            name: s.name.clone(),
            segment: s.segment.clone(),
            protocol: s.protocol.clone(),
            online: broker.registry().is_online(&s.name),
        })
        .collect()
}

pub(crate) async fn services(State(broker): State<Broker>, viewer: Viewer) -> Response {
    let list = reachable(&broker, &viewer);
    let url = broker.config().public_url();
    let broker_url = url.as_str().trim_end_matches('/');
    let body = html! {
        section.card {
            h2 { "You" }
            dl.facts {
                dt { "Name" } dd #me-name { (viewer.display_name()) }
                dt { "Identity" } dd { code { (viewer.identity.name) } }
                dt { "Groups" } dd #me-groups {
                    @if viewer.identity.groups.is_empty() { "none" }
                    @for g in &viewer.identity.groups { span.tag { (g) } " " }
                }
            }
        }
        section.card {
            h2 { "Sign in from your terminal" }
            p { "Once per day, sign in the command-line client:" }
            pre.cmd { code { "palisade login --broker " (broker_url) } }
        }
        h2 { "My services" }
        @if list.is_empty() {
            p.empty #no-services { "No service is open to you right now. If you need one, ask an admin to grant your group access." }
        } @else {
            table #my-services {
                thead { tr { th { "Service" } th { "Segment" } th { "Protocol" } th { "Status" } th { "Command" } } }
                tbody {
                    @for (n, s) in list.iter().enumerate() {
                        tr data-service=(s.name) {
                            td { strong { (s.name) } }
                            td { (s.segment) }
                            td { (s.protocol) }
                            td { @if s.online { span.ok { "online" } } @else { span.muted { "no connector online" } } }
                            td { pre.cmd { code { "palisade connect " (s.name) " --listen 127.0.0.1:" (9000 + n) } } }
                        }
                    }
                }
            }
        }
    };
    layout::page(&viewer, Nav::Services, "My services", body)
}

pub(crate) async fn my_sessions(State(broker): State<Broker>, viewer: Viewer) -> Response {
    let list = match sessions::list_active(broker.db(), Some(&viewer.identity.id), now_unix()).await {
        Ok(list) => list,
        Err(e) => return layout::internal(&e),
    };
    let body = html! {
        p { "Every device you signed in from. Revoke one you do not recognise: its tunnels close at once." }
        table #my-sessions {
            thead { tr { th { "Started" } th { "Expires" } th { "From" } th { "Device" } th { "Methods" } th {} } }
            tbody {
                @for s in &list {
                    tr data-session=(s.record.id) {
                        td { (layout::when(s.record.created_at)) }
                        td { (layout::when(s.record.expires_at)) }
                        td { (s.client_addr.as_deref().unwrap_or("-")) }
                        td.ua { (s.user_agent.as_deref().unwrap_or("-")) }
                        td { (s.auth_methods.join(", ")) }
                        td {
                            @if s.record.id == viewer.session.record.id { span.tag { "this browser" } }
                            @else { (layout::button_form(&viewer, &format!("/portal/sessions/{}/revoke", s.record.id), "Revoke", "danger")) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&viewer, Nav::MySessions, "My sessions", body)
}

pub(crate) async fn revoke_mine(State(broker): State<Broker>, viewer: Viewer, Path(id): Path<String>) -> Response {
    match end_session(&broker, &viewer, &id, "revoked by its owner").await {
        Ok(true) => Redirect::to("/portal/sessions").into_response(),
        Ok(false) => layout::not_found(),
        Err(e) => layout::internal(&e),
    }
}

pub(crate) async fn logout(State(broker): State<Broker>, viewer: Viewer) -> Response {
    let id = viewer.session.record.id.clone();
    match end_session(&broker, &viewer, &id, "signed out").await {
        Ok(_) => ([(header::SET_COOKIE, clear_cookie(SESSION_COOKIE))], Redirect::to("/")).into_response(),
        Err(e) => layout::internal(&e),
    }
}

/// Revokes one of the viewer's own sessions; `false` if it is not theirs or not active.
async fn end_session(
    broker: &Broker,
    viewer: &Viewer,
    id: &str,
    reason: &str,
) -> Result<bool, crate::audit::AuditError> {
    let mut tx = broker.db().begin_write().await?;
    let mine = sessions::details_in(&mut tx, id).await?.is_some_and(|s| s.record.identity_id == viewer.identity.id);
    if !mine || !sessions::revoke_in(&mut tx, id, &viewer.actor(), reason, now_unix()).await? {
        return Ok(false);
    }
    let event = AuditEvent::new(EventKind::SessionRevoked, Outcome::Success)
        .actor(viewer.actor())
        .subject(id)
        .detail(json!({ "reason": reason, "by": "owner", "via": "portal" }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn passkeys(State(broker): State<Broker>, viewer: Viewer) -> Response {
    let list = match credentials::all_for(broker.db(), &viewer.identity.id).await {
        Ok(list) => list,
        Err(e) => return layout::internal(&e),
    };
    let body = html! {
        p { "Passkeys and security keys that can confirm it is you. Keep at least two, in different places." }
        @if !viewer.fresh() {
            (super::stepup::banner(&viewer, "/portal/passkeys"))
        }
        table #passkeys {
            thead { tr { th { "Label" } th { "Added" } th { "Last used" } th { "State" } th {} } }
            tbody {
                @for c in &list {
                    tr data-credential=(c.id) {
                        td { (c.label) }
                        td { (layout::when(c.created_at)) }
                        td { (c.last_used_at.map_or_else(|| "never".to_owned(), layout::when)) }
                        td { @if let Some(r) = &c.disabled_reason { span.bad { "disabled: " (r) } } @else { span.ok { "active" } } }
                        td { (layout::button_form(&viewer, &format!("/portal/passkeys/{}/remove", c.id), "Remove", "danger")) }
                    }
                }
            }
        }
        p { button.primary #add-passkey type="button" disabled[!viewer.fresh()] { "Add a passkey" } }
        p #passkey-status role="status" {}
    };
    layout::page(&viewer, Nav::Passkeys, "Passkeys", body)
}

pub(crate) async fn remove_passkey(State(broker): State<Broker>, viewer: Viewer, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&super::stepup::link("/portal/passkeys")).into_response();
    }
    let result = async {
        let mut tx = broker.db().begin_write().await?;
        if !credentials::delete_in(&mut tx, &viewer.identity.id, &id).await? {
            return Ok(false);
        }
        let event = AuditEvent::new(EventKind::CredentialRemoved, Outcome::Success)
            .actor(viewer.actor())
            .subject(viewer.actor())
            .detail(json!({ "credential": id, "by": "owner", "session": viewer.session.record.id, "via": "portal" }));
        Audit::record_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok::<_, crate::audit::AuditError>(true)
    };
    match result.await {
        Ok(true) => Redirect::to("/portal/passkeys").into_response(),
        Ok(false) => layout::not_found(),
        Err(e) => layout::internal(&e),
    }
}
