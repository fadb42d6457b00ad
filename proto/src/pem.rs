//! PEM in and out, without another dependency.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No block of the expected kind.
    #[error("no {0} found in the PEM text")]
    Missing(&'static str),
    /// A block was malformed.
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

/// Encodes DER bytes as one PEM block with the given label.
#[must_use]
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate in the PEM text, in order.
///
/// # Errors
/// Malformed PEM, or no certificate at all.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Missing("certificate"));
    }
    Ok(certs)
}

/// The first private key in the PEM text.
///
/// # Errors
/// Malformed PEM, or no key.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing("private key"),
        other => PemError::Malformed(other.to_string()),
    })
}
