//! The `revocations` feed: every session revocation and identity disable,
//! in order, so each broker replica can cut live tunnels and tell its
//! connectors.

use sqlx::{Any, AnyConnection};

use super::Db;

/// What a revocation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationKind {
    /// One sign-in session (the `session` in the certificate).
    Session,
    /// Every certificate of an identity (user, machine or connector).
    Identity,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Identity => "identity",
        }
    }
}

/// One row of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the feed.
    pub seq: i64,
    /// What is revoked.
    pub kind: RevocationKind,
    /// The session id or identity id.
    pub target: String,
    /// Why, for logs and the client's message.
    pub reason: String,
    /// When, unix seconds.
    pub at: i64,
}

/// Appends a revocation inside the caller's (write) transaction, so the
/// state change, its audit event and the revocation commit together.
///
/// # Errors
/// A database error.
pub async fn record(
    conn: &mut AnyConnection,
    kind: RevocationKind,
    target: &str,
    reason: &str,
    at: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<Any, i64>(
        "INSERT INTO revocations (kind, target, reason, at) VALUES ($1, $2, $3, $4) RETURNING seq",
    )
    .bind(kind.as_str())
    .bind(target)
    .bind(reason)
    .bind(at)
    .fetch_one(conn)
    .await
}

/// Revocations after `seq`, oldest first.
///
/// # Errors
/// A database error.
pub async fn after(db: &Db, seq: i64) -> Result<Vec<Revocation>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String, i64)> =
        sqlx::query_as("SELECT seq, kind, target, reason, at FROM revocations WHERE seq > $1 ORDER BY seq LIMIT 10000")
            .bind(seq)
            .fetch_all(db.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, kind, target, reason, at)| Revocation {
            seq,
            kind: if kind == "session" { RevocationKind::Session } else { RevocationKind::Identity },
            target,
            reason,
            at,
        })
        .collect())
}

/// Revocations from `since` (unix seconds) on: what a connector must still
/// refuse because certificates issued before them may still be valid.
///
/// # Errors
/// A database error.
pub async fn since(db: &Db, since: i64) -> Result<Vec<Revocation>, sqlx::Error> {
    let first: Option<i64> =
        sqlx::query_scalar("SELECT MIN(seq) FROM revocations WHERE at >= $1").bind(since).fetch_one(db.pool()).await?;
    match first {
        Some(seq) => after(db, seq - 1).await,
        None => Ok(Vec::new()),
    }
}

/// The newest seq, or 0 for an empty feed.
///
/// # Errors
/// A database error.
pub async fn head(db: &Db) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM revocations").fetch_one(db.pool()).await?;
    Ok(seq.unwrap_or(0))
}
