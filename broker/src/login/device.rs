//! Device codes for headless machines (RFC 8628 shape).
//!
//! The CLI asks for a code (`POST /api/v1/login/device`), the person opens
//! `/device` in a signed-in browser and approves (`POST /device/approve`, a
//! console form behind the console's CSRF guard; the page itself is
//! [`crate::console::device`]); approval binds
//! the code to that person and creates a session for the device. The CLI
//! polls `POST /api/v1/login/device/token` with a CSR and gets the exchange
//! answer once approved.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::exchange::issue_for_session;
use super::limits::Bucket;
use super::session;
use super::{Client, Failure, Login, OrInternal, Shape, hash, new_secret, now_unix, report};
use crate::Broker;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::console::device::{self as console, Waiting};
use crate::console::viewer::Viewer;
use crate::db::login_state::device::{self, DeviceCode};
use crate::db::sessions::{self, NewSession};
use crate::issuance::csr;
use crate::web::PeerAddr;

/// Seconds a CLI waits between polls.
pub const INTERVAL_SECS: i64 = 2;
/// Most unexpired device codes at once.
pub const MAX_CODES: i64 = 10_000;
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// `POST /api/v1/login/device` answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct DeviceAuthorization {
    /// What the CLI polls with.
    pub device_code: String,
    /// What the person types, e.g. `WDJB-MJHT`.
    pub user_code: String,
    /// `<public URL>/device`.
    pub verification_uri: String,
    /// With the user code filled in.
    pub verification_uri_complete: String,
    /// Seconds.
    pub expires_in: i64,
    /// Seconds between polls.
    pub interval: i64,
}

/// `POST /api/v1/login/device/token` body.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTokenRequest {
    /// From [`DeviceAuthorization`].
    pub device_code: String,
    /// PEM PKCS#10 request.
    pub csr_pem: String,
}

