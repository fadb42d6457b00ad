//! Throttles set after extraction alerts, for admins: `palisade-broker
//! alerts throttles` lists them, `alerts clear` lifts them. Clearing deletes
//! the rows and records one `throttle.cleared` per row, in one transaction;
//! every broker replica reads the change and connectors stop applying the
//! throttle within about a second.

use serde_json::json;

use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::Db;
use crate::db::alert_throttles::{self, ThrottleRow};

/// The most throttles listed.
const MAX_LISTED: i64 = 10_000;

/// A clear was refused or failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    /// No throttle holds the identity (on that service).
    #[error("no throttle holds {identity}{}; `palisade-broker alerts throttles` lists them", on(.service.as_deref()))]
    NotThrottled {
        /// The identity asked for.
        identity: String,
        /// The service asked for, if any.
        service: Option<String>,
    },
    /// The database or the audit trail failed.
    #[error("cannot clear the throttle: {0}")]
    Store(#[from] AuditError),
}

fn on(service: Option<&str>) -> String {
    service.map(|s| format!(" on {s}")).unwrap_or_default()
}

/// Every throttle in force, the newest first.
///
/// # Errors
/// A database error.
pub async fn list(db: &Db) -> Result<Vec<ThrottleRow>, sqlx::Error> {
    alert_throttles::list(db, MAX_LISTED).await
}

/// Clears the identity's throttles (on `service` only, if given) and audits
/// each with `actor`; returns what was cleared.
///
/// # Errors
/// Nothing matched, or the database or audit trail failed (then nothing changed).
pub async fn clear(
    db: &Db,
    identity: &str,
    service: Option<&str>,
    actor: &str,
) -> Result<Vec<ThrottleRow>, ClearError> {
    let mut tx = db.begin_write().await.map_err(AuditError::from)?;
    let cleared = alert_throttles::clear_in(&mut tx, identity, service).await.map_err(AuditError::from)?;
    if cleared.is_empty() {
        return Err(ClearError::NotThrottled { identity: identity.to_owned(), service: service.map(str::to_owned) });
    }
    for row in &cleared {
        let event = AuditEvent::new(EventKind::ThrottleCleared, Outcome::Success)
            .actor(actor)
            .subject(row.service.clone())
            .detail(json!({
                "identity": row.identity,
                "service": row.service,
                "rule": row.rule,
                "requests_per_minute": row.requests_per_minute,
                "throttled_since_ms": row.created_ms,
            }));
        Audit::record_in(&mut tx, event).await?;
    }
    tx.commit().await.map_err(AuditError::from)?;
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(service: &str, identity: &str, created_ms: i64) -> ThrottleRow {
        ThrottleRow {
            service: service.into(),
            identity: identity.into(),
            requests_per_minute: 6,
            rule: "prompt_sweep".into(),
            created_ms,
        }
    }

    async fn set(db: &Db, row: &ThrottleRow) -> bool {
        let mut tx = db.begin_write().await.unwrap();
        let new = alert_throttles::set_in(&mut tx, row).await.unwrap();
        tx.commit().await.unwrap();
        new
    }

    async fn cleared_actors(db: &Db) -> Vec<String> {
        sqlx::query_scalar("SELECT actor FROM audit_events WHERE kind = 'throttle.cleared' ORDER BY seq")
            .fetch_all(db.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_throttle_is_set_once_and_cleared_per_service_with_who_cleared_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&crate::db::sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
        assert!(set(&db, &row("llm", "thief", 1)).await);
        assert!(!set(&db, &row("llm", "thief", 2)).await, "a second alert keeps the first throttle");
        assert!(set(&db, &row("embed", "thief", 3)).await);
        assert!(set(&db, &row("llm", "other", 4)).await);
        let listed: Vec<(String, String)> =
            list(&db).await.unwrap().into_iter().map(|r| (r.service, r.identity)).collect();
        assert_eq!(
            listed,
            [("llm".into(), "other".into()), ("embed".into(), "thief".into()), ("llm".into(), "thief".into())]
        );
        assert_eq!(list(&db).await.unwrap()[2].created_ms, 1);

        let cleared = clear(&db, "thief", Some("llm"), "cli:alice").await.unwrap();
        assert_eq!(cleared, [row("llm", "thief", 1)]);
        let refused = clear(&db, "thief", Some("llm"), "cli:alice").await.unwrap_err();
        assert!(refused.to_string().contains("no throttle holds thief on llm"), "{refused}");
        let rest = clear(&db, "thief", None, "cli:bob").await.unwrap();
        assert_eq!(rest, [row("embed", "thief", 3)]);
        assert_eq!(cleared_actors(&db).await, ["cli:alice", "cli:bob"], "one event per throttle, with who cleared it");
        let left: Vec<String> = list(&db).await.unwrap().into_iter().map(|r| r.identity).collect();
        assert_eq!(left, ["other"], "another identity's throttle stays");
    }
}
