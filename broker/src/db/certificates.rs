//! The `certificates` table: every leaf the CA issued.

use std::collections::HashMap;

use sqlx::{Any, AnyConnection};

use super::Db;

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRow {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The identity it names.
    pub identity_id: String,
    /// Hex SHA-256 of the subject public key bytes.
    pub public_key_sha256: String,
    /// Issue time, unix seconds.
    pub issued_at: i64,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

/// Records an issued certificate inside the caller's transaction.
///
/// # Errors
/// A database error (a repeated serial is a unique violation).
pub async fn insert(conn: &mut AnyConnection, row: &CertificateRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO certificates (serial, identity_id, public_key_sha256, issued_at, not_after) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&row.serial)
    .bind(&row.identity_id)
    .bind(&row.public_key_sha256)
    .bind(row.issued_at)
    .bind(row.not_after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every certificate issued to an identity, oldest first.
///
/// # Errors
/// A database error.
pub async fn for_identity(db: &Db, identity_id: &str) -> Result<Vec<CertificateRow>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, (String, String, String, i64, i64)>(
        "SELECT serial, identity_id, public_key_sha256, issued_at, not_after FROM certificates \
         WHERE identity_id = $1 ORDER BY issued_at, serial",
    )
    .bind(identity_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(serial, identity_id, public_key_sha256, issued_at, not_after)| CertificateRow {
            serial,
            identity_id,
            public_key_sha256,
            issued_at,
            not_after,
        })
        .collect())
}

/// How many certificates an identity holds and when the last was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssuedSummary {
    /// Certificates issued, expired ones included.
    pub count: i64,
    /// Unix seconds of the newest one.
    pub last_issued_at: i64,
}

/// [`IssuedSummary`] for every identity that was ever issued a certificate, by id.
///
/// # Errors
/// A database error.
pub async fn summary(db: &Db) -> Result<HashMap<String, IssuedSummary>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, (String, i64, i64)>(
        "SELECT identity_id, COUNT(*), MAX(issued_at) FROM certificates GROUP BY identity_id",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(id, count, last_issued_at)| (id, IssuedSummary { count, last_issued_at })).collect())
}

/// Which identity, if any, already holds a certificate for this public key.
///
/// # Errors
/// A database error.
pub async fn holder_of_key(conn: &mut AnyConnection, public_key_sha256: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<Any, String>("SELECT identity_id FROM certificates WHERE public_key_sha256 = $1 LIMIT 1")
        .bind(public_key_sha256)
        .fetch_optional(conn)
        .await
}
