//! Local accounts: invite-only people whose only credential is a passkey.
//!
//! An admin runs `palisade-broker user invite EMAIL --group G`; the link
//! `/invite/TOKEN` (valid 7 days, stored hashed) starts a pending login for
//! that person whose only possible step is registering a passkey with user
//! verification. The invite is used up in the same transaction that stores
//! the credential. From then on `GET /login/local` signs them in with the
//! passkey alone: the authenticator names the account, so the page is the
//! same whoever comes.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use palisade_proto::id::GroupName;
use serde_json::json;

use super::limits::Bucket;
use super::oidc::{PortalStart, identity_name};
use super::session::{self, LOGIN_COOKIE};
use super::{Client, Failure, Login, OrInternal, Shape, hash, new_secret, now_unix, report};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::login_state::{self, PendingLogin, invites};
use crate::db::{Db, users};
use crate::web::PeerAddr;

/// How long an invite link works.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) async fn start(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Query(q): Query<PortalStart>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let started = match super::portal_pending("local", q.return_to) {
        Ok(pending) => begin(&broker, &login, &client, pending).await,
        Err(f) => Err(f),
    };
    match started {
        Ok(response) => response,
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

pub(crate) async fn invite(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let result = async {
        if !login.limits.allows(Bucket::Failure, &client.addr_key()) {
            return Err(Failure::too_many("invite"));
        }
        let token_hash = hash(&token);
        let mut conn = broker.db().pool().acquire().await.internal("invite")?;
        let found = invites::get_in(&mut conn, &token_hash).await.internal("invite")?;
        drop(conn);
        let invite = found.ok_or_else(|| Failure::refused("invite", "unknown", ""))?;
        if invite.used_at.is_some() || invite.expires_at <= now_unix() {
            return Err(Failure::refused("invite", "used_or_expired", "").account(invite.identity_id));
        }
        let pending = PendingLogin {
            kind: "invite".into(),
            identity_id: Some(invite.identity_id),
            invite_hash: Some(token_hash),
            ..PendingLogin::default()
        };
        begin(&broker, &login, &client, pending).await
    };
    match result.await {
        Ok(r) => r,
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

async fn begin(
    broker: &Broker,
    login: &Login,
    client: &Client,
    mut pending: PendingLogin,
) -> Result<Response, Failure> {
    if !login.limits.take(Bucket::Start, &client.addr_key()) {
        return Err(Failure::too_many("start"));
    }
    let cookie = new_secret();
    let now = now_unix();
    pending.id_hash = hash(&cookie);
    pending.client_addr = client.addr.map(|a| a.to_string());
    pending.user_agent.clone_from(&client.user_agent);
    pending.created_at = now;
    pending.expires_at = now + super::PENDING_TTL_SECS;
    let _ = login_state::purge_expired(broker.db(), now).await;
    if !login_state::insert_pending(broker.db(), &pending, super::MAX_PENDING).await.internal("start")? {
        return Err(Failure::too_many("start"));
    }
    let cookie = session::set_cookie(LOGIN_COOKIE, &cookie, super::PENDING_TTL_SECS);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login/mfa")).into_response())
}

/// Why an invite was not created.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// Bad email, name or group.
    #[error("{0}")]
    Invalid(String),
    /// A local account with that email exists.
    #[error(
        "a local account for {0} already exists; use `palisade-broker user reset-credentials` to let them register again"
    )]
    Exists(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// A created invite.
#[derive(Debug)]
pub struct Invited {
    /// The new person's identity id.
    pub identity_id: String,
    /// Their identity name.
    pub name: String,
    /// `<public URL>/invite/TOKEN`: show it once, to the admin.
    pub link: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Creates a local account and its one-time invite link, and records `user.invited`.
///
/// # Errors
/// A bad email, name or group, an existing account, or the database.
pub async fn create_invite(
    db: &Db,
    public_url: &url::Url,
    email: &str,
    name: Option<&str>,
    groups: &[String],
    created_by: &str,
) -> Result<Invited, InviteError> {
    let email = email.trim().to_ascii_lowercase();
    if !email.contains('@') || email.len() > 254 || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InviteError::Invalid(format!("{email:?} is not an email address")));
    }
    let name = name.map_or_else(|| identity_name(&email), str::to_owned);
    palisade_proto::id::check_name("identity name", &name).map_err(|e| InviteError::Invalid(e.to_string()))?;
    for g in groups {
        g.parse::<GroupName>().map_err(|e| InviteError::Invalid(e.to_string()))?;
    }
    let now = now_unix();
    let token = new_secret();
    let expires_at = now + i64::try_from(INVITE_TTL.as_secs()).unwrap_or(0);
    let mut tx = db.begin_write().await?;
    if users::email_taken_in(&mut tx, users::LOCAL_ISSUER, &email).await? {
        return Err(InviteError::Exists(email));
    }
    let profile = users::Profile {
        issuer: users::LOCAL_ISSUER.into(),
        subject: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        email: Some(email.clone()),
        display_name: None,
        groups: groups.to_vec(),
    };
    let identity = users::create_in(&mut tx, &profile, now).await?;
    invites::insert_in(&mut tx, &hash(&token), &identity.id, created_by, now, expires_at).await?;
    let event = AuditEvent::new(EventKind::UserInvited, Outcome::Success)
        .actor(created_by)
        .subject(format!("user/{}", identity.id))
        .detail(json!({ "email": email, "name": name, "groups": groups, "expires_at": expires_at }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    let link = format!("{}/invite/{token}", public_url.as_str().trim_end_matches('/'));
    Ok(Invited { identity_id: identity.id, name, link, expires_at })
}
