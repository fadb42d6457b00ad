//! Starting a sign-in (`GET /login`, `GET /login/cli`) and the provider's
//! answer (`GET /login/oidc/callback`).
//!
//! A start creates a pending login bound to a fresh `__Host-palisade-login`
//! cookie and sends the browser to the provider with `state` (its hash is
//! stored; it works once, and only with that cookie), a `nonce` and a PKCE
//! S256 challenge. The callback checks all of it, lets [`super::rp`] verify
//! the tokens, refreshes the person and their groups (a lost group revokes
//! their sessions), and sends the browser on to the second factor.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::PkceCodeChallenge;
use palisade_proto::id::GroupName;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::limits::Bucket;
use super::session::{self, LOGIN_COOKIE};
use super::{Client, Failure, Login, OrInternal, Shape, hash, new_secret, now_unix, report};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::login_state::{self, PendingLogin};
use crate::db::{sessions, users};
use crate::web::PeerAddr;

/// `GET /login` query.
#[derive(Debug, Default, Deserialize)]
pub struct PortalStart {
    /// A same-origin relative path to return to.
    pub return_to: Option<String>,
}

/// `GET /login/cli` query.
#[derive(Debug, Default, Deserialize)]
pub struct CliStart {
    /// The CLI's loopback port.
    pub port: Option<u16>,
    /// Echoed to the loopback redirect.
    pub state: Option<String>,
    /// `base64url(sha256(verifier))`.
    pub challenge: Option<String>,
    /// `1`: refresh the MFA of an existing session only.
    pub mfa_only: Option<String>,
    /// The session to refresh (without a session cookie).
    pub session: Option<String>,
}

/// `GET /login/oidc/callback` query.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

