//! Device codes (RFC 8628) for `palisade login --device`.

use sqlx::AnyConnection;

use crate::db::Db;

/// One device code as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCode {
    /// Hex SHA-256 of the device code the CLI polls with.
    pub device_code_hash: String,
    /// The short code the person types (`WDJB-MJHT`).
    pub user_code: String,
    /// The CLI's address, shown to the approver.
    pub client_addr: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Minimum seconds between polls.
    pub interval_secs: i64,
    /// Last poll, unix seconds.
    pub last_poll_at: Option<i64>,
    /// The person who approved it.
    pub approved_by: Option<String>,
    /// The session created for the device at approval.
    pub session_id: Option<String>,
    /// When the CLI got its certificate.
    pub redeemed_at: Option<i64>,
}

type Row = (String, String, Option<String>, i64, i64, i64, Option<i64>, Option<String>, Option<String>, Option<i64>);

const COLUMNS: &str = "device_code_hash, user_code, client_addr, created_at, expires_at, interval_secs, \
                       last_poll_at, approved_by, session_id, redeemed_at";

fn from_row(r: Row) -> DeviceCode {
    DeviceCode {
        device_code_hash: r.0,
        user_code: r.1,
        client_addr: r.2,
        created_at: r.3,
        expires_at: r.4,
        interval_secs: r.5,
        last_poll_at: r.6,
        approved_by: r.7,
        session_id: r.8,
        redeemed_at: r.9,
    }
}

/// Stores a new device code unless `max` unexpired ones exist (returns false then).
///
/// # Errors
/// A database error; a user code already taken is a unique violation.
pub async fn insert(db: &Db, d: &DeviceCode, max: i64) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM device_codes WHERE expires_at > $1")
        .bind(d.created_at)
        .fetch_one(&mut *tx)
        .await?;
    if n >= max {
        return Ok(false);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO device_codes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    )))
    .bind(&d.device_code_hash)
    .bind(&d.user_code)
    .bind(&d.client_addr)
    .bind(d.created_at)
    .bind(d.expires_at)
    .bind(d.interval_secs)
    .bind(d.last_poll_at)
    .bind(&d.approved_by)
    .bind(&d.session_id)
    .bind(d.redeemed_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The device code with this user code.
///
/// # Errors
/// A database error.
pub async fn by_user_code(db: &Db, user_code: &str) -> Result<Option<DeviceCode>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM device_codes WHERE user_code = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user_code).fetch_optional(db.pool()).await?;
    Ok(row.map(from_row))
}

/// Approves an unexpired, unapproved code for a person and the device's new session.
/// Returns false if it was already approved or has expired.
///
/// # Errors
/// A database error.
pub async fn approve_in(
    conn: &mut AnyConnection,
    user_code: &str,
    identity_id: &str,
    session_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE device_codes SET approved_by = $1, session_id = $2 \
         WHERE user_code = $3 AND approved_by IS NULL AND expires_at > $4",
    )
    .bind(identity_id)
    .bind(session_id)
    .bind(user_code)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a poll and returns the code as it was before it.
///
/// # Errors
/// A database error.
pub async fn poll_in(conn: &mut AnyConnection, hash: &str, now: i64) -> Result<Option<DeviceCode>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM device_codes WHERE device_code_hash = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(hash).fetch_optional(&mut *conn).await?;
    if row.is_some() {
        sqlx::query("UPDATE device_codes SET last_poll_at = $1 WHERE device_code_hash = $2")
            .bind(now)
            .bind(hash)
            .execute(conn)
            .await?;
    }
    Ok(row.map(from_row))
}

/// Slows a client down: adds `by` seconds to the polling interval.
///
/// # Errors
/// A database error.
pub async fn slow_down_in(conn: &mut AnyConnection, hash: &str, by: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE device_codes SET interval_secs = MIN(interval_secs + $1, 60) WHERE device_code_hash = $2")
        .bind(by)
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks an approved code redeemed; true for exactly one caller.
///
/// # Errors
/// A database error.
pub async fn redeem_in(conn: &mut AnyConnection, hash: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE device_codes SET redeemed_at = $1 \
         WHERE device_code_hash = $2 AND approved_by IS NOT NULL AND redeemed_at IS NULL AND expires_at > $3",
    )
    .bind(now)
    .bind(hash)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
