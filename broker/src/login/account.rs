//! A person's own credentials, authenticated by the session cookie:
//! `GET /api/v1/me/credentials`, `DELETE /api/v1/me/credentials/{id}`, and
//! `POST /api/v1/me/credentials/register/{start,finish}` to add another
//! passkey or security key.
//!
//! Adding a credential, or removing the last usable one, needs a fresh
//! second factor (the session's MFA at most [`FRESH_MFA_SECS`] old):
//! otherwise a stolen cookie could add the thief's key or strip the
//! account's only one. The ceremony is stored like a sign-in's, bound to a
//! pending login derived from the session cookie, and used once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Client, Failure, Login, OrInternal, Shape, hash, now_unix, report, session};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::credentials;
use crate::db::login_state::{self, Ceremony, PendingLogin};
use crate::db::sessions::SessionDetails;
use crate::db::users;
use crate::web::PeerAddr;
use axum::extract::rejection::JsonRejection;
use webauthn_rs::prelude::{PasskeyRegistration, RegisterPublicKeyCredential, Uuid};

/// How recent the second factor must be to remove the last credential.
pub const FRESH_MFA_SECS: i64 = 300;

/// One credential as its owner sees it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct CredentialInfo {
    /// base64url credential id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// Disabled (possible clone).
    pub disabled: bool,
}

pub(crate) async fn list(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (details, _) = session::current(&broker, &headers).await?.ok_or_else(unauthenticated)?;
        let all = credentials::all_for(broker.db(), &details.record.identity_id).await.internal("account")?;
        Ok(all
            .into_iter()
            .map(|c| CredentialInfo {
                id: c.id,
                label: c.label,
                created_at: c.created_at,
                last_used_at: c.last_used_at,
                disabled: c.disabled_reason.is_some(),
            })
            .collect::<Vec<_>>())
    };
    match result.await {
        Ok(list) => Json(list).into_response(),
        Err(f) => report(&broker, &login, &Client::new(&login, peer, &headers), &f, Shape::Json).await,
    }
}

fn unauthenticated() -> Failure {
    Failure::refused("account", "no_session", "")
}

pub(crate) async fn remove(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let (details, _) = session::current(&broker, &headers).await?.ok_or_else(unauthenticated)?;
        let owner = details.record.identity_id.clone();
        let mut tx = broker.db().begin_write().await.internal("account")?;
        let active = credentials::active_for(&mut tx, &owner).await.internal("account")?;
        let last = active.len() == 1 && active[0].id == id;
        let fresh = details.record.mfa_at.is_some_and(|m| now_unix() - m <= FRESH_MFA_SECS);
        if last && !fresh {
            return Err(Failure::refused("account", "fresh_mfa_required", "")
                .status(StatusCode::FORBIDDEN)
                .account(owner));
        }
        if !credentials::delete_in(&mut tx, &owner, &id).await.internal("account")? {
            return Err(Failure::bad("account", "credential_unknown", "").status(StatusCode::NOT_FOUND).account(owner));
        }
        let event = AuditEvent::new(EventKind::CredentialRemoved, Outcome::Success)
            .actor(format!("user/{owner}"))
            .subject(format!("user/{owner}"))
            .detail(json!({ "credential": id, "by": "owner", "session": details.record.id }));
        Audit::record_in(&mut tx, event).await.internal("account")?;
        tx.commit().await.internal("account")
    };
    match result.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => report(&broker, &login, &Client::new(&login, peer, &headers), &f, Shape::Json).await,
    }
}

/// The session, if its second factor is fresh enough to change credentials.
async fn fresh_session(broker: &Broker, headers: &HeaderMap) -> Result<(SessionDetails, String), Failure> {
    let (details, _) = session::current(broker, headers).await?.ok_or_else(unauthenticated)?;
    let owner = details.record.identity_id.clone();
    if details.record.mfa_at.is_none_or(|m| now_unix() - m > FRESH_MFA_SECS) {
        return Err(Failure::refused("account", "fresh_mfa_required", "").status(StatusCode::FORBIDDEN).account(owner));
    }
    let cookie = session::cookie(headers, session::SESSION_COOKIE).unwrap_or_default();
    Ok((details, hash(&format!("add-credential:{cookie}"))))
}

