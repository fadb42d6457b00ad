//! Test PKI: a CA and certificates made the way the broker's CA makes them
//! (one URI SAN, clientAuth EKU, the identity-attributes extension).

use std::time::{Duration, SystemTime};

use palisade_proto::bundle::SignedBundle;
use palisade_proto::identity::{ATTRIBUTES_OID, IdentityAttributes, PeerRole, TrustAnchors};
use palisade_proto::pem;
use palisade_proto::tls::TlsIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub(crate) const TRUST_DOMAIN: &str = "td";

pub(crate) struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
}

/// A leaf certificate and the key it certifies.
pub(crate) struct Issued {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
    pub(crate) key: KeyPair,
}

impl Issued {
    pub(crate) fn tls(&self) -> TlsIdentity {
        TlsIdentity {
            chain: vec![self.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
        }
    }
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = new_key();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Palisade test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = at(SystemTime::now() - Duration::from_secs(86_400));
        params.not_after = at(SystemTime::now() + Duration::from_secs(86_400 * 30));
        let cert = params.self_signed(&key).expect("CA");
        Self { der: cert.der().clone(), pem: cert.pem(), params, key }
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.der.clone()
    }

    pub(crate) fn trust(&self) -> TrustAnchors {
        TrustAnchors::new(TRUST_DOMAIN.parse().expect("td"), vec![self.der.clone()]).expect("anchors")
    }

    /// A fresh key and a certificate valid from an hour ago to an hour from now.
    pub(crate) fn issue(&self, role: PeerRole, id: &str, name: &str, groups: &[&str]) -> Issued {
        let now = SystemTime::now();
        let window = Duration::from_secs(3_600);
        self.issue_for(new_key(), role, id, name, groups, now - window, now + window)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue_for(
        &self,
        key: KeyPair,
        role: PeerRole,
        id: &str,
        name: &str,
        groups: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Issued {
        let uri = format!("spiffe://{TRUST_DOMAIN}/{role}/{id}");
        let cert = self.sign(&key, &uri, name, groups, not_before, not_after);
        Issued { der: cert.der().clone(), pem: cert.pem(), key }
    }

    /// Signs a CSR the way the broker does: its own params, the CSR's key only.
    pub(crate) fn sign_csr(&self, csr_pem: &str, role: PeerRole, id: &str, lifetime: Duration) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).expect("CSR");
        let uri = format!("spiffe://{TRUST_DOMAIN}/{role}/{id}");
        let now = SystemTime::now();
        self.sign(&csr.public_key, &uri, "renewed", &[], now - Duration::from_secs(60), now + lifetime).pem()
    }

    fn sign(
        &self,
        key: &impl PublicKeyData,
        uri: &str,
        name: &str,
        groups: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> rcgen::Certificate {
        let attrs = IdentityAttributes {
            v: 1,
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            session: None,
            mfa_at: None,
            auth_methods: Vec::new(),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.custom_extensions = vec![CustomExtension::from_oid_content(ATTRIBUTES_OID, attrs.to_der())];
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        params.signed_by(key, &Issuer::from_params(&self.params, &self.key)).expect("sign")
    }

    /// `bundle` as the broker sends it: JSON signed with this CA's key at `signed_at`.
    pub(crate) fn sign_bundle(&self, bundle: &serde_json::Value, signed_at: SystemTime) -> SignedBundle {
        use rcgen::SigningKey as _;
        let at = signed_at.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        SignedBundle::sign(bundle.to_string(), at, |input| self.key.sign(input)).expect("sign bundle")
    }

    /// [`bundle`], signed now.
    pub(crate) fn signed(&self, version: u64, permitted_group: &str) -> SignedBundle {
        self.sign_bundle(&bundle(version, permitted_group), SystemTime::now())
    }

    /// The broker's QUIC server certificate: IP SAN 127.0.0.1, DNS localhost.
    pub(crate) fn server(&self) -> TlsIdentity {
        let key = new_key();
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).expect("sign");
        Issued { der: cert.der().clone(), pem: cert.pem(), key }.tls()
    }
}

/// The first certificate of a PEM text.
pub(crate) fn first_cert(pem_text: &str) -> CertificateDer<'static> {
    pem::certs(pem_text).expect("PEM").remove(0)
}

/// A bundle permitting `permitted_group` to connect to `llm-prod` (segment `inference`).
pub(crate) fn bundle(version: u64, permitted_group: &str) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        "files": [{
            "name": "inference.cedar",
            "text": format!(
                "@id(\"agents\") permit (principal in Group::\"{permitted_group}\", \
                 action == Action::\"connect\", resource in Segment::\"inference\");"
            ),
        }],
        "services": [{ "name": "llm-prod", "segment": "inference", "protocol": "tcp", "labels": [] }],
    })
}
