//! Sign-in sessions of people. A certificate names its session; a revoked or
//! expired session refuses new connections and cuts live tunnels.

use sqlx::{Sqlite, SqliteConnection};

use super::Db;
use super::revocations::{self, RevocationKind};

/// A session row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id (in the certificate's identity attributes).
    pub id: String,
    /// The person's identity id.
    pub identity_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; certificates are clamped to this.
    pub expires_at: i64,
    /// Last WebAuthn proof, unix seconds.
    pub mfa_at: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl SessionRecord {
    /// Usable at `now` (unix seconds): not revoked and not expired.
    #[must_use]
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

type Row = (String, String, i64, i64, Option<i64>, Option<i64>);

/// One session by id.
///
/// # Errors
/// A database error.
pub async fn get(db: &Db, id: &str) -> Result<Option<SessionRecord>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as("SELECT id, identity_id, created_at, expires_at, mfa_at, revoked_at FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(|(id, identity_id, created_at, expires_at, mfa_at, revoked_at)| SessionRecord {
        id,
        identity_id,
        created_at,
        expires_at,
        mfa_at,
        revoked_at,
    }))
}

/// Revokes a session inside the caller's write transaction and appends it
/// to the revocation feed. Returns false if it was unknown or already revoked.
///
/// # Errors
/// A database error.
pub async fn revoke_in(
    conn: &mut SqliteConnection,
    id: &str,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query::<Sqlite>("UPDATE sessions SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(by)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    revocations::record(conn, RevocationKind::Session, id, reason, now).await?;
    Ok(true)
}
