//! `connector_links`: each connector's control links to the broker replicas,
//! for its status, version and last-seen time, and for telling a connector
//! that lost one replica from a connector that is gone.

use std::collections::BTreeMap;

use sqlx::Any;

use super::Db;
use super::replicas::FRESH_FOR;

/// One connector as its links show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorStatus {
    /// The connector's identity id.
    pub connector_id: String,
    /// The replicas (QUIC addresses) it holds a live link to now.
    pub linked_to: Vec<String>,
    /// The version its most recent link announced.
    pub version: String,
    /// When a broker last saw it (unix seconds): now-ish while linked.
    pub last_seen: i64,
    /// Where its most recent link came from.
    pub remote: String,
}

impl ConnectorStatus {
    /// Whether any replica holds a live link.
    #[must_use]
    pub fn online(&self) -> bool {
        !self.linked_to.is_empty()
    }
}

/// One link of a connector to a broker replica.
#[derive(Clone, Copy, Debug)]
pub struct LinkRef<'a> {
    /// The connector's identity id.
    pub connector_id: &'a str,
    /// The replica's QUIC address.
    pub broker: &'a str,
    /// This link (a connector that reconnects before its old link timed out
    /// has two to the same replica for a while).
    pub link_id: &'a str,
}

/// Records a link that came up (replacing what the pair had).
///
/// # Errors
/// A database error.
pub async fn connected(db: &Db, link: LinkRef<'_>, remote: &str, version: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO connector_links (connector_id, broker, link_id, remote, version, connected_at, last_seen, disconnected_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, NULL) \
         ON CONFLICT (connector_id, broker) DO UPDATE SET link_id = excluded.link_id, remote = excluded.remote, \
         version = excluded.version, connected_at = excluded.connected_at, last_seen = excluded.last_seen, \
         disconnected_at = NULL",
    )
    .bind(link.connector_id)
    .bind(link.broker)
    .bind(link.link_id)
    .bind(remote)
    .bind(version)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Records that `link` went down, unless a newer link of the same pair replaced it.
///
/// # Errors
/// A database error.
pub async fn disconnected(db: &Db, link: LinkRef<'_>, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connector_links SET last_seen = $4, disconnected_at = $4 \
         WHERE connector_id = $1 AND broker = $2 AND link_id = $3 AND disconnected_at IS NULL",
    )
    .bind(link.connector_id)
    .bind(link.broker)
    .bind(link.link_id)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Refreshes `last_seen` of every live link `broker` holds (its heartbeat).
///
/// # Errors
/// A database error.
pub async fn heartbeat(db: &Db, broker: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connector_links SET last_seen = $2 WHERE broker = $1 AND disconnected_at IS NULL")
        .bind(broker)
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// At a broker's start: links it held before it stopped or was killed are
/// down since it last saw them.
///
/// # Errors
/// A database error.
pub async fn close_left_open(db: &Db, broker: &str) -> Result<u64, sqlx::Error> {
    let closed = sqlx::query(
        "UPDATE connector_links SET disconnected_at = last_seen WHERE broker = $1 AND disconnected_at IS NULL",
    )
    .bind(broker)
    .execute(db.pool())
    .await?;
    Ok(closed.rows_affected())
}

/// Whether some replica holds a live link to `connector_id` at `now`: open,
/// and refreshed within [`FRESH_FOR`] (a replica that was killed stops
/// refreshing its rows).
///
/// # Errors
/// A database error.
pub async fn has_live_link(db: &Db, connector_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let live: i64 = sqlx::query_scalar::<Any, i64>(
        "SELECT COUNT(*) FROM connector_links WHERE connector_id = $1 AND disconnected_at IS NULL AND last_seen >= $2",
    )
    .bind(connector_id)
    .bind(fresh_since(now))
    .fetch_one(db.pool())
    .await?;
    Ok(live > 0)
}

/// Every connector that ever linked, by identity id.
///
/// # Errors
/// A database error.
pub async fn statuses(db: &Db, now: i64) -> Result<BTreeMap<String, ConnectorStatus>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, (String, String, String, String, i64, i64, Option<i64>)>(
        "SELECT connector_id, broker, remote, version, connected_at, last_seen, disconnected_at \
         FROM connector_links ORDER BY connector_id, connected_at",
    )
    .fetch_all(db.pool())
    .await?;
    let mut out: BTreeMap<String, ConnectorStatus> = BTreeMap::new();
    for (connector_id, broker, remote, version, _, last_seen, disconnected_at) in rows {
        let status = out.entry(connector_id.clone()).or_insert_with(|| ConnectorStatus {
            connector_id,
            linked_to: Vec::new(),
            version: String::new(),
            last_seen: 0,
            remote: String::new(),
        });
        // Rows come oldest link first: the last one names the current version.
        status.version = version;
        status.remote = remote;
        status.last_seen = status.last_seen.max(last_seen);
        if disconnected_at.is_none() && last_seen >= fresh_since(now) {
            status.linked_to.push(broker);
        }
    }
    Ok(out)
}

fn fresh_since(now: i64) -> i64 {
    now.saturating_sub(i64::try_from(FRESH_FOR.as_secs()).unwrap_or(i64::MAX))
}
