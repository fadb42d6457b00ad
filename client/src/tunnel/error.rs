//! What can go wrong between this client and the broker, and how each
//! failure reads for a person: stream reset codes, connection close codes
//! and handshake failures mapped to [`TunnelError`].

use std::time::{Duration, SystemTime};

use palisade_proto::reject::{RejectCode, close};
use quinn::{ConnectionError, VarInt};

use crate::store::StoreError;

/// TLS alert `no_application_protocol`.
const ALERT_NO_ALPN: u8 = 120;
/// TLS alert `certificate_expired`: rustls sends it for a certificate that
/// has expired or is not valid yet by the verifier's clock.
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;

/// Why a stream through the broker could not be opened or was cut.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The broker or the connector refused the stream.
    #[error("{}", code.message(service))]
    Rejected {
        /// The reason code from the stream reset.
        code: RejectCode,
        /// The service that was asked for.
        service: String,
    },
    /// The stream was reset with a code that is not a [`RejectCode`].
    #[error("the connection to {service} was reset (code {code})")]
    Reset {
        /// The QUIC application error code.
        code: u64,
        /// The service.
        service: String,
    },
    /// No enrollment is stored.
    #[error("not signed in or enrolled: run `palisade login --broker URL` (or `palisade enroll` for a machine)")]
    NotEnrolled,
    /// The local certificate has expired.
    #[error("certificate expired: run `palisade login` (or enroll again)")]
    CertificateExpired,
    /// The broker closed the connection (or a connector cut the stream)
    /// because the session or the identity was revoked.
    #[error(
        "session revoked or identity disabled: run `palisade login` to sign in again (a machine needs a new enrollment token from an admin)"
    )]
    Revoked,
    /// The broker refused this client's certificate.
    #[error("the broker refused this identity: enroll or log in again")]
    IdentityRefused,
    /// The broker refused this client's certificate as expired or not valid
    /// yet, which the client, having checked it by its own clock before
    /// connecting, does not think it is: the two clocks disagree.
    #[error(
        "the broker refused this certificate as expired or not yet valid by its clock, though it is valid by this machine's: one of the two clocks is wrong; set this one right (e.g. enable NTP) or ask an admin to check the broker's"
    )]
    ClockDisagrees,
    /// The broker's certificate is not from the CA we enrolled with.
    #[error("the broker at {addr} did not prove it is our broker ({reason}); check the address or enroll again")]
    BrokerUntrusted {
        /// The broker's QUIC address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The broker's certificate did not verify, and this machine's clock is
    /// behind the one that issued our own certificate: the clock is wrong,
    /// not the broker.
    #[error(
        "the broker at {addr} did not verify by this machine's clock, which is at least {behind} behind the broker's ({reason}); set the clock right (e.g. enable NTP) and try again"
    )]
    ClockBehind {
        /// The broker's QUIC address.
        addr: String,
        /// How far behind at least, e.g. `59m 1s`.
        behind: String,
        /// What failed.
        reason: String,
    },
    /// No QUIC connection to the broker could be made.
    #[error("cannot reach the broker at {addr} over UDP: {reason}")]
    Unreachable {
        /// The broker's QUIC address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// An established connection to the broker ended.
    #[error("lost the connection to the broker: {0}")]
    ConnectionLost(String),
    /// The broker answered something this client does not understand.
    #[error("unexpected answer from the broker: {0}; upgrade the palisade client")]
    Protocol(String),
    /// The stored enrollment could not be read.
    #[error(transparent)]
    Store(StoreError),
    /// TLS settings could not be built from the stored files.
    #[error("cannot use the stored certificate: {0}")]
    Tls(String),
    /// A local socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl TunnelError {
    /// The broker's reason code, if this is a refusal.
    #[must_use]
    pub fn reject_code(&self) -> Option<RejectCode> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            Self::IdentityRefused | Self::ClockDisagrees => Some(RejectCode::IdentityRejected),
            Self::Revoked => Some(RejectCode::Revoked),
            _ => None,
        }
    }

    /// The stream reset code a refusal or cut came with, mapped for people.
    pub(crate) fn from_code(code: VarInt, service: &str) -> Self {
        let raw = code.into_inner();
        match RejectCode::from_u64(raw) {
            Some(RejectCode::IdentityRejected) => Self::IdentityRefused,
            // A single tunnel cut (e.g. by a policy change) is not the end of the
            // session: say which access went away.
            Some(code) => Self::Rejected { code, service: service.to_owned() },
            None => Self::Reset { code: raw, service: service.to_owned() },
        }
    }

    /// An established connection closed.
    pub(crate) fn from_connection(e: &ConnectionError, service: &str) -> Self {
        match e {
            ConnectionError::ApplicationClosed(c) => match c.error_code.into_inner() {
                code if code == u64::from(close::IDENTITY_REJECTED) => Self::IdentityRefused,
                code if code == u64::from(close::REVOKED) => Self::Revoked,
                code if code == u64::from(close::SHUTTING_DOWN) => {
                    Self::Rejected { code: RejectCode::ShuttingDown, service: service.to_owned() }
                }
                code if code == u64::from(close::TOO_MANY_CONNECTIONS) => {
                    Self::Rejected { code: RejectCode::RateLimited, service: service.to_owned() }
                }
                code if code == u64::from(close::UNAVAILABLE) => {
                    Self::Rejected { code: RejectCode::Internal, service: service.to_owned() }
                }
                code if code == u64::from(close::BAD_PROTOCOL) => {
                    Self::Protocol("the broker refused this client's protocol".into())
                }
                _ => Self::ConnectionLost(e.to_string()),
            },
            ConnectionError::ConnectionClosed(c)
                if c.error_code == quinn::TransportErrorCode::crypto(ALERT_NO_ALPN) =>
            {
                Self::Protocol("the broker does not speak this client's protocol".into())
            }
            // A TLS alert from the broker: in TLS 1.3 the client's handshake completes
            // before the broker has checked its certificate, so a refusal arrives here.
            ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => refused_by_alert(c.error_code),
            ConnectionError::Reset => Self::ConnectionLost("the broker restarted".into()),
            ConnectionError::TimedOut => Self::ConnectionLost("the broker stopped answering".into()),
            other => Self::ConnectionLost(other.to_string()),
        }
    }

    /// A broker that did not verify, explained by this machine's clock when
    /// it reads earlier than `issued_at`, the start of our own certificate
    /// (the broker's clock when it issued it, minus a minute).
    pub(crate) fn explained_by_clock(self, issued_at: SystemTime, now: SystemTime) -> Self {
        match (self, issued_at.duration_since(now)) {
            (Self::BrokerUntrusted { addr, reason }, Ok(behind)) if !behind.is_zero() => {
                let behind = humantime::format_duration(Duration::from_secs(behind.as_secs().max(1))).to_string();
                Self::ClockBehind { addr, behind, reason }
            }
            (other, _) => other,
        }
    }

    /// Whether this is only a local socket error (the local application went away).
    #[must_use]
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Io(_))
    }
}

