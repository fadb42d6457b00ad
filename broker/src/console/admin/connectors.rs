//! Connectors and the inventory: every connector identity (enabled or
//! not, online through which broker replicas or offline, its version, when
//! it was last seen, the services it last advertised and when), a one-time enrollment
//! token with the command to paste on the connector's host, disable; and
//! every service with its segment, connectors, online state and who can
//! reach it under the active set, with segment assignment.

use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use palisade_proto::identity::PeerRole;
use serde::Deserialize;

use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::paging::{self, Window};
use crate::console::sorting::{Column, Listing, Sortable, listing};
use crate::console::stepup;
use crate::console::viewer::{Admin, Viewer};
use crate::db::connector_links;
use crate::db::identities::{self, IdentityRecord};
use crate::inventory::{self, InventoryError, InventoryRow};
use crate::issuance::enroll::{TokenRequest, create_token};

const RETURN: &str = "/admin/connectors";

/// Connectors, by name unless asked otherwise.
const CONNECTORS: Sortable = Sortable {
    key: "connectors",
    columns: &[Column { name: "name", expr: "LOWER(name)" }, Column { name: "state", expr: "disabled" }],
    default: ("name", false),
};
/// How long a token made in the console stays redeemable.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// One page of connector identities, by name.
async fn connectors(broker: &Broker, (paging, sorted): Listing) -> Result<(Vec<IdentityRecord>, Window), sqlx::Error> {
    let window = paging.window(identities::count(broker.db(), PeerRole::Connector).await?);
    let (limit, offset) = window.limit_offset();
    Ok((identities::list_page(broker.db(), PeerRole::Connector, sorted.order(), limit, offset).await?, window))
}

async fn rows(broker: &Broker) -> Result<Vec<InventoryRow>, InventoryError> {
    let engine = broker.policy().current();
    let registry = broker.registry();
    let online = |s: &str| registry.is_online(s);
    inventory::inventory(broker.db(), &engine, Some(&online)).await
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, RawQuery(raw): RawQuery) -> Response {
    match listing(raw.as_deref(), &CONNECTORS) {
        Ok(listing) => render(&broker, &viewer, html! {}, listing, raw.as_deref()).await,
        Err(e) => paging::bad_request(&viewer, Nav::Connectors, "Connectors & services", RETURN, &e),
    }
}

async fn render(broker: &Broker, viewer: &Viewer, result: Markup, listing: Listing, raw: Option<&str>) -> Response {
    let ((list, window), inv, segments) =
        match (connectors(broker, listing).await, rows(broker).await, inventory::segments(broker.db()).await) {
            (Ok(c), Ok(i), Ok(s)) => (c, i, s),
            (Err(e), _, _) => return layout::internal(&e),
            (_, Err(e), _) | (_, _, Err(e)) => return layout::internal(&e),
        };
    let now = crate::db::unix_seconds(SystemTime::now());
    let links = match connector_links::statuses(broker.db(), now).await {
        Ok(links) => links,
        Err(e) => return layout::internal(&e),
    };
    let advertised = |id: &str| -> Vec<(String, i64)> {
        inv.iter()
            .filter_map(|r| {
                r.service.connectors.iter().find(|c| c.id == id).map(|c| (r.service.name.clone(), c.last_seen))
            })
            .collect()
    };
    let body = html! {
        (stepup::banner(viewer, RETURN))
        div #connector-result { (result) }
        h2 { "Connectors" }
        @if list.is_empty() { p.empty { "No connector is enrolled. Create a token below and run the command on a host beside your services." } }
        @else {
            table #connectors data-server-sorted {
                thead { tr { (CONNECTORS.header(RETURN, raw, &listing.1, "name", "Name")) th { "Link" } th { "Version" } th { "Services (last seen)" } (CONNECTORS.header(RETURN, raw, &listing.1, "state", "State")) th {} } }
                tbody {
                    @for c in &list {
                        tr data-connector=(c.name) {
                            td { (c.name) }
                            td.link { (link_cell(links.get(&c.id))) }
                            td.version { (links.get(&c.id).map_or("-", |l| l.version.as_str())) }
                            td { @for (s, seen) in advertised(&c.id) { span.tag { (s) } " " span.muted { (layout::when(seen)) } " " } }
                            td { @if c.disabled { span.bad { "disabled" } } @else { span.ok { "enabled" } } }
                            td { @if !c.disabled { (layout::button_form(viewer, &format!("/admin/connectors/{}/disable", c.id), "Disable", "danger")) } }
                        }
                    }
                }
            }
            (paging::pager(RETURN, raw, "connectors", &window, list.len()))
        }
        section.card {
            h2 { "Enroll a connector" }
            form.row method="post" action="/admin/connectors/token" {
                (layout::csrf(viewer))
                label for="connector-name" { "Name" }
                input #connector-name name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,62}" placeholder="gpu-rack-2";
                button.primary #btn-token type="submit" { "Create enrollment token" }
            }
        }
        h2 #inventory { "Services" }
        (inventory_table(viewer, &inv, &segments))
    };
    layout::page(viewer, Nav::Connectors, "Connectors & services", body)
}

