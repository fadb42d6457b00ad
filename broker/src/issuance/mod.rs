//! The issuing CA: CSR checks ([`csr`]), signing and the key at rest
//! ([`ca`], [`keystore`]), enrollment with one-time tokens ([`enroll`]), and
//! [`issue_for_identity`], which the relay uses to renew connector certificates.

pub mod ca;
pub mod csr;
pub mod enroll;
pub mod keystore;
pub mod rate;
pub mod rotation;
mod selfcheck;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use palisade_proto::identity::PeerRole;
use serde_json::json;

use crate::Broker;
use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::certificates::{self, CertificateRow};
use crate::db::{self, Db, IdentityRecord, identities};
use ca::Ca;
use csr::CheckedCsr;

/// What the CA writes into a client certificate, besides the public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafProfile {
    /// The identity's role: the second segment of the SPIFFE id.
    pub role: PeerRole,
    /// The identity's id: the last segment of the SPIFFE id.
    pub id: String,
    /// Display name (subject CN and identity attributes).
    pub name: String,
    /// Groups (identity attributes).
    pub groups: Vec<String>,
    /// Requested lifetime; clamped to the CA's own expiry.
    pub ttl: Duration,
    /// The session or enrollment the certificate belongs to.
    pub session: Option<String>,
    /// When the person last proved a second factor (seconds since the epoch).
    pub mfa_at: Option<u64>,
    /// How the identity authenticated (`enrollment_token`, `oidc`, `webauthn`, …).
    pub auth_methods: Vec<String>,
}

/// A certificate the CA issued and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// PEM leaf.
    pub certificate_pem: String,
    /// DER leaf.
    pub certificate_der: Vec<u8>,
    /// Serial number, lowercase hex (as `VerifiedPeer::serial_hex`).
    pub serial_hex: String,
    /// Expiry, seconds since the epoch.
    pub not_after_unix: u64,
    /// `spiffe://<td>/<role>/<id>`.
    pub spiffe_id: String,
}

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is over the size cap.
    #[error("the CSR is larger than 16 KiB")]
    TooLarge,
    /// The CSR is not a single well-formed PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The CSR's self-signature does not verify.
    #[error("the CSR's signature does not verify (no proof of possession of the key)")]
    Signature,
    /// The CSR is signed with an algorithm the CA does not take (SHA-1, or one that does not fit the key).
    #[error("signature algorithm not allowed: {0}; sign the CSR with ECDSA SHA-256 (P-256 key) or Ed25519")]
    SignatureAlgorithm(String),
    /// The key is of a type the CA does not certify.
    #[error("key type not allowed: {0}; use ECDSA P-256 or Ed25519")]
    KeyType(String),
    /// The CSR carries the CA's own public key.
    #[error("the CSR's public key is the CA's key")]
    CaKey,
    /// The key already belongs to another identity.
    #[error("the CSR's public key already belongs to another identity; generate a new key")]
    KeyReused,
    /// The identity's name, groups or role cannot go into a certificate.
    #[error("invalid identity: {0}")]
    Identity(String),
    /// The identity is disabled.
    #[error("identity {0} is disabled")]
    Disabled(String),
    /// No such identity.
    #[error("identity {0} does not exist")]
    UnknownIdentity(String),
    /// The identity was issued too many certificates lately (CA-08).
    #[error("too many certificates issued to this identity; retry in {} s", .0.as_secs())]
    RateLimited(Duration),
    /// The CA certificate has expired (or expires within the second).
    #[error("the CA certificate has expired")]
    CaExpired,
    /// rcgen could not sign.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The issued certificate failed the self-check and was discarded.
    #[error("the issued certificate failed the self-check and was discarded: {0}")]
    SelfCheck(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl IssueError {
    /// Whether the request itself was at fault (HTTP 400), rather than the CA or the database.
    #[must_use]
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::TooLarge
                | Self::Malformed(_)
                | Self::Signature
                | Self::SignatureAlgorithm(_)
                | Self::KeyType(_)
                | Self::CaKey
                | Self::KeyReused
                | Self::Identity(_)
        )
    }

    /// A short stable code for JSON and the audit trail.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge | Self::Malformed(_) | Self::Signature | Self::SignatureAlgorithm(_) => "bad_csr",
            Self::KeyType(_) => "key_type",
            Self::CaKey | Self::KeyReused => "key_reused",
            Self::Identity(_) => "bad_identity",
            Self::Disabled(_) => "identity_disabled",
            Self::RateLimited(_) => "rate_limited",
            Self::UnknownIdentity(_) => "unknown_identity",
            Self::CaExpired | Self::Sign(_) | Self::SelfCheck(_) => "ca_unavailable",
            Self::Db(_) | Self::Audit(_) => "internal",
        }
    }
}

