//! `alert_throttles`: identities held to a request rate on a service after
//! an extraction or abuse alert, until an admin clears them (#8).
//!
//! Only the broker writes here (an alert it raised, an admin's clear);
//! connectors are sent the rows for the services they serve.

use sqlx::{Any, Row as _, Transaction};

use super::Db;

/// One throttle in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleRow {
    /// The service name.
    pub service: String,
    /// The caller's SPIFFE id.
    pub identity: String,
    /// Requests per minute it may make to the service.
    pub requests_per_minute: u32,
    /// The alert rule that set it.
    pub rule: String,
    /// When it was set (unix milliseconds).
    pub created_ms: i64,
}

/// Sets a throttle unless one already holds the identity on the service;
/// returns whether it was new (an existing one keeps its rate and time).
///
/// # Errors
/// A database error.
pub async fn set_in(tx: &mut Transaction<'static, Any>, row: &ThrottleRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO alert_throttles (service, identity, requests_per_minute, rule, created_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service, identity) DO NOTHING",
    )
    .bind(&row.service)
    .bind(&row.identity)
    .bind(i64::from(row.requests_per_minute))
    .bind(&row.rule)
    .bind(row.created_ms)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Every throttle, the newest first, at most `limit`.
///
/// # Errors
/// A database error.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<ThrottleRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT service, identity, requests_per_minute, rule, created_ms FROM alert_throttles \
         ORDER BY created_ms DESC, service, identity LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Deletes the identity's throttles (on `service` only, if given) and returns them.
///
/// # Errors
/// A database error; then nothing was deleted.
pub async fn clear_in(
    tx: &mut Transaction<'static, Any>,
    identity: &str,
    service: Option<&str>,
) -> Result<Vec<ThrottleRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT service, identity, requests_per_minute, rule, created_ms FROM alert_throttles \
         WHERE identity = $1 AND ($2 IS NULL OR service = $3) ORDER BY service",
    )
    .bind(identity)
    .bind(service)
    .bind(service)
    .fetch_all(&mut **tx)
    .await?;
    let found: Vec<ThrottleRow> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    for row in &found {
        sqlx::query("DELETE FROM alert_throttles WHERE identity = $1 AND service = $2")
            .bind(&row.identity)
            .bind(&row.service)
            .execute(&mut **tx)
            .await?;
    }
    Ok(found)
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<ThrottleRow, sqlx::Error> {
    let rate: i64 = row.try_get("requests_per_minute")?;
    Ok(ThrottleRow {
        service: row.try_get("service")?,
        identity: row.try_get("identity")?,
        requests_per_minute: u32::try_from(rate).unwrap_or(0),
        rule: row.try_get("rule")?,
        created_ms: row.try_get("created_ms")?,
    })
}
