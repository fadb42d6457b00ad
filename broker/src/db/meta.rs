//! The `meta` table: facts about the deployment that never change once written.

use sqlx::{Any, AnyConnection};

use super::Db;

/// The deployment's SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "trust_domain";
/// Hex SHA-256 of the CA certificate this database was created with.
pub const CA_SHA256: &str = "ca_sha256";

/// Reads one value.
///
/// # Errors
/// A database error.
pub async fn get(db: &Db, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<Any, String>("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(db.pool()).await
}

/// Writes `value` under `key` unless the key already exists, and returns the value
/// now stored (the existing one if there was one).
///
/// # Errors
/// A database error.
pub async fn insert_once(conn: &mut AnyConnection, key: &str, value: &str) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar::<Any, String>("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(&mut *conn).await
}
