//! The audit trail: events filtered by person, machine, service, kind,
//! outcome and time, in keyset pages ([`crate::audit::query::search`]); a
//! person's login trail (every sign-in attempt with result, reason, method,
//! address and user agent); export as JSON lines or CSV (cells that
//! a spreadsheet would run as a formula are neutralised by
//! [`crate::audit::export`]); and the hash-chain verification status.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query as Query_, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use maud::{Markup, html};
use serde::Deserialize;

use crate::Broker;
use crate::audit::export::{self, Filter, Format};
use crate::audit::query::{LoginAttempt, Query, count_matching, login_trail, previous_before, search, trail_query};
use crate::audit::{AuditError, EventKind, EventRow, Outcome, VerifyReport, verify};
use crate::console::layout::{self, Nav};
use crate::console::paging::{self, Moves, Paging};
use crate::console::viewer::Admin;
use crate::db::identities;
use crate::login::manage::{ManageError, find_user};
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
    #[serde(default)]
    before: String,
}

impl AuditQuery {
    /// `before`, the keyset cursor: empty for the newest page.
    fn before(&self) -> Result<Option<i64>, String> {
        match self.before.trim() {
            "" => Ok(None),
            b => b.parse::<i64>().ok().filter(|b| *b > 0).map(Some).ok_or_else(|| {
                let shown: String = b.chars().take(40).collect();
                format!("before must be an event number (a whole number above 0), not {shown:?}")
            }),
        }
    }
}

/// Why the filters give no query.
#[derive(Debug)]
enum FilterError {
    /// The filters are malformed: a message for the page, answered with 400.
    /// (A NUL never gets here: `crate::web::no_nul` refuses it first.)
    Invalid(String),
    /// A name matches nobody (or several): a message for the page.
    Unknown(String),
    /// The database failed: logged, never shown (it may quote the input).
    Db(String),
}

impl From<ManageError> for FilterError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::Db(e) => FilterError::Db(e.to_string()),
            other => FilterError::Unknown(other.to_string()),
        }
    }
}

/// What the filters name, resolved to identity ids.
async fn to_query(broker: &Broker, q: &AuditQuery, size: u32) -> Result<Query, FilterError> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let person = match q.person.trim() {
        "" => None,
        who => Some(find_user(broker.db(), who).await?.identity.id),
    };
    let machine = match q.machine.trim() {
        "" => None,
        name => Some(find_machine(broker, name).await?),
    };
    let service = Some(q.service.trim().to_owned()).filter(|s| !s.is_empty());
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
        service,
        kinds: EventKind::from_name(q.kind.trim()).into_iter().collect(),
        outcome,
        since_ms: q.hours.trim().parse::<i64>().ok().map(|h| now_ms.saturating_sub(h.saturating_mul(3_600_000))),
        before_seq: q.before().map_err(FilterError::Invalid)?,
        limit: size,
        ..Query::default()
    })
}

/// The identity id of the machine, or else the connector, named `name`.
async fn find_machine(broker: &Broker, name: &str) -> Result<String, FilterError> {
    let db_error = |e: sqlx::Error| FilterError::Db(e.to_string());
    let mut found = identities::find_by_name(broker.db(), PeerRole::Machine, name).await.map_err(db_error)?;
    if found.is_none() {
        found = identities::find_by_name(broker.db(), PeerRole::Connector, name).await.map_err(db_error)?;
    }
    Ok(found.ok_or_else(|| FilterError::Unknown(format!("no machine or connector named {name:?}")))?.id)
}

