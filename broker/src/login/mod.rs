//! People signing in: OIDC, then WebAuthn, then a session (see `docs/login-protocol.md`).
//!
//! The flow, in route order: [`oidc`] starts a sign-in and checks the
//! provider's answer (the relying party itself is [`rp`]); [`local`] starts a
//! passkey-only sign-in or redeems an invite; [`webauthn`] runs the second
//! factor and [`session`] turns a finished sign-in into a session and its
//! cookie; [`exchange`] gives the CLI its certificate; [`device`] is the
//! headless (device-code) variant; [`account`] lets a person manage their
//! credentials. [`limits`] rate-limits every step; [`pages`] renders HTML.
//!
//! Every refusal goes through [`Failure`]: the person sees a generic page or
//! JSON with a reference, the audit trail gets `login.failed` with the step
//! and a reason code.

pub mod account;
pub mod device;
pub mod exchange;
pub mod limits;
pub mod local;
pub mod manage;
pub mod oidc;
pub mod pages;
pub mod rp;
pub mod session;
pub mod webauthn;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use serde_json::json;
use url::Url;
use webauthn_rs::prelude::{Webauthn, WebauthnBuilder};

use crate::Broker;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::config::{Config, LoginConfig};
use crate::web::PeerAddr;
use limits::{Bucket, Limits};

/// Most pending sign-ins (browsers between start and finish) kept at once.
pub const MAX_PENDING: i64 = 10_000;
/// How long a browser has from the start of a sign-in to its end.
pub const PENDING_TTL_SECS: i64 = 600;

/// The sign-in machinery shared by every handler: the relying party, WebAuthn, rate limits.
pub struct Login {
    pub(crate) rp: Option<rp::RelyingParty>,
    pub(crate) webauthn: Option<Webauthn>,
    pub(crate) limits: Limits,
    pub(crate) public_url: Url,
    pub(crate) settings: LoginConfig,
}

impl Login {
    /// Builds the sign-in state from the configuration. WebAuthn is unavailable
    /// (and sign-in refused) if the public URL's host is not a domain.
    #[must_use]
    pub fn new(config: &Config) -> Login {
        let public_url = config.public_url();
        let webauthn = public_url.host_str().and_then(|host| {
            let built = WebauthnBuilder::new(host, &public_url)
                .map(|b| b.rp_name("Palisade").timeout(config.login.ceremony_ttl))
                .and_then(WebauthnBuilder::build);
            built.map_err(|e| tracing::error!(error = %e, %public_url, "WebAuthn unavailable: set login.public_url to an https:// URL with a DNS name")).ok()
        });
        let rp = config.oidc.as_ref().map(|oidc| rp::RelyingParty::new(oidc.clone(), &public_url));
        let limits = Limits::new(config.login.trusted_proxies.clone());
        Login { rp, webauthn, limits, public_url, settings: config.login.clone() }
    }

    /// `<public URL><path>`, `path` starting with `/`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }
}

/// The sign-in routes, in flow order.
pub(crate) fn routes(broker: &Broker) -> Router<Broker> {
    let login = Arc::new(Login::new(broker.config()));
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(oidc::start_portal))
        .route("/login/cli", get(oidc::start_cli))
        .route("/login/oidc/callback", get(oidc::callback))
        .route("/login/local", get(local::start))
        .route("/invite/{token}", get(local::invite))
        .route("/login/mfa", get(webauthn::page))
        .route("/login/webauthn/register/start", post(webauthn::register_start))
        .route("/login/webauthn/register/finish", post(webauthn::register_finish).layer(webauthn::finish_body_limit()))
        .route("/login/webauthn/authenticate/start", post(webauthn::authenticate_start))
        .route(
            "/login/webauthn/authenticate/finish",
            post(webauthn::authenticate_finish).layer(webauthn::finish_body_limit()),
        )
        .route("/login/static/webauthn.js", get(pages::script))
        .route("/api/v1/login/exchange", post(exchange::exchange).layer(exchange::body_limit()))
        .route("/api/v1/login/device", post(device::issue))
        .route("/api/v1/login/device/token", post(device::token).layer(exchange::body_limit()))
        .route("/api/v1/me/credentials", get(account::list))
        .route("/api/v1/me/credentials/{id}", delete(account::remove))
        .route("/api/v1/me/credentials/register/start", post(account::register_start))
        .route(
            "/api/v1/me/credentials/register/finish",
            post(account::register_finish).layer(webauthn::finish_body_limit()),
        )
        .layer(axum::middleware::map_response(page_headers))
        .merge(device_pages(broker))
        .layer(Extension(login))
}

