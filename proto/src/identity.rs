//! Who a certificate names, and the only way to trust that it does.
//!
//! A Palisade certificate carries exactly one URI SAN,
//! `spiffe://<trust-domain>/<role>/<id>`, and one private extension with the
//! identity's display name and groups (written by the broker's CA, never taken
//! from a CSR). [`verify_peer`] is the single place that turns a presented
//! chain into a [`VerifiedPeer`]: path validation against our own CA with
//! rustls-webpki, then Palisade's profile check, which webpki does not do
//! (webpki accepts a client certificate without any EKU and has no notion of
//! "our" identities).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::id::{IdError, TrustDomain, check_name};

/// The private, non-critical extension that carries [`IdentityAttributes`].
///
/// It is only ever written by our own CA and read by our own verifiers; no
/// other software needs to understand it.
pub const ATTRIBUTES_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 37476, 9000, 178, 1];

/// The dotted form of [`ATTRIBUTES_OID`].
pub const ATTRIBUTES_OID_STR: &str = "1.3.6.1.4.1.37476.9000.178.1";

/// DER content of the clientAuth extended key usage OID (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// What an identity is; the second path segment of its SPIFFE id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    /// A person, signed in through the identity provider.
    User,
    /// A machine identity (CI job, AI agent).
    Machine,
    /// A connector beside the workloads.
    Connector,
    /// A broker replica.
    Broker,
}

impl PeerRole {
    /// The path segment used in SPIFFE ids.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Machine => "machine",
            Self::Connector => "connector",
            Self::Broker => "broker",
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PeerRole {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "machine" => Ok(Self::Machine),
            "connector" => Ok(Self::Connector),
            "broker" => Ok(Self::Broker),
            other => Err(IdError { kind: "role", reason: format!("unknown role {other:?}") }),
        }
    }
}

/// `spiffe://<trust-domain>/<role>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The deployment's trust domain.
    pub trust_domain: TrustDomain,
    /// What kind of identity this is.
    pub role: PeerRole,
    /// The identity's id (a UUID for users, machines and connectors).
    pub id: String,
}

impl SpiffeId {
    /// Builds a SPIFFE id from its parts.
    ///
    /// # Errors
    /// The id must be a valid name (see [`check_name`]).
    pub fn new(trust_domain: TrustDomain, role: PeerRole, id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        check_name("identity id", &id)?;
        Ok(Self { trust_domain, role, id })
    }

    /// The URI form, as written into the certificate's SAN.
    #[must_use]
    pub fn uri(&self) -> String {
        format!("spiffe://{}/{}/{}", self.trust_domain, self.role, self.id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| IdError { kind: "SPIFFE id", reason: reason.to_owned() };
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| err("must start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some(role), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(err("must be spiffe://<trust-domain>/<role>/<id>"));
        };
        Self::new(td.parse()?, role.parse()?, id)
    }
}

/// Attributes the CA writes into a certificate's private extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityAttributes {
    /// Format version; only 1 exists.
    pub v: u8,
    /// The display name an admin gave the identity.
    pub name: String,
    /// Groups at the time of issuance.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The sign-in session (or enrollment) the certificate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the person last proved a second factor (WebAuthn), seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_at: Option<u64>,
    /// How the identity authenticated, e.g. `oidc`, `webauthn`, `enrollment_token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_methods: Vec<String>,
}

impl IdentityAttributes {
    /// DER encoding of the extension value: a UTF8String holding compact JSON.
    #[must_use]
    pub fn to_der(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = vec![0x0c];
        push_der_len(&mut out, json.len());
        out.extend_from_slice(&json);
        out
    }

    /// Parses the extension value written by [`Self::to_der`].
    ///
    /// # Errors
    /// Anything other than a single DER UTF8String holding version-1 JSON.
    pub fn from_der(der: &[u8]) -> Result<Self, VerifyPeerError> {
        let bad = || VerifyPeerError::Profile("malformed identity attributes extension".into());
        let (tag, rest) = der.split_first().ok_or_else(bad)?;
        if *tag != 0x0c {
            return Err(bad());
        }
        let (len, body) = read_der_len(rest).ok_or_else(bad)?;
        if body.len() != len {
            return Err(bad());
        }
        let attrs: Self = serde_json::from_slice(body).map_err(|_| bad())?;
        if attrs.v != 1 {
            return Err(VerifyPeerError::Profile(format!("identity attributes version {} is not supported", attrs.v)));
        }
        Ok(attrs)
    }
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn read_der_len(input: &[u8]) -> Option<(usize, &[u8])> {
    let (first, rest) = input.split_first()?;
    if *first < 0x80 {
        return Some((usize::from(*first), rest));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, &rest[n..]))
}