impl From<StoreError> for TunnelError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotEnrolled { .. } => Self::NotEnrolled,
            other => Self::Store(other),
        }
    }
}

pub(super) fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// The broker refused our certificate with this TLS alert. The client sends
/// only a certificate valid by its own clock, so `certificate_expired` means
/// the broker's clock puts it outside its validity.
fn refused_by_alert(code: quinn::TransportErrorCode) -> TunnelError {
    if code == quinn::TransportErrorCode::crypto(ALERT_CERTIFICATE_EXPIRED) {
        TunnelError::ClockDisagrees
    } else {
        TunnelError::IdentityRefused
    }
}

pub(super) fn handshake_error(e: &ConnectionError, addr: &str) -> TunnelError {
    match e {
        ConnectionError::TransportError(t) if is_crypto(t.code) => {
            TunnelError::BrokerUntrusted { addr: addr.to_owned(), reason: t.reason.clone() }
        }
        ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::crypto(ALERT_NO_ALPN) => {
            TunnelError::from_connection(e, "")
        }
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => refused_by_alert(c.error_code),
        ConnectionError::ApplicationClosed(_) => TunnelError::from_connection(e, ""),
        other => TunnelError::Unreachable { addr: addr.to_owned(), reason: other.to_string() },
    }
}

pub(super) fn read_exact_error(e: quinn::ReadExactError, what: &str) -> TunnelError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => TunnelError::Protocol("the answer ended early".into()),
        quinn::ReadExactError::ReadError(e) => crate::splice::read_error(e, what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_codes_map_to_messages() {
        let e = TunnelError::from_code(VarInt::from_u32(RejectCode::NoConnector.as_u32()), "llm-prod");
        assert_eq!(e.reject_code(), Some(RejectCode::NoConnector));
        assert!(e.to_string().starts_with("no connector is serving llm-prod"));
        let e = TunnelError::from_code(VarInt::from_u32(0x17), "llm-prod");
        assert!(matches!(e, TunnelError::IdentityRefused));
        let e = TunnelError::from_code(VarInt::from_u32(0x999), "llm-prod");
        assert!(matches!(e, TunnelError::Reset { code: 0x999, .. }));
        let e = TunnelError::from_code(VarInt::from_u32(RejectCode::Revoked.as_u32()), "llm-prod");
        assert_eq!(e.reject_code(), Some(RejectCode::Revoked));
        assert_eq!(e.to_string(), "access to llm-prod was revoked");
    }

    #[test]
    fn an_untrusted_broker_is_blamed_on_the_clock_only_when_it_is_behind() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let untrusted = || TunnelError::BrokerUntrusted { addr: "b:1".into(), reason: "not valid yet".into() };
        let behind = untrusted().explained_by_clock(issued, issued - Duration::from_secs(3540));
        assert!(matches!(&behind, TunnelError::ClockBehind { behind, .. } if behind == "59m"), "{behind:?}");
        assert!(behind.to_string().contains("set the clock right"), "{behind}");
        let on_time = untrusted().explained_by_clock(issued, issued + Duration::from_secs(5));
        assert!(matches!(on_time, TunnelError::BrokerUntrusted { .. }), "{on_time:?}");
        let other = TunnelError::NotEnrolled.explained_by_clock(issued, issued - Duration::from_secs(3540));
        assert!(matches!(other, TunnelError::NotEnrolled), "{other:?}");
    }

    #[test]
    fn the_revoked_close_code_tells_people_to_log_in() {
        let closed = ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: VarInt::from_u32(close::REVOKED),
            reason: bytes::Bytes::from_static(b"revoked"),
        });
        let e = TunnelError::from_connection(&closed, "llm-prod");
        assert!(matches!(e, TunnelError::Revoked), "{e:?}");
        assert_eq!(
            e.to_string(),
            "session revoked or identity disabled: run `palisade login` to sign in again (a machine needs a new enrollment token from an admin)"
        );
        assert!(matches!(handshake_error(&closed, "broker:4433"), TunnelError::Revoked));
    }

    #[test]
    fn a_certificate_refused_as_out_of_date_is_blamed_on_the_clocks() {
        let alert = |n: u8| {
            ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(n),
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        let out_of_date = handshake_error(&alert(ALERT_CERTIFICATE_EXPIRED), "broker:4433");
        assert!(matches!(out_of_date, TunnelError::ClockDisagrees), "{out_of_date:?}");
        assert!(out_of_date.to_string().contains("one of the two clocks is wrong"), "{out_of_date}");
        assert_eq!(out_of_date.reject_code(), Some(RejectCode::IdentityRejected));
        let later = TunnelError::from_connection(&alert(ALERT_CERTIFICATE_EXPIRED), "llm-prod");
        assert!(matches!(later, TunnelError::ClockDisagrees), "{later:?}");
        // Any other alert (here bad_certificate) is a refusal of the identity.
        assert!(matches!(handshake_error(&alert(42), "broker:4433"), TunnelError::IdentityRefused));
        assert!(matches!(TunnelError::from_connection(&alert(42), "x"), TunnelError::IdentityRefused));
    }
}
