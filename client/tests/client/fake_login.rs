//! An in-test HTTPS broker for the sign-in endpoints of
//! `docs/login-protocol.md`: `/login/cli` (the browser part collapsed into one
//! redirect), the exchange, and the device-code endpoints, with ways to
//! misbehave on purpose.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use palisade_proto::enroll::sha256;
use palisade_proto::identity::IdentityAttributes;
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{Pki, TRUST_DOMAIN};

/// How the exchange answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    Honest,
    /// A certificate for a key of its own, not the CSR's.
    WrongKey,
    /// A machine certificate instead of a person's.
    MachineRole,
    /// A certificate and CA bundle from another CA than the one serving HTTPS.
    OtherCa,
    /// The certificate names another session than the answer.
    WrongSession,
    /// An MFA refresh that comes back with a brand-new session.
    NewSession,
}

/// What a device poll answers next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Pending,
    SlowDown,
    Expired,
    Denied,
    Approve,
}

/// One exchange the CLI made.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub code: String,
    pub verifier: String,
    pub csr_pem: String,
}

struct Pending {
    challenge: String,
    session: String,
}

#[derive(Default)]
struct Seen {
    starts: Vec<HashMap<String, String>>,
    exchanges: Vec<Exchange>,
    polls: Vec<Instant>,
    pending: HashMap<String, Pending>,
}

struct Inner {
    pki: Arc<Pki>,
    stranger: Pki,
    quic_addr: String,
    person: String,
    issue: Mutex<Issue>,
    steps: Mutex<VecDeque<Step>>,
    seen: Mutex<Seen>,
    url: String,
}

/// The fake broker; clones share state.
#[derive(Clone)]
pub struct FakeLogin(Arc<Inner>);

impl FakeLogin {
    pub async fn spawn(pki: Arc<Pki>, quic_addr: String) -> FakeLogin {
        let tls = palisade_proto::tls::https_server_config(&pki.server_identity()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let fake = FakeLogin(Arc::new(Inner {
            pki,
            stranger: Pki::new(),
            quic_addr,
            person: format!("spiffe://{TRUST_DOMAIN}/user/{}", uuid::Uuid::new_v4()),
            issue: Mutex::new(Issue::Honest),
            steps: Mutex::default(),
            seen: Mutex::default(),
            url,
        }));
        let router = Router::new()
            .route("/", get(|| async { "palisade" }))
            .route("/login/cli", get(start_cli))
            .route("/api/v1/login/exchange", post(exchange))
            .route("/api/v1/login/device", post(device_start))
            .route("/api/v1/login/device/token", post(device_token))
            .with_state(fake.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = TowerToHyperService::new(router);
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }
    pub fn pin(&self) -> [u8; 32] {
        sha256(&self.0.pki.ca_der())
    }
    pub fn pin_hex(&self) -> String {
        palisade_proto::enroll::hex(&self.pin())
    }
    pub fn person(&self) -> &str {
        &self.0.person
    }
    pub fn set_issue(&self, issue: Issue) {
        *self.0.issue.lock().unwrap() = issue;
    }
    pub fn script(&self, steps: &[Step]) {
        *self.0.steps.lock().unwrap() = steps.iter().copied().collect();
    }
    pub fn starts(&self) -> Vec<HashMap<String, String>> {
        self.0.seen.lock().unwrap().starts.clone()
    }
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.0.seen.lock().unwrap().exchanges.clone()
    }
    pub fn polls(&self) -> Vec<Instant> {
        self.0.seen.lock().unwrap().polls.clone()
    }

    /// Signs `csr_pem` for the session as `issue` says; returns the exchange answer.
    fn answer(&self, csr_pem: &str, session: &str) -> serde_json::Value {
        let issue = *self.0.issue.lock().unwrap();
        let session = if issue == Issue::NewSession { uuid::Uuid::new_v4().to_string() } else { session.to_owned() };
        let in_cert = if issue == Issue::WrongSession { uuid::Uuid::new_v4().to_string() } else { session.clone() };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let attrs = IdentityAttributes {
            v: 1,
            name: "Alice".into(),
            groups: vec!["ml-team".into()],
            session: Some(in_cert),
            mfa_at: Some(now),
            auth_methods: vec!["oidc".into(), "webauthn".into()],
        };
        let identity = match issue {
            Issue::MachineRole => format!("spiffe://{TRUST_DOMAIN}/machine/{}", uuid::Uuid::new_v4()),
            _ => self.0.person.clone(),
        };
        let other_key;
        let csr_pem = if issue == Issue::WrongKey {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            other_key = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
            &other_key
        } else {
            csr_pem
        };
        let ca = if issue == Issue::OtherCa { &self.0.stranger } else { &*self.0.pki };
        let not_after = OffsetDateTime::now_utc() + time::Duration::hours(8);
        json!({
            "identity": identity,
            "certificate_pem": ca.sign_csr_with(csr_pem, &identity, &attrs, not_after),
            "ca_pem": ca.ca_pem(),
            "not_after_unix": not_after.unix_timestamp(),
            "quic_addr": self.0.quic_addr,
            "session_id": session,
            "session_expires_unix": now + 12 * 3600,
        })
    }
}

/// `GET /login/cli`: the whole browser sign-in, collapsed into the final redirect.
async fn start_cli(State(fake): State<FakeLogin>, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = uuid::Uuid::new_v4().simple().to_string();
    let session = q.get("session").cloned().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let challenge = q.get("challenge").cloned().unwrap_or_default();
    let location = format!("http://127.0.0.1:{}/callback?code={code}&state={}", q["port"], q["state"]);
    let mut seen = fake.0.seen.lock().unwrap();
    seen.starts.push(q);
    seen.pending.insert(code, Pending { challenge, session });
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn exchange(State(fake): State<FakeLogin>, Json(body): Json<serde_json::Value>) -> Response {
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    let seen = Exchange { code: field("code"), verifier: field("verifier"), csr_pem: field("csr_pem") };
    let pending = {
        let mut state = fake.0.seen.lock().unwrap();
        state.exchanges.push(seen.clone());
        state.pending.remove(&seen.code)
    };
    let refused = || {
        let body = json!({"error": "login_failed", "message": "sign-in failed (reference abc)"});
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    };
    let Some(pending) = pending else { return refused() };
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(seen.verifier.as_bytes()));
    if computed != pending.challenge {
        return refused();
    }
    Json(fake.answer(&seen.csr_pem, &pending.session)).into_response()
}

async fn device_start(State(fake): State<FakeLogin>) -> Json<serde_json::Value> {
    Json(json!({
        "device_code": "device-code-1",
        "user_code": "WDJB-MJHT",
        "verification_uri": format!("{}/device", fake.0.url),
        "verification_uri_complete": format!("{}/device?user_code=WDJB-MJHT", fake.0.url),
        "expires_in": 600,
        "interval": 0,
    }))
}

async fn device_token(State(fake): State<FakeLogin>, Json(body): Json<serde_json::Value>) -> Response {
    fake.0.seen.lock().unwrap().polls.push(Instant::now());
    if body["device_code"] != "device-code-1" {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response();
    }
    let step = fake.0.steps.lock().unwrap().pop_front().unwrap_or(Step::Pending);
    let error = match step {
        Step::Approve => {
            let csr_pem = body["csr_pem"].as_str().unwrap_or_default();
            return Json(fake.answer(csr_pem, &uuid::Uuid::new_v4().to_string())).into_response();
        }
        Step::Pending => "authorization_pending",
        Step::SlowDown => "slow_down",
        Step::Expired => "expired_token",
        Step::Denied => "access_denied",
    };
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}