/// The device-approval page and its form: console pages, so they get the
/// console's CSRF guard and security headers rather than [`page_headers`].
fn device_pages(broker: &Broker) -> Router<Broker> {
    Router::new()
        .route("/device", get(device::show))
        .route("/device/approve", post(device::approve))
        .layer(axum::middleware::from_fn_with_state(broker.clone(), crate::web::security::csrf_guard))
}

async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Who is asking: the client address (through trusted proxies) and user agent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Client {
    pub(crate) addr: Option<IpAddr>,
    pub(crate) user_agent: Option<String>,
}

impl Client {
    pub(crate) fn new(login: &Login, peer: Option<Extension<PeerAddr>>, headers: &HeaderMap) -> Client {
        let peer: Option<SocketAddr> = peer.map(|Extension(PeerAddr(p))| p);
        let addr = limits::client_addr(peer.map(|p| p.ip()), headers, login.limits.trusted_proxies());
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect());
        Client { addr, user_agent }
    }

    pub(crate) fn addr_key(&self) -> String {
        self.addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
    }
}

/// How a refusal is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// An HTML page (browser navigations).
    Page,
    /// An `ApiError` JSON body (script and CLI calls).
    Json,
}

/// Why a sign-in step stopped. The person sees only a reference; the audit trail gets the rest.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}: {detail}")]
pub struct Failure {
    /// The step: `start`, `discovery`, `callback`, `token`, `id_token`, `userinfo`, `webauthn`, `exchange`, `device`, …
    pub step: &'static str,
    /// A stable reason code, e.g. `iss_mismatch`.
    pub reason: &'static str,
    /// More detail for the audit trail (never secrets).
    pub detail: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The person the attempt was about, if known.
    pub account: Option<String>,
}