/// The deployment's own CA and trust domain: the only things a peer is checked against.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    trust_domain: TrustDomain,
    ca_certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustAnchors {
    /// Trust exactly these CA certificates for this trust domain.
    ///
    /// # Errors
    /// A CA certificate that webpki cannot use as a trust anchor.
    pub fn new(trust_domain: TrustDomain, ca_certs: Vec<CertificateDer<'static>>) -> Result<Self, VerifyPeerError> {
        if ca_certs.is_empty() {
            return Err(VerifyPeerError::Profile("the trust bundle holds no CA certificate".into()));
        }
        let anchors = ca_certs
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VerifyPeerError::Chain(format!("unusable CA certificate: {e}")))?;
        Ok(Self { trust_domain, ca_certs, anchors })
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates, for building rustls root stores.
    #[must_use]
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }
}

/// A peer whose chain validated against our CA and whose certificate fits
/// Palisade's profile. Only [`verify_peer`] creates one.
#[derive(Clone, Debug)]
pub struct VerifiedPeer {
    id: SpiffeId,
    attributes: IdentityAttributes,
    serial_hex: String,
    not_after: SystemTime,
}

impl VerifiedPeer {
    /// The SPIFFE id from the URI SAN.
    #[must_use]
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }
    /// The role from the SPIFFE id.
    #[must_use]
    pub fn role(&self) -> PeerRole {
        self.id.role
    }
    /// Display name written by the CA.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.attributes.name
    }
    /// Groups written by the CA.
    #[must_use]
    pub fn groups(&self) -> &[String] {
        &self.attributes.groups
    }
    /// Session the certificate belongs to, if any.
    #[must_use]
    pub fn session(&self) -> Option<&str> {
        self.attributes.session.as_deref()
    }
    /// When the last second-factor proof happened (seconds since the epoch), if any.
    #[must_use]
    pub fn mfa_at(&self) -> Option<u64> {
        self.attributes.mfa_at
    }
    /// Seconds since the last second-factor proof at `now_unix_secs`, if any.
    #[must_use]
    pub fn mfa_age_secs(&self, now_unix_secs: u64) -> Option<u64> {
        self.attributes.mfa_at.map(|at| now_unix_secs.saturating_sub(at))
    }
    /// Authentication methods written by the CA.
    #[must_use]
    pub fn auth_methods(&self) -> &[String] {
        &self.attributes.auth_methods
    }
    /// Certificate serial number, lowercase hex.
    #[must_use]
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }
    /// When the certificate stops being valid.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// Why a presented chain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyPeerError {
    /// No certificate was presented.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate has expired.
    #[error("certificate expired")]
    Expired,
    /// The certificate is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// Path validation against our CA failed.
    #[error("certificate chain rejected: {0}")]
    Chain(String),
    /// The chain is valid but the certificate does not fit Palisade's profile.
    #[error("certificate does not fit the Palisade profile: {0}")]
    Profile(String),
    /// The identity's role is not allowed here (e.g. a machine certificate presented as a connector).
    #[error("a {actual} certificate cannot be used as a {expected}")]
    WrongRole {
        /// The roles that would have been accepted.
        expected: String,
        /// The role the certificate names.
        actual: PeerRole,
    },
}

/// Validates `chain` (leaf first) against our CA and checks Palisade's profile:
/// exactly one URI SAN naming an identity in our trust domain, an explicit
/// clientAuth EKU, not a CA, one of `allowed` roles, and well-formed
/// identity attributes.
///
/// # Errors
/// [`VerifyPeerError`] naming the first check that failed.
pub fn verify_peer(
    chain: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    now: SystemTime,
    allowed: &[PeerRole],
) -> Result<VerifiedPeer, VerifyPeerError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyPeerError::NoCertificate)?;
    verify_chain(leaf, intermediates, trust, now)?;
    let peer = check_profile(leaf, trust)?;
    if !allowed.contains(&peer.role()) {
        let expected = allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
        return Err(VerifyPeerError::WrongRole { expected, actual: peer.role() });
    }
    Ok(peer)
}

/// Palisade's CA signs every leaf itself; a peer may send the CA along,
/// but nothing more. Longer chains are refused before any path is built,
/// so a peer cannot make the verifier search among look-alike
/// intermediates (X5-07: 50 of them cost about 240 ms of CPU in webpki).
pub const MAX_INTERMEDIATES: usize = 1;

/// Refuses a chain with more intermediates than [`MAX_INTERMEDIATES`].
///
/// # Errors
/// [`VerifyPeerError::Chain`] naming the count.
pub fn check_chain_length(intermediates: usize) -> Result<(), VerifyPeerError> {
    if intermediates > MAX_INTERMEDIATES {
        return Err(VerifyPeerError::Chain(format!(
            "{intermediates} intermediate certificates; the Palisade CA signs leaves directly (at most {MAX_INTERMEDIATES} accepted)"
        )));
    }
    Ok(())
}

