//! `palisade status`: who this client is, from the local files alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifyPeerError, verify_peer};

use crate::store::{self, StoreError};

/// The state of the local sign-in or enrollment at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Where the files are.
    pub home: PathBuf,
    /// The SPIFFE id.
    pub identity: String,
    /// The broker's HTTPS URL.
    pub broker_url: String,
    /// Where tunnels go.
    pub quic_addr: String,
    /// When the sign-in session ends, as stored at login.
    pub session_expires: Option<SystemTime>,
    /// `None` after `palisade logout`.
    pub certificate: Option<CertificateStatus>,
}

/// What the local certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateStatus {
    /// Display name.
    pub name: String,
    /// Groups at issuance.
    pub groups: Vec<String>,
    /// The session it belongs to.
    pub session: Option<String>,
    /// How the identity authenticated.
    pub auth_methods: Vec<String>,
    /// The last second-factor proof.
    pub mfa_at: Option<SystemTime>,
    /// Time since then.
    pub mfa_age: Option<Duration>,
    /// When it stops working.
    pub not_after: SystemTime,
    /// Whether it has stopped working.
    pub expired: bool,
    /// Anything else wrong with it (does not validate against the stored CA).
    pub problem: Option<String>,
}

impl Status {
    /// Whether tunnels can be opened with what is stored.
    #[must_use]
    pub fn is_usable(&self) -> bool {
        self.certificate.as_ref().is_some_and(|c| !c.expired && c.problem.is_none())
    }

    /// Whether this is a person's sign-in (not a machine enrollment).
    #[must_use]
    pub fn is_person(&self) -> bool {
        self.identity.parse::<SpiffeId>().is_ok_and(|id| id.role == PeerRole::User)
    }
}

/// Reads the local state; never touches the network.
///
/// # Errors
/// Nothing is stored, or a file does not parse.
pub fn status(home: &Path, now: SystemTime) -> Result<Status, StoreError> {
    let file = store::read_profile(home)?.ok_or_else(|| StoreError::NotEnrolled { home: home.to_owned() })?;
    let certificate = match store::read_optional(home, store::CERT_FILE)? {
        Some(pem) => Some(certificate_status(home, &file.identity, &pem, now)?),
        None => None,
    };
    Ok(Status {
        home: home.to_owned(),
        identity: file.identity,
        broker_url: file.broker_url,
        quic_addr: file.quic_addr,
        session_expires: file.session_expires_unix.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        certificate,
    })
}

fn certificate_status(
    home: &Path,
    identity: &str,
    pem: &str,
    now: SystemTime,
) -> Result<CertificateStatus, StoreError> {
    let corrupt = |name: &str, problem: String| StoreError::Corrupt { path: home.join(name), problem };
    let chain = palisade_proto::pem::certs(pem).map_err(|e| corrupt(store::CERT_FILE, e.to_string()))?;
    let attributes = store::leaf_attributes(&chain[0]).map_err(|e| corrupt(store::CERT_FILE, e))?;
    let not_after = store::leaf_not_after(&chain[0]).map_err(|e| corrupt(store::CERT_FILE, e))?;
    let mfa_at = attributes.mfa_at.map(|s| UNIX_EPOCH + Duration::from_secs(s));
    Ok(CertificateStatus {
        name: attributes.name,
        groups: attributes.groups,
        session: attributes.session,
        auth_methods: attributes.auth_methods,
        mfa_at,
        mfa_age: mfa_at.map(|at| now.duration_since(at).unwrap_or(Duration::ZERO)),
        not_after,
        expired: now >= not_after,
        problem: validation_problem(home, identity, &chain, now)?,
    })
}

/// Validates the certificate against the stored CA; expiry is reported separately.
fn validation_problem(
    home: &Path,
    identity: &str,
    chain: &[rustls_pki_types::CertificateDer<'static>],
    now: SystemTime,
) -> Result<Option<String>, StoreError> {
    let Ok(id) = identity.parse::<SpiffeId>() else {
        return Ok(Some(format!("{identity:?} in {} is not a SPIFFE id", store::PROFILE_FILE)));
    };
    let Some(ca_pem) = store::read_optional(home, store::CA_FILE)? else {
        return Ok(Some(format!("{} is missing", store::CA_FILE)));
    };
    let trust = palisade_proto::pem::certs(&ca_pem)
        .map_err(|e| e.to_string())
        .and_then(|cas| TrustAnchors::new(id.trust_domain.clone(), cas).map_err(|e| e.to_string()));
    let trust = match trust {
        Ok(trust) => trust,
        Err(e) => return Ok(Some(format!("{}: {e}", store::CA_FILE))),
    };
    Ok(match verify_peer(chain, &trust, now, &[PeerRole::User, PeerRole::Machine]) {
        Ok(peer) if peer.id() != &id => Some(format!("the certificate names {}, not {id}", peer.id())),
        Ok(_) | Err(VerifyPeerError::Expired) => None,
        Err(e) => Some(e.to_string()),
    })
}
