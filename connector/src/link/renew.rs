//! Certificate renewal over the live link.
//!
//! Once two thirds of the certificate's lifetime has passed the connector
//! makes a new key, sends `Renew { csr_pem }`, and checks the answer as
//! strictly as enrollment does before replacing key and certificate on
//! disk. The running connection keeps its handshake; the next one uses the
//! new certificate.
//!
//! A connector linked to several broker replicas has one `Renewal` per
//! link, all over one store: before asking, a link takes the validity of
//! the certificate on disk, so once one link has renewed the others do not.

use std::time::{Duration, Instant, SystemTime};

use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifyPeerError, verify_peer};
use palisade_proto::pem;

use crate::store::{Store, StoreError, Validity, leaf_info};

/// How long to wait for `Renewed` before asking again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait after a failure before asking again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// A renewal answer was refused, or could not be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    #[error("could not make a key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("a certificate arrived that this connector did not ask for")]
    NotRequested,
    #[error("the renewed certificate is unusable: {0}")]
    BadCertificate(String),
    #[error("the renewed certificate does not verify: {0}")]
    Verify(#[from] VerifyPeerError),
    #[error("the renewed certificate names {got}, not {want}")]
    WrongIdentity { got: String, want: String },
    #[error("the renewed certificate is not for the key this connector made")]
    KeyMismatch,
    #[error("storing the renewed certificate failed: {0}")]
    Store(#[from] StoreError),
    #[error("storing the renewed certificate failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct Pending {
    key: rcgen::KeyPair,
    sent: Instant,
}

/// Renewal state for one connection.
pub(crate) struct Renewal {
    store: Store,
    spiffe: SpiffeId,
    validity: Validity,
    pending: Option<Pending>,
    next_attempt: Instant,
}

impl Renewal {
    pub(crate) fn new(store: Store, spiffe: SpiffeId, validity: Validity) -> Self {
        Self { store, spiffe, validity, pending: None, next_attempt: Instant::now() }
    }

    /// Whether a `Renew` should be sent now.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        self.validity.renewal_due(now)
            && Instant::now() >= self.next_attempt
            && self.pending.as_ref().is_none_or(|p| p.sent.elapsed() > ANSWER_TIMEOUT)
    }

    /// Takes the validity of the certificate in the store, which another
    /// link of this connector may have renewed meanwhile. Keeps what it
    /// knew if the store cannot be read. True when it took a newer one.
    pub(crate) async fn adopt_stored(&mut self) -> bool {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.certificate_validity()).await {
            Ok(Ok(validity)) if validity.not_after > self.validity.not_after => {
                self.validity = validity;
                return true;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the stored certificate before renewing"),
            Err(e) => tracing::warn!(error = %e, "cannot read the stored certificate before renewing"),
        }
        false
    }

    /// Makes a new key and returns the CSR to send.
    pub(crate) fn start(&mut self) -> Result<String, RenewError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr_pem = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
        self.pending = Some(Pending { key, sent: Instant::now() });
        Ok(csr_pem)
    }

    /// The broker said no; ask again later.
    pub(crate) fn failed(&mut self) {
        self.pending = None;
        self.next_attempt = Instant::now() + RETRY_AFTER;
    }

    /// Checks the answer and stores key and certificate; returns the new validity.
    pub(crate) async fn finish(&mut self, certificate_pem: &str, ca_pem: &str) -> Result<Validity, RenewError> {
        let pending = self.pending.take().ok_or(RenewError::NotRequested)?;
        let result = self.accept(&pending.key, certificate_pem, ca_pem).await;
        match &result {
            Ok(validity) => self.validity = *validity,
            Err(_) => self.next_attempt = Instant::now() + RETRY_AFTER,
        }
        result
    }

    async fn accept(&self, key: &rcgen::KeyPair, certificate_pem: &str, ca_pem: &str) -> Result<Validity, RenewError> {
        let validity = check_renewed(&self.spiffe, key, certificate_pem, ca_pem, SystemTime::now())?;
        let store = self.store.clone();
        let (key_pem, cert_pem, ca_pem) = (key.serialize_pem(), certificate_pem.to_owned(), ca_pem.to_owned());
        tokio::task::spawn_blocking(move || store.save_renewal(&key_pem, &cert_pem, &ca_pem)).await??;
        Ok(validity)
    }
}

/// The new certificate verifies against the CA it came with, as a
/// connector, names the same identity and certifies our new key.
fn check_renewed(
    spiffe: &SpiffeId,
    key: &rcgen::KeyPair,
    certificate_pem: &str,
    ca_pem: &str,
    now: SystemTime,
) -> Result<Validity, RenewError> {
    let bad = |e: &dyn std::fmt::Display| RenewError::BadCertificate(e.to_string());
    let chain = pem::certs(certificate_pem).map_err(|e| bad(&e))?;
    let ca = pem::certs(ca_pem).map_err(|e| bad(&e))?;
    let trust = TrustAnchors::new(spiffe.trust_domain.clone(), ca)?;
    let peer = verify_peer(&chain, &trust, now, &[PeerRole::Connector])?;
    if peer.id() != spiffe {
        return Err(RenewError::WrongIdentity { got: peer.id().to_string(), want: spiffe.to_string() });
    }
    let leaf = chain.first().ok_or_else(|| bad(&"no certificate"))?;
    let info = leaf_info(leaf).map_err(|e| bad(&e))?;
    if info.public_key != key.public_key_raw() {
        return Err(RenewError::KeyMismatch);
    }
    Ok(info.validity)
}