pub(crate) async fn register_start(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (details, pending_id) = fresh_session(&broker, &headers).await?;
        let webauthn = login.webauthn.as_ref().ok_or_else(|| Failure::unavailable("account", "not_configured", ""))?;
        let owner = details.record.identity_id.clone();
        let mut conn = broker.db().pool().acquire().await.internal("account")?;
        let user = users::get_in(&mut conn, &owner).await.internal("account")?.ok_or_else(unauthenticated)?;
        let exclude = credentials::all_for(broker.db(), &owner).await.internal("account")?;
        let exclude = exclude.into_iter().map(|c| c.passkey.cred_id().clone()).collect();
        let account = user.email.clone().unwrap_or_else(|| user.identity.name.clone());
        let uuid = Uuid::parse_str(&owner).internal("account")?;
        let (ccr, state): (_, PasskeyRegistration) =
            webauthn.start_passkey_registration(uuid, &account, &account, Some(exclude)).internal("account")?;
        let now = now_unix();
        let _ = login_state::purge_expired(broker.db(), now).await;
        let mut conn = broker.db().begin_write().await.internal("account")?;
        login_state::delete_pending_in(&mut conn, &pending_id).await.internal("account")?;
        conn.commit().await.internal("account")?;
        let pending = PendingLogin {
            id_hash: pending_id.clone(),
            kind: "portal".into(),
            identity_id: Some(owner.clone()),
            created_at: now,
            expires_at: now + super::PENDING_TTL_SECS,
            ..PendingLogin::default()
        };
        if !login_state::insert_pending(broker.db(), &pending, super::MAX_PENDING).await.internal("account")? {
            return Err(Failure::too_many("account"));
        }
        let ttl = i64::try_from(login.settings.ceremony_ttl.as_secs()).unwrap_or(120);
        let ceremony = Ceremony {
            kind: "register".into(),
            identity_id: Some(owner),
            state: serde_json::to_string(&state).internal("account")?,
            expires_at: now + ttl,
        };
        login_state::put_ceremony(broker.db(), &pending_id, &ceremony).await.internal("account")?;
        Ok(Json(ccr).into_response())
    };
    match result.await {
        Ok(r) => r,
        Err(f) => report(&broker, &login, &Client::new(&login, peer, &headers), &f, Shape::Json).await,
    }
}

pub(crate) async fn register_finish(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    json: Result<Json<RegisterPublicKeyCredential>, JsonRejection>,
) -> Response {
    let result = async {
        let (details, pending_id) = fresh_session(&broker, &headers).await?;
        let reg = super::webauthn::finish_body("account", json)?;
        let owner = details.record.identity_id.clone();
        let found = login_state::take_ceremony(broker.db(), &pending_id).await.internal("account")?;
        let ceremony = found.filter(|c| c.kind == "register" && c.identity_id.as_deref() == Some(owner.as_str()));
        let ceremony = ceremony.ok_or_else(|| Failure::bad("account", "no_ceremony", "").account(owner.clone()))?;
        if ceremony.expires_at <= now_unix() {
            return Err(Failure::refused("account", "ceremony_expired", "").account(owner));
        }
        let state: PasskeyRegistration = serde_json::from_str(&ceremony.state).internal("account")?;
        let webauthn = login.webauthn.as_ref().ok_or_else(|| Failure::unavailable("account", "not_configured", ""))?;
        let passkey = webauthn.finish_passkey_registration(&reg, &state).map_err(|e| {
            let f = match super::webauthn::malformed_reason(&e) {
                Some(reason) => Failure::bad("account", reason, format!("{e:?}")),
                None => Failure::refused("account", "registration_invalid", format!("{e:?}")),
            };
            f.account(owner.clone())
        })?;
        let mut tx = broker.db().begin_write().await.internal("account")?;
        let id = match credentials::insert_in(&mut tx, &owner, &passkey, "passkey", now_unix()).await {
            Ok(id) => id,
            Err(e) if crate::db::is_unique_violation(&e) => {
                return Err(Failure::refused("account", "credential_taken", ""));
            }
            Err(e) => return Err(Failure::internal("account", &e)),
        };
        login_state::delete_pending_in(&mut tx, &pending_id).await.internal("account")?;
        let event = AuditEvent::new(EventKind::CredentialRegistered, Outcome::Success)
            .actor(format!("user/{owner}"))
            .subject(format!("user/{owner}"))
            .detail(json!({ "credential": id, "via": "account", "session": details.record.id }));
        Audit::record_in(&mut tx, event).await.internal("account")?;
        tx.commit().await.internal("account")?;
        Ok(Json(json!({ "id": id })).into_response())
    };
    match result.await {
        Ok(r) => r,
        Err(f) => report(&broker, &login, &Client::new(&login, peer, &headers), &f, Shape::Json).await,
    }
}