fn user_code() -> String {
    let mut bytes = [0u8; 8];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let chars: String =
        bytes.iter().map(|b| char::from(USER_CODE_ALPHABET[usize::from(*b) % USER_CODE_ALPHABET.len()])).collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// `wdjb mjht` → `WDJB-MJHT`.
fn normalize(code: &str) -> String {
    let letters: String = code.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect();
    if letters.len() == 8 { format!("{}-{}", &letters[..4], &letters[4..]) } else { letters }
}

pub(crate) async fn issue(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    match create(&broker, &login, &client).await {
        Ok(answer) => Json(answer).into_response(),
        Err(f) => report(&broker, &login, &client, &f, Shape::Json).await,
    }
}

async fn create(broker: &Broker, login: &Login, client: &Client) -> Result<DeviceAuthorization, Failure> {
    if !login.limits.take(Bucket::Start, &client.addr_key()) {
        return Err(Failure::too_many("device"));
    }
    let now = now_unix();
    let ttl = i64::try_from(login.settings.device_code_ttl.as_secs()).unwrap_or(600);
    let secret = new_secret();
    for _ in 0..3 {
        let row = DeviceCode {
            device_code_hash: hash(&secret),
            user_code: user_code(),
            client_addr: client.addr.map(|a| a.to_string()),
            created_at: now,
            expires_at: now + ttl,
            interval_secs: INTERVAL_SECS,
            last_poll_at: None,
            approved_by: None,
            session_id: None,
            redeemed_at: None,
        };
        match device::insert(broker.db(), &row, MAX_CODES).await {
            Ok(false) => return Err(Failure::too_many("device")),
            Err(e) if crate::db::is_unique_violation(&e) => continue,
            Err(e) => return Err(Failure::internal("device", &e)),
            Ok(true) => {
                let event = AuditEvent::new(EventKind::DeviceCodeIssued, Outcome::Success).detail(
                    json!({ "user_code": row.user_code, "source": row.client_addr, "expires_at": row.expires_at }),
                );
                broker.audit().record(event).await.internal("device")?;
                let uri = login.url("/device");
                return Ok(DeviceAuthorization {
                    device_code: secret,
                    verification_uri_complete: format!("{uri}?user_code={}", row.user_code),
                    user_code: row.user_code,
                    verification_uri: uri,
                    expires_in: ttl,
                    interval: INTERVAL_SECS,
                });
            }
        }
    }
    Err(Failure::internal("device", &"no free user code"))
}

/// `GET /device` query.
#[derive(Debug, Default, Deserialize)]
pub struct DevicePage {
    user_code: Option<String>,
}

/// `GET /device`: the approval page, for a signed-in person (the [`Viewer`]
/// extractor sends anyone else to sign in first and back here after).
pub(crate) async fn show(State(broker): State<Broker>, viewer: Viewer, Query(q): Query<DevicePage>) -> Response {
    let code = q.user_code.map(|c| normalize(&c)).unwrap_or_default();
    let waiting = if code.is_empty() {
        Waiting::NoCode
    } else {
        match device::by_user_code(broker.db(), &code).await {
            Ok(Some(d)) if d.expires_at > now_unix() && d.approved_by.is_none() => {
                Waiting::Found { from: d.client_addr }
            }
            Ok(_) => Waiting::Unknown,
            Err(e) => return crate::console::layout::internal(&e),
        }
    };
    console::approve_page(&viewer, &code, &waiting, StatusCode::OK)
}

/// `POST /device/approve` form (its CSRF token and origin were checked by
/// [`crate::web::security::csrf_guard`] before this runs).
#[derive(Debug, Deserialize)]
pub struct Approve {
    user_code: String,
}

pub(crate) async fn approve(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    viewer: Viewer,
    form: Result<Form<Approve>, FormRejection>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let code = form.as_ref().map(|Form(f)| normalize(&f.user_code)).unwrap_or_default();
    let result = async {
        if !login.limits.allows(Bucket::Failure, &client.addr_key()) {
            return Err(Failure::too_many("device"));
        }
        let Form(_) = form.map_err(|e| Failure::bad("device", "malformed", e.body_text()))?;
        bind(&broker, &login, &viewer.session, &code).await
    };
    match result.await {
        Ok(()) => console::approved_page(&viewer, &code),
        Err(f) => {
            // The audit event and the failure count; the person gets the console's page.
            let _ = report(&broker, &login, &client, &f, Shape::Page).await;
            console::refused_page(&viewer, &code, f.status)
        }
    }
}

/// Binds the code to the approving person: a new session for the device,
/// inheriting the approver's MFA time and methods, ending no later than theirs.
async fn bind(broker: &Broker, login: &Login, approver: &sessions::SessionDetails, code: &str) -> Result<(), Failure> {
    let now = now_unix();
    let who = approver.record.identity_id.clone();
    let found = device::by_user_code(broker.db(), code).await.internal("device")?;
    let found = found.ok_or_else(|| Failure::refused("device", "user_code_unknown", "").account(who.clone()))?;
    let ttl = i64::try_from(login.settings.session_ttl.as_secs()).unwrap_or(0);
    let mut methods = approver.auth_methods.clone();
    methods.push("device_code".into());
    let session = NewSession {
        id: palisade_proto::id::SessionId::random().to_string(),
        identity_id: who.clone(),
        created_at: now,
        expires_at: (now + ttl).min(approver.record.expires_at),
        mfa_at: approver.record.mfa_at,
        auth_methods: methods,
        client_addr: found.client_addr.clone(),
        user_agent: Some("palisade login --device".into()),
    };
    let mut tx = broker.db().begin_write().await.internal("device")?;
    sessions::insert_in(&mut tx, &session).await.internal("device")?;
    if !device::approve_in(&mut tx, code, &who, &session.id, now).await.internal("device")? {
        return Err(Failure::refused("device", "user_code_used_or_expired", "").account(who));
    }
    session::record_created(&mut tx, &session, "device_code").await?;
    let event = AuditEvent::new(EventKind::DeviceCodeApproved, Outcome::Success)
        .actor(format!("user/{who}"))
        .subject(session.id.clone())
        .detail(json!({ "user_code": code, "device": found.client_addr, "approver_session": approver.record.id }));
    Audit::record_in(&mut tx, event).await.internal("device")?;
    tx.commit().await.internal("device")
}

pub(crate) async fn token(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    json: Result<Json<DeviceTokenRequest>, JsonRejection>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let key = client.addr_key();
    if !login.limits.allows(Bucket::Failure, &key) || !login.limits.take(Bucket::Poll, &key) {
        return report(&broker, &login, &client, &Failure::too_many("device_token"), Shape::Json).await;
    }
    let Ok(Json(req)) = json else {
        return report(&broker, &login, &client, &Failure::bad("device_token", "malformed", ""), Shape::Json).await;
    };
    match poll(&broker, &login, &req).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(code)) => oauth_error(code),
        Err(f) if f.reason == "invalid_grant" => {
            let _ = report(&broker, &login, &client, &f, Shape::Json).await;
            oauth_error("invalid_grant")
        }
        Err(f) => report(&broker, &login, &client, &f, Shape::Json).await,
    }
}

fn oauth_error(code: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": code }))).into_response()
}

/// One poll: `Ok(Err(code))` is an RFC 8628 answer the CLI expects while waiting.
async fn poll(
    broker: &Broker,
    login: &Login,
    req: &DeviceTokenRequest,
) -> Result<Result<super::exchange::LoginCertificate, &'static str>, Failure> {
    let now = now_unix();
    let hash = hash(&req.device_code);
    let mut tx = broker.db().begin_write().await.internal("device_token")?;
    let found = device::poll_in(&mut tx, &hash, now).await.internal("device_token")?;
    let code = found.ok_or_else(|| Failure::bad("device_token", "invalid_grant", "unknown device code"))?;
    let answer = if code.expires_at <= now {
        Err("expired_token")
    } else if code.redeemed_at.is_some() {
        Err("access_denied")
    } else if code.last_poll_at.is_some_and(|last| now - last < code.interval_secs - 1) {
        device::slow_down_in(&mut tx, &hash, 5).await.internal("device_token")?;
        Err("slow_down")
    } else if code.approved_by.is_none() {
        Err("authorization_pending")
    } else {
        Ok(())
    };
    if let Err(code) = answer {
        tx.commit().await.internal("device_token")?;
        return Ok(Err(code));
    }
    let checked = csr::check_csr(&req.csr_pem).map_err(|e| Failure::bad("device_token", e.code(), e.to_string()))?;
    if !device::redeem_in(&mut tx, &hash, now).await.internal("device_token")? {
        return Ok(Err("access_denied"));
    }
    tx.commit().await.internal("device_token")?;
    let session = code.session_id.unwrap_or_default();
    issue_for_session(broker, login, &session, &checked, "device_code").await.map(Ok)
}
