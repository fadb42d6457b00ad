//! Signed policy bundles: what the broker's CA signs and how a connector
//! checks it.
//!
//! The signature input is `b"palisade policy bundle v1\n"`, then
//! `signed_at_unix` as 8 big-endian bytes, then the bundle JSON exactly as
//! sent. The CA key also signs X.509 certificates; the fixed prefix keeps a
//! bundle signature from ever being valid as a certificate signature (DER
//! to-be-signed data starts with a SEQUENCE tag, never with `p`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Domain separation for bundle signatures.
pub const SIGNING_PREFIX: &[u8] = b"palisade policy bundle v1\n";

/// A policy bundle as the broker signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// The bundle JSON, byte for byte what was signed.
    pub bundle_json: String,
    /// When the broker signed it, seconds since the Unix epoch.
    pub signed_at_unix: u64,
    /// ECDSA P-256 SHA-256 (ASN.1 DER) signature by the CA key, base64.
    pub signature: String,
}

/// A bundle whose signature checked out against a trusted CA. Only
/// [`SignedBundle::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    signed: SignedBundle,
}

impl VerifiedBundle {
    /// The verified bundle JSON.
    #[must_use]
    pub fn bundle_json(&self) -> &str {
        &self.signed.bundle_json
    }
    /// When the broker signed it, seconds since the Unix epoch.
    #[must_use]
    pub fn signed_at_unix(&self) -> u64 {
        self.signed.signed_at_unix
    }
    /// The signed form, e.g. to persist it.
    #[must_use]
    pub fn signed(&self) -> &SignedBundle {
        &self.signed
    }
}

/// A bundle signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleSignatureError {
    /// The signature is not base64.
    #[error("the bundle signature is not base64")]
    Encoding,
    /// No trusted CA certificate has a usable public key.
    #[error("no trusted CA certificate to verify the bundle with")]
    NoCa,
    /// No trusted CA signed these bytes.
    #[error("the bundle signature does not verify against the trusted CA")]
    BadSignature,
}

/// The bytes the CA signs for a bundle.
#[must_use]
pub fn signing_input(signed_at_unix: u64, bundle_json: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_PREFIX.len() + 8 + bundle_json.len());
    input.extend_from_slice(SIGNING_PREFIX);
    input.extend_from_slice(&signed_at_unix.to_be_bytes());
    input.extend_from_slice(bundle_json.as_bytes());
    input
}

impl SignedBundle {
    /// Signs `bundle_json` with `sign`, a function that signs its input with
    /// the CA key (ECDSA P-256 SHA-256, ASN.1).
    ///
    /// # Errors
    /// Whatever `sign` returns.
    pub fn sign<E>(
        bundle_json: String,
        signed_at_unix: u64,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Self, E> {
        let signature = STANDARD.encode(sign(&signing_input(signed_at_unix, &bundle_json))?);
        Ok(Self { bundle_json, signed_at_unix, signature })
    }

    /// Checks the signature against the public keys of `ca_certs`.
    ///
    /// # Errors
    /// A signature that is not base64, no usable CA certificate, or a
    /// signature no CA made over these bytes.
    pub fn verify(self, ca_certs: &[CertificateDer<'_>]) -> Result<VerifiedBundle, BundleSignatureError> {
        let signature = STANDARD.decode(&self.signature).map_err(|_| BundleSignatureError::Encoding)?;
        let input = signing_input(self.signed_at_unix, &self.bundle_json);
        let mut any_key = false;
        for der in ca_certs {
            let Ok((_, cert)) = X509Certificate::from_der(der) else { continue };
            any_key = true;
            let key =
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, cert.public_key().subject_public_key.data.as_ref());
            if key.verify(&input, &signature).is_ok() {
                return Ok(VerifiedBundle { signed: self });
            }
        }
        Err(if any_key { BundleSignatureError::BadSignature } else { BundleSignatureError::NoCa })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::KeyPair, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        (key, cert.der().clone())
    }

    fn signed(key: &rcgen::KeyPair) -> SignedBundle {
        use rcgen::SigningKey as _;
        SignedBundle::sign(r#"{"version":1}"#.to_owned(), 1_700_000_000, |input| key.sign(input)).expect("sign")
    }

    #[test]
    fn a_signed_bundle_verifies_and_tampering_does_not() {
        let (key, der) = ca();
        let bundle = signed(&key);
        assert_eq!(
            bundle.clone().verify(std::slice::from_ref(&der)).expect("verifies").bundle_json(),
            r#"{"version":1}"#
        );
        let mut json = bundle.clone();
        json.bundle_json = r#"{"version":2}"#.to_owned();
        assert_eq!(json.verify(std::slice::from_ref(&der)).err(), Some(BundleSignatureError::BadSignature));
        let mut time = bundle.clone();
        time.signed_at_unix += 1;
        assert_eq!(time.verify(std::slice::from_ref(&der)).err(), Some(BundleSignatureError::BadSignature));
        let (_, other) = ca();
        assert_eq!(bundle.verify(&[other]).err(), Some(BundleSignatureError::BadSignature));
    }

    #[test]
    fn the_input_is_prefixed_and_binds_the_time() {
        let input = signing_input(1, "{}");
        assert!(input.starts_with(SIGNING_PREFIX));
        assert_eq!(&input[SIGNING_PREFIX.len()..SIGNING_PREFIX.len() + 8], &1u64.to_be_bytes());
        assert!(input.ends_with(b"{}"));
    }
}
