//! rustls configurations for every connection Palisade makes or accepts.
//!
//! There is exactly one crypto provider (ring) in the process; every config
//! is built from [`crypto_provider`], never from rustls' process default.
//! TLS 1.3 only. AES-128-GCM is preferred: on x86-64 with AES-NI it costs
//! less CPU per byte than AES-256-GCM or ChaCha20, and the tunnel is CPU-bound.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::enroll::sha256;
use crate::identity::{PeerRole, TrustAnchors, check_profile};
use crate::wire::{ALPN_CLIENT, ALPN_CONNECTOR};

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier could not be built.
    #[error("certificate verifier: {0}")]
    Verifier(String),
}

/// The process's one crypto provider: ring, AES-128-GCM first.
#[must_use]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Leaf first, then intermediates/CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

fn root_store(trust: &TrustAnchors) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in trust.ca_certs() {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// How a client or connector checks the broker's certificate: webpki's
/// server verifier with our CA as the only root, for the name it dialled.
/// [`quic_client_config`] and [`https_client_config`] install it; the
/// x509-limbo cases (`proto/tests/x509_limbo.rs`) run through it.
///
/// # Errors
/// A CA certificate rustls cannot use as a root.
pub fn broker_verifier(trust: &TrustAnchors) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(root_store(trust)?, crypto_provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// The broker's QUIC listener: client certificates from our CA are required
/// and must fit the Palisade profile (any role but `broker`). Which role may
/// use which ALPN is checked by the broker after the handshake.
///
/// # Errors
/// A bad server certificate or key.
pub fn quic_server_config(identity: &TlsIdentity, trust: &TrustAnchors) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = ProfileClientVerifier::new(trust, &[PeerRole::User, PeerRole::Machine, PeerRole::Connector])?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_CLIENT.to_vec(), ALPN_CONNECTOR.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// A client or connector dialling the broker's QUIC port with its own certificate.
///
/// # Errors
/// A bad certificate or key.
pub fn quic_client_config(
    identity: &TlsIdentity,
    trust: &TrustAnchors,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(broker_verifier(trust)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The broker's HTTPS listener (web UI, JSON API, enrollment): no client certificates.
///
/// # Errors
/// A bad certificate or key.
pub fn https_server_config(identity: &TlsIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTPS client that trusts only our CA.
///
/// # Errors
/// A CA certificate rustls cannot use.
pub fn https_client_config(trust: &TrustAnchors) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(broker_verifier(trust)?)
        .with_no_client_auth())
}

/// An HTTPS client for enrollment: it trusts a server whose chain contains
/// the CA certificate with this SHA-256 (taken from the enrollment token),
/// and validates the leaf against that CA as usual.
///
/// # Errors
/// Only if rustls refuses the protocol versions.
pub fn pinned_client_config(ca_pin: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = PinnedCaVerifier { pin: ca_pin, provider: crypto_provider() };
    Ok(rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// rustls' webpki client verifier followed by Palisade's profile check, so a
/// certificate without a URI SAN, without an explicit clientAuth EKU or from
/// another trust domain fails the handshake itself.
#[derive(Debug)]
struct ProfileClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust: TrustAnchors,
    roles: Vec<PeerRole>,
}

impl ProfileClientVerifier {
    fn new(trust: &TrustAnchors, roles: &[PeerRole]) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(root_store(trust)?, crypto_provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self { inner, trust: trust.clone(), roles: roles.to_vec() })
    }
}

impl ClientCertVerifier for ProfileClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        crate::identity::check_intermediates(intermediates, &self.trust).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let peer = check_profile(end_entity, &self.trust).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        if !self.roles.contains(&peer.role()) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts the CA named by a pin, found in the server's own chain.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