/// Refuses a chain whose intermediates are anything but our CA
/// certificates sent along: Palisade's CA signs every leaf itself and never
/// makes a sub-CA, so an intermediate, even one our CA key signed (with name
/// constraints or without), cannot be part of a valid chain.
///
/// # Errors
/// [`VerifyPeerError::Chain`] naming the count or the stranger.
pub fn check_intermediates(intermediates: &[CertificateDer<'_>], trust: &TrustAnchors) -> Result<(), VerifyPeerError> {
    check_chain_length(intermediates.len())?;
    if let Some(stranger) = intermediates.iter().find(|i| !trust.ca_certs.iter().any(|ca| ca.as_ref() == i.as_ref())) {
        let name = X509Certificate::from_der(stranger)
            .map_or_else(|_| "unparsable".to_owned(), |(_, c)| c.subject().to_string());
        return Err(VerifyPeerError::Chain(format!(
            "an intermediate certificate ({name}) that is not the Palisade CA; the CA signs leaves directly"
        )));
    }
    Ok(())
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    now: SystemTime,
) -> Result<(), VerifyPeerError> {
    check_intermediates(intermediates, trust)?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| VerifyPeerError::Chain(e.to_string()))?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust.anchors,
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::required(EKU_CLIENT_AUTH),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => VerifyPeerError::Expired,
        webpki::Error::CertNotValidYet { .. } => VerifyPeerError::NotYetValid,
        other => VerifyPeerError::Chain(format!("{other:?}")),
    })
}

pub(crate) fn check_profile(leaf: &CertificateDer<'_>, trust: &TrustAnchors) -> Result<VerifiedPeer, VerifyPeerError> {
    let profile = |m: &str| VerifyPeerError::Profile(m.to_owned());
    let (rest, cert) = X509Certificate::from_der(leaf).map_err(|_| profile("unparsable certificate"))?;
    if !rest.is_empty() {
        return Err(profile("trailing data after the certificate"));
    }
    if cert.is_ca() {
        return Err(profile("a CA certificate cannot identify a peer"));
    }
    let client_auth = cert.extended_key_usage().ok().flatten().is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(profile("no clientAuth extended key usage"));
    }
    let id = single_uri_san(&cert)?;
    let id: SpiffeId = id.parse().map_err(|e: IdError| VerifyPeerError::Profile(e.to_string()))?;
    if &id.trust_domain != trust.trust_domain() {
        return Err(VerifyPeerError::Profile(format!("trust domain {} is not ours", id.trust_domain)));
    }
    let attributes = attributes_of(&cert)?;
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
    Ok(VerifiedPeer { id, attributes, serial_hex: cert.raw_serial_as_string().replace(':', ""), not_after })
}

fn single_uri_san<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, VerifyPeerError> {
    let profile = |m: &str| VerifyPeerError::Profile(m.to_owned());
    let san = cert
        .subject_alternative_name()
        .map_err(|_| profile("malformed subjectAltName"))?
        .ok_or_else(|| profile("no URI SAN"))?;
    match san.value.general_names.as_slice() {
        [GeneralName::URI(uri)] => Ok(uri),
        [] => Err(profile("no URI SAN")),
        [_] => Err(profile("the subjectAltName is not a URI")),
        _ => Err(profile("more than one subjectAltName")),
    }
}

fn attributes_of(cert: &X509Certificate<'_>) -> Result<IdentityAttributes, VerifyPeerError> {
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == ATTRIBUTES_OID_STR {
            if found.is_some() {
                return Err(VerifyPeerError::Profile("identity attributes extension appears twice".into()));
            }
            found = Some(IdentityAttributes::from_der(ext.value)?);
        } else if ext.critical && matches!(ext.parsed_extension(), ParsedExtension::UnsupportedExtension { .. }) {
            return Err(VerifyPeerError::Profile(format!("unknown critical extension {}", ext.oid)));
        }
    }
    found.ok_or_else(|| VerifyPeerError::Profile("no identity attributes extension".into()))
}

/// Entry point for the certificate-profile fuzz target (`tests/src/fuzz.rs`).
/// Not an API: it checks a leaf's profile without its signature, so it
/// hands back the identity's URI and never a [`VerifiedPeer`].
#[doc(hidden)]
pub mod fuzzing {
    use rustls_pki_types::CertificateDer;

    use super::{TrustAnchors, VerifyPeerError};

    /// Palisade's profile checks on `leaf`, as after a verified chain.
    ///
    /// # Errors
    /// The first profile check that failed.
    pub fn check_profile(leaf: &CertificateDer<'_>, trust: &TrustAnchors) -> Result<String, VerifyPeerError> {
        super::check_profile(leaf, trust).map(|peer| peer.id().uri())
    }
}

#[cfg(test)]
mod tests;