/// Issues a fresh certificate for an existing identity (a connector renewing
/// over its control stream). The identity is re-read inside the write
/// transaction, so a disable that has just committed is honoured. The
/// certificate row and `certificate.issued` commit together; a refusal is
/// recorded as `certificate.refused`.
///
/// # Errors
/// [`IssueError`]: a bad CSR, a disabled or unknown identity, a CA failure, or the database.
pub async fn issue_for_identity(
    broker: &Broker,
    identity: &IdentityRecord,
    csr_pem: &str,
) -> Result<Issued, IssueError> {
    let ttl = broker.config().ttl_for(identity.role);
    if let Err(wait) = broker.issuance_limits().take(&format!("{}/{}", identity.role, identity.id)) {
        let e = IssueError::RateLimited(wait);
        record_refusal(broker.audit(), &format!("{}/{}", identity.role, identity.id), &e, None).await;
        return Err(e);
    }
    issue_with(broker.db(), broker.audit(), broker.ca(), ttl, identity, csr_pem, SystemTime::now()).await
}

/// [`issue_for_identity`] without a whole [`Broker`].
///
/// # Errors
/// As [`issue_for_identity`].
pub async fn issue_with(
    db: &Db,
    audit: &Audit,
    ca: &Ca,
    ttl: Duration,
    identity: &IdentityRecord,
    csr_pem: &str,
    now: SystemTime,
) -> Result<Issued, IssueError> {
    let subject = format!("{}/{}", identity.role, identity.id);
    let result = issue_inner(db, ca, ttl, identity, csr_pem, now).await;
    if let Err(e) = &result {
        record_refusal(audit, &subject, e, None).await;
    }
    result
}

async fn issue_inner(
    db: &Db,
    ca: &Ca,
    ttl: Duration,
    identity: &IdentityRecord,
    csr_pem: &str,
    now: SystemTime,
) -> Result<Issued, IssueError> {
    let csr = csr::check_csr(csr_pem)?;
    let mut tx = db.begin_write().await?;
    let current = identities::get_in(&mut tx, identity.role, &identity.id)
        .await?
        .ok_or_else(|| IssueError::UnknownIdentity(identity.id.clone()))?;
    if current.disabled {
        return Err(IssueError::Disabled(identity.id.clone()));
    }
    check_key_unused(&mut tx, &csr, &current.id).await?;
    let profile = LeafProfile {
        role: current.role,
        id: current.id.clone(),
        name: current.name.clone(),
        groups: current.groups.clone(),
        ttl,
        session: None,
        mfa_at: None,
        auth_methods: vec!["renewal".into()],
    };
    let issued = ca.sign(&profile, &csr, now)?;
    store_issued(&mut tx, &issued, &csr, &current.id, now, "renewal").await?;
    tx.commit().await?;
    Ok(issued)
}

pub(crate) async fn check_key_unused(
    conn: &mut sqlx::AnyConnection,
    csr: &CheckedCsr,
    identity_id: &str,
) -> Result<(), IssueError> {
    match certificates::holder_of_key(conn, &csr.public_key_sha256()).await? {
        Some(holder) if holder != identity_id => Err(IssueError::KeyReused),
        _ => Ok(()),
    }
}

pub(crate) async fn store_issued(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    issued: &Issued,
    csr: &CheckedCsr,
    identity_id: &str,
    now: SystemTime,
    via: &str,
) -> Result<(), IssueError> {
    let row = CertificateRow {
        serial: issued.serial_hex.clone(),
        identity_id: identity_id.to_owned(),
        public_key_sha256: csr.public_key_sha256(),
        issued_at: db::unix_seconds(now),
        not_after: i64::try_from(issued.not_after_unix).unwrap_or(i64::MAX),
    };
    certificates::insert(tx, &row).await?;
    let event = AuditEvent::new(EventKind::CertificateIssued, Outcome::Success)
        .subject(issued.spiffe_id.clone())
        .detail(json!({
            "serial": issued.serial_hex,
            "not_after": issued.not_after_unix,
            "key_type": format!("{:?}", csr.key_type()),
            "via": via,
        }));
    Audit::record_in(tx, event).await?;
    Ok(())
}

pub(crate) async fn record_refusal(audit: &Audit, subject: &str, err: &IssueError, source: Option<SocketAddr>) {
    let mut detail = json!({ "reason": err.code(), "detail": err.to_string() });
    if let Some(source) = source {
        detail["source"] = json!(source.to_string());
    }
    let event = AuditEvent::new(EventKind::CertificateRefused, Outcome::Failure).subject(subject).detail(detail);
    if let Err(e) = audit.record(event).await {
        tracing::error!(error = %e, "could not record certificate.refused");
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_encoding;
