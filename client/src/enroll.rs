//! `palisade enroll`: trade a one-time token for a certificate.
//!
//! The key pair is made here and never leaves the machine; the broker sees a
//! CSR. The broker's HTTPS endpoint is trusted only through the CA pin carried
//! in the token, and its answer is checked before anything is written: the CA
//! is the pinned one, the certificate validates against it, names the identity
//! the broker says, and holds our public key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use palisade_proto::enroll::{ApiError, EnrollRequest, EnrollResponse, EnrollmentToken, TokenFormatError, sha256};
use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifiedPeer, verify_peer};
use rustls_pki_types::CertificateDer;

use crate::store::{self, NewEnrollment, ProfileFile, StoreError};

const ENROLL_PATH: &str = "api/v1/enroll";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrollment failed. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token text is not a token.
    #[error(transparent)]
    Token(#[from] TokenFormatError),
    /// The broker URL is not usable.
    #[error("bad broker URL {url:?}: {reason} (expected https://HOST:PORT)")]
    BrokerUrl {
        /// What was given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the local files failed, or an enrollment exists.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key pair or CSR could not be made.
    #[error("cannot make a key pair: {0}")]
    Key(String),
    /// The HTTPS client could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The broker could not be reached over HTTPS.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable {
        /// The enrollment URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server's certificate chain does not contain the CA the token pins.
    #[error(
        "the server at {url} is not the broker that made this token (its CA does not match the token's pin): check --broker, or ask an admin for a new token"
    )]
    PinMismatch {
        /// The enrollment URL.
        url: String,
    },
    /// The broker said no.
    #[error("the broker refused the enrollment (HTTP {status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
    },
    /// The broker's answer does not check out.
    #[error("the broker's answer does not check out: {0}; nothing was saved")]
    BadAnswer(String),
}

/// The outcome of a successful enrollment.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The SPIFFE id the certificate names.
    pub identity: String,
    /// Display name written by the broker's CA.
    pub name: String,
    /// Groups written by the broker's CA.
    pub groups: Vec<String>,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// Where the files were written.
    pub home: PathBuf,
    /// The broker's QUIC address that tunnels will use.
    pub quic_addr: String,
}

/// Enrolls this machine with the broker at `broker_url` using a one-time `token`,
/// and stores the result under `home`.
///
/// # Errors
/// [`EnrollError`]; an existing enrollment is kept unless `force`, and is checked
/// before the token is spent.
pub async fn enroll(broker_url: &str, token: &str, home: &Path, force: bool) -> Result<Enrolled, EnrollError> {
    let token: EnrollmentToken = token.parse()?;
    let base = parse_broker_url(broker_url)?;
    store::ensure_not_enrolled(home, force)?;
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| EnrollError::Key(e.to_string()))?;
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let request = EnrollRequest { token: token.expose(), csr_pem };
    let answer = post_enroll(&base, &token, &request).await?;
    let peer = check_answer(&answer, &token, &key, SystemTime::now())?;
    let quic_addr = quic_addr(&answer.quic_addr, &base)?;
    let new = NewEnrollment {
        profile: ProfileFile {
            identity: answer.identity.clone(),
            broker_url: base.as_str().trim_end_matches('/').to_owned(),
            quic_addr: quic_addr.clone(),
            replicas: replicas(&answer.replicas, &base),
            ..ProfileFile::default()
        },
        key_pem: key.serialize_pem(),
        cert_pem: answer.certificate_pem.clone(),
        ca_pem: answer.ca_pem.clone(),
    };
    store::save(home, &new, force)?;
    Ok(Enrolled {
        identity: answer.identity,
        name: peer.name().to_owned(),
        groups: peer.groups().to_vec(),
        not_after: peer.not_after(),
        home: home.to_owned(),
        quic_addr,
    })
}

/// The replicas an answer lists, each as [`quic_addr`] would take it; one
/// that does not parse is left out (it only ever saves a reconnect).
pub(crate) fn replicas(listed: &[String], base: &reqwest::Url) -> Vec<String> {
    listed.iter().filter_map(|announced| quic_addr(announced, base).ok()).collect()
}

