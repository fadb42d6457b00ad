//! Sign-in sessions of people. A certificate names its session; a revoked or
//! expired session refuses new connections and cuts live tunnels.

use sqlx::{Any, AnyConnection};

use super::revocations::{self, RevocationKind};
use super::{Db, OrderBy};

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
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, identity_id, created_at, expires_at, mfa_at, revoked_at FROM sessions WHERE id = $1",
    )
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
    conn: &mut AnyConnection,
    id: &str,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query::<Any>("UPDATE sessions SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
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

/// A session to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    /// Session id (a `SessionId`).
    pub id: String,
    /// The person.
    pub identity_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Last WebAuthn proof, unix seconds.
    pub mfa_at: Option<i64>,
    /// `["oidc","webauthn"]`, `["webauthn"]`, …
    pub auth_methods: Vec<String>,
    /// The browser's (or CLI's) address.
    pub client_addr: Option<String>,
    /// The browser's user agent.
    pub user_agent: Option<String>,
}

/// Inserts a session inside the caller's write transaction.
///
/// # Errors
/// A database error.
pub async fn insert_in(conn: &mut AnyConnection, s: &NewSession) -> Result<(), sqlx::Error> {
    let methods = serde_json::to_string(&s.auth_methods).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO sessions (id, identity_id, created_at, expires_at, mfa_at, auth_methods, client_addr, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&s.id)
    .bind(&s.identity_id)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(s.mfa_at)
    .bind(methods)
    .bind(&s.client_addr)
    .bind(&s.user_agent)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a fresh WebAuthn proof (step-up) on an active session. Returns whether it was active.
///
/// # Errors
/// A database error.
pub async fn set_mfa_in(conn: &mut AnyConnection, id: &str, mfa_at: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE sessions SET mfa_at = $1 WHERE id = $2 AND revoked_at IS NULL AND expires_at > $3")
        .bind(mfa_at)
        .bind(id)
        .bind(mfa_at)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A session with everything `session list` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDetails {
    /// The row.
    pub record: SessionRecord,
    /// How the person authenticated.
    pub auth_methods: Vec<String>,
    /// Where from.
    pub client_addr: Option<String>,
    /// With what.
    pub user_agent: Option<String>,
}

type DetailsRow = (String, String, i64, i64, Option<i64>, Option<i64>, String, Option<String>, Option<String>);

fn details_from_row(r: DetailsRow) -> SessionDetails {
    let (id, identity_id, created_at, expires_at, mfa_at, revoked_at, methods, client_addr, user_agent) = r;
    SessionDetails {
        record: SessionRecord { id, identity_id, created_at, expires_at, mfa_at, revoked_at },
        auth_methods: serde_json::from_str(&methods).unwrap_or_default(),
        client_addr,
        user_agent,
    }
}

const DETAILS: &str = "SELECT id, identity_id, created_at, expires_at, mfa_at, revoked_at, auth_methods, \
                       client_addr, user_agent FROM sessions";

/// One session with its details.
///
/// # Errors
/// A database error.
pub async fn details_in(conn: &mut AnyConnection, id: &str) -> Result<Option<SessionDetails>, sqlx::Error> {
    let sql = format!("{DETAILS} WHERE id = $1");
    let row: Option<DetailsRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(conn).await?;
    Ok(row.map(details_from_row))
}

/// Sessions still active at `now`, newest first, optionally of one person.
///
/// # Errors
/// A database error.
pub async fn list_active(db: &Db, identity_id: Option<&str>, now: i64) -> Result<Vec<SessionDetails>, sqlx::Error> {
    let sql = format!(
        "{DETAILS} WHERE revoked_at IS NULL AND expires_at > $1 AND ($2 IS NULL OR identity_id = $3) \
         ORDER BY created_at DESC LIMIT 1000"
    );
    let rows: Vec<DetailsRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(identity_id)
        .bind(identity_id)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(details_from_row).collect())
}

/// How many sessions are active at `now`.
///
/// # Errors
/// A database error.
pub async fn count_active(db: &Db, now: i64) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1")
        .bind(now)
        .fetch_one(db.pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One page of the sessions active at `now` in `order`: at most `limit`
/// after the first `offset`.
///
/// # Errors
/// A database error.
pub async fn list_active_page(
    db: &Db,
    now: i64,
    order: OrderBy,
    limit: i64,
    offset: i64,
) -> Result<Vec<SessionDetails>, sqlx::Error> {
    // The order is a constant of the console's code; every value is bound.
    let sql = format!(
        "{DETAILS} WHERE revoked_at IS NULL AND expires_at > $1 ORDER BY {}, id LIMIT $2 OFFSET $3",
        order.sql()
    );
    let rows: Vec<DetailsRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit).bind(offset).fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(details_from_row).collect())
}

/// Revokes every active session of a person inside the caller's write
/// transaction, each with its row in the revocation feed. Returns their ids.
///
/// # Errors
/// A database error.
pub async fn revoke_all_in(
    conn: &mut AnyConnection,
    identity_id: &str,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM sessions WHERE identity_id = $1 AND revoked_at IS NULL AND expires_at > $2")
            .bind(identity_id)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
    let mut revoked = Vec::with_capacity(ids.len());
    for id in ids {
        if revoke_in(conn, &id, by, reason, now).await? {
            revoked.push(id);
        }
    }
    Ok(revoked)
}
