//! Validating what the CA just issued, before anyone sees it (the SPIRE pattern).
//!
//! A template bug (a stray CA flag, an extra SAN, a missing EKU, a wrong
//! lifetime) makes issuance fail instead of handing out a dangerous certificate.

use std::time::SystemTime;

use palisade_proto::identity::{SpiffeId, TrustAnchors, VerifiedPeer, verify_peer};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::unix;
use super::{IssueError, LeafProfile};

pub(super) struct Expected<'a> {
    pub(super) spiffe: &'a SpiffeId,
    pub(super) profile: &'a LeafProfile,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

pub(super) fn self_check(
    der: &CertificateDer<'_>,
    ca_der: &CertificateDer<'static>,
    trust: &TrustAnchors,
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<VerifiedPeer, IssueError> {
    let fail = |m: String| IssueError::SelfCheck(m);
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| fail(format!("unparsable: {e}")))?;
    if !rest.is_empty() {
        return Err(fail("trailing bytes".into()));
    }
    check_constraints(&cert)?;
    check_san(&cert, &expected.spiffe.uri())?;
    check_validity(&cert, expected)?;
    let chain = [der.clone(), ca_der.clone()];
    let peer =
        verify_peer(&chain, trust, now, &[expected.profile.role]).map_err(|e| fail(format!("verify_peer: {e}")))?;
    if peer.id() != expected.spiffe || peer.name() != expected.profile.name || peer.groups() != expected.profile.groups
    {
        return Err(fail("identity attributes differ from the profile".into()));
    }
    Ok(peer)
}

fn check_constraints(cert: &X509Certificate<'_>) -> Result<(), IssueError> {
    let fail = |m: &str| IssueError::SelfCheck(m.to_owned());
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca && bc.value.path_len_constraint.is_none() => {}
        _ => return Err(fail("basicConstraints is not an explicit CA:FALSE")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.flags == 1 => {}
        _ => return Err(fail("keyUsage is not exactly digitalSignature")),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku))
            if eku.value.client_auth
                && !eku.value.any
                && !eku.value.server_auth
                && !eku.value.code_signing
                && !eku.value.email_protection
                && !eku.value.time_stamping
                && !eku.value.ocsp_signing
                && eku.value.other.is_empty() => {}
        _ => return Err(fail("extendedKeyUsage is not exactly clientAuth")),
    }
    if cert.name_constraints().ok().flatten().is_some() {
        return Err(fail("a leaf must not carry name constraints"));
    }
    Ok(())
}

fn check_san(cert: &X509Certificate<'_>, uri: &str) -> Result<(), IssueError> {
    let san = cert.subject_alternative_name().ok().flatten();
    match san.map(|s| s.value.general_names.as_slice()) {
        Some([GeneralName::URI(u)]) if *u == uri => Ok(()),
        _ => Err(IssueError::SelfCheck(format!("subjectAltName is not exactly {uri}"))),
    }
}

fn check_validity(cert: &X509Certificate<'_>, expected: &Expected<'_>) -> Result<(), IssueError> {
    let validity = cert.validity();
    let nb = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
    let na = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
    if nb != unix(expected.not_before) || na != unix(expected.not_after) {
        return Err(IssueError::SelfCheck(format!("validity {nb}..{na} is not the computed one")));
    }
    Ok(())
}
