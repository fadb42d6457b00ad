//! The `webauthn_credentials` table: people's passkeys and security keys.
//!
//! A credential is stored as webauthn-rs's `Passkey` JSON (public key,
//! signature counter, backup flags), rewritten after every successful use.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::{Any, AnyConnection};
use webauthn_rs::prelude::Passkey;

use super::Db;

/// One credential as stored.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// base64url credential id.
    pub id: String,
    /// The owner.
    pub identity_id: String,
    /// The key, counter and flags.
    pub passkey: Passkey,
    /// A label for the owner's list.
    pub label: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// Why it was disabled (a counter regression), if it was.
    pub disabled_reason: Option<String>,
}

impl StoredCredential {
    /// The signature counter as last stored. webauthn-rs keeps it private
    /// without its `danger-credential-internals` feature, so it is read from
    /// the stored form; `None` if that form ever stops carrying it.
    #[must_use]
    pub fn counter(&self) -> Option<u64> {
        serde_json::to_value(&self.passkey).ok()?.pointer("/cred/counter")?.as_u64()
    }
}

/// The base64url form of a credential id, as stored.
#[must_use]
pub fn encode_id(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

type Row = (String, String, String, String, i64, Option<i64>, Option<String>);

const SELECT: &str =
    "SELECT id, identity_id, passkey, label, created_at, last_used_at, disabled_reason FROM webauthn_credentials";

fn from_row(
    (id, identity_id, passkey, label, created_at, last_used_at, disabled_reason): Row,
) -> Result<StoredCredential, sqlx::Error> {
    let passkey = serde_json::from_str(&passkey).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(StoredCredential { id, identity_id, passkey, label, created_at, last_used_at, disabled_reason })
}

fn to_json(passkey: &Passkey) -> Result<String, sqlx::Error> {
    serde_json::to_string(passkey).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Stores a newly registered credential. A credential id already registered (to anyone) is a unique violation.
///
/// # Errors
/// A database error.
pub async fn insert_in(
    conn: &mut AnyConnection,
    identity_id: &str,
    passkey: &Passkey,
    label: &str,
    now: i64,
) -> Result<String, sqlx::Error> {
    let id = encode_id(passkey.cred_id().as_ref());
    sqlx::query(
        "INSERT INTO webauthn_credentials (id, identity_id, passkey, label, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(identity_id)
    .bind(to_json(passkey)?)
    .bind(label)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

/// The usable (not disabled) credentials of a person.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn active_for(conn: &mut AnyConnection, identity_id: &str) -> Result<Vec<StoredCredential>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE identity_id = $1 AND disabled_at IS NULL ORDER BY created_at, id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(identity_id).fetch_all(conn).await?;
    rows.into_iter().map(from_row).collect()
}

/// Every credential of a person, disabled ones included.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn all_for(db: &Db, identity_id: &str) -> Result<Vec<StoredCredential>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE identity_id = $1 ORDER BY created_at, id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(identity_id).fetch_all(db.pool()).await?;
    rows.into_iter().map(from_row).collect()
}

/// One credential by id, whoever owns it and whether or not it is disabled.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn get_in(conn: &mut AnyConnection, id: &str) -> Result<Option<StoredCredential>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(conn).await?;
    row.map(from_row).transpose()
}

/// Persists the counter and backup flags after a successful authentication.
///
/// # Errors
/// A database error.
pub async fn update_in(conn: &mut AnyConnection, id: &str, passkey: &Passkey, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webauthn_credentials SET passkey = $1, last_used_at = $2 WHERE id = $3")
        .bind(to_json(passkey)?)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Disables a credential (a possible clone). Returns whether it was active.
///
/// # Errors
/// A database error.
pub async fn disable_in(conn: &mut AnyConnection, id: &str, reason: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webauthn_credentials SET disabled_at = $1, disabled_reason = $2 WHERE id = $3 AND disabled_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes one of a person's credentials. Returns whether it existed.
///
/// # Errors
/// A database error.
pub async fn delete_in(conn: &mut AnyConnection, identity_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webauthn_credentials WHERE identity_id = $1 AND id = $2")
        .bind(identity_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes every credential of a person (an admin reset). Returns how many.
///
/// # Errors
/// A database error.
pub async fn delete_all_in(conn: &mut AnyConnection, identity_id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query::<Any>("DELETE FROM webauthn_credentials WHERE identity_id = $1")
        .bind(identity_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
