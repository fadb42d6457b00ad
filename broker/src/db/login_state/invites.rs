//! One-time invites for local (passkey-only) accounts.

use sqlx::AnyConnection;

/// An invite as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The invited person.
    pub identity_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

/// Stores an invite (by the hash of its token).
///
/// # Errors
/// A database error.
pub async fn insert_in(
    conn: &mut AnyConnection,
    token_hash: &str,
    identity_id: &str,
    created_by: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO user_invites (token_hash, identity_id, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(identity_id)
    .bind(created_by)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The invite with this token hash.
///
/// # Errors
/// A database error.
pub async fn get_in(conn: &mut AnyConnection, token_hash: &str) -> Result<Option<Invite>, sqlx::Error> {
    let row: Option<(String, i64, Option<i64>)> =
        sqlx::query_as("SELECT identity_id, expires_at, used_at FROM user_invites WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(identity_id, expires_at, used_at)| Invite { identity_id, expires_at, used_at }))
}

/// Uses an invite: true for exactly one caller, and only before it expires.
///
/// # Errors
/// A database error.
pub async fn use_in(conn: &mut AnyConnection, token_hash: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE user_invites SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(now)
    .bind(token_hash)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Withdraws every unused invite of a person (a new invite or a disable). Returns how many.
///
/// # Errors
/// A database error.
pub async fn revoke_for_in(conn: &mut AnyConnection, identity_id: &str, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE user_invites SET used_at = $1 WHERE identity_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(identity_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