impl Failure {
    /// 401: the attempt was refused.
    pub(crate) fn refused(step: &'static str, reason: &'static str, detail: impl Into<String>) -> Self {
        Self { step, reason, detail: detail.into(), status: StatusCode::UNAUTHORIZED, account: None }
    }
    /// 400: the request itself was malformed or stale.
    pub(crate) fn bad(step: &'static str, reason: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, ..Self::refused(step, reason, detail) }
    }
    /// 503: the identity provider (or WebAuthn) is unavailable.
    pub(crate) fn unavailable(step: &'static str, reason: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, ..Self::refused(step, reason, detail) }
    }
    /// 429.
    pub(crate) fn too_many(step: &'static str) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, ..Self::refused(step, "rate_limited", "") }
    }
    /// 500: the broker failed; the detail is logged.
    pub(crate) fn internal(step: &'static str, cause: &dyn std::fmt::Display) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, ..Self::refused(step, "internal", cause.to_string()) }
    }
    /// Ties the failure to a person.
    #[must_use]
    pub(crate) fn account(mut self, id: impl Into<String>) -> Self {
        self.account = Some(id.into());
        self
    }
    /// With a different status.
    #[must_use]
    pub(crate) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// `.internal(step)` for any displayable error.
pub(crate) trait OrInternal<T> {
    fn internal(self, step: &'static str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> OrInternal<T> for Result<T, E> {
    fn internal(self, step: &'static str) -> Result<T, Failure> {
        self.map_err(|e| Failure::internal(step, &e))
    }
}

/// Records `login.failed`, counts the failure against the address (and the
/// account), and answers with a generic page or JSON carrying a reference.
pub(crate) async fn report(broker: &Broker, login: &Login, client: &Client, f: &Failure, shape: Shape) -> Response {
    let reference = short_reference();
    if f.status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(step = f.step, error = %f.detail, reference, "sign-in failed inside the broker");
    }
    if f.status != StatusCode::TOO_MANY_REQUESTS {
        login.limits.take(Bucket::Failure, &client.addr_key());
        if let Some(account) = &f.account {
            login.limits.take(Bucket::AccountFailure, account);
        }
    }
    let mut event = AuditEvent::new(EventKind::LoginFailed, Outcome::Failure).detail(json!({
        "step": f.step,
        "reason": f.reason,
        "detail": f.detail,
        "source": client.addr.map(|a| a.to_string()),
        "user_agent": client.user_agent,
        "ref": reference,
    }));
    if let Some(account) = &f.account {
        event = event.subject(format!("user/{account}"));
    }
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not record login.failed");
    }
    let message = match f.status {
        StatusCode::TOO_MANY_REQUESTS => {
            format!("too many attempts; wait a minute and try again (reference {reference})")
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            format!("sign-in is unavailable right now; try again later (reference {reference})")
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            format!("internal error; the broker logged the cause (reference {reference})")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!("the request body is too large (reference {reference})"),
        _ => format!("sign-in failed (reference {reference})"),
    };
    let mut response = match shape {
        Shape::Page => (f.status, pages::failure(&message)).into_response(),
        Shape::Json => crate::web::api_error(f.status, json_code(f), message),
    };
    if f.status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

fn json_code(f: &Failure) -> &'static str {
    match f.status {
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::INTERNAL_SERVER_ERROR => "internal",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => "login_failed",
    }
}

fn short_reference() -> String {
    let mut bytes = [0u8; 5];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    palisade_proto::enroll::hex(&bytes)
}

/// Random URL-safe secret of 32 bytes (cookies, codes, tokens).
pub(crate) fn new_secret() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256, as secrets are stored.
pub(crate) fn hash(secret: &str) -> String {
    palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(secret.as_bytes()))
}

/// Seconds since the epoch.
pub(crate) fn now_unix() -> i64 {
    crate::db::unix_seconds(SystemTime::now())
}

/// The pending login of a portal sign-in, once `return_to` is known to be safe.
pub(crate) fn portal_pending(
    kind: &str,
    return_to: Option<String>,
) -> Result<crate::db::login_state::PendingLogin, Failure> {
    let return_to = return_to.unwrap_or_else(|| "/".into());
    if !is_safe_return_to(&return_to) {
        return Err(Failure::bad("start", "return_to", format!("refused return_to {return_to:?}")));
    }
    Ok(crate::db::login_state::PendingLogin {
        kind: kind.into(),
        return_to: Some(return_to),
        ..crate::db::login_state::PendingLogin::default()
    })
}

/// Whether `return_to` is a same-origin relative path: `/x`, never `//host`,
/// `/\host`, a scheme, or control characters.
#[must_use]
pub fn is_safe_return_to(path: &str) -> bool {
    let mut chars = path.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && path.len() <= 2048
        && !path.chars().any(|c| c.is_control() || c == '\\' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::is_safe_return_to;

    #[test]
    fn only_same_origin_paths_are_safe_return_targets() {
        for ok in ["/", "/x", "/device?user_code=ABCD-EFGH", "/a/b#c"] {
            assert!(is_safe_return_to(ok), "{ok}");
        }
        for bad in [
            "//evil",
            "/\\evil",
            "https://evil",
            "javascript:alert(1)",
            "evil",
            "",
            "/a\\b",
            "/a b",
            "/\r\nx",
            "\\\\evil",
        ] {
            assert!(!is_safe_return_to(bad), "{bad:?}");
        }
    }
}
