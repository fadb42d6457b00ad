//! Certificates a test makes on purpose: forged leaves (from our CA or a
//! foreign one), CSRs, and a reader for what the broker issued.

use std::path::Path;

use palisade_proto::identity::{ATTRIBUTES_OID, ATTRIBUTES_OID_STR, IdentityAttributes};
use palisade_proto::tls::TlsIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SigningKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a forged leaf certificate says. [`LeafSpec::valid`] is a leaf our
/// broker must accept; each test changes one thing.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// URI SANs (a Palisade leaf has exactly one).
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// Extended key usages.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Whether the leaf claims to be a CA.
    pub is_ca: bool,
    /// The identity attributes extension, if any.
    pub attributes: Option<IdentityAttributes>,
}

impl LeafSpec {
    /// A leaf that fits the Palisade profile: this SPIFFE id, clientAuth,
    /// valid from five minutes ago for an hour, with these attributes.
    #[must_use]
    pub fn valid(spiffe_id: &str, attributes: IdentityAttributes) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uri_sans: vec![spiffe_id.to_owned()],
            dns_sans: Vec::new(),
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(1),
            is_ca: false,
            attributes: Some(attributes),
        }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "forged by palisade-tests");
        params.distinguished_name = dn;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.subject_alt_names = self
            .uri_sans
            .iter()
            .map(|u| SanType::URI(u.clone().try_into().expect("an IA5 URI")))
            .chain(self.dns_sans.iter().map(|d| SanType::DnsName(d.clone().try_into().expect("an IA5 name"))))
            .collect();
        params.extended_key_usages = self.ekus.clone();
        if self.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        if let Some(attributes) = &self.attributes {
            params.custom_extensions.push(CustomExtension::from_oid_content(ATTRIBUTES_OID, attributes.to_der()));
        }
        params.use_authority_key_identifier_extension = true;
        params
    }

    fn sign_with(&self, issuer: &Issuer<'_, impl SigningKey>) -> TlsIdentity {
        let key = KeyPair::generate().expect("generate a P-256 key");
        let cert = self.params().signed_by(&key, issuer).expect("sign the forged leaf");
        TlsIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A CA that is not ours: a sibling deployment, or an attacker's.
pub struct ForeignCa {
    issuer: Issuer<'static, KeyPair>,
}

impl Default for ForeignCa {
    fn default() -> Self {
        Self::new()
    }
}

impl ForeignCa {
    /// A fresh self-signed CA.
    #[must_use]
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Palisade CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self { issuer: Issuer::new(params, key) }
    }

    /// Signs a leaf as described.
    #[must_use]
    pub fn sign(&self, spec: &LeafSpec) -> TlsIdentity {
        spec.sign_with(&self.issuer)
    }
}

/// The broker's own issuing CA, loaded from its data directory, so a test
/// can sign leaves our verifiers would trust if only the profile allowed it.
pub struct OurCa {
    issuer: Issuer<'static, KeyPair>,
}

impl OurCa {
    /// Loads the CA key with the KEK `init` left in the data directory.
    #[must_use]
    pub fn load(data_dir: &Path) -> Self {
        let (cert, key) = crate::broker_ca::load(data_dir);
        let issuer = Issuer::from_ca_cert_der(&cert, key).expect("use the broker's CA certificate as issuer");
        Self { issuer }
    }

    /// Signs a leaf as described.
    #[must_use]
    pub fn sign(&self, spec: &LeafSpec) -> TlsIdentity {
        spec.sign_with(&self.issuer)
    }

    /// Signs a leaf as described through `depth` CA certificates, each one
    /// signed by the one above and the top one by our CA. The chain is the
    /// leaf, then the intermediates from the leaf's issuer up.
    #[must_use]
    pub fn sign_through(&self, spec: &LeafSpec, depth: usize) -> TlsIdentity {
        let mut intermediates = Vec::with_capacity(depth);
        let mut lowest: Option<Issuer<'static, KeyPair>> = None;
        for level in 1..=depth {
            let key = KeyPair::generate().expect("generate an intermediate key");
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, format!("forged intermediate {level}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = match &lowest {
                Some(above) => params.signed_by(&key, above),
                None => params.signed_by(&key, &self.issuer),
            };
            intermediates.push(cert.expect("sign an intermediate").der().clone());
            lowest = Some(Issuer::new(params, key));
        }
        let mut identity = match &lowest {
            Some(issuer) => spec.sign_with(issuer),
            None => self.sign(spec),
        };
        identity.chain.extend(intermediates.into_iter().rev());
        identity
    }
}

/// A PEM CSR for `params`, signed by `key`.
#[must_use]
pub fn csr_pem(params: &CertificateParams, key: &KeyPair) -> String {
    params.serialize_request(key).expect("serialise the CSR").pem().expect("PEM-encode the CSR")
}

/// What an issued certificate actually says.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    /// URI SANs.
    pub uri_sans: Vec<String>,
    /// Every other SAN, as text.
    pub other_sans: Vec<String>,
    /// The subject DN, as text.
    pub subject: String,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// Whether the EKU extension names clientAuth.
    pub client_auth: bool,
    /// Whether the EKU extension names serverAuth.
    pub server_auth: bool,
    /// Whether keyUsage allows keyCertSign.
    pub key_cert_sign: bool,
    /// Validity start, seconds since the epoch.
    pub not_before_unix: i64,
    /// Validity end, seconds since the epoch.
    pub not_after_unix: i64,
    /// The Palisade identity attributes extension.
    pub attributes: Option<IdentityAttributes>,
    /// Whether the attributes extension is marked critical.
    pub attributes_critical: bool,
}

/// Parses a certificate (PEM or DER) into a [`LeafInfo`].
///
/// # Panics
/// If it is not a certificate.
#[must_use]
pub fn leaf_info(cert: &[u8]) -> LeafInfo {
    let der: CertificateDer<'static> = match std::str::from_utf8(cert) {
        Ok(text) if text.contains("-----BEGIN") => {
            palisade_proto::pem::certs(text).expect("a PEM certificate").remove(0)
        }
        _ => CertificateDer::from(cert.to_vec()),
    };
    let (_, x509) = X509Certificate::from_der(&der).expect("a DER certificate");
    let mut uri_sans = Vec::new();
    let mut other_sans = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                other => other_sans.push(other.to_string()),
            }
        }
    }
    let eku = x509.extended_key_usage().ok().flatten().map(|e| e.value.clone());
    let mut attributes = None;
    let mut attributes_critical = false;
    let mut key_cert_sign = false;
    for ext in x509.extensions() {
        if ext.oid.to_id_string() == ATTRIBUTES_OID_STR {
            attributes = IdentityAttributes::from_der(ext.value).ok();
            attributes_critical = ext.critical;
        }
        if let ParsedExtension::KeyUsage(ku) = ext.parsed_extension() {
            key_cert_sign = ku.key_cert_sign();
        }
    }
    LeafInfo {
        uri_sans,
        other_sans,
        subject: x509.subject().to_string(),
        is_ca: x509.is_ca(),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        key_cert_sign,
        not_before_unix: x509.validity().not_before.timestamp(),
        not_after_unix: x509.validity().not_after.timestamp(),
        attributes,
        attributes_critical,
    }
}
