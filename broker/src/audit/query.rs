//! Reading the audit trail back.

use sqlx::Sqlite;

use super::chain::EventRow;
use super::{AuditError, EventKind};
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
            sqlx::query_as::<Sqlite, RawRow>(
                "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
                 FROM audit_events WHERE kind = ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(kind.as_str())
            .bind(i64::from(limit))
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query_as::<Sqlite, RawRow>(
                "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
                 FROM audit_events ORDER BY seq DESC LIMIT ?",
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
    let n = sqlx::query_scalar::<Sqlite, i64>("SELECT COUNT(*) FROM audit_events WHERE kind = ?")
        .bind(kind.as_str())
        .fetch_one(db.pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
