//! The audit trail: events filtered by person, machine, service, kind,
//! outcome and time, in keyset pages ([`crate::audit::query::search`]); a
//! person's login trail (every sign-in attempt with result, reason, method,
//! address and user agent); export as JSON lines or CSV (cells that
//! a spreadsheet would run as a formula are neutralised by
//! [`crate::audit::export`]); and the hash-chain verification status.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query as Query_, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

/// Rows per page.
const PAGE: u32 = 100;

use crate::Broker;
use crate::audit::export::{self, Filter, Format};
use crate::audit::query::{LoginAttempt, Query, login_trail, search};
use crate::audit::{AuditError, EventKind, EventRow, Outcome, VerifyReport, verify};
use crate::console::layout::{self, Nav};
use crate::console::viewer::Admin;
use crate::db::identities;
use crate::login::manage::find_user;
use palisade_proto::identity::PeerRole;

/// `GET /admin/audit` query; every field optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    person: String,
    #[serde(default)]
    machine: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    trail: String,
    before: Option<i64>,
}

/// What the filters name, resolved to identity ids; `Err` is a message for the page.
async fn to_query(broker: &Broker, q: &AuditQuery) -> Result<Query, String> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let person = match q.person.trim() {
        "" => None,
        who => Some(find_user(broker.db(), who).await.map_err(|e| e.to_string())?.identity.id),
    };
    let machine = match q.machine.trim() {
        "" => None,
        name => {
            let found =
                identities::find_by_name(broker.db(), PeerRole::Machine, name).await.map_err(|e| e.to_string())?;
            let found = match found {
                Some(m) => Some(m),
                None => {
                    identities::find_by_name(broker.db(), PeerRole::Connector, name).await.map_err(|e| e.to_string())?
                }
            };
            Some(found.ok_or_else(|| format!("no machine or connector named {name:?}"))?.id)
        }
    };
    let outcome = match q.outcome.as_str() {
        "allow" => Some(Outcome::Allow),
        "deny" => Some(Outcome::Deny),
        "success" => Some(Outcome::Success),
        "failure" => Some(Outcome::Failure),
        _ => None,
    };
    Ok(Query {
        person,
        machine,
        service: Some(q.service.trim().to_owned()).filter(|s| !s.is_empty()),
        kinds: EventKind::from_name(q.kind.trim()).into_iter().collect(),
        outcome,
        since_ms: q.hours.trim().parse::<i64>().ok().map(|h| now_ms - h * 3_600_000),
        before_seq: q.before,
        limit: PAGE,
        ..Query::default()
    })
}

pub(crate) async fn page(
    State(broker): State<Broker>,
    Admin(viewer): Admin,
    Query_(q): Query_<AuditQuery>,
) -> Response {
    let status = chain_report(&broker).await;
    let trail = !q.trail.is_empty();
    let (results, next) = match to_query(&broker, &q).await {
        Err(message) => (layout::notice("error", &message), None),
        Ok(query) if trail => match &query.person {
            None => (layout::notice("info", "Name a person to see their login trail."), None),
            Some(id) => match login_trail(broker.db(), id, &query).await {
                Ok(page) => (trail_table(&page.items), page.next_before),
                Err(e) => return layout::internal(&e),
            },
        },
        Ok(query) => match search(broker.db(), &query).await {
            Ok(page) => (table(&page.items), page.next_before),
            Err(e) => return layout::internal(&e),
        },
    };
    let body = html! {
        (chain_status(&status))
        (filters(&q))
        p.muted { "Newest first. Export everything: "
            a #export-jsonl href="/admin/audit/export?format=jsonl" { "JSON lines" } " · "
            a #export-csv href="/admin/audit/export?format=csv" { "CSV" } " (cells a spreadsheet would run as formulas are neutralised)" }
        (results)
        nav.pager {
            @if q.before.is_some() { a href=(page_link(&q, None)) { "← Newest" } }
            @if let Some(before) = next { a href=(page_link(&q, Some(before))) { "Older →" } }
        }
    };
    layout::page(&viewer, Nav::Audit, if trail { "Login trail" } else { "Audit trail" }, body)
}

fn page_link(q: &AuditQuery, before: Option<i64>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("person", &q.person), ("machine", &q.machine), ("service", &q.service), ("kind", &q.kind)] {
        s.append_pair(k, v);
    }
    s.append_pair("outcome", &q.outcome).append_pair("hours", &q.hours).append_pair("trail", &q.trail);
    if let Some(b) = before {
        s.append_pair("before", &b.to_string());
    }
    format!("/admin/audit?{}", s.finish())
}