pub(crate) fn parse_broker_url(text: &str) -> Result<reqwest::Url, EnrollError> {
    let bad = |reason: &str| EnrollError::BrokerUrl { url: text.to_owned(), reason: reason.to_owned() };
    let mut url = reqwest::Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("the broker is only reached over https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("no query, fragment or user name, please"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

async fn post_enroll(
    base: &reqwest::Url,
    token: &EnrollmentToken,
    request: &EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    let url =
        base.join(ENROLL_PATH).map_err(|e| EnrollError::BrokerUrl { url: base.to_string(), reason: e.to_string() })?;
    let tls = palisade_proto::tls::pinned_client_config(token.ca_pin()).map_err(|e| EnrollError::Tls(e.to_string()))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| EnrollError::Tls(error_chain(&e)))?;
    let response = client.post(url.clone()).json(request).send().await.map_err(|e| send_error(&e, &url))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| send_error(&e, &url))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| status.canonical_reason().unwrap_or("unexpected status").to_owned());
        return Err(EnrollError::Refused { status: status.as_u16(), message });
    }
    serde_json::from_slice(&body).map_err(|e| EnrollError::BadAnswer(format!("unreadable JSON: {e}")))
}

fn send_error(e: &reqwest::Error, url: &reqwest::Url) -> EnrollError {
    if is_certificate_error(e) {
        return EnrollError::PinMismatch { url: url.to_string() };
    }
    EnrollError::Unreachable { url: url.to_string(), reason: error_chain(e) }
}

/// Whether a rustls certificate error is somewhere in the chain. reqwest nests it
/// in io errors, whose `source()` skips the wrapped error, so those are unwrapped by hand.
pub(crate) fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if matches!(err.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Checks the broker's answer against the token's pin and our own key.
fn check_answer(
    answer: &EnrollResponse,
    token: &EnrollmentToken,
    key: &rcgen::KeyPair,
    now: SystemTime,
) -> Result<VerifiedPeer, EnrollError> {
    let bad = |m: String| EnrollError::BadAnswer(m);
    let ca = palisade_proto::pem::certs(&answer.ca_pem).map_err(|e| bad(format!("CA bundle: {e}")))?;
    if !ca.iter().any(|c| sha256(c) == token.ca_pin()) {
        return Err(bad("the CA bundle does not contain the CA the token pins".into()));
    }
    let id: SpiffeId = answer.identity.parse().map_err(|e| bad(format!("identity: {e}")))?;
    let trust = TrustAnchors::new(id.trust_domain.clone(), ca).map_err(|e| bad(e.to_string()))?;
    let chain = palisade_proto::pem::certs(&answer.certificate_pem).map_err(|e| bad(format!("certificate: {e}")))?;
    let peer =
        verify_peer(&chain, &trust, now, &[PeerRole::Machine, PeerRole::User]).map_err(|e| bad(e.to_string()))?;
    if peer.id() != &id {
        return Err(bad(format!("the certificate names {} but the answer says {}", peer.id(), id)));
    }
    if public_key_of(&chain[0])? != key.public_key_raw() {
        return Err(bad("the certificate is not for the key made here".into()));
    }
    Ok(peer)
}

pub(crate) fn public_key_of(der: &CertificateDer<'_>) -> Result<Vec<u8>, EnrollError> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| EnrollError::BadAnswer(format!("unparsable certificate: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The QUIC address to store: the broker's, with an unspecified or missing host
/// (a broker bound to 0.0.0.0 that does not know its public name) replaced by
/// the host the broker was reached at over HTTPS.
pub(crate) fn quic_addr(announced: &str, base: &reqwest::Url) -> Result<String, EnrollError> {
    let bad = || EnrollError::BadAnswer(format!("QUIC address {announced:?} is not host:port"));
    let (host, port) = announced.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = bare.is_empty() || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if !unspecified {
        return Ok(announced.to_owned());
    }
    let host = base.host_str().ok_or_else(bad)?;
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_url_must_be_https() {
        assert!(parse_broker_url("http://broker:8443").is_err());
        assert!(parse_broker_url("broker:8443").is_err());
        let url = parse_broker_url("https://broker.example:8443").expect("valid");
        assert_eq!(url.join(ENROLL_PATH).expect("joins").as_str(), "https://broker.example:8443/api/v1/enroll");
        let url = parse_broker_url("https://edge.example/palisade").expect("valid");
        assert_eq!(url.join(ENROLL_PATH).expect("joins").as_str(), "https://edge.example/palisade/api/v1/enroll");
    }

    #[test]
    fn unspecified_quic_host_is_replaced_by_the_https_host() {
        let base = parse_broker_url("https://broker.example:8443").expect("valid");
        assert_eq!(quic_addr("0.0.0.0:4433", &base).expect("ok"), "broker.example:4433");
        assert_eq!(quic_addr("[::]:4433", &base).expect("ok"), "broker.example:4433");
        assert_eq!(quic_addr("10.0.0.5:4433", &base).expect("ok"), "10.0.0.5:4433");
        assert!(quic_addr("nonsense", &base).is_err());
    }
}
