//! Reading the audit trail back: recent events, filtered and paginated
//! search ([`search`]) and a person's login trail ([`login_trail`]), for the
//! web console and `palisade-broker audit query`.

use sqlx::Any;

use super::chain::EventRow;
use super::{AuditError, EventKind, Outcome};
use crate::db::Db;

pub(super) type RawRow =
    (i64, i64, String, String, Option<String>, Option<String>, Option<String>, String, String, String);

pub(super) fn from_raw(r: RawRow) -> EventRow {
    let (seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash) = r;
    EventRow { seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash }
}

/// The most recent events, newest first, optionally of one kind.
///
/// # Errors
/// The table could not be read.
pub async fn recent(db: &Db, kind: Option<EventKind>, limit: u32) -> Result<Vec<EventRow>, AuditError> {
    let rows = match kind {
        Some(kind) => {
            sqlx::query_as::<Any, RawRow>(
                "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
                 FROM audit_events WHERE kind = $1 ORDER BY seq DESC LIMIT $2",
            )
            .bind(kind.as_str())
            .bind(i64::from(limit))
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query_as::<Any, RawRow>(
                "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
                 FROM audit_events ORDER BY seq DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(db.pool())
            .await?
        }
    };
    Ok(rows.into_iter().map(from_raw).collect())
}

/// Number of events of one kind.
///
/// # Errors
/// The table could not be read.
pub async fn count(db: &Db, kind: EventKind) -> Result<u64, AuditError> {
    let n = sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM audit_events WHERE kind = $1")
        .bind(kind.as_str())
        .fetch_one(db.pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Which events [`search`] returns: every field that is set must match.
/// Built by the web console and by `palisade-broker audit query`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// A person's identity id: events whose actor or subject is `user/ID` or
    /// the person's SPIFFE id (`spiffe://TD/user/ID`).
    pub person: Option<String>,
    /// A machine's (or connector's) identity id: actor or subject
    /// `machine/ID`, `connector/ID` or the SPIFFE id ending in them.
    pub machine: Option<String>,
    /// A service name: the subject of stream events.
    pub service: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// Only kinds of this OCSF class (e.g. 3002 Authentication).
    pub class_uid: Option<u32>,
    /// Only this outcome (`allow`, `deny`, `success`, `failure`).
    pub outcome: Option<Outcome>,
    /// Recorded at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Recorded before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Keyset pagination: only events older than this seq (the previous
    /// page's [`Page::next_before`]). `None`: start at the newest.
    pub before_seq: Option<i64>,
    /// Page size; 0 means [`DEFAULT_PAGE`], and more than [`MAX_PAGE`] is capped.
    pub limit: u32,
}

/// Page size when [`Query::limit`] is 0.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page [`search`] returns.
pub const MAX_PAGE: u32 = 1000;

/// One page of events, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The events (or login attempts), newest first.
    pub items: Vec<T>,
    /// Pass as [`Query::before_seq`] for the next (older) page; `None` when this was the last.
    pub next_before: Option<i64>,
}

/// The events matching `q`, newest first, one page at a time.
///
/// Pagination is by `seq` (keyset), so pages stay consistent while events
/// are appended: a new event never shifts an older page.
///
/// # Errors
/// The table could not be read.
pub async fn search(db: &Db, q: &Query) -> Result<Page<EventRow>, AuditError> {
    let limit = match q.limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let head = "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
                FROM audit_events WHERE seq < ";
    let Some(mut sql) = matching(head, q.before_seq.unwrap_or(i64::MAX), q) else {
        return Ok(Page { items: Vec::new(), next_before: None });
    };
    sql.push(" ORDER BY seq DESC LIMIT ").bind(i64::from(limit) + 1);
    let mut rows: Vec<EventRow> = sql.fetch_all(db).await?.into_iter().map(from_raw).collect();
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_before = if more { rows.last().map(|r| r.seq) } else { None };
    Ok(Page { items: rows, next_before })
}

/// How many events match `q`'s filters and are older than `q.before_seq`
/// (all of them when it is `None`); `q.limit` does not apply. With and
/// without `before_seq`, the two counts place a page: it starts at row
/// `all - older + 1` of `all`.
///
/// # Errors
/// The table could not be read.
pub async fn count_matching(db: &Db, q: &Query) -> Result<u64, AuditError> {
    let Some(sql) = matching("SELECT COUNT(*) FROM audit_events WHERE seq < ", q.before_seq.unwrap_or(i64::MAX), q)
    else {
        return Ok(0);
    };
    let n = sql.fetch_i64s(db).await?.first().copied().unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The `before_seq` of the page just newer than `q`'s (keyset paging
/// backwards, `limit` events a page): `None` when that page is the newest,
/// or when `q` already starts at the newest event.
///
/// # Errors
/// The table could not be read.
pub async fn previous_before(db: &Db, q: &Query, limit: u32) -> Result<Option<i64>, AuditError> {
    let Some(before) = q.before_seq else { return Ok(None) };
    // The newer page ends with the event at `before`; it starts `limit` matching events later.
    let Some(mut sql) = matching("SELECT seq FROM audit_events WHERE seq >= ", before, q) else {
        return Ok(None);
    };
    sql.push(" ORDER BY seq ASC LIMIT 1 OFFSET ").bind(i64::from(limit));
    Ok(sql.fetch_i64s(db).await?.first().copied())
}

/// `head` (ending in a comparison with `seq`) bound to `seq`, and every
/// filter of `q` but its paging; `None` when nothing can match.
fn matching(head: &str, seq: i64, q: &Query) -> Option<Filter> {
    let mut sql = Filter::new(head);
    sql.bind(seq);
    if let Some(since) = q.since_ms {
        sql.push(" AND ts_ms >= ").bind(since);
    }
    if let Some(until) = q.until_ms {
        sql.push(" AND ts_ms < ").bind(until);
    }
    if let Some(outcome) = q.outcome {
        sql.push(" AND outcome = ").bind(outcome.as_str());
    }
    if let Some(service) = &q.service {
        sql.push(" AND subject = ").bind(service.as_str());
    }
    if let Some(person) = &q.person {
        party(&mut sql, &["user"], person);
    }
    if let Some(machine) = &q.machine {
        party(&mut sql, &["machine", "connector"], machine);
    }
    let kinds = kinds_wanted(q)?;
    if !kinds.is_empty() {
        sql.push(" AND kind IN (");
        for (i, kind) in kinds.into_iter().enumerate() {
            sql.push(if i == 0 { "" } else { ", " }).bind(kind.as_str());
        }
        sql.push(")");
    }
    Some(sql)
}

/// The event kinds a query asks for (empty: any), or `None` when its kinds
/// and OCSF class exclude each other and nothing can match.
fn kinds_wanted(q: &Query) -> Option<Vec<EventKind>> {
    let Some(class) = q.class_uid else {
        return Some(q.kinds.clone());
    };
    let kinds: Vec<EventKind> = if q.kinds.is_empty() {
        EventKind::all().into_iter().filter(|k| k.ocsf_class().0 == class).collect()
    } else {
        q.kinds.iter().copied().filter(|k| k.ocsf_class().0 == class).collect()
    };
    (!kinds.is_empty()).then_some(kinds)
}

/// `AND (actor or subject names ROLE/ID for one of the roles)`.
fn party(sql: &mut Filter, roles: &[&str], id: &str) {
    sql.push(" AND (");
    for (i, role) in roles.iter().enumerate() {
        let short = format!("{role}/{id}");
        let spiffe = format!("spiffe://%/{}", like_escape(&short));
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("actor = ").bind(short.as_str());
        sql.push(" OR subject = ").bind(short.as_str());
        sql.push(" OR actor LIKE ").bind(spiffe.as_str()).push(" ESCAPE '\\'");
        sql.push(" OR subject LIKE ").bind(spiffe.as_str()).push(" ESCAPE '\\'");
    }
    sql.push(")");
}

/// A search's SQL with numbered (`$N`) placeholders, which both SQLite and
/// PostgreSQL accept, and the values bound to them in order.
struct Filter {
    sql: String,
    params: Vec<Param>,
}

enum Param {
    Int(i64),
    Text(String),
}

impl From<i64> for Param {
    fn from(v: i64) -> Param {
        Param::Int(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Param {
        Param::Text(v.to_owned())
    }
}

impl Filter {
    fn new(head: &str) -> Filter {
        Filter { sql: head.to_owned(), params: Vec::new() }
    }

    fn push(&mut self, sql: &str) -> &mut Filter {
        self.sql.push_str(sql);
        self
    }

    fn bind(&mut self, value: impl Into<Param>) -> &mut Filter {
        self.params.push(value.into());
        self.sql.push('$');
        self.sql.push_str(&self.params.len().to_string());
        self
    }

    async fn fetch_all(self, db: &Db) -> Result<Vec<RawRow>, sqlx::Error> {
        let mut query = sqlx::query_as::<Any, RawRow>(sqlx::AssertSqlSafe(self.sql));
        for param in self.params {
            query = match param {
                Param::Int(v) => query.bind(v),
                Param::Text(v) => query.bind(v),
            };
        }
        query.fetch_all(db.pool()).await
    }

    async fn fetch_i64s(self, db: &Db) -> Result<Vec<i64>, sqlx::Error> {
        let mut query = sqlx::query_scalar::<Any, i64>(sqlx::AssertSqlSafe(self.sql));
        for param in self.params {
            query = match param {
                Param::Int(v) => query.bind(v),
                Param::Text(v) => query.bind(v),
            };
        }
        query.fetch_all(db.pool()).await
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// One sign-in attempt in a person's login trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoginAttempt {
    /// The event's position in the chain.
    pub seq: i64,
    /// When (ms since the epoch).
    pub time_ms: i64,
    /// `login.succeeded`, `login.failed` or `session.created` (the sign-in completed).
    pub kind: String,
    /// `success` or `failure`.
    pub result: String,
    /// Why it failed (a stable code), for failures.
    pub reason: Option<String>,
    /// The step or methods: `oidc`, `webauthn`, `device`, or for a session the
    /// methods joined with `+` (e.g. `oidc+webauthn`).
    pub method: Option<String>,
    /// The client address.
    pub address: Option<String>,
    /// The client's user agent (attacker-controlled text: escape before display).
    pub user_agent: Option<String>,
    /// The session the sign-in created, if any.
    pub session: Option<String>,
}

/// A person's login trail: every sign-in attempt (each step that succeeded
/// or failed, and each completed sign-in), newest first, paginated like
/// [`search`] (`q.before_seq`, `q.limit`, `q.since_ms`, `q.until_ms` apply;
/// the other filters are ignored).
///
/// # Errors
/// The table could not be read.
pub async fn login_trail(db: &Db, person: &str, q: &Query) -> Result<Page<LoginAttempt>, AuditError> {
    let page = search(db, &trail_query(person, q)).await?;
    Ok(Page { items: page.items.iter().map(attempt).collect(), next_before: page.next_before })
}

/// The query [`login_trail`] runs for `person`: `q`'s paging and time
/// bounds, the sign-in kinds, nothing else.
#[must_use]
pub fn trail_query(person: &str, q: &Query) -> Query {
    Query {
        person: Some(person.to_owned()),
        kinds: vec![EventKind::LoginSucceeded, EventKind::LoginFailed, EventKind::SessionCreated],
        before_seq: q.before_seq,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        limit: q.limit,
        ..Query::default()
    }
}

fn attempt(row: &EventRow) -> LoginAttempt {
    let detail = serde_json::from_str::<serde_json::Value>(&row.detail).unwrap_or_default();
    let text = |key: &str| detail.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
    let session_created = row.kind == EventKind::SessionCreated.as_str();
    let method = if session_created {
        detail
            .get("auth_methods")
            .and_then(serde_json::Value::as_array)
            .map(|m| m.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join("+"))
    } else {
        text("step").or_else(|| detail.get("idp").map(|_| "oidc".to_owned()))
    };
    LoginAttempt {
        seq: row.seq,
        time_ms: row.ts_ms,
        kind: row.kind.clone(),
        result: if row.outcome == Outcome::Failure.as_str() { "failure" } else { "success" }.to_owned(),
        reason: text("reason"),
        method,
        address: text("source"),
        user_agent: text("user_agent"),
        session: if session_created { row.subject.clone() } else { text("session") },
    }
}
