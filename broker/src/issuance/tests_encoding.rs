//! CSRs built byte by byte, for what rcgen will not write: a genuine
//! ECDSA signature over SHA-1 (CA-02), BER encodings such as indefinite
//! lengths, properly signed so only the encoding can be refused (CA-04), and
//! CSRs at the size limit whose refusal must stay cheap.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};
use ring::digest::{Algorithm, SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};

use super::IssueError;
use super::csr::{KeyType, MAX_CSR_BYTES, check_csr};

/// ecdsa-with-SHA1, 1.2.840.10045.4.1.
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2.
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// A DER tag-length-value with the shortest length form.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap());
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap());
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A CertificationRequestInfo: version 0, an empty subject, `key`'s SPKI and `attributes`.
fn request_info(key: &KeyPair, attributes: &[u8]) -> Vec<u8> {
    let fields = [tlv(0x02, &[0]), tlv(0x30, &[]), key.subject_public_key_info(), tlv(0xa0, attributes)];
    tlv(0x30, &fields.concat())
}

/// A genuine ECDSA signature by `key` over `hash(info)`, DER.
fn sign(key: &KeyPair, hash: &'static Algorithm, info: &[u8]) -> DerSignature {
    let signer = SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    let signature: DerSignature = signer.sign_prehash(digest(hash, info).as_ref()).unwrap();
    signer.verifying_key().verify_prehash(digest(hash, info).as_ref(), &signature).unwrap();
    signature
}

/// `info` signed by `key` under signature algorithm `oid` with `hash`, DER.
fn csr(key: &KeyPair, info: &[u8], oid: &[u8], hash: &'static Algorithm) -> Vec<u8> {
    let signature = sign(key, hash, info);
    csr_with_signature(info, oid, signature.as_bytes())
}

fn csr_with_signature(info: &[u8], oid: &[u8], signature: &[u8]) -> Vec<u8> {
    let alg = tlv(0x30, &tlv(0x06, oid));
    let bits = [&[0u8][..], signature].concat();
    tlv(0x30, &[info, &alg, &tlv(0x03, &bits)].concat())
}

fn pem(der: &[u8]) -> String {
    palisade_proto::pem::encode("CERTIFICATE REQUEST", der)
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn a_p256_csr_signed_over_sha1_is_refused_for_its_signature_algorithm() {
    let key = p256();
    let info = request_info(&key, &[]);
    let sha256 = pem(&csr(&key, &info, ECDSA_SHA256, &SHA256));
    assert_eq!(check_csr(&sha256).unwrap().key_type(), KeyType::EcdsaP256, "the hand-built CSR itself is good");
    let sha1 = pem(&csr(&key, &info, ECDSA_SHA1, &SHA1_FOR_LEGACY_USE_ONLY));
    let err = check_csr(&sha1).unwrap_err();
    assert!(matches!(&err, IssueError::SignatureAlgorithm(a) if a.contains("ecdsa-with-SHA1")), "{err}");
    assert!(err.to_string().contains("sign the CSR with ECDSA SHA-256"), "{err}");
    assert!(err.is_bad_request());
    // A SHA-256 signature labelled Ed25519 names an algorithm that does not fit the key.
    let ed25519_label = pem(&csr(&key, &info, &[0x2b, 0x65, 0x70], &SHA256));
    assert!(matches!(check_csr(&ed25519_label), Err(IssueError::SignatureAlgorithm(_))));
}

/// `der` with the header of its outermost element replaced by an indefinite length and end-of-contents.
fn indefinite(der: &[u8]) -> Vec<u8> {
    let header = if der[1] < 0x80 { 2 } else { 2 + usize::from(der[1] & 0x7f) };
    [&[der[0], 0x80][..], &der[header..], &[0, 0]].concat()
}

/// `der` with its outermost length in a long form padded with zero bytes (BER, not DER).
fn padded_length(der: &[u8]) -> Vec<u8> {
    let header = if der[1] < 0x80 { 2 } else { 2 + usize::from(der[1] & 0x7f) };
    let len = u32::try_from(der.len() - header).unwrap().to_be_bytes();
    [&[der[0], 0x84][..], &len, &der[header..]].concat()
}

#[test]
fn ber_encodings_are_refused_even_when_properly_signed() {
    let key = p256();
    let info = request_info(&key, &[]);
    let der = csr(&key, &info, ECDSA_SHA256, &SHA256);
    assert!(check_csr(&pem(&der)).is_ok());
    let mut cases = vec![("indefinite outer length", indefinite(&der)), ("padded outer length", padded_length(&der))];
    // Inside the signed part, signed over exactly those bytes: only the encoding is wrong.
    let non_minimal_version = {
        let fields = [tlv(0x02, &[0, 0]), tlv(0x30, &[]), key.subject_public_key_info(), tlv(0xa0, &[])];
        tlv(0x30, &fields.concat())
    };
    for (what, info) in [
        ("indefinite info length", indefinite(&info)),
        ("padded info length", padded_length(&info)),
        ("non-minimal version integer", non_minimal_version),
    ] {
        cases.push((what, csr(&key, &info, ECDSA_SHA256, &SHA256)));
    }
    for (what, der) in cases {
        let err = check_csr(&pem(&der)).unwrap_err();
        assert!(matches!(err, IssueError::Malformed(_)), "{what}: {err}");
    }
}

/// Attributes of unknown type filling `len` bytes (give or take one attribute).
fn filler_attributes(len: usize) -> Vec<u8> {
    let one = tlv(0x30, &[tlv(0x06, &[0x2a, 0x03, 0x04]), tlv(0x31, &tlv(0x0c, b"x"))].concat());
    one.repeat(len / one.len())
}

/// Nested SEQUENCEs, `depth` deep, as the value of one attribute.
fn deep_attribute(depth: usize) -> Vec<u8> {
    let mut value = Vec::new();
    for _ in 0..depth {
        value = tlv(0x30, &value);
    }
    tlv(0x30, &[tlv(0x06, &[0x2a, 0x03, 0x04]), tlv(0x31, &value)].concat())
}

#[test]
fn refusing_a_bad_csr_at_the_size_limit_is_fast() {
    let key = p256();
    let mut cases = Vec::new();
    for (what, attributes) in [("many attributes", filler_attributes(11_500)), ("deep nesting", deep_attribute(3_000))]
    {
        let info = request_info(&key, &attributes);
        let mut signature = sign(&key, &SHA256, &info).as_bytes().to_vec();
        let last = signature.len() - 1;
        signature[last] ^= 1;
        let bad_signature = csr_with_signature(&info, ECDSA_SHA256, &signature);
        cases.push((format!("{what}, bad signature"), pem(&bad_signature)));
        cases.push((format!("{what}, indefinite length"), pem(&indefinite(&bad_signature))));
    }
    for (what, pem) in &cases {
        assert!(pem.len() <= MAX_CSR_BYTES, "{what}: {} bytes is over the limit", pem.len());
        assert!(pem.len() > MAX_CSR_BYTES * 3 / 4, "{what}: {} bytes is not near the limit", pem.len());
        let started = Instant::now();
        let result = check_csr(pem);
        let took = started.elapsed();
        assert!(result.is_err(), "{what} was accepted");
        // Generous: a debug build on a loaded machine; a release build takes well under a millisecond.
        assert!(took < Duration::from_millis(500), "{what}: refusal took {took:?}");
    }
}
