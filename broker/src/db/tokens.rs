//! The `enrollment_tokens` table. Only the SHA-256 of a token's secret is stored.

use palisade_proto::identity::PeerRole;
use sqlx::{Any, AnyConnection};

use super::Db;

/// A token waiting to be redeemed, as created by an admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Hex SHA-256 of the secret.
    pub token_hash: String,
    /// The role of the identity the token creates (machine or connector).
    pub role: PeerRole,
    /// The identity's display name.
    pub name: String,
    /// The identity's groups.
    pub groups: Vec<String>,
    /// Who created it (`cli`, an admin's id).
    pub created_by: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

/// What a redeemed token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The role of the identity to create.
    pub role: PeerRole,
    /// Its display name.
    pub name: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// Stores a new token.
///
/// # Errors
/// A database error.
pub async fn insert(conn: &mut AnyConnection, token: &NewToken) -> Result<(), sqlx::Error> {
    let groups = serde_json::to_string(&token.groups).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO enrollment_tokens (token_hash, role, name, groups, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&token.token_hash)
    .bind(token.role.as_str())
    .bind(&token.name)
    .bind(groups)
    .bind(&token.created_by)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an unexpired, unredeemed token already promises this role and name.
///
/// # Errors
/// A database error.
pub async fn pending_for_name(
    conn: &mut AnyConnection,
    role: PeerRole,
    name: &str,
    now_unix: i64,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query_scalar::<Any, i64>(
        "SELECT COUNT(*) FROM enrollment_tokens \
         WHERE role = $1 AND name = $2 AND redeemed_at IS NULL AND expires_at > $3",
    )
    .bind(role.as_str())
    .bind(name)
    .bind(now_unix)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Marks the token redeemed if, and only if, it exists, is unredeemed and has not
/// expired; returns what it grants. Exactly one of several racing callers gets
/// `Some`: the conditional `UPDATE` is the single point of decision.
///
/// # Errors
/// A database error.
pub async fn redeem(conn: &mut AnyConnection, token_hash: &str, now_unix: i64) -> Result<Option<Grant>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE enrollment_tokens SET redeemed_at = $1 \
         WHERE token_hash = $2 AND redeemed_at IS NULL AND expires_at > $3",
    )
    .bind(now_unix)
    .bind(token_hash)
    .bind(now_unix)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    let (role, name, groups) = sqlx::query_as::<Any, (String, String, String)>(
        "SELECT role, name, groups FROM enrollment_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_one(&mut *conn)
    .await?;
    let role = role.parse::<PeerRole>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let groups = serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(Grant { role, name, groups }))
}

/// Why a token cannot be redeemed, for the audit trail: `already redeemed`, `expired` or `unknown`.
///
/// # Errors
/// A database error.
pub async fn why_unusable(db: &Db, token_hash: &str, now_unix: i64) -> Result<&'static str, sqlx::Error> {
    let row = sqlx::query_as::<Any, (Option<i64>, i64)>(
        "SELECT redeemed_at, expires_at FROM enrollment_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db.pool())
    .await?;
    Ok(match row {
        None => "unknown",
        Some((Some(_), _)) => "already redeemed",
        Some((None, expires_at)) if expires_at <= now_unix => "expired",
        Some((None, _)) => "not redeemable",
    })
}

/// Records which identity a redeemed token created.
///
/// # Errors
/// A database error.
pub async fn set_identity(conn: &mut AnyConnection, token_hash: &str, identity_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE enrollment_tokens SET identity_id = $1 WHERE token_hash = $2")
        .bind(identity_id)
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Number of tokens, for tests and status pages.
///
/// # Errors
/// A database error.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM enrollment_tokens").fetch_one(db.pool()).await
}
