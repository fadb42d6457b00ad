//! The second factor: `GET /login/mfa` and the WebAuthn ceremonies.
//!
//! Registration is allowed only in a pending login whose OIDC step just
//! happened for a person without a credential, or that redeems an invite.
//! Ceremony state lives in the database, one per pending login, and is
//! deleted by the first finish that takes it: a replayed or parallel second
//! finish finds nothing. A finish body that is not the expected JSON is
//! refused (400; 413 over [`MAX_FINISH_BODY`]) before the ceremony is taken;
//! one whose authenticator bytes (CBOR, authenticator data, COSE key) do not
//! parse or carry an unsupported key is refused with 400 after, and the
//! ceremony is spent. Passkey flows require user verification. After each
//! authentication the counter and backup flags are stored; a counter that
//! went backwards disables the credential and raises `credential.alert`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Uuid, Webauthn, WebauthnError,
};

use super::limits::Bucket;
use super::session::{self, Completed};
use super::{Client, Failure, Login, OrInternal, Shape, now_unix, pages, report};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::credentials::{self, StoredCredential};
use crate::db::login_state::{self, Ceremony, PendingLogin, invites};
use crate::db::users;
use crate::web::PeerAddr;

/// What the MFA page does for a pending login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Register a first passkey.
    Register,
    /// Authenticate with one of the person's credentials.
    Authenticate,
    /// Discoverable passkey: the authenticator names the person.
    Discoverable,
}

impl Mode {
    /// The name the page's script reads.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Authenticate => "authenticate",
            Self::Discoverable => "discoverable",
        }
    }
}

async fn mode(broker: &Broker, pending: &PendingLogin) -> Result<Mode, Failure> {
    let Some(id) = &pending.identity_id else {
        if pending.oidc_nonce.is_some() {
            return Err(Failure::bad("webauthn", "oidc_incomplete", ""));
        }
        return Ok(Mode::Discoverable);
    };
    let mut conn = broker.db().pool().acquire().await.internal("webauthn")?;
    let active = !credentials::active_for(&mut conn, id).await.internal("webauthn")?.is_empty();
    // A disabled (possibly cloned) credential blocks self-service registration: an admin resets the person.
    let any = active || !credentials::all_for(broker.db(), id).await.internal("webauthn")?.is_empty();
    let fresh_oidc = pending.auth_methods.iter().any(|m| m == "oidc") && pending.mfa_session.is_none();
    match (active, any, pending.invite_hash.is_some() || fresh_oidc) {
        (true, _, _) => Ok(Mode::Authenticate),
        (false, false, true) => Ok(Mode::Register),
        _ => Err(Failure::refused("webauthn", "no_credential", "").account(id.clone())),
    }
}

pub(crate) async fn page(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let result = async {
        let pending = session::pending(&broker, &headers, "webauthn").await?;
        mode(&broker, &pending).await
    };
    match result.await {
        Ok(mode) => pages::mfa(mode.as_str()).into_response(),
        Err(f) => report(&broker, &login, &client, &f, Shape::Page).await,
    }
}

/// Everything a ceremony handler starts from.
struct Ctx {
    broker: Broker,
    login: Arc<Login>,
    client: Client,
}

impl Ctx {
    fn webauthn(&self) -> Result<&Webauthn, Failure> {
        self.login.webauthn.as_ref().ok_or_else(|| Failure::unavailable("webauthn", "not_configured", ""))
    }

    async fn answer(&self, result: Result<Response, Failure>) -> Response {
        match result {
            Ok(r) => r,
            Err(f) => report(&self.broker, &self.login, &self.client, &f, Shape::Json).await,
        }
    }

    async fn store(&self, pending: &PendingLogin, kind: &str, state: &impl serde::Serialize) -> Result<(), Failure> {
        let ceremony = Ceremony {
            kind: kind.to_owned(),
            identity_id: pending.identity_id.clone(),
            state: serde_json::to_string(state).internal("webauthn")?,
            expires_at: now_unix() + i64::try_from(self.login.settings.ceremony_ttl.as_secs()).unwrap_or(120),
        };
        login_state::put_ceremony(self.broker.db(), &pending.id_hash, &ceremony).await.internal("webauthn")
    }

    /// Takes the pending login's ceremony (single use) and checks its kind and age.
    async fn take(&self, pending: &PendingLogin, kinds: &[&str]) -> Result<Ceremony, Failure> {
        let found = login_state::take_ceremony(self.broker.db(), &pending.id_hash).await.internal("webauthn")?;
        let c = found.ok_or_else(|| Failure::bad("webauthn", "no_ceremony", "no ceremony, or already finished"))?;
        if !kinds.contains(&c.kind.as_str()) || c.identity_id != pending.identity_id {
            return Err(Failure::bad("webauthn", "wrong_ceremony", c.kind));
        }
        if c.expires_at <= now_unix() {
            return Err(Failure::refused("webauthn", "ceremony_expired", ""));
        }
        Ok(c)
    }

