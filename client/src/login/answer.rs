//! How the broker is trusted, and the checks on its certificate answer before
//! anything is written: the CA bundle holds the CA we trust, the certificate
//! validates against it as a *person's* certificate, holds our public key,
//! names the identity the answer says and the session the answer says.

use std::sync::Arc;
use std::time::SystemTime;

use palisade_proto::enroll::sha256;
use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifiedPeer, verify_peer};
use rustls_pki_types::CertificateDer;

use super::LoginError;
use super::https::LoginAnswer;
use crate::enroll::public_key_of;

/// What makes the broker's HTTPS endpoint (and its answer) trusted.
#[derive(Clone, Debug)]
pub(crate) enum Trust {
    /// The SHA-256 of the CA certificate (`--ca-pin`); the server must present that CA in its chain.
    Pin([u8; 32]),
    /// CA certificates: a stored `ca.pem` or `--ca-file`.
    Cas(Vec<CertificateDer<'static>>),
}

impl Trust {
    pub(crate) fn tls_config(&self) -> Result<rustls::ClientConfig, LoginError> {
        let tls = |e: &dyn std::fmt::Display| LoginError::Tls(e.to_string());
        match self {
            Self::Pin(pin) => palisade_proto::tls::pinned_client_config(*pin).map_err(|e| tls(&e)),
            Self::Cas(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in cas {
                    roots.add(ca.clone()).map_err(|e| tls(&e))?;
                }
                Ok(rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| tls(&e))?
                    .with_root_certificates(Arc::new(roots))
                    .with_no_client_auth())
            }
        }
    }

    /// Whether `bundle` contains a CA we trust.
    fn admits(&self, bundle: &[CertificateDer<'_>]) -> bool {
        match self {
            Self::Pin(pin) => bundle.iter().any(|c| sha256(c) == *pin),
            Self::Cas(cas) => bundle.iter().any(|c| cas.iter().any(|t| t.as_ref() == c.as_ref())),
        }
    }
}

/// Checks the answer against `trust` and our own key; returns the verified certificate.
pub(crate) fn check(
    answer: &LoginAnswer,
    trust: &Trust,
    key: &rcgen::KeyPair,
    now: SystemTime,
) -> Result<VerifiedPeer, LoginError> {
    let bad = |m: String| LoginError::BadAnswer(m);
    let ca = palisade_proto::pem::certs(&answer.ca_pem).map_err(|e| bad(format!("CA bundle: {e}")))?;
    if !trust.admits(&ca) {
        return Err(bad("the CA bundle does not contain the CA this login trusts".into()));
    }
    let id: SpiffeId = answer.identity.parse().map_err(|e| bad(format!("identity: {e}")))?;
    let anchors = TrustAnchors::new(id.trust_domain.clone(), ca).map_err(|e| bad(e.to_string()))?;
    let chain = palisade_proto::pem::certs(&answer.certificate_pem).map_err(|e| bad(format!("certificate: {e}")))?;
    let peer = verify_peer(&chain, &anchors, now, &[PeerRole::User]).map_err(|e| bad(e.to_string()))?;
    if peer.id() != &id {
        return Err(bad(format!("the certificate names {} but the answer says {}", peer.id(), id)));
    }
    if public_key_of(&chain[0]).map_err(|e| bad(e.to_string()))? != key.public_key_raw() {
        return Err(bad("the certificate is not for the key made here".into()));
    }
    match peer.session() {
        Some(session) if session == answer.session_id => {}
        Some(session) => {
            return Err(bad(format!(
                "the certificate is for session {session}, the answer says {}",
                answer.session_id
            )));
        }
        None => return Err(bad("the certificate names no sign-in session".into())),
    }
    if peer.auth_methods().is_empty() {
        return Err(bad("the certificate does not say how you signed in".into()));
    }
    Ok(peer)
}

/// The sign-in that `palisade login --mfa` refreshes.
#[derive(Clone, Debug)]
pub(crate) struct Refresh {
    pub(crate) identity: String,
    pub(crate) session: String,
    pub(crate) mfa_at: Option<u64>,
}

/// `--mfa` must come back with the same person and session and a second-factor
/// time no older than before.
pub(crate) fn check_refresh(peer: &VerifiedPeer, refresh: &Refresh) -> Result<(), LoginError> {
    let bad = |m: String| LoginError::BadAnswer(m);
    if peer.id().uri() != refresh.identity {
        return Err(bad(format!("the MFA refresh signed in {} instead of {}", peer.id(), refresh.identity)));
    }
    if peer.session() != Some(refresh.session.as_str()) {
        return Err(bad(format!(
            "the MFA refresh returned a certificate for session {} instead of {}",
            peer.session().unwrap_or("(none)"),
            refresh.session
        )));
    }
    match (peer.mfa_at(), refresh.mfa_at) {
        (None, _) => Err(bad("the refreshed certificate carries no MFA time".into())),
        (Some(new), Some(old)) if new < old => {
            Err(bad("the refreshed certificate's MFA time is older than before".into()))
        }
        _ => Ok(()),
    }
}
