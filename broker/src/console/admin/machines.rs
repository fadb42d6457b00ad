//! Machines: every machine identity with its groups (add and remove them
//! here), the certificates it was issued, its live tunnels, and a disable
//! button. Machines are enrolled from the command line
//! (`palisade-broker token create --machine …`), so the empty state says so.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use palisade_proto::identity::PeerRole;

use super::group_edit::{self, GroupForm};
use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::paging::{self, Window};
use crate::console::sorting::{Column, Listing, Sortable, listing};
use crate::console::stepup;
use crate::console::viewer::{Admin, Viewer};
use crate::db::certificates::{self, IssuedSummary};
use crate::db::identities::{self, IdentityRecord};

const RETURN: &str = "/admin/machines";

/// Machines, by name unless asked otherwise.
const MACHINES: Sortable = Sortable {
    key: "machines",
    columns: &[Column { name: "name", expr: "LOWER(name)" }, Column { name: "state", expr: "disabled" }],
    default: ("name", false),
};

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, RawQuery(raw): RawQuery) -> Response {
    match listing(raw.as_deref(), &MACHINES) {
        Ok(listing) => render(&broker, &viewer, html! {}, listing, raw.as_deref()).await,
        Err(e) => paging::bad_request(&viewer, Nav::Machines, "Machines", RETURN, &e),
    }
}

/// One page of machines, by name.
async fn machines_page(
    broker: &Broker,
    (paging, sorted): Listing,
) -> Result<(Vec<IdentityRecord>, Window), sqlx::Error> {
    let window = paging.window(identities::count(broker.db(), PeerRole::Machine).await?);
    let (limit, offset) = window.limit_offset();
    Ok((identities::list_page(broker.db(), PeerRole::Machine, sorted.order(), limit, offset).await?, window))
}

async fn render(broker: &Broker, viewer: &Viewer, result: Markup, listing: Listing, raw: Option<&str>) -> Response {
    let ((machines, window), issued) =
        match (machines_page(broker, listing).await, certificates::summary(broker.db()).await) {
            (Ok(m), Ok(i)) => (m, i),
            (Err(e), _) | (_, Err(e)) => return layout::internal(&e),
        };
    let mut tunnels: HashMap<String, Vec<String>> = HashMap::new();
    for t in broker.live().streams() {
        tunnels.entry(t.peer.identity.id().id.to_string()).or_default().push(t.service.to_string());
    }
    let body = html! {
        (stepup::banner(viewer, RETURN))
        div #machine-result { (result) }
        p { "Machine identities (CI jobs, agents, services) and the groups policies grant them. "
            "A removed group stops counting at once, live tunnels included; an added group counts from the machine's next certificate." }
        @if machines.is_empty() {
            p.empty { "No machine is enrolled. Create a one-time token with "
                code { "palisade-broker token create --machine NAME --group GROUP" }
                " and run " code { "palisade enroll" } " with it on the machine." }
        } @else {
            table #machines data-server-sorted {
                thead { tr { (MACHINES.header(RETURN, raw, &listing.1, "name", "Name")) th { "Groups" } th { "Certificates" } th { "Last certificate" } th { "Live tunnels" } (MACHINES.header(RETURN, raw, &listing.1, "state", "State")) th {} } }
                tbody { @for m in &machines { (row(viewer, m, issued.get(&m.id), tunnels.get(&m.id))) } }
            }
            (paging::pager(RETURN, raw, "machines", &window, machines.len()))
        }
    };
    layout::page(viewer, Nav::Machines, "Machines", body)
}

fn row(viewer: &Viewer, m: &IdentityRecord, issued: Option<&IssuedSummary>, tunnels: Option<&Vec<String>>) -> Markup {
    let groups_action = format!("/admin/machines/{}/groups", m.id);
    html! {
        tr data-machine=(m.name) {
            td { strong { (m.name) } br; code.muted { (m.id) } }
            td.groups { (group_edit::tags(viewer, &groups_action, &m.groups)) }
            td.num { (issued.map_or(0, |i| i.count)) }
            td { (issued.map_or_else(|| "never".to_owned(), |i| layout::when(i.last_issued_at))) }
            td.tunnels {
                @match tunnels {
                    Some(list) => { (list.len()) " " @for s in list { span.tag { (s) } " " } }
                    None => span.muted { "0" },
                }
            }
            td { @if m.disabled { span.bad { "disabled" } } @else { span.ok { "enabled" } } }
            td {
                (group_edit::add_form(viewer, &groups_action, &m.name))
                @if !m.disabled { " " (layout::button_form(viewer, &format!("/admin/machines/{}/disable", m.id), "Disable", "danger")) }
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
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    match group_edit::apply(&broker, &viewer, PeerRole::Machine, &id, &form).await {
        Ok(result) => render(&broker, &viewer, result, MACHINES.first_page(), None).await,
        Err(response) => response,
    }
}

pub(crate) async fn disable(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    match identities::get(broker.db(), PeerRole::Machine, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => return layout::not_found(),
        Err(e) => return layout::internal(&e),
    }
    match crate::admin::disable_identity(broker.db(), &id, &viewer.actor()).await {
        Ok(_) => {
            // Cut its live tunnels now rather than at the next resync.
            broker.sync().announce();
            Redirect::to(RETURN).into_response()
        }
        Err(e) => layout::internal(&e),
    }
}
