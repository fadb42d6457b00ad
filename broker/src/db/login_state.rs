//! Short-lived sign-in state: pending logins and their WebAuthn ceremonies,
//! one-time CLI codes, browser session cookies, device codes and invites.
//!
//! Everything single-use is taken with one `DELETE … RETURNING` or one
//! conditional `UPDATE`, so of two racing requests exactly one wins. Secrets
//! are stored as hex SHA-256 only. Expired rows are purged by [`purge_expired`].

pub mod device;
pub mod invites;

use sqlx::{Any, AnyConnection};

use super::Db;

/// One browser's sign-in attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingLogin {
    /// Hex SHA-256 of the `__Host-palisade-login` cookie.
    pub id_hash: String,
    /// `portal`, `cli`, `local` or `invite`.
    pub kind: String,
    /// Where a portal login goes afterwards (already validated).
    pub return_to: Option<String>,
    /// A CLI login: where to send the one-time code.
    pub cli: Option<CliTarget>,
    /// `mfa_only`: the session whose MFA is refreshed.
    pub mfa_session: Option<String>,
    /// Hex SHA-256 of the OIDC `state`; `None` once used.
    pub oidc_state: Option<String>,
    /// The OIDC nonce.
    pub oidc_nonce: Option<String>,
    /// The PKCE verifier for the token request.
    pub pkce_verifier: Option<String>,
    /// The person, once the OIDC step (or the invite) named them.
    pub identity_id: Option<String>,
    /// How the person has authenticated so far.
    pub auth_methods: Vec<String>,
    /// The invite being redeemed.
    pub invite_hash: Option<String>,
    /// The browser's address.
    pub client_addr: Option<String>,
    /// The browser's user agent.
    pub user_agent: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Where a CLI login ends: its loopback port, its `state`, and the challenge the exchange checks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CliTarget {
    /// The CLI's loopback port.
    pub port: u16,
    /// Echoed to the loopback redirect.
    pub state: String,
    /// `base64url(sha256(verifier))`.
    pub challenge: String,
}

type PendingRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

const PENDING_COLUMNS: &str = "id_hash, kind, return_to, cli, mfa_session, \
    oidc_state, oidc_nonce, pkce_verifier, identity_id, auth_methods, invite_hash, client_addr, user_agent, \
    created_at, expires_at";

fn pending_from_row(r: PendingRow) -> Result<PendingLogin, sqlx::Error> {
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    let auth_methods = serde_json::from_str(&r.9).map_err(decode)?;
    let cli = r.3.as_deref().map(serde_json::from_str).transpose().map_err(decode)?;
    Ok(PendingLogin {
        id_hash: r.0,
        kind: r.1,
        return_to: r.2,
        cli,
        mfa_session: r.4,
        oidc_state: r.5,
        oidc_nonce: r.6,
        pkce_verifier: r.7,
        identity_id: r.8,
        auth_methods,
        invite_hash: r.10,
        client_addr: r.11,
        user_agent: r.12,
        created_at: r.13,
        expires_at: r.14,
    })
}