pub(crate) async fn page(
    State(broker): State<Broker>,
    Admin(viewer): Admin,
    RawQuery(raw): RawQuery,
    Query_(q): Query_<AuditQuery>,
) -> Response {
    let trail = !q.trail.is_empty();
    let title = if trail { "Login trail" } else { "Audit trail" };
    let size = match Paging::parse(raw.as_deref(), "audit") {
        Ok(p) => p.size,
        Err(e) => return paging::bad_request(&viewer, Nav::Audit, title, "/admin/audit", &e),
    };
    let status = chain_report(&broker).await;
    let mut code = StatusCode::OK;
    let (results, moves) = match to_query(&broker, &q, size).await {
        Err(FilterError::Db(cause)) => return layout::internal(&cause),
        Err(FilterError::Invalid(message)) => {
            code = StatusCode::BAD_REQUEST;
            (layout::notice("error", &message), None)
        }
        Err(FilterError::Unknown(message)) => (layout::notice("error", &message), None),
        Ok(query) if trail => match &query.person {
            None => (layout::notice("info", "Name a person to see their login trail."), None),
            Some(id) => match login_trail(broker.db(), id, &query).await {
                Ok(page) => {
                    let counted = trail_query(id, &query);
                    let moves = moves(&broker, &counted, &q, raw.as_deref(), page.items.len(), page.next_before);
                    (trail_table(&page.items), Some(moves.await))
                }
                Err(e) => return layout::internal(&e),
            },
        },
        Ok(query) => match search(broker.db(), &query).await {
            Ok(page) => {
                let moves = moves(&broker, &query, &q, raw.as_deref(), page.items.len(), page.next_before);
                (table(&page.items), Some(moves.await))
            }
            Err(e) => return layout::internal(&e),
        },
    };
    let pager = match moves {
        Some(Ok(moves)) => paging::render("/admin/audit", raw.as_deref(), "audit", size, &moves),
        Some(Err(e)) => return layout::internal(&e),
        None => html! {},
    };
    let body = html! {
        (chain_status(&status))
        (filters(&q))
        p.muted { "Newest first. Export everything: "
            a #export-jsonl href="/admin/audit/export?format=jsonl" { "JSON lines" } " · "
            a #export-csv href="/admin/audit/export?format=csv" { "CSV" } " (cells a spreadsheet would run as formulas are neutralised)" }
        (results)
        (pager)
    };
    (code, layout::page(&viewer, Nav::Audit, title, body)).into_response()
}

/// Where this keyset page sits (`Showing 101–200 of 1234`) and where
/// previous and next go.
async fn moves(
    broker: &Broker,
    query: &Query,
    q: &AuditQuery,
    raw: Option<&str>,
    shown: usize,
    next_before: Option<i64>,
) -> Result<Moves, AuditError> {
    let all = count_matching(broker.db(), &Query { before_seq: None, ..query.clone() }).await?;
    let older = count_matching(broker.db(), query).await?;
    let first = all.saturating_sub(older) + 1;
    let summary = match u64::try_from(shown).unwrap_or(0) {
        0 => format!("Showing 0 of {all}"),
        n => format!("Showing {first}–{} of {all}", first + n - 1),
    };
    let previous = match query.before_seq {
        None => None,
        Some(_) => Some(page_link(q, raw, previous_before(broker.db(), query, query.limit).await?)),
    };
    Ok(Moves { summary, previous, next: next_before.map(|b| page_link(q, raw, Some(b))), position: None })
}

/// This page's filters and page size, at the keyset cursor `before`.
fn page_link(q: &AuditQuery, raw: Option<&str>, before: Option<i64>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("person", &q.person), ("machine", &q.machine), ("service", &q.service), ("kind", &q.kind)] {
        s.append_pair(k, v);
    }
    s.append_pair("outcome", &q.outcome).append_pair("hours", &q.hours).append_pair("trail", &q.trail);
    let size = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).find(|(k, _)| k == "audit_size");
    if let Some((_, size)) = size {
        s.append_pair("audit_size", &size);
    }
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

/// The whole trail as a download, streamed a page of events at a time (see
/// [`export::chunks`]). A failure before the first page is an error page; a
/// failure later cuts the download short, which the browser reports as failed
/// rather than saving a truncated file as complete.
pub(crate) async fn export_all(
    State(broker): State<Broker>,
    Admin(_viewer): Admin,
    Query_(q): Query_<ExportQuery>,
) -> Response {
    let (format, mime, ext) = match q.format.as_str() {
        "csv" => (Format::Csv, "text/csv; charset=utf-8", "csv"),
        _ => (Format::Jsonl, "application/jsonl; charset=utf-8", "jsonl"),
    };
    let mut chunks = Box::pin(export::chunks(broker.db().clone(), Filter::default(), format));
    let first = match chunks.try_next().await {
        Ok(first) => first.unwrap_or_default(),
        Err(e) => return layout::internal(&e),
    };
    let rest = chunks.inspect_err(|e| tracing::error!(error = %e, "the audit export stopped part way"));
    let body = futures::stream::once(async move { Ok(first) }).chain(rest).map_ok(Bytes::from);
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    let disposition = format!("attachment; filename=\"palisade-audit.{ext}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
