//! Connectors that stay away: `alert.connector_offline` when a connector's
//! control link has been down for longer than `audit.connector_offline_alert`,
//! `alert.connector_back_online` when an alerted connector returns.
//!
//! `connector.offline` puts the connector in `audit_connectors_offline` (its
//! time, not the time the alert task saw it); `connector.online` takes it
//! out. [`overdue`] alerts on the ones past the threshold. A link closed
//! because the broker itself was stopping (`broker_stopping` in the detail)
//! is not the connector's absence and is not tracked then; instead, when the
//! broker starts, [`seed`] starts the clock for every connector whose last
//! link event says it was connected (or was cut by the stop, or the broker
//! was killed and wrote no offline event): it counts as offline from the
//! broker's start until it links again, so the broker's own downtime never
//! raises an alert but a connector that does not come back does. State and
//! alert commit in one transaction, so a restart neither repeats nor loses
//! an alert.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Any;

use super::SinkError;
use crate::audit::chain::EventRow;
use crate::audit::export::rfc3339_ms;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::{Db, connector_links};

/// Feeds one event; records `alert.connector_back_online` if due.
pub(super) async fn observe(db: &Db, row: &EventRow) -> Result<(), SinkError> {
    let Some(connector) = row.actor.as_deref() else { return Ok(()) };
    if row.kind == EventKind::ConnectorOffline.as_str() {
        let detail = serde_json::from_str::<Value>(&row.detail).unwrap_or(Value::Null);
        if detail["broker_stopping"].as_bool() == Some(true) {
            return Ok(());
        }
        // One replica lost its link; the connector still serves through another.
        if linked_elsewhere(db, connector, row.ts_ms).await? {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit_connectors_offline (connector, since_ms, alerted) VALUES ($1, $2, 0) \
             ON CONFLICT (connector) DO NOTHING",
        )
        .bind(connector)
        .bind(row.ts_ms)
        .execute(db.pool())
        .await?;
    } else if row.kind == EventKind::ConnectorOnline.as_str() {
        back_online(db, connector, row.ts_ms).await?;
    }
    Ok(())
}

async fn back_online(db: &Db, connector: &str, now_ms: i64) -> Result<(), SinkError> {
    let mut tx = db.begin_write().await?;
    let state = sqlx::query_as::<Any, (i64, i64)>(
        "SELECT since_ms, alerted FROM audit_connectors_offline WHERE connector = $1",
    )
    .bind(connector)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((since_ms, alerted)) = state else { return Ok(()) };
    if alerted != 0 {
        let event = AuditEvent::new(EventKind::AlertConnectorBackOnline, Outcome::Success)
            .subject(connector)
            .detail(json!({ "offline_since": rfc3339_ms(since_ms), "offline_ms": now_ms.saturating_sub(since_ms) }));
        Audit::record_in(&mut tx, event).await.map_err(|e| SinkError::Alert(e.to_string()))?;
    }
    sqlx::query("DELETE FROM audit_connectors_offline WHERE connector = $1").bind(connector).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Records `alert.connector_offline` for every connector offline for longer
/// than `threshold` at `now_ms` and not alerted yet; returns how many.
pub(super) async fn overdue(db: &Db, threshold: Duration, now_ms: i64) -> Result<usize, SinkError> {
    let limit = now_ms.saturating_sub(i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX));
    let due = sqlx::query_as::<Any, (String, i64)>(
        "SELECT connector, since_ms FROM audit_connectors_offline WHERE alerted = 0 AND since_ms <= $1 ORDER BY since_ms",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin_write().await?;
    let mut alerted = 0;
    for (connector, since_ms) in due {
        if linked_elsewhere(db, &connector, now_ms).await? {
            // It came back through another replica without a connector.online
            // this broker has read yet, or never left it: not offline.
            sqlx::query("DELETE FROM audit_connectors_offline WHERE connector = $1 AND alerted = 0")
                .bind(&connector)
                .execute(&mut *tx)
                .await?;
            continue;
        }
        let claimed =
            sqlx::query("UPDATE audit_connectors_offline SET alerted = 1 WHERE connector = $1 AND alerted = 0")
                .bind(&connector)
                .execute(&mut *tx)
                .await?;
        if claimed.rows_affected() == 0 {
            continue;
        }
        let event =
            AuditEvent::new(EventKind::AlertConnectorOffline, Outcome::Failure).subject(&connector).detail(json!({
                "offline_since": rfc3339_ms(since_ms),
                "offline_ms": now_ms.saturating_sub(since_ms),
                "threshold_ms": u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX),
            }));
        Audit::record_in(&mut tx, event).await.map_err(|e| SinkError::Alert(e.to_string()))?;
        alerted += 1;
    }
    tx.commit().await?;
    Ok(alerted)
}

/// Whether a broker replica holds a live link to the connector named by its
/// SPIFFE id (`spiffe://TD/connector/ID`) at `now_ms`.
async fn linked_elsewhere(db: &Db, connector: &str, now_ms: i64) -> Result<bool, SinkError> {
    let Some(id) = connector.rsplit('/').next().filter(|id| !id.is_empty()) else { return Ok(false) };
    Ok(connector_links::has_live_link(db, id, now_ms / 1000).await?)
}

/// At the alert task's start (`now_ms`): puts every connector that was linked
/// when the broker last stopped into `audit_connectors_offline`, from now.
/// Only link events the task has already read (`seq <= cursor`) count, so a
/// `connector.online` still to be read cannot clear a row it predates.
pub(super) async fn seed(db: &Db, cursor: i64, now_ms: i64) -> Result<usize, SinkError> {
    let last = sqlx::query_as::<Any, (String, String, String, i64)>(
        "SELECT e.actor, e.kind, e.detail, e.seq FROM audit_events e JOIN ( \
             SELECT actor, MAX(seq) AS seq FROM audit_events \
             WHERE kind IN ('connector.online', 'connector.offline') AND actor IS NOT NULL GROUP BY actor \
         ) l ON e.seq = l.seq",
    )
    .fetch_all(db.pool())
    .await?;
    let mut seeded = 0;
    for (connector, kind, detail, seq) in last {
        let stopped = serde_json::from_str::<Value>(&detail).is_ok_and(|d| d["broker_stopping"] == true);
        if seq > cursor || !(kind == EventKind::ConnectorOnline.as_str() || stopped) {
            continue;
        }
        let added = sqlx::query(
            "INSERT INTO audit_connectors_offline (connector, since_ms, alerted) VALUES ($1, $2, 0) \
             ON CONFLICT (connector) DO NOTHING",
        )
        .bind(&connector)
        .bind(now_ms)
        .execute(db.pool())
        .await?;
        seeded += usize::try_from(added.rows_affected()).unwrap_or(0);
    }
    Ok(seeded)
}
