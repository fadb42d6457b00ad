//! The issuing CA: its certificate and decrypted key, and signing.
//!
//! The CA builds every leaf from its own template and takes nothing from a
//! CSR but the public key. Each leaf is parsed and verified again before it
//! is returned (the SPIRE pattern).
//!
//! The CA certificate carries one URI SAN, `spiffe://<trust-domain>`, which is
//! where [`Ca::load`] learns the trust domain. It has no name constraints:
//! RFC 5280 URI constraints name a host, and rcgen cannot write them, so the
//! profile check in `palisade_proto::identity::verify_peer` (our trust domain
//! only) is what confines identities.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use palisade_proto::id::{TrustDomain, check_name};
use palisade_proto::identity::{ATTRIBUTES_OID, IdentityAttributes, PeerRole, SpiffeId, TrustAnchors};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::csr::CheckedCsr;
use super::keystore::{self, Kek};
use super::selfcheck::{Expected, self_check};
use super::{IssueError, Issued, LeafProfile};

/// The CA certificate's file name in the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The encrypted CA key's file name in the data directory.
pub const CA_KEY_FILE: &str = "ca.key.enc";

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const BACKDATE: Duration = Duration::from_secs(60);

/// The CA could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key-encryption key is missing or malformed.
    #[error("CA key-encryption key: {0}")]
    Kek(String),
    /// `ca.key.enc` is not in a format this broker reads.
    #[error("ca.key.enc: {0}")]
    KeyFile(String),
    /// Authenticated decryption failed.
    #[error("the key-encryption key does not open ca.key.enc (wrong KEK, or the file is corrupt)")]
    Decrypt,
    /// `ca.pem` is unusable.
    #[error("ca.pem: {0}")]
    Cert(String),
    /// The decrypted key is not the key of `ca.pem`.
    #[error("ca.key.enc does not hold the private key of ca.pem")]
    KeyMismatch,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// rcgen refused to build a certificate or key.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The broker's issuing CA, with its private key decrypted in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    trust: TrustAnchors,
    not_after: SystemTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("trust_domain", self.trust.trust_domain()).finish_non_exhaustive()
    }
}

/// A server certificate and its key, both PEM.
#[derive(Clone)]
pub struct ServerCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

impl Ca {
    /// Makes a new self-signed ECDSA P-256 CA for `trust_domain`, valid 10 years.
    /// Returns the CA and its PKCS#8 key, to be sealed with [`keystore::seal`].
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn create(trust_domain: &TrustDomain, now: SystemTime) -> Result<(Ca, Vec<u8>), CaError> {
        Ca::create_named(trust_domain, &format!("Palisade CA {trust_domain}"), now)
    }

