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
