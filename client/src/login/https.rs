//! The broker's sign-in JSON API, over HTTPS trusted only through our CA:
//! `POST /api/v1/login/exchange`, `POST /api/v1/login/device` and
//! `POST /api/v1/login/device/token` (see `docs/login-protocol.md`).

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::LoginError;
use super::answer::Trust;
use crate::enroll::{error_chain, is_certificate_error};

const EXCHANGE_PATH: &str = "api/v1/login/exchange";
const DEVICE_PATH: &str = "api/v1/login/device";
const DEVICE_TOKEN_PATH: &str = "api/v1/login/device/token";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Body of `POST /api/v1/login/exchange`.
#[derive(Clone, Serialize)]
pub(crate) struct ExchangeRequest {
    pub(crate) code: String,
    pub(crate) verifier: String,
    pub(crate) csr_pem: String,
}

impl fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeRequest").field("code", &"***").finish_non_exhaustive()
    }
}

/// The certificate answer of the exchange and of a finished device poll.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct LoginAnswer {
    pub(crate) identity: String,
    pub(crate) certificate_pem: String,
    pub(crate) ca_pem: String,
    #[allow(dead_code, reason = "the certificate's own notAfter is what counts")]
    pub(crate) not_after_unix: u64,
    pub(crate) quic_addr: String,
    #[serde(default)]
    pub(crate) replicas: Vec<String>,
    pub(crate) session_id: String,
    pub(crate) session_expires_unix: u64,
}

/// Answer of `POST /api/v1/login/device`.
#[derive(Clone, Deserialize)]
pub(crate) struct DeviceAuthorization {
    pub(crate) device_code: String,
    pub(crate) user_code: String,
    pub(crate) verification_uri: String,
    #[serde(default)]
    pub(crate) verification_uri_complete: Option<String>,
    pub(crate) expires_in: i64,
    #[serde(default = "default_interval")]
    pub(crate) interval: i64,
}

/// RFC 8628 §3.2: 5 seconds when the server does not say.
fn default_interval() -> i64 {
    5
}

#[derive(Serialize)]
struct DeviceTokenRequest<'a> {
    device_code: &'a str,
    csr_pem: &'a str,
}

/// What one device poll said.
#[derive(Debug)]
pub(crate) enum DevicePoll {
    Done(Box<LoginAnswer>),
    Pending,
    SlowDown,
    Expired,
    Denied,
}

/// An error body: `{"error": CODE, "message": …}` (the message is optional for RFC 8628 answers).
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: Option<String>,
}

/// A client for one broker.
#[derive(Debug)]
pub(crate) struct BrokerHttps {
    base: reqwest::Url,
    client: reqwest::Client,
}

impl BrokerHttps {
    pub(crate) fn new(base: reqwest::Url, trust: &Trust) -> Result<BrokerHttps, LoginError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(trust.tls_config()?)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| LoginError::Tls(error_chain(&e)))?;
        Ok(BrokerHttps { base, client })
    }

    /// Proves the server is the trusted broker before the person is sent to the
    /// browser: any HTTP answer from the base URL will do, a TLS failure will not.
    pub(crate) async fn preflight(&self) -> Result<(), LoginError> {
        let send_error = |e: reqwest::Error| self.send_error(&e, &self.base);
        let response = self.client.get(self.base.clone()).send().await.map_err(send_error)?;
        tracing::debug!(status = %response.status(), "the broker answered over HTTPS");
        Ok(())
    }

    pub(crate) async fn exchange(&self, request: &ExchangeRequest) -> Result<LoginAnswer, LoginError> {
        let (status, body) = self.post(EXCHANGE_PATH, request).await?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        parse_answer(&body)
    }

    pub(crate) async fn device_authorization(&self) -> Result<DeviceAuthorization, LoginError> {
        let (status, body) = self.post(DEVICE_PATH, &serde_json::json!({})).await?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| LoginError::BadAnswer(format!("unreadable device code JSON: {e}")))
    }

    pub(crate) async fn device_token(&self, device_code: &str, csr_pem: &str) -> Result<DevicePoll, LoginError> {
        let (status, body) = self.post(DEVICE_TOKEN_PATH, &DeviceTokenRequest { device_code, csr_pem }).await?;
        if status.is_success() {
            return parse_answer(&body).map(|a| DevicePoll::Done(Box::new(a)));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(DevicePoll::SlowDown);
        }
        let code = serde_json::from_slice::<ErrorBody>(&body).map(|b| b.error).unwrap_or_default();
        match (status, code.as_str()) {
            (StatusCode::BAD_REQUEST, "authorization_pending") => Ok(DevicePoll::Pending),
            (StatusCode::BAD_REQUEST, "slow_down") => Ok(DevicePoll::SlowDown),
            (StatusCode::BAD_REQUEST, "expired_token") => Ok(DevicePoll::Expired),
            (StatusCode::BAD_REQUEST, "access_denied") => Ok(DevicePoll::Denied),
            _ => Err(refused(status, &body)),
        }
    }

    async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(StatusCode, bytes::Bytes), LoginError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| LoginError::BrokerUrl { url: self.base.to_string(), reason: e.to_string() })?;
        let send_error = |e: reqwest::Error| self.send_error(&e, &url);
        let response = self.client.post(url.clone()).json(body).send().await.map_err(send_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(send_error)?;
        Ok((status, bytes))
    }
}

impl BrokerHttps {
    fn send_error(&self, e: &reqwest::Error, url: &reqwest::Url) -> LoginError {
        if is_certificate_error(e) {
            LoginError::Untrusted { url: self.base.to_string() }
        } else {
            LoginError::Unreachable { url: url.to_string(), reason: error_chain(e) }
        }
    }
}

fn parse_answer(body: &[u8]) -> Result<LoginAnswer, LoginError> {
    serde_json::from_slice(body).map_err(|e| LoginError::BadAnswer(format!("unreadable certificate JSON: {e}")))
}

fn refused(status: StatusCode, body: &[u8]) -> LoginError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(message), .. }) => message,
        Ok(ErrorBody { error, message: None }) => error,
        Err(_) => status.canonical_reason().unwrap_or("unexpected status").to_owned(),
    };
    LoginError::Refused { status: status.as_u16(), message: super::printable(&message) }
}