/// Online through which replicas, or offline since when.
fn link_cell(status: Option<&connector_links::ConnectorStatus>) -> Markup {
    html! {
        @match status {
            Some(s) if s.online() => {
                span.ok { "online" } " "
                span.muted title=(s.linked_to.join(", ")) {
                    "via " (s.linked_to.len()) @if s.linked_to.len() == 1 { " broker" } @else { " brokers" }
                }
            }
            Some(s) => { span.bad { "offline" } " " span.muted { "last seen " (layout::when(s.last_seen)) } }
            None => span.muted { "never linked" },
        }
    }
}

fn inventory_table(viewer: &Viewer, inv: &[InventoryRow], segments: &[inventory::SegmentRecord]) -> Markup {
    html! {
        @if inv.is_empty() { p.empty { "No service is known. Add [[services]] to broker.toml or let a connector advertise one." } }
        table #inventory-services {
            thead { tr { th { "Service" } th { "Segment" } th { "Protocol" } th { "Labels" } th { "Connector" } th { "Reachable by" } th { "Move to segment" } } }
            tbody {
                @for r in inv {
                    tr data-service=(r.service.name) {
                        td { strong { (r.service.name) } }
                        td { (r.service.segment.as_deref().unwrap_or("unassigned")) }
                        td { (r.service.protocol) }
                        td { @for l in &r.service.labels { span.tag { (l) } " " } }
                        td { @if r.online == Some(true) { span.ok { "online" } } @else { span.bad { "offline" } } }
                        td.reach { @if r.reachable_by.is_empty() { span.muted { "nobody" } } @else { (r.reachable_by.join(", ")) } }
                        td {
                            form.inline method="post" action="/admin/inventory/assign" {
                                (layout::csrf(viewer))
                                input type="hidden" name="service" value=(r.service.name);
                                select name="segment" aria-label={ "Segment for " (r.service.name) } {
                                    option value="" { "(none: nobody reaches it)" }
                                    @for s in segments { option value=(s.name) selected[r.service.segment.as_deref() == Some(s.name.as_str())] { (s.name) } }
                                }
                                " " button type="submit" { "Move" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NewToken {
    name: String,
}

pub(crate) async fn token(State(broker): State<Broker>, Admin(viewer): Admin, Form(f): Form<NewToken>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    let Some(ca) = broker.trust().ca_certs().first() else { return layout::internal(&"no CA certificate loaded") };
    let request = TokenRequest {
        role: PeerRole::Connector,
        name: f.name.trim().to_owned(),
        groups: Vec::new(),
        ttl: TOKEN_TTL,
        created_by: viewer.actor(),
    };
    let result = match create_token(broker.db(), ca.as_ref(), &request, SystemTime::now()).await {
        Ok(token) => {
            let command = format!(
                "palisade-connector enroll --broker https://{} --token {}",
                broker.config().quic_public_addr(),
                token.expose()
            );
            html! {
                div.notice.ok role="status" { "One-time token for connector " strong { (request.name) } ", valid for 1 hour. Run this on its host; it is shown only once:" }
                pre.cmd #install-command { code { (command) } }
            }
        }
        Err(e) => layout::notice("error", &e.to_string()),
    };
    render(&broker, &viewer, result, CONNECTORS.first_page(), None).await
}

pub(crate) async fn disable(State(broker): State<Broker>, Admin(viewer): Admin, Path(id): Path<String>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    match crate::admin::disable_identity(broker.db(), &id, &viewer.actor()).await {
        Ok(_) => Redirect::to(RETURN).into_response(),
        Err(e) => layout::internal(&e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Assign {
    service: String,
    #[serde(default)]
    segment: String,
}

pub(crate) async fn assign(State(broker): State<Broker>, Admin(viewer): Admin, Form(f): Form<Assign>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link(RETURN)).into_response();
    }
    let segment = Some(f.segment.as_str()).filter(|s| !s.is_empty());
    let result = match inventory::assign(broker.db(), &f.service, segment, None, &viewer.actor()).await {
        Ok(_) => layout::notice("ok", &format!("{} is now in {}.", f.service, segment.unwrap_or("no segment"))),
        Err(e @ InventoryError::Db(_)) => return layout::internal(&e),
        Err(e) => layout::notice("error", &e.to_string()),
    };
    if let Err(e) = broker.policy().sync().await {
        tracing::warn!(error = %e, "the catalog changed but the policy set did not rebuild yet; the follower will retry");
    }
    render(&broker, &viewer, result, CONNECTORS.first_page(), None).await
}
