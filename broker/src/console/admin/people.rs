//! Users and sessions: every person, every active session (revoke one,
//! disable a person), and the live tunnels with a button that cuts one.
//! Revocations go through the revocation feed, so every broker replica
//! closes the matching tunnels, not only this one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::Broker;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::console::layout::{self, Nav};
use crate::console::paging::{self, Window};
use crate::console::sorting::{Column, Listing, Sortable, Sorted, listing};
use crate::console::stepup;
use crate::console::viewer::{Admin, Viewer};
use crate::db::sessions::SessionDetails;
use crate::db::users::UserRecord;
use crate::db::{identities, sessions, users};
use crate::login::manage::{self, ManageError};
use crate::login::now_unix;
use crate::relay::live::LiveStream;

const RETURN: &str = "/admin/sessions";

/// People, by the name shown unless asked otherwise.
const PEOPLE: Sortable = Sortable {
    key: "people",
    columns: &[
        Column { name: "name", expr: "LOWER(COALESCE(u.display_name, i.name))" },
        Column { name: "email", expr: "LOWER(u.email)" },
        Column { name: "last_sign_in", expr: "u.last_login" },
        Column { name: "state", expr: "i.disabled" },
    ],
    default: ("name", false),
};

/// Active sessions, newest first unless asked otherwise.
const SESSIONS: Sortable = Sortable {
    key: "sessions",
    columns: &[
        Column { name: "started", expr: "created_at" },
        Column { name: "last_passkey", expr: "mfa_at" },
        Column { name: "from", expr: "client_addr" },
        Column { name: "device", expr: "user_agent" },
    ],
    default: ("started", true),
};

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, RawQuery(raw): RawQuery) -> Response {
    let listings = listing(raw.as_deref(), &PEOPLE).and_then(|p| Ok((p, listing(raw.as_deref(), &SESSIONS)?)));
    let (people_listing, sessions_listing) = match listings {
        Ok(both) => both,
        Err(e) => return paging::bad_request(&viewer, Nav::People, "Users & sessions", RETURN, &e),
    };
    let (people, active) =
        match (people_page(&broker, people_listing).await, sessions_page(&broker, sessions_listing).await) {
            (Ok(p), Ok(a)) => (p, a),
            (Err(e), _) | (_, Err(e)) => return layout::internal(&e),
        };
    let tunnels = broker.live().streams();
    let raw = raw.as_deref();
    let body = html! {
        (stepup::banner(&viewer, RETURN))
        h2 { "Live tunnels" }
        (tunnels_table(&viewer, &tunnels))
        h2 { "Active sessions" }
        @if active.rows.is_empty() { p.empty { "Nobody is signed in." } }
        @else {
            (sessions_table(&viewer, raw, &active, &sessions_listing.1))
            (paging::pager(RETURN, raw, "sessions", &active.window, active.rows.len()))
        }
        h2 { "People" }
        (people_table(&viewer, raw, &people.0, &people_listing.1))
        (paging::pager(RETURN, raw, "people", &people.1, people.0.len()))
    };
    layout::page(&viewer, Nav::People, "Users & sessions", body)
}

/// One page of people, in the order asked for.
async fn people_page(broker: &Broker, (paging, sorted): Listing) -> Result<(Vec<UserRecord>, Window), sqlx::Error> {
    let window = paging.window(users::count(broker.db()).await?);
    let (limit, offset) = window.limit_offset();
    Ok((users::list_page(broker.db(), sorted.order(), limit, offset).await?, window))
}

/// One page of active sessions with the names of their people.
struct SessionsPage {
    rows: Vec<SessionDetails>,
    names: HashMap<String, String>,
    window: Window,
}

async fn sessions_page(broker: &Broker, (paging, sorted): Listing) -> Result<SessionsPage, sqlx::Error> {
    let now = now_unix();
    let window = paging.window(sessions::count_active(broker.db(), now).await?);
    let (limit, offset) = window.limit_offset();
    let rows = sessions::list_active_page(broker.db(), now, sorted.order(), limit, offset).await?;
    let ids: Vec<String> = rows.iter().map(|s| s.record.identity_id.clone()).collect();
    let names = identities::names_of(broker.db(), &ids).await?;
    Ok(SessionsPage { rows, names, window })
}

fn sessions_table(viewer: &Viewer, raw: Option<&str>, active: &SessionsPage, sorted: &Sorted) -> Markup {
    let th = |name: &str, label: &str| SESSIONS.header(RETURN, raw, sorted, name, label);
    html! {
        table #active-sessions data-server-sorted {
            thead { tr {
                th { "Person" } (th("started", "Started")) (th("last_passkey", "Last passkey"))
                (th("from", "From")) (th("device", "Device")) th {}
            } }
            tbody {
                @for s in &active.rows {
                    tr data-session=(s.record.id) {
                        td { (active.names.get(&s.record.identity_id).unwrap_or(&s.record.identity_id)) }
                        td { (layout::when(s.record.created_at)) }
                        td { (s.record.mfa_at.map_or_else(|| "-".to_owned(), layout::when)) }
                        td { (s.client_addr.as_deref().unwrap_or("-")) }
                        td.ua { (s.user_agent.as_deref().unwrap_or("-")) }
                        td { (layout::button_form(viewer, &format!("/admin/sessions/{}/revoke", s.record.id), "Revoke", "danger")) }
                    }
                }
            }
        }
    }
}