    /// As [`Ca::create`], with its own common name: a successor CA made for a
    /// rotation is told apart from the one it replaces by name as well as key.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn create_named(
        trust_domain: &TrustDomain,
        common_name: &str,
        now: SystemTime,
    ) -> Result<(Ca, Vec<u8>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time(now + CA_LIFETIME);
        params.serial_number = Some(random_serial().map_err(|_| CaError::Random)?);
        let cert = params.self_signed(&key)?;
        let pkcs8 = key.serialize_der();
        Ok((Ca::from_parts(cert.der().clone(), key)?, pkcs8))
    }

    /// Loads `ca.pem` and `ca.key.enc` from `data_dir`, decrypting the key with `kek`.
    ///
    /// # Errors
    /// A missing or unreadable file, a wrong KEK, or a key that does not match the certificate.
    pub fn load(data_dir: &Path, kek: &Kek) -> Result<Ca, CaError> {
        Ca::load_files(&data_dir.join(CA_CERT_FILE), &data_dir.join(CA_KEY_FILE), kek)
    }

    /// Loads a CA from its certificate and sealed key files.
    ///
    /// # Errors
    /// As [`Ca::load`].
    pub fn load_files(cert_path: &Path, key_path: &Path, kek: &Kek) -> Result<Ca, CaError> {
        let (cert_der, _) = read_ca_cert_at(cert_path)?;
        let key_path = key_path.to_owned();
        let sealed = std::fs::read_to_string(&key_path).map_err(|source| CaError::Io { path: key_path, source })?;
        let pkcs8 = keystore::open(kek, &sealed)?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ECDSA_P256_SHA256)
            .map_err(|_| CaError::KeyFile("the decrypted key is not an ECDSA P-256 PKCS#8 key".into()))?;
        Ca::from_parts(cert_der, key)
    }

    fn from_parts(cert_der: CertificateDer<'static>, key: KeyPair) -> Result<Ca, CaError> {
        let (rest, cert) = X509Certificate::from_der(&cert_der).map_err(|e| CaError::Cert(e.to_string()))?;
        if !rest.is_empty() || !cert.is_ca() {
            return Err(CaError::Cert("not a single CA certificate".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let trust_domain = trust_domain_of(&cert)?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
        let trust =
            TrustAnchors::new(trust_domain, vec![cert_der.clone()]).map_err(|e| CaError::Cert(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let cert_pem = palisade_proto::pem::encode("CERTIFICATE", &cert_der);
        Ok(Ca { issuer, cert_der, cert_pem, trust, not_after })
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
    /// The CA certificate, PEM: the trust bundle.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    /// The trust domain named in the CA certificate.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        self.trust.trust_domain()
    }
    /// This CA as the only trust anchor of its trust domain.
    #[must_use]
    pub fn trust_anchors(&self) -> &TrustAnchors {
        &self.trust
    }
    /// When the CA certificate expires; no leaf outlives it.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// The CA's raw public key.
    #[must_use]
    pub fn public_key_raw(&self) -> &[u8] {
        self.issuer.key().public_key_raw()
    }

    /// Signs a policy bundle's signature input
    /// ([`palisade_proto::bundle::signing_input`]) with the CA key: ECDSA
    /// P-256 SHA-256, ASN.1 DER.
    ///
    /// # Errors
    /// The signing primitive failed.
    pub fn sign_bundle(&self, input: &[u8]) -> Result<Vec<u8>, CaError> {
        use rcgen::SigningKey as _;
        Ok(self.issuer.key().sign(input)?)
    }

    /// Signs a client certificate for `profile` over the CSR's public key.
    ///
    /// # Errors
    /// A bad identity name, the CA's own key in the CSR, an expired CA, or a
    /// certificate that fails the self-check.
    pub fn sign(&self, profile: &LeafProfile, csr: &CheckedCsr, now: SystemTime) -> Result<Issued, IssueError> {
        self.sign_with(profile, csr, now, |_| {})
    }

    pub(crate) fn sign_with(
        &self,
        profile: &LeafProfile,
        csr: &CheckedCsr,
        now: SystemTime,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued, IssueError> {
        let spiffe = check_profile(profile, self.trust_domain())?;
        if csr.public_key_raw() == self.public_key_raw() {
            return Err(IssueError::CaKey);
        }
        let not_before = whole_seconds(now - BACKDATE);
        let not_after = whole_seconds((now + profile.ttl).min(self.not_after));
        if not_after <= whole_seconds(now) {
            return Err(IssueError::CaExpired);
        }
        let mut params = leaf_params(profile, &spiffe, not_before, not_after)?;
        tweak(&mut params);
        let cert = params.signed_by(csr.public_key(), &self.issuer).map_err(|e| IssueError::Sign(e.to_string()))?;
        let expected = Expected { spiffe: &spiffe, profile, not_before, not_after };
        let peer = self_check(cert.der(), &self.cert_der, &self.trust, &expected, now)?;
        Ok(Issued {
            certificate_pem: palisade_proto::pem::encode("CERTIFICATE", cert.der()),
            certificate_der: cert.der().to_vec(),
            serial_hex: peer.serial_hex().to_owned(),
            not_after_unix: unix(not_after),
            spiffe_id: spiffe.uri(),
        })
    }

    /// Issues the broker's HTTPS/QUIC server certificate: DNS and IP SANs from
    /// `names` plus `spiffe://<td>/broker/<broker_id>`, EKU serverAuth, 90 days.
    ///
    /// # Errors
    /// A name that is neither a DNS name nor an IP address, or signing failed.
    pub fn issue_server(&self, names: &[String], broker_id: &str, now: SystemTime) -> Result<ServerCert, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .subject_alt_names
            .push(SanType::URI(format!("spiffe://{}/broker/{broker_id}", self.trust_domain()).try_into()?));
        params.distinguished_name = dn(names.first().map_or("palisade-broker", String::as_str));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time((now + SERVER_LIFETIME).min(self.not_after));
        params.serial_number = Some(random_serial().map_err(|_| CaError::Random)?);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn check_profile(profile: &LeafProfile, td: &TrustDomain) -> Result<SpiffeId, IssueError> {
    if !matches!(profile.role, PeerRole::User | PeerRole::Machine | PeerRole::Connector) {
        return Err(IssueError::Identity(format!("the CA does not issue {} client certificates", profile.role)));
    }
    check_name("identity name", &profile.name).map_err(|e| IssueError::Identity(e.to_string()))?;
    // The same rule as everywhere else a group is named; a 10 kB group used to pass here.
    for g in &profile.groups {
        check_name("group name", g).map_err(|e| IssueError::Identity(e.to_string()))?;
    }
    SpiffeId::new(td.clone(), profile.role, profile.id.clone()).map_err(|e| IssueError::Identity(e.to_string()))
}

fn leaf_params(
    profile: &LeafProfile,
    spiffe: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, IssueError> {
    let attrs = IdentityAttributes {
        v: 1,
        name: profile.name.clone(),
        groups: profile.groups.clone(),
        session: profile.session.clone(),
        mfa_at: profile.mfa_at,
        auth_methods: profile.auth_methods.clone(),
    };
    let uri = spiffe.uri().try_into().map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&profile.name);
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = to_time(not_before);
    params.not_after = to_time(not_after);
    params.serial_number = Some(random_serial().map_err(|_| IssueError::Sign("no randomness".into()))?);
    params.use_authority_key_identifier_extension = true;
    params.custom_extensions = vec![CustomExtension::from_oid_content(ATTRIBUTES_OID, attrs.to_der())];
    Ok(params)
}

/// Reads `ca.pem` from `data_dir` without the key: the certificate and the trust domain it names.
///
/// # Errors
/// The file is missing or not a Palisade CA certificate.
pub fn read_ca_cert(data_dir: &Path) -> Result<(CertificateDer<'static>, TrustDomain), CaError> {
    read_ca_cert_at(&data_dir.join(CA_CERT_FILE))
}

/// Reads a CA certificate file: the certificate and the trust domain it names.
///
/// # Errors
/// The file is missing or not a Palisade CA certificate.
pub fn read_ca_cert_at(path: &Path) -> Result<(CertificateDer<'static>, TrustDomain), CaError> {
    let path = path.to_owned();
    let pem = std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })?;
    let der = palisade_proto::pem::certs(&pem)
        .map_err(|e| CaError::Cert(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::Cert("no certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CaError::Cert(e.to_string()))?;
    let td = trust_domain_of(&cert)?;
    Ok((der, td))
}

fn trust_domain_of(cert: &X509Certificate<'_>) -> Result<TrustDomain, CaError> {
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| CaError::Cert("no spiffe:// URI SAN naming the trust domain".into()))?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix("spiffe://"),
            _ => None,
        })
        .ok_or_else(|| CaError::Cert("no spiffe:// URI SAN naming the trust domain".into()))?;
    uri.parse().map_err(|e| CaError::Cert(format!("bad trust domain in URI SAN: {e}")))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Palisade");
    dn
}

fn random_serial() -> Result<SerialNumber, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix(t))
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn to_time(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(unix(t)).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