/// Verifies the chain on a blocking thread: the verifier's future is not
/// `Send` for every lifetime, so it cannot sit inside a handler's future.
async fn chain_report(broker: &Broker) -> Result<VerifyReport, AuditError> {
    let db = broker.db().clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(verify(&db)))
        .await
        .unwrap_or_else(|_| Err(AuditError::Corrupt("the verifier stopped".into())))
}

fn chain_status(status: &Result<VerifyReport, AuditError>) -> Markup {
    match status {
        Ok(r) if r.broken.is_none() => layout::notice(
            "ok",
            &format!("Hash chain intact: {} events, {} signed checkpoints verified.", r.events, r.checkpoints),
        ),
        Ok(r) => {
            let b = r
                .broken
                .as_ref()
                .map_or_else(String::new, |b| format!("at event {} ({}): {}", b.seq, b.kind.as_str(), b.reason));
            layout::notice("error", &format!("Hash chain BROKEN {b}"))
        }
        Err(e) => layout::notice("error", &format!("Hash chain could not be verified: {e}")),
    }
}

fn filters(q: &AuditQuery) -> Markup {
    html! {
        form.row.filters method="get" action="/admin/audit" {
            label for="f-person" { "Person" }
            input #f-person name="person" value=(q.person) placeholder="email, name or id";
            label for="f-machine" { "Machine" }
            input #f-machine name="machine" value=(q.machine) size="12";
            label for="f-service" { "Service" }
            input #f-service name="service" value=(q.service) size="10";
            label for="f-kind" { "Event" }
            select #f-kind name="kind" {
                option value="" { "any" }
                @for k in EventKind::all() { option value=(k.as_str()) selected[q.kind == k.as_str()] { (k.as_str()) } }
            }
            label for="f-outcome" { "Outcome" }
            select #f-outcome name="outcome" {
                @for o in ["", "success", "failure", "allow", "deny"] {
                    option value=(o) selected[q.outcome == o] { (if o.is_empty() { "any" } else { o }) }
                }
            }
            label for="f-hours" { "Last hours" }
            input #f-hours name="hours" value=(q.hours) size="4" inputmode="numeric";
            label { input type="checkbox" name="trail" value="1" checked[!q.trail.is_empty()]; " login trail of the person" }
            button type="submit" { "Filter" }
        }
    }
}

fn trail_table(rows: &[LoginAttempt]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No sign-in attempt matches." } }
        @else {
            table #login-trail {
                thead { tr { th { "Time" } th { "Event" } th { "Result" } th { "Reason" } th { "Method" } th { "Address" } th { "User agent" } th { "Session" } } }
                tbody {
                    @for r in rows {
                        tr data-kind=(r.kind) {
                            td { (layout::when_ms(r.time_ms)) }
                            td { (r.kind) }
                            td { span class=(outcome_class(&r.result)) { (r.result) } }
                            td { (r.reason.as_deref().unwrap_or("-")) }
                            td { (r.method.as_deref().unwrap_or("-")) }
                            td { (r.address.as_deref().unwrap_or("-")) }
                            td.ua { (r.user_agent.as_deref().unwrap_or("-")) }
                            td { code { (r.session.as_deref().unwrap_or("-")) } }
                        }
                    }
                }
            }
        }
    }
}

fn table(rows: &[EventRow]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No event matches. Widen the filters." } }
        @else {
            table #audit-events {
                thead { tr { th { "Time" } th { "Event" } th { "Outcome" } th { "Actor" } th { "Subject" } th { "Detail" } } }
                tbody {
                    @for r in rows {
                        tr data-kind=(r.kind) data-seq=(r.seq) {
                            td { (layout::when_ms(r.ts_ms)) }
                            td { (r.kind) }
                            td { span class=(outcome_class(&r.outcome)) { (r.outcome) } }
                            td { (r.actor.as_deref().unwrap_or("-")) }
                            td { (r.subject.as_deref().unwrap_or("-")) }
                            td.detail { code { (r.detail) } }
                        }
                    }
                }
            }
        }
    }
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "success" | "allow" => "ok",
        "failure" | "deny" => "bad",
        _ => "muted",
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExportQuery {
    format: String,
}

pub(crate) async fn export_all(
    State(broker): State<Broker>,
    Admin(_viewer): Admin,
    Query_(q): Query_<ExportQuery>,
) -> Response {
    let (format, mime, ext) = match q.format.as_str() {
        "csv" => (Format::Csv, "text/csv; charset=utf-8", "csv"),
        _ => (Format::Jsonl, "application/jsonl; charset=utf-8", "jsonl"),
    };
    let mut out = Vec::new();
    if let Err(e) = export::export(broker.db(), Filter::default(), format, &mut out).await {
        return layout::internal(&e);
    }
    let disposition = format!("attachment; filename=\"palisade-audit.{ext}\"");
    let mut response = out.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
