//! Reading the broker's audit trail straight from its database.

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

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

/// Opens the broker's database for reading and, in tamper tests, writing.
pub async fn open(db: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new().filename(db).busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()))
}

pub(crate) async fn read(db: &Path) -> AuditLog {
    let pool = open(db).await;
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