    async fn pending(&self, headers: &HeaderMap) -> Result<PendingLogin, Failure> {
        let pending = session::pending(&self.broker, headers, "webauthn").await?;
        if let Some(id) = &pending.identity_id
            && !self.login.limits.allows(Bucket::AccountFailure, id)
        {
            return Err(Failure::too_many("webauthn").account(id.clone()));
        }
        Ok(pending)
    }
}

fn ctx(broker: Broker, login: Arc<Login>, peer: Option<Extension<PeerAddr>>, headers: &HeaderMap) -> Ctx {
    let client = Client::new(&login, peer, headers);
    Ctx { broker, login, client }
}

/// Most bytes a ceremony finish body may have. A browser's answer is a few
/// kilobytes; one with an attestation certificate chain stays well under this.
pub const MAX_FINISH_BODY: usize = 64 * 1024;

/// The body limit of the finish routes (the sign-in's and the account's).
pub(crate) fn finish_body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_FINISH_BODY)
}

/// The finish body, or 400 (413 if over [`MAX_FINISH_BODY`]) before any ceremony is taken.
pub(crate) fn finish_body<T>(step: &'static str, json: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    json.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::bad(step, "too_large", e.body_text()).status(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            Failure::bad(step, "malformed", e.body_text())
        }
    })
}

fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    finish_body("webauthn", json)
}

fn too_many(ctx: &Ctx) -> Option<Failure> {
    (!ctx.login.limits.allows(Bucket::Failure, &ctx.client.addr_key())).then(|| Failure::too_many("webauthn"))
}

pub(crate) async fn register_start(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let ctx = ctx(broker, login, peer, &headers);
    let result = async {
        let pending = ctx.pending(&headers).await?;
        if mode(&ctx.broker, &pending).await? != Mode::Register {
            return Err(Failure::refused("webauthn", "registration_not_allowed", ""));
        }
        let ccr = start_registration(&ctx, &pending).await?;
        Ok(Json(ccr).into_response())
    };
    ctx.answer(result.await).await
}

async fn start_registration(ctx: &Ctx, pending: &PendingLogin) -> Result<serde_json::Value, Failure> {
    let id = pending.identity_id.clone().unwrap_or_default();
    let uuid = Uuid::parse_str(&id).internal("webauthn")?;
    let mut conn = ctx.broker.db().pool().acquire().await.internal("webauthn")?;
    let user = users::get_in(&mut conn, &id)
        .await
        .internal("webauthn")?
        .ok_or_else(|| Failure::internal("webauthn", &"no such user"))?;
    let exclude = credentials::active_for(&mut conn, &id).await.internal("webauthn")?;
    let exclude = exclude.into_iter().map(|c| c.passkey.cred_id().clone()).collect();
    let account = user.email.clone().unwrap_or_else(|| user.identity.name.clone());
    let display = user.display_name.clone().unwrap_or_else(|| account.clone());
    let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) =
        ctx.webauthn()?.start_passkey_registration(uuid, &account, &display, Some(exclude)).internal("webauthn")?;
    let mut ccr = serde_json::to_value(&ccr).internal("webauthn")?;
    if pending.invite_hash.is_some() {
        // A local account signs in only with a discoverable credential.
        if let Some(sel) = ccr.pointer_mut("/publicKey/authenticatorSelection").and_then(|s| s.as_object_mut()) {
            sel.insert("residentKey".into(), json!("required"));
            sel.insert("requireResidentKey".into(), json!(true));
        }
    }
    ctx.store(pending, "register", &state).await?;
    Ok(ccr)
}

pub(crate) async fn register_finish(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    json: Result<Json<RegisterPublicKeyCredential>, JsonRejection>,
) -> Response {
    let ctx = ctx(broker, login, peer, &headers);
    let result = async {
        if let Some(f) = too_many(&ctx) {
            return Err(f);
        }
        let pending = ctx.pending(&headers).await?;
        let account = pending.identity_id.clone().unwrap_or_default();
        let done = finish_registration(&ctx, &pending, body(json)?).await.map_err(|f| f.account(account))?;
        Ok(completed(done))
    };
    ctx.answer(result.await).await
}

