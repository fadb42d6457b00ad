//! `quota_usage`: per-identity quota counts of every connector instance,
//! so the connector replicas of a service share one quota (#8, #9).
//!
//! A report only ever adds to the reporting instance's own rows, whose
//! connector id comes from the link's certificate; nothing here lowers or
//! resets a count. What a connector is told is the sum of the *other*
//! instances' rows, so its own count is never counted twice.

use palisade_proto::usage::{UsageDelta, UsageElsewhere, UsageKey};
use sqlx::Row as _;

use super::Db;

/// Counts saturate here instead of overflowing a BIGINT.
const COUNT_CAP: i64 = 1 << 62;

/// Who reports: the connector (from its certificate) and its process.
#[derive(Clone, Copy, Debug)]
pub struct Reporter<'a> {
    /// The connector's identity id.
    pub connector_id: &'a str,
    /// The connector process's instance id.
    pub instance: &'a str,
}

/// Adds a checked report to the reporter's own rows, all of it or nothing.
///
/// # Errors
/// A database error; then nothing was added.
pub async fn add(db: &Db, reporter: Reporter<'_>, entries: &[UsageDelta], now_ms: i64) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    for entry in entries {
        let key = &entry.key;
        sqlx::query(
            "INSERT INTO quota_usage (service, identity, policy_id, window_ms, window_start_ms, connector_id, \
             instance, tokens, requests, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (service, identity, policy_id, window_ms, window_start_ms, connector_id, instance) \
             DO UPDATE SET \
             tokens = CASE WHEN quota_usage.tokens > $11 - excluded.tokens THEN $11 \
                      ELSE quota_usage.tokens + excluded.tokens END, \
             requests = CASE WHEN quota_usage.requests > $11 - excluded.requests THEN $11 \
                        ELSE quota_usage.requests + excluded.requests END, \
             updated_ms = excluded.updated_ms",
        )
        .bind(&key.service)
        .bind(&key.identity)
        .bind(&key.policy)
        .bind(to_i64(key.window_ms))
        .bind(to_i64(key.window_start_ms))
        .bind(reporter.connector_id)
        .bind(reporter.instance)
        .bind(to_i64(entry.tokens))
        .bind(to_i64(entry.requests))
        .bind(now_ms)
        .bind(COUNT_CAP)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// What every instance but `reporter` counted on `service`, for windows
/// still running at `now_ms` that changed at or after `since_ms` — the most
/// recently changed first, at most `limit`.
///
/// # Errors
/// A database error.
pub async fn elsewhere(
    db: &Db,
    reporter: Reporter<'_>,
    service: &str,
    now_ms: i64,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<UsageElsewhere>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT identity, policy_id, window_ms, window_start_ms, \
         CAST(SUM(tokens) AS BIGINT) AS tokens, CAST(SUM(requests) AS BIGINT) AS requests \
         FROM quota_usage \
         WHERE service = $1 AND window_start_ms + window_ms > $2 AND NOT (connector_id = $3 AND instance = $4) \
         GROUP BY identity, policy_id, window_ms, window_start_ms \
         HAVING MAX(updated_ms) >= $5 \
         ORDER BY MAX(updated_ms) DESC LIMIT $6",
    )
    .bind(service)
    .bind(now_ms)
    .bind(reporter.connector_id)
    .bind(reporter.instance)
    .bind(since_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let key = UsageKey {
                service: service.to_owned(),
                identity: row.try_get("identity")?,
                policy: row.try_get("policy_id")?,
                window_ms: to_u64(row.try_get("window_ms")?),
                window_start_ms: to_u64(row.try_get("window_start_ms")?),
            };
            Ok(UsageElsewhere {
                key,
                tokens: to_u64(row.try_get("tokens")?),
                requests: to_u64(row.try_get("requests")?),
            })
        })
        .collect()
}

/// Deletes the rows of windows that ended before `before_ms`; returns how many.
///
/// # Errors
/// A database error.
pub async fn prune(db: &Db, before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM quota_usage WHERE window_start_ms < $1 AND window_start_ms + window_ms < $1")
        .bind(before_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests;
