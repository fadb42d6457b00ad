//! `POST /api/v1/login/exchange`: the CLI redeems its one-time code, with the
//! verifier only it knows and a CSR, for a certificate of the session.
//!
//! The code works once (taken with `DELETE … RETURNING`), for 60 s, and only
//! with the verifier whose `base64url(sha256(verifier))` is the challenge the
//! CLI sent at the start. The certificate carries the session id, `mfa_at`
//! and `auth_methods`; it lives `login.user_ttl`, clamped to the session's end.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::limits::Bucket;
use super::{Client, Failure, Login, OrInternal, Shape, hash, now_unix, report};
use crate::Broker;
use crate::db::sessions::SessionDetails;
use crate::db::{identities, login_state, sessions};
use crate::issuance::{self, IssueError, LeafProfile, csr};
use crate::web::PeerAddr;

/// Largest exchange body.
pub const MAX_BODY: usize = 64 * 1024;

/// The request body.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The one-time code from the loopback redirect.
    pub code: String,
    /// The secret whose SHA-256 was the challenge.
    pub verifier: String,
    /// PEM PKCS#10 request for the CLI's key.
    pub csr_pem: String,
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest").field("code", &"***").finish_non_exhaustive()
    }
}

/// The answer: what `palisade login` stores.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LoginCertificate {
    /// `spiffe://<td>/user/<id>`.
    pub identity: String,
    /// PEM leaf.
    pub certificate_pem: String,
    /// PEM CA.
    pub ca_pem: String,
    /// Certificate expiry.
    pub not_after_unix: u64,
    /// The broker's QUIC `host:port`.
    pub quic_addr: String,
    /// Other broker replicas to fail over to (QUIC `host:port` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The session the certificate belongs to.
    pub session_id: String,
    /// The session's end.
    pub session_expires_unix: u64,
}

pub(crate) fn body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_BODY)
}

pub(crate) async fn exchange(
    State(broker): State<Broker>,
    Extension(login): Extension<Arc<Login>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    json: Result<Json<ExchangeRequest>, JsonRejection>,
) -> Response {
    let client = Client::new(&login, peer, &headers);
    let result = async {
        if !login.limits.allows(Bucket::Failure, &client.addr_key()) {
            return Err(Failure::too_many("exchange"));
        }
        let Json(req) = json.map_err(|e| Failure::bad("exchange", "malformed", e.body_text()))?;
        redeem(&broker, &login, &req).await
    };
    match result.await {
        Ok(answer) => Json(answer).into_response(),
        Err(f) => report(&broker, &login, &client, &f, Shape::Json).await,
    }
}

async fn redeem(broker: &Broker, login: &Login, req: &ExchangeRequest) -> Result<LoginCertificate, Failure> {
    let checked = csr::check_csr(&req.csr_pem).map_err(|e| Failure::bad("exchange", e.code(), e.to_string()))?;
    let mut conn = broker.db().pool().acquire().await.internal("exchange")?;
    let taken = login_state::take_code_in(&mut conn, &hash(&req.code)).await.internal("exchange")?;
    drop(conn);
    let (session_id, challenge, expires_at) =
        taken.ok_or_else(|| Failure::refused("exchange", "code_unknown", "unknown or already used code"))?;
    if expires_at <= now_unix() {
        return Err(Failure::refused("exchange", "code_expired", ""));
    }
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(palisade_proto::enroll::sha256(req.verifier.as_bytes()));
    if !constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
        return Err(Failure::refused("exchange", "verifier_mismatch", ""));
    }
    issue_for_session(broker, login, &session_id, &checked, "login").await
}

/// Issues a person's certificate for an active session: `user_ttl` clamped to the session's end.
///
/// # Errors
/// The session ended, the person is disabled, the key is taken, or the CA failed.
pub(crate) async fn issue_for_session(
    broker: &Broker,
    login: &Login,
    session_id: &str,
    checked: &csr::CheckedCsr,
    via: &str,
) -> Result<LoginCertificate, Failure> {
    let now = SystemTime::now();
    let now_unix = crate::db::unix_seconds(now);
    let mut tx = broker.db().begin_write().await.internal("exchange")?;
    let session = sessions::details_in(&mut tx, session_id).await.internal("exchange")?;
    let session: SessionDetails = session
        .filter(|s| s.record.is_active(now_unix))
        .ok_or_else(|| Failure::refused("exchange", "session_inactive", session_id.to_owned()))?;
    let identity_id = session.record.identity_id.clone();
    let identity = identities::get_in(&mut tx, palisade_proto::identity::PeerRole::User, &identity_id)
        .await
        .internal("exchange")?;
    let identity = identity
        .filter(|i| !i.disabled)
        .ok_or_else(|| Failure::refused("exchange", "identity_disabled", "").account(identity_id.clone()))?;
    if broker.issuance_limits().take(&format!("{}/{}", identity.role, identity.id)).is_err() {
        return Err(Failure::too_many("exchange").account(identity.id.clone()));
    }
    issuance::check_key_unused(&mut tx, checked, &identity.id).await.map_err(|e| issue_failure(&e))?;
    let left = u64::try_from(session.record.expires_at - now_unix).unwrap_or(0);
    let profile = LeafProfile {
        role: identity.role,
        id: identity.id.clone(),
        name: identity.name.clone(),
        groups: identity.groups.clone(),
        ttl: login.settings.user_ttl.min(Duration::from_secs(left)),
        session: Some(session.record.id.clone()),
        mfa_at: session.record.mfa_at.and_then(|m| u64::try_from(m).ok()),
        auth_methods: session.auth_methods.clone(),
    };
    let issued = broker.ca().sign(&profile, checked, now).map_err(|e| issue_failure(&e))?;
    issuance::store_issued(&mut tx, &issued, checked, &identity.id, now, via).await.map_err(|e| issue_failure(&e))?;
    tx.commit().await.internal("exchange")?;
    Ok(LoginCertificate {
        identity: issued.spiffe_id,
        certificate_pem: issued.certificate_pem,
        ca_pem: broker.trust_bundle_pem(),
        not_after_unix: issued.not_after_unix,
        quic_addr: broker.config().quic_public_addr(),
        replicas: broker.other_replicas().await,
        session_id: session.record.id,
        session_expires_unix: u64::try_from(session.record.expires_at).unwrap_or(0),
    })
}

fn issue_failure(e: &IssueError) -> Failure {
    if e.is_bad_request() {
        Failure::bad("exchange", e.code(), e.to_string())
    } else if e.code() == "ca_unavailable" {
        Failure::unavailable("exchange", "ca_unavailable", e.to_string())
    } else {
        Failure::internal("exchange", e).status(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