async fn finish_registration(
    ctx: &Ctx,
    pending: &PendingLogin,
    reg: RegisterPublicKeyCredential,
) -> Result<Completed, Failure> {
    let ceremony = ctx.take(pending, &["register"]).await?;
    let state: PasskeyRegistration = serde_json::from_str(&ceremony.state).internal("webauthn")?;
    let passkey = ctx.webauthn()?.finish_passkey_registration(&reg, &state).map_err(|e| assertion_failure(&e))?;
    let id = pending.identity_id.clone().unwrap_or_default();
    let now = now_unix();
    let mut tx = ctx.broker.db().begin_write().await.internal("webauthn")?;
    if let Some(invite) = &pending.invite_hash
        && !invites::use_in(&mut tx, invite, now).await.internal("webauthn")?
    {
        return Err(Failure::refused("webauthn", "invite_used", ""));
    }
    let cred_id = match credentials::insert_in(&mut tx, &id, &passkey, "passkey", now).await {
        Ok(cred_id) => cred_id,
        Err(e) if crate::db::is_unique_violation(&e) => {
            return Err(Failure::refused("webauthn", "credential_taken", ""));
        }
        Err(e) => return Err(Failure::internal("webauthn", &e)),
    };
    let event = AuditEvent::new(EventKind::CredentialRegistered, Outcome::Success)
        .subject(format!("user/{id}"))
        .detail(json!({ "credential": cred_id, "via": if pending.invite_hash.is_some() { "invite" } else { "oidc" } }));
    Audit::record_in(&mut tx, event).await.internal("webauthn")?;
    let done = session::complete(&mut tx, &ctx.login, pending, &id, "webauthn").await?;
    tx.commit().await.internal("webauthn")?;
    Ok(done)
}

pub(crate) async fn authenticate_start(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let ctx = ctx(broker, login, peer, &headers);
    let result = async {
        let pending = ctx.pending(&headers).await?;
        let rcr = match mode(&ctx.broker, &pending).await? {
            Mode::Authenticate => start_known(&ctx, &pending).await?,
            Mode::Discoverable => {
                let (mut rcr, state): (RequestChallengeResponse, DiscoverableAuthentication) =
                    ctx.webauthn()?.start_discoverable_authentication().internal("webauthn")?;
                // The page asks with a modal prompt, not autofill.
                rcr.mediation = None;
                ctx.store(&pending, "discoverable", &state).await?;
                rcr
            }
            Mode::Register => return Err(Failure::refused("webauthn", "no_credential", "")),
        };
        Ok(Json(rcr).into_response())
    };
    ctx.answer(result.await).await
}

async fn start_known(ctx: &Ctx, pending: &PendingLogin) -> Result<RequestChallengeResponse, Failure> {
    let id = pending.identity_id.clone().unwrap_or_default();
    let mut conn = ctx.broker.db().pool().acquire().await.internal("webauthn")?;
    let creds = credentials::active_for(&mut conn, &id).await.internal("webauthn")?;
    let passkeys: Vec<_> = creds.into_iter().map(|c| c.passkey).collect();
    let (rcr, state): (RequestChallengeResponse, PasskeyAuthentication) =
        ctx.webauthn()?.start_passkey_authentication(&passkeys).internal("webauthn")?;
    ctx.store(pending, "authenticate", &state).await?;
    Ok(rcr)
}

pub(crate) async fn authenticate_finish(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    json: Result<Json<PublicKeyCredential>, JsonRejection>,
) -> Response {
    let ctx = ctx(broker, login, peer, &headers);
    let result = async {
        if let Some(f) = too_many(&ctx) {
            return Err(f);
        }
        let pending = ctx.pending(&headers).await?;
        let account = pending.identity_id.clone();
        let done = finish_authentication(&ctx, &pending, &body(json)?).await;
        let done = done.map_err(|f| match (f.account.is_none(), account) {
            (true, Some(a)) => f.account(a),
            (_, _) => f,
        })?;
        Ok(completed(done))
    };
    ctx.answer(result.await).await
}

async fn finish_authentication(
    ctx: &Ctx,
    pending: &PendingLogin,
    cred: &PublicKeyCredential,
) -> Result<Completed, Failure> {
    let ceremony = ctx.take(pending, &["authenticate", "discoverable"]).await?;
    let cred_id = credentials::encode_id(cred.get_credential_id());
    let mut conn = ctx.broker.db().pool().acquire().await.internal("webauthn")?;
    let stored = credentials::get_in(&mut conn, &cred_id).await.internal("webauthn")?;
    drop(conn);
    let stored = stored.ok_or_else(|| Failure::refused("webauthn", "credential_unknown", cred_id.clone()))?;
    let owner = stored.identity_id.clone();
    if stored.disabled_reason.is_some() {
        return Err(Failure::refused("webauthn", "credential_disabled", cred_id).account(owner));
    }
    let result = if ceremony.kind == "discoverable" {
        let state: DiscoverableAuthentication = serde_json::from_str(&ceremony.state).internal("webauthn")?;
        let (handle, _) =
            ctx.webauthn()?.identify_discoverable_authentication(cred).map_err(|e| assertion_failure(&e))?;
        if handle.to_string() != owner {
            return Err(Failure::refused("webauthn", "user_handle_mismatch", "").account(owner));
        }
        ctx.webauthn()?.finish_discoverable_authentication_v2(cred, state, &stored.passkey)
    } else {
        if ceremony.identity_id.as_deref() != Some(owner.as_str()) {
            return Err(Failure::refused("webauthn", "credential_not_owned", cred_id));
        }
        let state: PasskeyAuthentication = serde_json::from_str(&ceremony.state).internal("webauthn")?;
        ctx.webauthn()?.finish_passkey_authentication(cred, &state)
    };
    match result {
        Ok(auth) => record_use(ctx, pending, stored, &auth).await,
        Err(WebauthnError::CredentialPossibleCompromise) => Err(disable_clone(ctx, &stored).await),
        Err(e) => Err(assertion_failure(&e).account(owner)),
    }
}