fn tunnels_table(viewer: &Viewer, tunnels: &[LiveStream]) -> Markup {
    html! {
        @if tunnels.is_empty() { p.empty { "No tunnel is open right now." } }
        @else {
            table #live-tunnels {
                thead {
                    tr { th { "Who" } th { "Service" } th { "From" } th { "Session" } th { "Up" } th { "Down" } th { "Open for" } th {} }
                }
                tbody {
                    @for t in tunnels {
                        tr data-identity=(t.peer.identity.name()) data-service=(t.service) {
                            td { (t.peer.identity.name()) }
                            td { (t.service) }
                            td { (t.peer.remote().to_string()) }
                            td { code { (t.peer.identity.session().unwrap_or("-")) } }
                            td.num { (bytes(t.traffic.up.load(Ordering::Relaxed))) }
                            td.num { (bytes(t.traffic.down.load(Ordering::Relaxed))) }
                            td.num { (open_for(t.started.elapsed())) }
                            td {
                                form.inline method="post" action="/admin/tunnels/kill" {
                                    (layout::csrf(viewer))
                                    input type="hidden" name="identity" value=(t.peer.identity.id().id);
                                    input type="hidden" name="service" value=(t.service);
                                    button.danger type="submit" { "Kill" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn people_table(viewer: &Viewer, raw: Option<&str>, people: &[UserRecord], sorted: &Sorted) -> Markup {
    let th = |name: &str, label: &str| PEOPLE.header(RETURN, raw, sorted, name, label);
    html! {
        table #people data-server-sorted {
            thead { tr {
                (th("name", "Name")) (th("email", "Email")) th { "Groups" } (th("last_sign_in", "Last sign-in"))
                (th("state", "State")) th {}
            } }
            tbody {
                @for u in people {
                    tr data-user=(u.identity.id) {
                        td { a href={ "/admin/users/" (u.identity.id) } { (u.display_name.as_deref().unwrap_or(&u.identity.name)) } }
                        td { (u.email.as_deref().unwrap_or("-")) }
                        td { @for g in &u.identity.groups { span.tag { (g) } " " } }
                        td { (u.last_login.map_or_else(|| "never".to_owned(), layout::when)) }
                        td { @if u.identity.disabled { span.bad { "disabled" } } @else { span.ok { "active" } } }
                        td { @if !u.identity.disabled {
                            (layout::button_form(viewer, &format!("/admin/users/{}/disable", u.identity.id), "Disable", "danger"))
                        } }
                    }
                }
            }
        }
    }
}

pub(crate) async fn revoke(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    match manage::revoke_session(broker.db(), &id, &viewer.actor()).await {
        Ok(()) | Err(ManageError::UnknownSession(_)) => Redirect::to(RETURN).into_response(),
        Err(e) => layout::internal(&e),
    }
}

pub(crate) async fn disable(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    if id == viewer.identity.id {
        return layout::page(
            &viewer,
            Nav::People,
            "Not disabled",
            layout::notice("error", "You cannot disable yourself here."),
        );
    }
    let result = async {
        crate::admin::disable_identity(broker.db(), &id, &viewer.actor()).await.map_err(|e| e.to_string())?;
        manage::revoke_sessions_of(broker.db(), &id, &viewer.actor(), "identity disabled")
            .await
            .map_err(|e| e.to_string())
    };
    match result.await {
        Ok(_) => Redirect::to(RETURN).into_response(),
        Err(e) => layout::internal(&e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Kill {
    identity: String,
    service: String,
}

pub(crate) async fn kill(State(broker): State<Broker>, Admin(viewer): Admin, Form(k): Form<Kill>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    let mut cut = 0;
    for t in broker.live().streams() {
        if t.peer.identity.id().id == k.identity && t.service == k.service {
            t.cut.cancel();
            cut += 1;
        }
    }
    let event = AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success)
        .actor(viewer.actor())
        .subject(k.identity.clone())
        .detail(json!({ "service": k.service, "tunnels": cut, "via": "console" }));
    if let Err(e) = broker.audit().record(event).await {
        return layout::internal(&e);
    }
    Redirect::to(RETURN).into_response()
}

/// `1.5 MiB`, `312 B`: what a live tunnel moved so far.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `42 s`, `3 min`, `2 h 5 min`: how long a tunnel has been open.
fn open_for(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_and_durations_read_as_people_say_them() {
        assert_eq!(bytes(312), "312 B");
        assert_eq!(bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(open_for(std::time::Duration::from_secs(42)), "42 s");
        assert_eq!(open_for(std::time::Duration::from_secs(7500)), "2 h 5 min");
    }
}