pub(crate) async fn start_portal(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Query(q): Query<PortalStart>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let started = match super::portal_pending("portal", q.return_to) {
        Ok(pending) => begin(&broker, &login, &client, pending).await,
        Err(f) => Err(f),
    };
    match started {
        Ok(response) => response,
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

pub(crate) async fn start_cli(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Query(q): Query<CliStart>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let result = match cli_pending(&broker, &headers, q).await {
        Ok(pending) => begin(&broker, &login, &client, pending).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(response) => response,
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

async fn cli_pending(broker: &Broker, headers: &HeaderMap, q: CliStart) -> Result<PendingLogin, Failure> {
    let port =
        q.port.filter(|p| *p >= 1024).ok_or_else(|| Failure::bad("start", "cli_port", "port missing or below 1024"))?;
    let state = q.state.filter(|s| is_token(s, 1, 128)).ok_or_else(|| Failure::bad("start", "cli_state", ""))?;
    let challenge =
        q.challenge.filter(|c| is_token(c, 43, 43)).ok_or_else(|| Failure::bad("start", "cli_challenge", ""))?;
    let mut pending = PendingLogin {
        kind: "cli".into(),
        cli: Some(login_state::CliTarget { port, state, challenge }),
        ..PendingLogin::default()
    };
    if q.mfa_only.as_deref() == Some("1") {
        let from_cookie = session::current(broker, headers).await?.map(|(s, _)| s.record.id);
        let id =
            from_cookie.or(q.session).ok_or_else(|| Failure::bad("start", "mfa_session", "no session to refresh"))?;
        let mut conn = broker.db().pool().acquire().await.internal("start")?;
        let details = sessions::details_in(&mut conn, &id).await.internal("start")?;
        let details = details
            .filter(|d| d.record.is_active(now_unix()))
            .ok_or_else(|| Failure::refused("start", "mfa_session_inactive", ""))?;
        pending.identity_id = Some(details.record.identity_id.clone());
        pending.auth_methods = details.auth_methods;
        pending.mfa_session = Some(id);
    }
    Ok(pending)
}

fn is_token(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Stores the pending login and redirects: to the provider, or straight to
/// the second factor (MFA refresh, or no provider configured: passkey sign-in).
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
    let target = match (&login.rp, &pending.mfa_session) {
        (Some(rp), None) => {
            let provider = rp.provider().await?;
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            let (state, nonce) = (new_secret(), new_secret());
            pending.oidc_state = Some(hash(&state));
            pending.oidc_nonce = Some(nonce.clone());
            pending.pkce_verifier = Some(verifier.secret().clone());
            rp.authorize_url(&provider, &state, &nonce, challenge.as_str()).to_string()
        }
        _ => "/login/mfa".to_owned(),
    };
    let _ = login_state::purge_expired(broker.db(), now).await;
    if !login_state::insert_pending(broker.db(), &pending, super::MAX_PENDING).await.internal("start")? {
        return Err(Failure::too_many("start"));
    }
    let cookie = session::set_cookie(LOGIN_COOKIE, &cookie, super::PENDING_TTL_SECS);
    Ok(([(axum::http::header::SET_COOKIE, cookie)], Redirect::to(&target)).into_response())
}

pub(crate) async fn callback(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    if !login.limits.allows(Bucket::Failure, &client.addr_key()) {
        return report(&broker, &login, &client, &Failure::too_many("callback"), Shape::Page).await;
    }
    match finish(&broker, &login, &headers, q).await {
        Ok(()) => Redirect::to("/login/mfa").into_response(),
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

async fn finish(broker: &Broker, login: &Login, headers: &HeaderMap, q: Callback) -> Result<(), Failure> {
    let rp = login.rp.as_ref().ok_or_else(|| Failure::bad("callback", "no_provider", ""))?;
    let state = q.state.ok_or_else(|| Failure::bad("callback", "state_missing", ""))?;
    let mut conn = broker.db().pool().acquire().await.internal("callback")?;
    let pending = login_state::take_oidc_state(&mut conn, &hash(&state))
        .await
        .internal("callback")?
        .ok_or_else(|| Failure::bad("callback", "state_unknown", "unknown or already used state"))?;
    drop(conn);
    if session::cookie(headers, LOGIN_COOKIE).map(|c| hash(&c)).as_deref() != Some(pending.id_hash.as_str()) {
        return Err(Failure::bad("callback", "state_foreign", "the state belongs to another browser"));
    }
    if pending.expires_at <= now_unix() {
        return Err(Failure::bad("callback", "state_expired", ""));
    }
    if let Some(error) = q.error {
        return Err(Failure::refused("callback", "provider_error", error.chars().take(64).collect::<String>()));
    }
    let provider = rp.provider().await?;
    let iss_supported = provider.metadata.additional_metadata().authorization_response_iss_parameter_supported;
    match (q.iss.as_deref(), iss_supported) {
        (Some(iss), _) if iss != rp.config.issuer => return Err(Failure::refused("callback", "iss_mismatch", "")),
        (None, Some(true)) => return Err(Failure::refused("callback", "iss_missing", "")),
        _ => {}
    }
    let code = q.code.ok_or_else(|| Failure::bad("callback", "code_missing", ""))?;
    let verifier = pending.pkce_verifier.clone().unwrap_or_default();
    let tokens = rp.exchange(&provider, &code, &verifier).await?;
    let nonce = pending.oidc_nonce.clone().unwrap_or_default();
    let verified = rp.verify(&provider, &tokens.id_token, &nonce).await?;
    let userinfo = rp.userinfo(&provider, &tokens.access_token, &verified.subject).await?;
    let profile = profile(login, &verified.subject, &verified.claims, userinfo.as_ref())?;
    record_person(broker, &pending, &profile).await
}

/// What the provider's claims say about the person, checked.
fn profile(
    login: &Login,
    subject: &str,
    id_claims: &Map<String, Value>,
    userinfo: Option<&Map<String, Value>>,
) -> Result<users::Profile, Failure> {
    let config = &login.rp.as_ref().ok_or_else(|| Failure::bad("callback", "no_provider", ""))?.config;
    let claim = |k: &str| id_claims.get(k).or_else(|| userinfo.and_then(|u| u.get(k)));
    let text = |k: &str| claim(k).and_then(Value::as_str).map(|s| s.chars().take(256).collect::<String>());
    let email = text("email").map(|e| e.to_ascii_lowercase());
    if !config.allowed_email_domains.is_empty() {
        let verified = claim("email_verified").and_then(Value::as_bool) == Some(true);
        let domain = email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_owned());
        if !verified || !domain.is_some_and(|d| config.allowed_email_domains.contains(&d)) {
            return Err(Failure::refused("callback", "email_domain", format!("email {email:?} not allowed")));
        }
    }
    let groups = match claim(&config.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|g| g.parse::<GroupName>().ok())
            .map(String::from)
            .collect(),
        Some(Value::String(g)) => g.parse::<GroupName>().ok().map(String::from).into_iter().collect(),
        Some(_) => {
            return Err(Failure::refused("callback", "groups_claim", "the groups claim is not a list of strings"));
        }
    };
    let basis = text("preferred_username").or_else(|| email.clone()).unwrap_or_else(|| subject.to_owned());
    Ok(users::Profile {
        issuer: config.issuer.clone(),
        subject: subject.to_owned(),
        name: identity_name(&basis),
        email,
        display_name: text("name"),
        groups,
    })
}

/// A certificate-safe identity name: `alice@example.com` → `alice_example.com`.
#[must_use]
pub fn identity_name(basis: &str) -> String {
    let mut name: String = basis
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(63)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name = format!("u{}", name.chars().take(62).collect::<String>());
    }
    name
}

/// Upserts the person, revokes their sessions if a group was lost, and binds them to the pending login.
async fn record_person(broker: &Broker, pending: &PendingLogin, profile: &users::Profile) -> Result<(), Failure> {
    let now = now_unix();
    let mut tx = broker.db().begin_write().await.internal("callback")?;
    let upserted = users::upsert_in(&mut tx, profile, now).await.internal("callback")?;
    let id = upserted.identity.id.clone();
    if upserted.identity.disabled {
        return Err(Failure::refused("callback", "identity_disabled", "").account(id));
    }
    if !upserted.lost_groups.is_empty() {
        let reason = format!("groups removed: {}", upserted.lost_groups.join(","));
        for session in sessions::revoke_all_in(&mut tx, &id, "idp", &reason, now).await.internal("callback")? {
            let event = AuditEvent::new(EventKind::SessionRevoked, Outcome::Success)
                .actor("idp")
                .subject(session)
                .detail(json!({ "reason": reason, "identity": id }));
            Audit::record_in(&mut tx, event).await.internal("callback")?;
        }
    }
    login_state::set_identity_in(&mut tx, &pending.id_hash, &id, &["oidc".to_owned()]).await.internal("callback")?;
    let event = AuditEvent::new(EventKind::LoginSucceeded, Outcome::Success)
        .subject(format!("user/{id}"))
        .detail(json!({ "step": "oidc", "idp": profile.issuer, "name": profile.display_name, "groups": profile.groups,
                        "created": upserted.created, "source": pending.client_addr }));
    Audit::record_in(&mut tx, event).await.internal("callback")?;
    tx.commit().await.internal("callback")?;
    Ok(())
}
