//! The `meta` table: facts about the deployment. The trust domain never
//! changes once written; the CA fingerprints change only by a CA rotation
//! (`crate::issuance::rotation`).

use sqlx::{Any, AnyConnection};

use super::Db;

/// The deployment's SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "trust_domain";
/// Hex SHA-256 of the active (issuing) CA certificate.
pub const CA_SHA256: &str = "ca_sha256";
/// Hex SHA-256 of a successor CA prepared by a rotation, not yet issuing.
pub const CA_NEXT_SHA256: &str = "ca_next_sha256";
/// When the successor was prepared (unix seconds).
pub const CA_PREPARED_AT: &str = "ca_prepared_at";
/// Hex SHA-256 of the CA a rotation replaced, trusted until it is retired.
pub const CA_PREVIOUS_SHA256: &str = "ca_previous_sha256";
/// When the active CA began issuing by a rotation (unix seconds).
pub const CA_ACTIVATED_AT: &str = "ca_activated_at";

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

/// Writes `value` under `key`, replacing what was there.
///
/// # Errors
/// A database error.
pub async fn set_in(conn: &mut AnyConnection, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes `key`.
///
/// # Errors
/// A database error.
pub async fn delete_in(conn: &mut AnyConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM meta WHERE key = $1").bind(key).execute(conn).await?;
    Ok(())
}