async fn record_use(
    ctx: &Ctx,
    pending: &PendingLogin,
    mut stored: StoredCredential,
    auth: &webauthn_rs::prelude::AuthenticationResult,
) -> Result<Completed, Failure> {
    let now = now_unix();
    stored.passkey.update_credential(auth);
    let mut tx = ctx.broker.db().begin_write().await.internal("webauthn")?;
    credentials::update_in(&mut tx, &stored.id, &stored.passkey, now).await.internal("webauthn")?;
    let done = session::complete(&mut tx, &ctx.login, pending, &stored.identity_id, "webauthn").await?;
    tx.commit().await.internal("webauthn")?;
    Ok(done)
}

/// A counter that did not increase: the credential may be cloned. Disable it and alert.
async fn disable_clone(ctx: &Ctx, stored: &StoredCredential) -> Failure {
    let now = now_unix();
    let result = async {
        let mut tx = ctx.broker.db().begin_write().await?;
        credentials::disable_in(&mut tx, &stored.id, "counter regression", now).await?;
        let event = AuditEvent::new(EventKind::CredentialAlert, Outcome::Failure)
            .subject(format!("user/{}", stored.identity_id))
            .detail(json!({ "credential": stored.id, "reason": "counter_regression", "action": "disabled",
                            "source": ctx.client.addr.map(|a| a.to_string()) }));
        Audit::record_in(&mut tx, event).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        tx.commit().await
    };
    if let Err(e) = result.await {
        tracing::error!(error = %e, credential = stored.id, "could not disable a possibly cloned credential");
    }
    Failure::refused("webauthn", "counter_regression", stored.id.clone()).account(stored.identity_id.clone())
}

fn assertion_failure(e: &WebauthnError) -> Failure {
    if let Some(reason) = malformed_reason(e) {
        return Failure::bad("webauthn", reason, format!("{e:?}"));
    }
    let reason = match e {
        WebauthnError::InvalidRPOrigin | WebauthnError::CredentialCrossOrigin => "origin",
        WebauthnError::UserNotVerified => "user_not_verified",
        WebauthnError::UserNotPresent => "user_not_present",
        WebauthnError::MismatchedChallenge => "challenge",
        WebauthnError::CredentialNotFound => "credential_not_allowed",
        WebauthnError::InvalidRPIDHash => "rp_id",
        WebauthnError::InvalidClientDataType => "client_data_type",
        _ => "assertion_invalid",
    };
    Failure::refused("webauthn", reason, format!("{e:?}"))
}

fn completed(done: Completed) -> Response {
    let mut response = Json(json!({ "redirect": done.redirect })).into_response();
    for cookie in done.cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Errors that mean the authenticator's bytes do not parse (CBOR, authenticator
/// data, COSE key) or carry a key shape the broker does not take, e.g. RSA
/// under 2048 bits: the request is malformed (400), not a refused ceremony.
/// Ambiguous errors (`CredentialAlteredAlgFromRequest` also means "excluded
/// credential") stay refusals.
pub(crate) fn malformed_reason(e: &WebauthnError) -> Option<&'static str> {
    use WebauthnError as E;
    match e {
        E::ParseCBORFailure(_) | E::ParseJSONFailure(_) | E::ParseNOMFailure | E::ParseInsufficientBytesAvailable => {
            Some("malformed")
        }
        E::COSEKeyInvalidCBORValue
        | E::COSEKeyInvalidType
        | E::COSEKeyEDUnsupported
        | E::COSEKeyECDSAXYInvalid
        | E::COSEKeyRSANEInvalid
        | E::COSEKeyECDSAInvalidCurve
        | E::COSEKeyEDDSAXInvalid
        | E::COSEKeyEDDSAInvalidCurve
        | E::COSEKeyInvalidAlgorithm => Some("key_unsupported"),
        _ => None,
    }
}