/// Stores a pending login unless `max` unexpired ones exist already (returns false then).
///
/// # Errors
/// A database error.
pub async fn insert_pending(db: &Db, p: &PendingLogin, max: i64) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM pending_logins WHERE expires_at <= $1").bind(p.created_at).execute(&mut *tx).await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_logins").fetch_one(&mut *tx).await?;
    if n >= max {
        return Ok(false);
    }
    let methods = serde_json::to_string(&p.auth_methods).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let cli = p.cli.as_ref().map(serde_json::to_string).transpose().map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sql = format!(
        "INSERT INTO pending_logins ({PENDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&p.id_hash)
        .bind(&p.kind)
        .bind(&p.return_to)
        .bind(cli)
        .bind(&p.mfa_session)
        .bind(&p.oidc_state)
        .bind(&p.oidc_nonce)
        .bind(&p.pkce_verifier)
        .bind(&p.identity_id)
        .bind(methods)
        .bind(&p.invite_hash)
        .bind(&p.client_addr)
        .bind(&p.user_agent)
        .bind(p.created_at)
        .bind(p.expires_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// The pending login with this cookie hash, expired or not.
///
/// # Errors
/// A database error.
pub async fn get_pending(conn: &mut AnyConnection, id_hash: &str) -> Result<Option<PendingLogin>, sqlx::Error> {
    let sql = format!("SELECT {PENDING_COLUMNS} FROM pending_logins WHERE id_hash = $1");
    let row: Option<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id_hash).fetch_optional(conn).await?;
    row.map(pending_from_row).transpose()
}

/// Takes an OIDC `state` (by hash): clears it, so it works once, and returns its pending login.
///
/// # Errors
/// A database error.
pub async fn take_oidc_state(conn: &mut AnyConnection, state_hash: &str) -> Result<Option<PendingLogin>, sqlx::Error> {
    let id: Option<String> = sqlx::query_scalar(
        "UPDATE pending_logins SET oidc_state = NULL WHERE oidc_state = $1 AND oidc_state IS NOT NULL RETURNING id_hash",
    )
    .bind(state_hash)
    .fetch_optional(&mut *conn)
    .await?;
    match id {
        Some(id) => get_pending(conn, &id).await,
        None => Ok(None),
    }
}

/// Records who the OIDC step (or the invite) identified.
///
/// # Errors
/// A database error.
pub async fn set_identity_in(
    conn: &mut AnyConnection,
    id_hash: &str,
    identity_id: &str,
    auth_methods: &[String],
) -> Result<(), sqlx::Error> {
    let methods = serde_json::to_string(auth_methods).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("UPDATE pending_logins SET identity_id = $1, auth_methods = $2 WHERE id_hash = $3")
        .bind(identity_id)
        .bind(methods)
        .bind(id_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends a pending login (and its ceremony). Returns whether it existed.
///
/// # Errors
/// A database error.
pub async fn delete_pending_in(conn: &mut AnyConnection, id_hash: &str) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM webauthn_ceremonies WHERE pending_id = $1").bind(id_hash).execute(&mut *conn).await?;
    let done = sqlx::query("DELETE FROM pending_logins WHERE id_hash = $1").bind(id_hash).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// A WebAuthn ceremony in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceremony {
    /// `register`, `authenticate` or `discoverable`.
    pub kind: String,
    /// The person it was started for (none for a discoverable authentication).
    pub identity_id: Option<String>,
    /// webauthn-rs state, JSON.
    pub state: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Starts (or restarts) the ceremony of a pending login.
///
/// # Errors
/// A database error.
pub async fn put_ceremony(db: &Db, pending_id: &str, c: &Ceremony) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webauthn_ceremonies (pending_id, kind, identity_id, state, expires_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (pending_id) DO UPDATE SET kind = excluded.kind, identity_id = excluded.identity_id, \
         state = excluded.state, expires_at = excluded.expires_at",
    )
    .bind(pending_id)
    .bind(&c.kind)
    .bind(&c.identity_id)
    .bind(&c.state)
    .bind(c.expires_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Takes the ceremony of a pending login: deleted here, so it is used at most once.
///
/// # Errors
/// A database error.
pub async fn take_ceremony(db: &Db, pending_id: &str) -> Result<Option<Ceremony>, sqlx::Error> {
    let row: Option<(String, Option<String>, String, i64)> = sqlx::query_as(
        "DELETE FROM webauthn_ceremonies WHERE pending_id = $1 RETURNING kind, identity_id, state, expires_at",
    )
    .bind(pending_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(kind, identity_id, state, expires_at)| Ceremony { kind, identity_id, state, expires_at }))
}

/// Stores a one-time CLI code for a session.
///
/// # Errors
/// A database error.
pub async fn insert_code_in(
    conn: &mut AnyConnection,
    code_hash: &str,
    session_id: &str,
    challenge: &str,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO login_codes (code_hash, session_id, challenge, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(code_hash)
        .bind(session_id)
        .bind(challenge)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes a CLI code: `(session_id, challenge, expires_at)`; deleted here.
///
/// # Errors
/// A database error.
pub async fn take_code_in(
    conn: &mut AnyConnection,
    code_hash: &str,
) -> Result<Option<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("DELETE FROM login_codes WHERE code_hash = $1 RETURNING session_id, challenge, expires_at")
        .bind(code_hash)
        .fetch_optional(conn)
        .await
}

/// Binds a browser cookie (by hash) to a session.
///
/// # Errors
/// A database error.
pub async fn insert_cookie_in(
    conn: &mut AnyConnection,
    cookie_hash: &str,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO session_cookies (cookie_hash, session_id, created_at) VALUES ($1, $2, $3)")
        .bind(cookie_hash)
        .bind(session_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The session a browser cookie (by hash) names.
///
/// # Errors
/// A database error.
pub async fn session_for_cookie(db: &Db, cookie_hash: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT session_id FROM session_cookies WHERE cookie_hash = $1")
        .bind(cookie_hash)
        .fetch_optional(db.pool())
        .await
}

/// Deletes expired pending logins, ceremonies, codes and device codes (and invites a week past expiry).
///
/// # Errors
/// A database error.
pub async fn purge_expired(db: &Db, now: i64) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    for sql in [
        "DELETE FROM webauthn_ceremonies WHERE expires_at <= $1",
        "DELETE FROM pending_logins WHERE expires_at <= $1",
        "DELETE FROM login_codes WHERE expires_at <= $1",
        "DELETE FROM device_codes WHERE expires_at <= $1 - 3600",
    ] {
        sqlx::query::<Any>(sql).bind(now).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM session_cookies WHERE session_id IN (SELECT id FROM sessions WHERE expires_at <= $1)")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
