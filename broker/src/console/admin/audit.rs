//! The audit trail: recent events filtered by person, kind, outcome and
//! time; a person's login trail; export as JSON lines or CSV (cells that
//! a spreadsheet would run as a formula are neutralised by
//! [`crate::audit::export`]); and the hash-chain verification status.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::Broker;
use crate::audit::export::{self, Filter, Format};
use crate::audit::query::recent;
use crate::audit::{AuditError, EventKind, EventRow, VerifyReport, verify};
use crate::console::layout::{self, Nav};
use crate::console::viewer::Admin;

/// How many recent events a filter searches.
const SCAN: u32 = 5000;
/// Rows shown per page.
const PAGE: usize = 100;

/// `GET /admin/audit` query; every field optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    who: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    trail: String,
    #[serde(default)]
    page: usize,
}

impl AuditQuery {
    fn matches(&self, row: &EventRow, now_ms: i64) -> bool {
        let who = self.who.trim();
        let in_text = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains(who));
        (who.is_empty() || in_text(&row.actor) || in_text(&row.subject) || row.detail.contains(who))
            && (self.outcome.is_empty() || row.outcome == self.outcome)
            && (self.trail.is_empty() || row.kind.starts_with("login.") || row.kind.starts_with("session."))
            && self.hours.parse::<i64>().map_or(true, |h| row.ts_ms >= now_ms - h * 3_600_000)
    }
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, Query(q): Query<AuditQuery>) -> Response {
    let kind = EventKind::from_name(q.kind.trim());
    let rows = match recent(broker.db(), kind, SCAN).await {
        Ok(rows) => rows,
        Err(e) => return layout::internal(&e),
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let matching: Vec<&EventRow> = rows.iter().filter(|r| q.matches(r, now_ms)).collect();
    let shown: Vec<&EventRow> = matching.iter().skip(q.page * PAGE).take(PAGE).copied().collect();
    let status = chain_report(&broker).await;
    let body = html! {
        (chain_status(&status))
        (filters(&q))
        p.muted { (matching.len()) " matching events (newest first). "
            "Export everything: " a #export-jsonl href="/admin/audit/export?format=jsonl" { "JSON lines" } " · "
            a #export-csv href="/admin/audit/export?format=csv" { "CSV" } }
        @if shown.is_empty() { p.empty { "No event matches. Widen the filters." } }
        @else { (table(&shown, !q.trail.is_empty())) }
        nav.pager {
            @if q.page > 0 { a href=(page_link(&q, q.page - 1)) { "← Newer" } }
            @if (q.page + 1) * PAGE < matching.len() { a href=(page_link(&q, q.page + 1)) { "Older →" } }
        }
    };
    let title = if q.trail.is_empty() { "Audit trail" } else { "Login trail" };
    layout::page(&viewer, Nav::Audit, title, body)
}

fn page_link(q: &AuditQuery, page: usize) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("who", &q.who).append_pair("kind", &q.kind).append_pair("outcome", &q.outcome);
    s.append_pair("hours", &q.hours).append_pair("trail", &q.trail).append_pair("page", &page.to_string());
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
            label for="f-who" { "Person or identity" }
            input #f-who name="who" value=(q.who) placeholder="alice, user/…, machine/…";
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
            label { input type="checkbox" name="trail" value="1" checked[!q.trail.is_empty()]; " sign-ins only" }
            button type="submit" { "Filter" }
        }
    }
}

fn table(rows: &[&EventRow], trail: bool) -> Markup {
    html! {
        table #audit-events {
            thead { tr { th { "Time" } th { "Event" } th { "Outcome" } th { "Actor" } th { "Subject" }
                @if trail { th { "Reason" } th { "Address" } th { "User agent" } } @else { th { "Detail" } } } }
            tbody {
                @for r in rows {
                    tr data-kind=(r.kind) data-seq=(r.seq) {
                        td { (layout::when_ms(r.ts_ms)) }
                        td { (r.kind) }
                        td { span class=(outcome_class(&r.outcome)) { (r.outcome) } }
                        td { (r.actor.as_deref().unwrap_or("-")) }
                        td { (r.subject.as_deref().unwrap_or("-")) }
                        @if trail { (trail_cells(&r.detail)) } @else { td.detail { code { (r.detail) } } }
                    }
                }
            }
        }
    }
}

fn trail_cells(detail: &str) -> Markup {
    let v: serde_json::Value = serde_json::from_str(detail).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    let reason = v.get("reason").or_else(|| v.get("step")).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    html! { td { (reason) } td { (field("source")) } td.ua { (field("user_agent")) } }
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
    Query(q): Query<ExportQuery>,
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
