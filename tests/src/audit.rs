//! Reading the broker's audit trail straight from its database.

use std::ops::Deref;
use std::path::Path;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// One row of `audit_events`.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Position in the chain.
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub ts_ms: i64,
    /// e.g. `stream.denied`.
    pub kind: String,
    /// e.g. `allow`, `deny`, `ok`, `error`.
    pub outcome: Option<String>,
    /// Who acted (a SPIFFE id, `admin`, …).
    pub actor: Option<String>,
    /// What it was done to.
    pub subject: Option<String>,
    /// Ties a broker decision to the connector's events.
    pub decision_id: Option<String>,
    /// The event's JSON detail.
    pub detail: serde_json::Value,
}

impl AuditRow {
    /// A string field of `detail`.
    #[must_use]
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.detail.get(key).and_then(serde_json::Value::as_str)
    }
}

/// The audit trail at one moment, oldest first.
#[derive(Debug, Clone)]
pub struct AuditLog(pub Vec<AuditRow>);

impl Deref for AuditLog {
    type Target = [AuditRow];
    fn deref(&self) -> &[AuditRow] {
        &self.0
    }
}

impl AuditLog {
    /// Every event of this kind.
    #[must_use]
    pub fn of_kind(&self, kind: &str) -> Vec<&AuditRow> {
        self.0.iter().filter(|r| r.kind == kind).collect()
    }

    /// Whether any event of this kind exists.
    #[must_use]
    pub fn has_kind(&self, kind: &str) -> bool {
        self.0.iter().any(|r| r.kind == kind)
    }

    /// The newest event of this kind.
    #[must_use]
    pub fn last_of_kind(&self, kind: &str) -> Option<&AuditRow> {
        self.0.iter().rev().find(|r| r.kind == kind)
    }

    /// `seq kind outcome` per line, for assertion messages.
    #[must_use]
    pub fn summary(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("#{} {} {} {}", r.seq, r.kind, r.outcome.as_deref().unwrap_or("-"), r.detail))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Opens the broker's database (by its URL: SQLite or PostgreSQL) for
/// reading and, in tamper tests, writing. SQL for it uses `$N` placeholders.
pub async fn open(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains('?') { format!("{url}?mode=rw") } else { url.to_owned() };
    AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                if conn.backend_name() == "SQLite" {
                    sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout = 10000").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Waits (up to 2 s) until a running broker has chained every event it
/// journaled ahead of its commit: `<database>.audit-intents` is empty. A
/// stream's `stream.allowed` is durable there first and in the trail a
/// moment later. A killed broker's journal is chained when it starts again.
async fn journal_chained(url: &str) {
    let Some(file) = url.strip_prefix("sqlite://").map(|rest| rest.split('?').next().unwrap_or(rest)) else { return };
    let journal = format!("{file}.audit-intents");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub(crate) async fn read(url: &str) -> AuditLog {
    journal_chained(url).await;
    let pool = open(url).await;
    let rows = sqlx::query(
        "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail FROM audit_events ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("read audit_events");
    pool.close().await;
    AuditLog(
        rows.iter()
            .map(|row| {
                let detail: Option<String> = row.get("detail");
                AuditRow {
                    seq: row.get("seq"),
                    ts_ms: row.get("ts_ms"),
                    kind: row.get("kind"),
                    outcome: row.get("outcome"),
                    actor: row.get("actor"),
                    subject: row.get("subject"),
                    decision_id: row.get("decision_id"),
                    detail: detail
                        .as_deref()
                        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| serde_json::Value::String(d.to_owned())))
                        .unwrap_or(serde_json::Value::Null),
                }
            })
            .collect(),
    )
}

/// `docs/audit-events.schema.json`, the machine-checkable event catalogue.
#[must_use]
pub(crate) fn event_schema() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-events.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

impl AuditRow {
    /// What is wrong with this event against `schema` ([`event_schema`]):
    /// an unknown kind, an outcome the kind cannot have, a missing or
    /// unexpected actor / subject / decision id, a missing detail field or
    /// one of the wrong JSON type. Empty when it conforms.
    #[must_use]
    pub fn schema_violations(&self, schema: &serde_json::Value) -> Vec<String> {
        let at = format!("#{} {}", self.seq, self.kind);
        let Some(entry) = schema["kinds"].get(&self.kind) else { return vec![format!("{at}: kind not in the schema")] };
        let mut wrong = Vec::new();
        let outcome = self.outcome.as_deref().unwrap_or("");
        if !entry["outcomes"].as_array().is_some_and(|o| o.iter().any(|v| v == outcome)) {
            wrong.push(format!("{at}: outcome {outcome:?} not in {}", entry["outcomes"]));
        }
        for (field, value) in [("actor", &self.actor), ("subject", &self.subject), ("decision_id", &self.decision_id)] {
            match (entry[field].as_str(), value) {
                (Some("required"), None) => wrong.push(format!("{at}: {field} missing")),
                (Some("absent"), Some(v)) => wrong.push(format!("{at}: {field} {v:?} where none belongs")),
                (Some("required" | "optional" | "absent"), _) => {}
                (other, _) => wrong.push(format!("{at}: schema has {other:?} for {field}")),
            }
        }
        let Some(fields) = entry["detail"].as_object() else { return vec![format!("{at}: schema detail")] };
        if !self.detail.is_object() {
            wrong.push(format!("{at}: detail is not an object: {}", self.detail));
            return wrong;
        }
        for (name, ty) in fields {
            let ty = ty.as_str().unwrap_or("?");
            match self.detail.get(name) {
                None => wrong.push(format!("{at}: detail.{name} missing")),
                Some(v) if !has_type(v, ty) => wrong.push(format!("{at}: detail.{name} = {v} is not {ty}")),
                Some(_) => {}
            }
        }
        wrong
    }
}

fn has_type(v: &serde_json::Value, ty: &str) -> bool {
    ty.split('|').any(|t| match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        "any" => true,
        _ => false,
    })
}

impl AuditLog {
    /// Every schema violation in the log ([`AuditRow::schema_violations`]).
    #[must_use]
    pub fn schema_violations(&self) -> Vec<String> {
        let schema = event_schema();
        self.0.iter().flat_map(|r| r.schema_violations(&schema)).collect()
    }
}
