//! Sign-ins from somewhere new: `alert.new_device` and `alert.new_address`.
//!
//! Every `session.created` names the person (actor `user/ID`), the client
//! address (`source`) and the user agent (`user_agent`, the "device"). What
//! each person signed in from is remembered in `audit_seen_signins`. A value
//! not seen before for a person who already has values of that kind raises
//! an alert; a person's first sign-in only records the baseline. The new row
//! and the alert commit in one transaction, so an event processed twice (a
//! restart before the alert task's cursor moved) alerts once.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use sqlx::Any;

use super::SinkError;
use crate::audit::chain::EventRow;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::Db;

/// Feeds one event; records an alert for each new device or address.
/// Returns the alert kinds it recorded.
pub(super) async fn observe(db: &Db, row: &EventRow) -> Result<Vec<EventKind>, SinkError> {
    if row.kind != EventKind::SessionCreated.as_str() {
        return Ok(Vec::new());
    }
    let Some(person) = row.actor.as_deref().filter(|a| a.starts_with("user/")) else { return Ok(Vec::new()) };
    let detail = serde_json::from_str::<Value>(&row.detail).unwrap_or(Value::Null);
    let seen = [
        ("device", EventKind::AlertNewDevice, detail["user_agent"].as_str().map(str::to_owned)),
        ("address", EventKind::AlertNewAddress, detail["source"].as_str().map(address)),
    ];
    let mut tx = db.begin_write().await?;
    let mut alerts = Vec::new();
    for (key, kind, value) in seen {
        let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
        let Some(known) = remember(&mut tx, person, key, &value, row).await? else { continue };
        if known > 0 {
            let event = AuditEvent::new(kind, Outcome::Failure).subject(person).detail(json!({
                "key": key,
                "value": value,
                "session": row.subject,
                "seq": row.seq,
                "known": known,
            }));
            Audit::record_in(&mut tx, event).await.map_err(|e| SinkError::Alert(e.to_string()))?;
            alerts.push(kind);
        }
    }
    tx.commit().await?;
    Ok(alerts)
}

/// Records `value` for the person. `None` if it was already known, else how
/// many other values of this kind the person had.
async fn remember(
    tx: &mut sqlx::Transaction<'_, Any>,
    person: &str,
    key: &str,
    value: &str,
    row: &EventRow,
) -> Result<Option<i64>, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE audit_seen_signins SET last_seen_ms = CASE WHEN last_seen_ms > $1 THEN last_seen_ms ELSE $1 END WHERE identity = $2 AND kind = $3 AND value = $4",
    )
    .bind(row.ts_ms)
    .bind(person)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() > 0 {
        return Ok(None);
    }
    let known =
        sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM audit_seen_signins WHERE identity = $1 AND kind = $2")
            .bind(person)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO audit_seen_signins (identity, kind, value, first_seq, last_seen_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(person)
    .bind(key)
    .bind(value)
    .bind(row.seq)
    .bind(row.ts_ms)
    .execute(&mut **tx)
    .await?;
    Ok(Some(known))
}

/// The client address without a port, in canonical form.
fn address(source: &str) -> String {
    source
        .parse::<IpAddr>()
        .or_else(|_| source.parse::<SocketAddr>().map(|s| s.ip()))
        .map_or_else(|_| source.to_owned(), |ip| ip.to_canonical().to_string())
}
