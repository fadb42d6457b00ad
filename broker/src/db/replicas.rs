//! `broker_replicas`: which brokers share this database, by the QUIC address
//! clients dial, and when each last said it was running.

use std::time::Duration;

use sqlx::Any;

use super::Db;

/// A replica not seen for this long is not offered to clients.
pub const FRESH_FOR: Duration = Duration::from_secs(30);

/// Records that the broker at `quic_addr` runs, as of `now` (unix seconds).
///
/// # Errors
/// A database error.
pub async fn heartbeat(db: &Db, quic_addr: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO broker_replicas (quic_addr, last_seen) VALUES ($1, $2) \
         ON CONFLICT (quic_addr) DO UPDATE SET last_seen = excluded.last_seen",
    )
    .bind(quic_addr)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Removes the broker at `quic_addr` (it is stopping).
///
/// # Errors
/// A database error.
pub async fn forget(db: &Db, quic_addr: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM broker_replicas WHERE quic_addr = $1").bind(quic_addr).execute(db.pool()).await?;
    Ok(())
}

/// The other replicas seen within [`FRESH_FOR`] of `now`, in address order.
///
/// # Errors
/// A database error.
pub async fn others(db: &Db, own: &str, now: i64) -> Result<Vec<String>, sqlx::Error> {
    let since = now - i64::try_from(FRESH_FOR.as_secs()).unwrap_or(i64::MAX);
    sqlx::query_scalar::<Any, String>(
        "SELECT quic_addr FROM broker_replicas WHERE quic_addr <> $1 AND last_seen >= $2 ORDER BY quic_addr",
    )
    .bind(own)
    .bind(since)
    .fetch_all(db.pool())
    .await
}
