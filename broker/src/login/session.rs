//! Sessions and cookies: a finished sign-in becomes a `sessions` row (or
//! refreshes one's MFA), the pending-login cookie is replaced by a session
//! cookie (portal) or a one-time code for the CLI's loopback redirect.
//!
//! Cookies are `__Host-` prefixed, `Secure`, `HttpOnly`, `SameSite=Lax`, path
//! `/`; their values are random and stored only as SHA-256.

use axum::http::{HeaderMap, HeaderValue, header};
use serde_json::json;

use super::{Failure, Login, OrInternal, hash, new_secret, now_unix};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::login_state::{self, PendingLogin};
use crate::db::sessions::{self, NewSession, SessionDetails};
use crate::db::{IdentityRecord, identities, users};

/// The pending-login cookie (10 minutes).
pub const LOGIN_COOKIE: &str = "__Host-palisade-login";
/// The browser session cookie.
pub const SESSION_COOKIE: &str = "__Host-palisade-session";
/// How long a CLI's one-time code stays redeemable.
pub const CODE_TTL_SECS: i64 = 60;

/// A `Set-Cookie` value.
#[must_use]
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// A `Set-Cookie` value that deletes the cookie.
#[must_use]
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

/// The value of a request cookie.
#[must_use]
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// The pending login this browser's cookie names, if it has not expired.
///
/// # Errors
/// No cookie, unknown or expired (400), or the database failed.
pub async fn pending(broker: &Broker, headers: &HeaderMap, step: &'static str) -> Result<PendingLogin, Failure> {
    let value = cookie(headers, LOGIN_COOKIE).ok_or_else(|| Failure::bad(step, "no_pending_login", ""))?;
    let mut conn = broker.db().pool().acquire().await.internal(step)?;
    let found = login_state::get_pending(&mut conn, &hash(&value)).await.internal(step)?;
    let pending = found.ok_or_else(|| Failure::bad(step, "no_pending_login", "unknown or already finished"))?;
    if pending.expires_at <= now_unix() {
        return Err(Failure::bad(step, "pending_login_expired", ""));
    }
    Ok(pending)
}

/// The active session and identity this browser's session cookie names.
///
/// # Errors
/// The database failed.
pub async fn current(
    broker: &Broker,
    headers: &HeaderMap,
) -> Result<Option<(SessionDetails, IdentityRecord)>, Failure> {
    let Some(value) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    let Some(id) = login_state::session_for_cookie(broker.db(), &hash(&value)).await.internal("session")? else {
        return Ok(None);
    };
    let mut conn = broker.db().pool().acquire().await.internal("session")?;
    let details = sessions::details_in(&mut conn, &id).await.internal("session")?;
    let Some(details) = details.filter(|d| d.record.is_active(now_unix())) else { return Ok(None) };
    let identity = identities::get_in(&mut conn, palisade_proto::identity::PeerRole::User, &details.record.identity_id)
        .await
        .internal("session")?;
    Ok(identity.filter(|i| !i.disabled).map(|i| (details, i)))
}

/// The end of a sign-in: where the browser goes next and which cookies change.
#[derive(Debug)]
pub struct Completed {
    /// `{"redirect": …}` for the page's script.
    pub redirect: String,
    /// `Set-Cookie` headers.
    pub cookies: Vec<HeaderValue>,
    /// The session.
    pub session_id: String,
}

/// Turns a pending login whose second factor just succeeded into a session
/// (or refreshes the MFA of the session being stepped up), inside `tx`, which
/// the caller commits. Deletes the pending login.
///
/// # Errors
/// The person is disabled, the stepped-up session ended, or the database failed.
pub async fn complete(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    login: &Login,
    pending: &PendingLogin,
    identity_id: &str,
    method: &str,
) -> Result<Completed, Failure> {
    let now = now_unix();
    let identity =
        identities::get_in(tx, palisade_proto::identity::PeerRole::User, identity_id).await.internal("session")?;
    if identity.is_none_or(|i| i.disabled) {
        return Err(Failure::refused("session", "identity_disabled", "").account(identity_id));
    }
    let mut methods = pending.auth_methods.clone();
    if !methods.iter().any(|m| m == method) {
        methods.push(method.to_owned());
    }
    let session_id = match &pending.mfa_session {
        Some(id) => step_up(tx, id, identity_id, now).await?,
        None => create(tx, login, pending, identity_id, &methods, now).await?,
    };
    users::touch_in(tx, identity_id, now).await.internal("session")?;
    let event = AuditEvent::new(EventKind::LoginSucceeded, Outcome::Success)
        .subject(format!("user/{identity_id}"))
        .detail(json!({ "step": method, "session": session_id, "methods": methods, "mfa_only": pending.mfa_session.is_some() }));
    Audit::record_in(tx, event).await.internal("session")?;
    login_state::delete_pending_in(tx, &pending.id_hash).await.internal("session")?;
    let mut cookies = vec![clear_cookie(LOGIN_COOKIE)];
    let redirect = match &pending.cli {
        Some(cli) => {
            let code = new_secret();
            login_state::insert_code_in(tx, &hash(&code), &session_id, &cli.challenge, now + CODE_TTL_SECS)
                .await
                .internal("session")?;
            format!("http://127.0.0.1:{}/callback?code={code}&state={}", cli.port, cli.state)
        }
        None => {
            let value = new_secret();
            login_state::insert_cookie_in(tx, &hash(&value), &session_id, now).await.internal("session")?;
            cookies.push(set_cookie(
                SESSION_COOKIE,
                &value,
                i64::try_from(login.settings.session_ttl.as_secs()).unwrap_or(0),
            ));
            pending.return_to.clone().filter(|r| super::is_safe_return_to(r)).unwrap_or_else(|| "/".into())
        }
    };
    Ok(Completed { redirect, cookies, session_id })
}

async fn create(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    login: &Login,
    pending: &PendingLogin,
    identity_id: &str,
    methods: &[String],
    now: i64,
) -> Result<String, Failure> {
    let session = NewSession {
        id: palisade_proto::id::SessionId::random().to_string(),
        identity_id: identity_id.to_owned(),
        created_at: now,
        expires_at: now + i64::try_from(login.settings.session_ttl.as_secs()).unwrap_or(0),
        mfa_at: Some(now),
        auth_methods: methods.to_vec(),
        client_addr: pending.client_addr.clone(),
        user_agent: pending.user_agent.clone(),
    };
    sessions::insert_in(tx, &session).await.internal("session")?;
    record_created(tx, &session, "browser").await?;
    Ok(session.id)
}

/// Audits `session.created`.
///
/// # Errors
/// The audit trail could not be written.
pub async fn record_created(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    s: &NewSession,
    via: &str,
) -> Result<(), Failure> {
    let event = AuditEvent::new(EventKind::SessionCreated, Outcome::Success)
        .actor(format!("user/{}", s.identity_id))
        .subject(s.id.clone())
        .detail(json!({ "expires_at": s.expires_at, "auth_methods": s.auth_methods, "source": s.client_addr,
                        "user_agent": s.user_agent, "via": via }));
    Audit::record_in(tx, event).await.internal("session")?;
    Ok(())
}

async fn step_up(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    identity_id: &str,
    now: i64,
) -> Result<String, Failure> {
    let details = sessions::details_in(tx, id).await.internal("session")?;
    if details.is_none_or(|d| d.record.identity_id != identity_id)
        || !sessions::set_mfa_in(tx, id, now).await.internal("session")?
    {
        return Err(Failure::refused("session", "mfa_session_inactive", "").account(identity_id));
    }
    Ok(id.to_owned())
}
