//! Enrollment: the one-time token format and the JSON of `POST /api/v1/enroll`.
//!
//! A token is `pal1.<secret>.<ca-pin>`: 32 random bytes and the SHA-256 of
//! the broker's CA certificate, both base64url. The secret is single-use and
//! stored only as a hash by the broker; the pin lets a new machine trust the
//! broker's HTTPS endpoint without any prior configuration (the broker's
//! chain must contain exactly that CA).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "pal1";

/// A parsed enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    secret: [u8; 32],
    ca_pin: [u8; 32],
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentToken(***)")
    }
}

/// The text was not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a Palisade enrollment token (expected pal1.<secret>.<ca-pin>); copy it again from `palisade-broker token create`"
)]
pub struct TokenFormatError;

impl EnrollmentToken {
    /// A fresh random token pinned to `ca_der`.
    #[must_use]
    pub fn generate(ca_der: &[u8]) -> Self {
        let mut secret = [0u8; 32];
        // ring's SystemRandom only fails when the OS has no randomness; there is no safe fallback.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .unwrap_or_else(|_| panic!("the operating system's random number generator failed"));
        Self { secret, ca_pin: sha256(ca_der) }
    }

    /// The value the broker stores: hex SHA-256 of the secret.
    #[must_use]
    pub fn secret_hash(&self) -> String {
        hex(&sha256(&self.secret))
    }

    /// The SHA-256 of the CA certificate this token trusts.
    #[must_use]
    pub fn ca_pin(&self) -> [u8; 32] {
        self.ca_pin
    }

    /// The full token text.
    #[must_use]
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}", URL_SAFE_NO_PAD.encode(self.secret), URL_SAFE_NO_PAD.encode(self.ca_pin))
    }
}

impl FromStr for EnrollmentToken {
    type Err = TokenFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(secret), Some(pin), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError);
        };
        let decode32 = |p: &str| -> Result<[u8; 32], TokenFormatError> {
            URL_SAFE_NO_PAD.decode(p).ok().and_then(|v| v.try_into().ok()).ok_or(TokenFormatError)
        };
        Ok(Self { secret: decode32(secret)?, ca_pin: decode32(pin)? })
    }
}

/// SHA-256 of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Body of `POST /api/v1/enroll`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time token.
    pub token: String,
    /// PEM PKCS#10 request for a key made on the enrolling machine.
    pub csr_pem: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest").field("token", &"***").finish_non_exhaustive()
    }
}

/// Answer to a successful enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The SPIFFE id the certificate names.
    pub identity: String,
    /// PEM leaf certificate.
    pub certificate_pem: String,
    /// PEM trust bundle (the broker's CA).
    pub ca_pem: String,
    /// Certificate expiry, seconds since the epoch.
    pub not_after_unix: u64,
    /// The broker's QUIC address (host:port) as the broker knows it.
    pub quic_addr: String,
    /// Other broker replicas sharing the broker's database (QUIC `host:port`
    /// each), for the client to fail over to. Absent with a single broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

/// Error body of every JSON API endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// Stable short code.
    pub error: String,
    /// What was wrong and what to do about it.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_hides_itself_in_debug() {
        let token = EnrollmentToken::generate(b"ca");
        let parsed: EnrollmentToken = token.expose().parse().expect("parses");
        assert_eq!(parsed, token);
        assert_eq!(parsed.ca_pin(), sha256(b"ca"));
        assert_eq!(format!("{token:?}"), "EnrollmentToken(***)");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = EnrollmentToken::generate(b"ca").expose();
        let short = good[..good.len() - 2].to_owned();
        for bad in ["", "pal1", "pal2.a.b", &short, &format!("{good}.x"), &good.replace("pal1", "PAL1")] {
            assert!(bad.parse::<EnrollmentToken>().is_err(), "{bad:?} was accepted");
        }
    }
}
