//! `palisade-connector enroll`: trade a one-time token for a certificate.
//!
//! The key is made here and never leaves the machine; the broker signs a
//! CSR. The broker's HTTPS endpoint is trusted through the CA pin inside the
//! token, and the answer is checked before anything is written: the CA
//! matches the pin, the certificate verifies against it as a connector
//! identity, and it certifies our key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::enroll::{ApiError, EnrollRequest, EnrollResponse, EnrollmentToken, TokenFormatError, sha256};
use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifyPeerError, verify_peer};
use palisade_proto::pem;
use palisade_proto::tls::{TlsError, pinned_client_config};

use crate::store::{IdentityRecord, Store, StoreError, leaf_info};

const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// A completed enrollment.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The connector's SPIFFE id.
    pub identity: String,
    /// Where key, certificate and CA were stored.
    pub state_dir: PathBuf,
    /// The broker's QUIC address as the broker reported it.
    pub quic_addr: String,
    /// Certificate expiry, seconds since the epoch.
    pub not_after_unix: u64,
}

/// Enrollment failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token is malformed.
    #[error(transparent)]
    Token(#[from] TokenFormatError),
    /// The broker URL is not `https://host[:port]`.
    #[error("broker URL {0:?} must look like https://broker.example.com:443")]
    BrokerUrl(String),
    /// An enrollment already exists and `force` was not given.
    #[error("{} already holds the enrollment of {identity}; pass --force to replace it", dir.display())]
    AlreadyEnrolled {
        /// The state directory.
        dir: PathBuf,
        /// Who is enrolled there.
        identity: String,
    },
    /// The key or CSR could not be made.
    #[error("could not make a key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The pinned TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The request did not get an HTTP answer (unreachable, TLS or pin failure, timeout).
    #[error("could not reach the broker at {url}: {detail}")]
    Http {
        /// The enrollment URL.
        url: String,
        /// The error and its causes.
        detail: String,
    },
    /// The broker refused, with an explanation.
    #[error("the broker refused the enrollment: {message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's short code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The broker refused without an explanation.
    #[error("the broker answered HTTP {status} without an explanation")]
    Status {
        /// HTTP status.
        status: u16,
    },
    /// The answer failed our checks.
    #[error("the broker's answer was refused: {0}")]
    BadResponse(String),
    /// The state directory could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Enrolls this machine as a connector and stores the result in `state_dir`.
///
/// # Errors
/// See [`EnrollError`]; on error nothing is written (or the previous
/// enrollment is untouched).
pub async fn enroll(broker_url: &str, token: &str, state_dir: &Path, force: bool) -> Result<Enrolled, EnrollError> {
    let parsed: EnrollmentToken = token.parse()?;
    let url = enroll_url(broker_url)?;
    let store = Store::new(state_dir.to_owned());
    if let Some(existing) = store.enrollment()?
        && !force
    {
        return Err(EnrollError::AlreadyEnrolled { dir: state_dir.to_owned(), identity: existing.identity });
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr_pem = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let request = EnrollRequest { token: parsed.expose(), csr_pem };
    let response = post(&url, &parsed, &request).await?;
    let not_after_unix = check_response(&response, &parsed, &key, SystemTime::now())?;
    let record = IdentityRecord {
        identity: response.identity.clone(),
        broker_url: broker_url.trim_end_matches('/').to_owned(),
        quic_addr: response.quic_addr.clone(),
    };
    store.save_enrollment(&key.serialize_pem(), &response.certificate_pem, &response.ca_pem, &record)?;
    tracing::info!(identity = %record.identity, dir = %state_dir.display(), "enrolled");
    Ok(Enrolled {
        identity: response.identity,
        state_dir: state_dir.to_owned(),
        quic_addr: response.quic_addr,
        not_after_unix,
    })
}

fn enroll_url(broker_url: &str) -> Result<reqwest::Url, EnrollError> {
    let bad = || EnrollError::BrokerUrl(broker_url.to_owned());
    let base = reqwest::Url::parse(broker_url).map_err(|_| bad())?;
    if base.scheme() != "https" || base.host_str().is_none() || base.query().is_some() {
        return Err(bad());
    }
    let url = format!("{}/api/v1/enroll", broker_url.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|_| bad())
}

async fn post(
    url: &reqwest::Url,
    token: &EnrollmentToken,
    body: &EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    let http_err = |e: reqwest::Error| EnrollError::Http { url: url.to_string(), detail: error_chain(&e) };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(pinned_client_config(token.ca_pin())?)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ENROLL_TIMEOUT)
        .build()
        .map_err(http_err)?;
    let response = client.post(url.clone()).json(body).send().await.map_err(http_err)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(http_err)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| EnrollError::BadResponse(format!("unexpected JSON: {e}")));
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(api) => Err(EnrollError::Api { status: status.as_u16(), code: api.error, message: api.message }),
        Err(_) => Err(EnrollError::Status { status: status.as_u16() }),
    }
}

/// Checks the answer against the token's pin and our key; returns the expiry.
fn check_response(
    response: &EnrollResponse,
    token: &EnrollmentToken,
    key: &rcgen::KeyPair,
    now: SystemTime,
) -> Result<u64, EnrollError> {
    let bad = |m: String| EnrollError::BadResponse(m);
    let id: SpiffeId = response.identity.parse().map_err(|e| bad(format!("identity: {e}")))?;
    if id.role != PeerRole::Connector {
        return Err(bad(format!("{id} is not a connector identity; was the token made for a machine?")));
    }
    let ca = pem::certs(&response.ca_pem).map_err(|e| bad(format!("CA bundle: {e}")))?;
    if !ca.iter().any(|c| sha256(c) == token.ca_pin()) {
        return Err(bad("the CA bundle does not contain the CA the token pins".into()));
    }
    let trust = TrustAnchors::new(id.trust_domain.clone(), ca).map_err(|e| bad(format!("CA bundle: {e}")))?;
    let chain = pem::certs(&response.certificate_pem).map_err(|e| bad(format!("certificate: {e}")))?;
    let peer = verify_peer(&chain, &trust, now, &[PeerRole::Connector])
        .map_err(|e: VerifyPeerError| bad(format!("certificate: {e}")))?;
    if peer.id() != &id {
        return Err(bad(format!("the certificate names {} but the answer says {id}", peer.id())));
    }
    let info = chain.first().map(|c| leaf_info(c)).transpose().map_err(bad)?;
    if info.is_none_or(|i| i.public_key != key.public_key_raw()) {
        return Err(bad("the certificate is not for the key this machine made".into()));
    }
    Ok(peer.not_after().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// An error and its sources, `: `-separated (reqwest hides the TLS cause in the chain).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests;
