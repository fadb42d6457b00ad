//! What the CA checks in a certificate signing request, and the one thing it keeps: the public key.
//!
//! Names, extensions and attributes a CSR asks for are read by nobody; the
//! CA writes its own (see [`super::ca`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::PublicKeyData as _;
use x509_parser::asn1_rs::Tag;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::IssueError;

/// Largest CSR accepted, PEM text included.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Deepest nesting of constructed elements accepted; real CSRs stay under 10.
const MAX_DEPTH: usize = 32;

const BEGIN: &str = "-----BEGIN CERTIFICATE REQUEST-----";
const END: &str = "-----END CERTIFICATE REQUEST-----";

/// The kinds of key the CA certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// A CSR that passed every check. Holds only the public key.
#[derive(Clone, Debug)]
pub struct CheckedCsr {
    key_type: KeyType,
    public_key: rcgen::SubjectPublicKeyInfo,
}

impl CheckedCsr {
    /// The key's type.
    #[must_use]
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The raw public key (the SubjectPublicKeyInfo's BIT STRING contents).
    #[must_use]
    pub fn public_key_raw(&self) -> &[u8] {
        self.public_key.der_bytes()
    }

    /// Hex SHA-256 of [`Self::public_key_raw`], as stored with issued certificates.
    #[must_use]
    pub fn public_key_sha256(&self) -> String {
        palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(self.public_key_raw()))
    }

    pub(crate) fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// Checks a PEM CSR: at most [`MAX_CSR_BYTES`], exactly one `CERTIFICATE REQUEST`
/// block and nothing else, strict DER (definite lengths in their shortest form,
/// at most [`MAX_DEPTH`] deep) without trailing bytes, an ECDSA P-256 or
/// Ed25519 key, a signature algorithm that fits the key (ECDSA with SHA-256 or
/// SHA-384, or Ed25519; never SHA-1), and a self-signature that verifies
/// (proof of possession).
///
/// # Errors
/// [`IssueError::TooLarge`], [`IssueError::Malformed`], [`IssueError::KeyType`],
/// [`IssueError::SignatureAlgorithm`] or [`IssueError::Signature`].
pub fn check_csr(pem: &str) -> Result<CheckedCsr, IssueError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(IssueError::TooLarge);
    }
    let der = pem_to_der(pem)?;
    check_der(&der, 0).map_err(|e| IssueError::Malformed(format!("not DER: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|_| IssueError::Malformed("not a DER PKCS#10 request".into()))?;
    if !rest.is_empty() {
        return Err(IssueError::Malformed("trailing bytes after the request".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key_type = key_type(spki)?;
    check_signature_algorithm(key_type, &csr.signature_algorithm)?;
    csr.verify_signature().map_err(|_| IssueError::Signature)?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| IssueError::Malformed(format!("unusable public key: {e}")))?;
    Ok(CheckedCsr { key_type, public_key })
}

/// An explicit list rather than whatever the verifier happens to support.
fn check_signature_algorithm(key_type: KeyType, alg: &AlgorithmIdentifier<'_>) -> Result<(), IssueError> {
    let oid = &alg.algorithm;
    let fits = match key_type {
        KeyType::EcdsaP256 => *oid == OID_SIG_ECDSA_WITH_SHA256 || *oid == OID_SIG_ECDSA_WITH_SHA384,
        KeyType::Ed25519 => *oid == OID_SIG_ED25519,
    };
    if !fits || alg.parameters.is_some() {
        let name = algorithm_name(oid);
        let key = match key_type {
            KeyType::EcdsaP256 => "P-256",
            KeyType::Ed25519 => "Ed25519",
        };
        return Err(IssueError::SignatureAlgorithm(format!("{name} with a {key} key")));
    }
    Ok(())
}

/// The short name of a signature algorithm; `ecdsa-with-SHA1` is missing from the registry.
fn algorithm_name(oid: &x509_parser::der_parser::Oid<'_>) -> String {
    let dotted = oid.to_id_string();
    if dotted == "1.2.840.10045.4.1" {
        return "ecdsa-with-SHA1".to_owned();
    }
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry()).map_or(dotted, str::to_owned)
}

/// Walks `der` as a series of elements. x509-parser takes some BER (a length
/// in a longer form than needed); two parsers that disagree on such bytes
/// are how signature checks get fooled, so anything but DER is refused.
fn check_der(mut der: &[u8], depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} deep"));
    }
    while !der.is_empty() {
        let (constructed, header, len) = element_header(der)?;
        let content = der.get(header..header + len).ok_or("an element runs past the end of its parent")?;
        if constructed {
            check_der(content, depth + 1)?;
        }
        der = &der[header + len..];
    }
    Ok(())
}

/// (constructed, header length, content length) of the element `der` starts with.
fn element_header(der: &[u8]) -> Result<(bool, usize, usize), String> {
    let (tag, first) = match der {
        [tag, first, ..] => (*tag, *first),
        _ => return Err("an element is cut short".into()),
    };
    if tag & 0x1f == 0x1f {
        return Err("a multi-byte tag".into());
    }
    let constructed = tag & 0x20 != 0;
    match first {
        0..=0x7f => Ok((constructed, 2, usize::from(first))),
        0x80 => Err("an indefinite length (BER)".into()),
        _ => {
            let n = usize::from(first & 0x7f);
            let bytes = der.get(2..2 + n).filter(|_| n <= 3).ok_or("a length field that is too long")?;
            let len = bytes.iter().fold(0, |acc, b| acc << 8 | usize::from(*b));
            if bytes[0] == 0 || len < 0x80 {
                return Err("a length in a longer form than needed (BER)".into());
            }
            Ok((constructed, 2 + n, len))
        }
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, IssueError> {
    let body = pem
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or_else(|| IssueError::Malformed(format!("expected exactly one PEM block {BEGIN} and nothing else")))?;
    if body.contains("-----") {
        return Err(IssueError::Malformed("more than one PEM block".into()));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b64).map_err(|_| IssueError::Malformed("the PEM block is not valid base64".into()))
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, IssueError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().filter(|p| p.tag() == Tag::Oid).and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyType::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Err(IssueError::KeyType("ECDSA P-384".into())),
            Some(c) if c == OID_NIST_EC_P521 => Err(IssueError::KeyType("ECDSA P-521".into())),
            Some(c) => Err(IssueError::KeyType(format!("ECDSA on curve {c}"))),
            None => Err(IssueError::KeyType("ECDSA with explicit curve parameters".into())),
        };
    }
    if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() {
            return Err(IssueError::Malformed("Ed25519 key with parameters".into()));
        }
        return Ok(KeyType::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        return Err(IssueError::KeyType(format!("RSA ({bits} bits)")));
    }
    if *alg == OID_KEY_TYPE_DSA {
        return Err(IssueError::KeyType("DSA".into()));
    }
    Err(IssueError::KeyType(format!("algorithm {alg}")))
}
