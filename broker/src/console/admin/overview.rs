//! The admin overview: services and whether a connector serves them, live
//! tunnels, and sign-ins and denies in the last hour.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use maud::html;

use crate::Broker;
use crate::audit::EventRow;
use crate::audit::query::recent;
use crate::console::layout::{self, Nav};
use crate::console::viewer::Admin;

/// How many recent events the last-hour counts look at.
const WINDOW_EVENTS: u32 = 5000;

/// Counts of the last hour's events.
#[derive(Debug, Default)]
pub(crate) struct LastHour {
    pub(crate) sign_ins: usize,
    pub(crate) failed_sign_ins: usize,
    pub(crate) denies: usize,
}

pub(crate) fn last_hour(rows: &[EventRow], now_ms: i64) -> LastHour {
    let since = now_ms - 3_600_000;
    let mut counts = LastHour::default();
    for row in rows.iter().filter(|r| r.ts_ms >= since) {
        match row.kind.as_str() {
            "login.succeeded" => counts.sign_ins += 1,
            "login.failed" => counts.failed_sign_ins += 1,
            _ if row.outcome == "deny" || row.kind.ends_with(".denied") => counts.denies += 1,
            _ => {}
        }
    }
    counts
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin) -> Response {
    let rows = match recent(broker.db(), None, WINDOW_EVENTS).await {
        Ok(rows) => rows,
        Err(e) => return layout::internal(&e),
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let counts = last_hour(&rows, now_ms);
    let engine = broker.policy().current();
    let services = &engine.bundle().services;
    let online = services.iter().filter(|s| broker.registry().is_online(&s.name)).count();
    let tunnels = broker.live().streams().len();
    let body = html! {
        div.tiles {
            div.tile #tile-services { span.num { (online) " / " (services.len()) } span { "services with a connector online" } }
            div.tile #tile-tunnels { span.num { (tunnels) } span { "live tunnels" } }
            div.tile #tile-signins { span.num { (counts.sign_ins) } span { "sign-ins, last hour" } }
            div.tile #tile-failed { span.num { (counts.failed_sign_ins) } span { "failed sign-ins, last hour" } }
            div.tile #tile-denies { span.num { (counts.denies) } span { "denied requests, last hour" } }
        }
        h2 { "Services" }
        @if services.is_empty() {
            p.empty { "No service is in a segment yet. " a href="/admin/connectors#inventory" { "Place one in a segment" } ", then enroll a connector beside it." }
        } @else {
            table {
                thead { tr { th { "Service" } th { "Segment" } th { "Protocol" } th { "Connector" } } }
                tbody {
                    @for s in services {
                        tr {
                            td { (s.name) } td { (s.segment) } td { (s.protocol) }
                            td { @if broker.registry().is_online(&s.name) { span.ok { "online" } } @else { span.bad { "offline" } } }
                        }
                    }
                }
            }
        }
        h2 { "Policy" }
        p { "Engine version " code { (engine.version()) } ", digest " code { (engine.digest().get(..12).unwrap_or("")) } ". "
            a href="/admin/policies" { "Edit policies" } }
    };
    layout::page(&viewer, Nav::Overview, "Overview", body)
}
