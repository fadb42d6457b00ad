//! Reason codes carried in QUIC stream resets, and the messages people see.
//!
//! The full reason for a refusal goes to the audit trail; the peer only gets
//! one of these coarse codes, which the client turns into a clear sentence.

use std::fmt;

/// Why a stream was refused or cut. Sent as the QUIC application error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RejectCode {
    /// The broker's policy does not allow this identity to reach the service.
    Forbidden = 0x10,
    /// The connector's policy refused the stream.
    ForbiddenByConnector = 0x11,
    /// No such service is known.
    UnknownService = 0x12,
    /// No connector serving the service is online.
    NoConnector = 0x13,
    /// The connector could not reach the workload.
    UpstreamUnreachable = 0x14,
    /// The workload did not answer in time.
    UpstreamTimeout = 0x15,
    /// The stream header was malformed or of an unknown version.
    BadRequest = 0x16,
    /// The presented identity is not (or no longer) acceptable.
    IdentityRejected = 0x17,
    /// Something failed inside Palisade; the request was denied to be safe.
    Internal = 0x18,
    /// Too many requests.
    RateLimited = 0x19,
    /// The broker or connector is shutting down.
    ShuttingDown = 0x1a,
    /// The tunnel was closed because access was revoked.
    Revoked = 0x1b,
    /// The broker could not confirm its view of revocations and policy is
    /// current (strict consistency), so it decides nothing for now.
    Stale = 0x1c,
}

impl RejectCode {
    const ALL: [Self; 13] = [
        Self::Forbidden,
        Self::ForbiddenByConnector,
        Self::UnknownService,
        Self::NoConnector,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
        Self::BadRequest,
        Self::IdentityRejected,
        Self::Internal,
        Self::RateLimited,
        Self::ShuttingDown,
        Self::Revoked,
        Self::Stale,
    ];

    /// The code as sent on the wire.
    #[must_use]
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Maps a received code back; unknown codes are `None`.
    #[must_use]
    pub fn from_u64(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.as_u32()) == code)
    }

    /// A stable short name for logs and JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::ForbiddenByConnector => "forbidden_by_connector",
            Self::UnknownService => "unknown_service",
            Self::NoConnector => "no_connector",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::BadRequest => "bad_request",
            Self::IdentityRejected => "identity_rejected",
            Self::Internal => "internal",
            Self::RateLimited => "rate_limited",
            Self::ShuttingDown => "shutting_down",
            Self::Revoked => "revoked",
            Self::Stale => "stale",
        }
    }

    /// What a person should read, and what to do about it.
    #[must_use]
    pub fn message(self, service: &str) -> String {
        match self {
            Self::Forbidden => format!("denied by policy: you may not reach {service}; ask an admin for access"),
            Self::ForbiddenByConnector => {
                format!("denied by policy at the connector for {service}; ask an admin for access")
            }
            Self::UnknownService => format!("unknown service {service}: run `palisade services` to list yours"),
            Self::NoConnector => {
                format!("no connector is serving {service} right now; try again later or tell an admin")
            }
            Self::UpstreamUnreachable => format!("the connector could not reach the workload behind {service}"),
            Self::UpstreamTimeout => format!("the workload behind {service} did not answer in time"),
            Self::BadRequest => "the broker did not understand the request; upgrade the palisade client".to_owned(),
            Self::IdentityRejected => "your identity was refused: enroll or log in again".to_owned(),
            Self::Internal => format!("the broker could not decide on {service} and denied it to be safe; try again"),
            Self::RateLimited => format!("too many requests to {service}; slow down and try again"),
            Self::ShuttingDown => "the broker is restarting; the client will reconnect".to_owned(),
            Self::Revoked => format!("access to {service} was revoked"),
            Self::Stale => {
                "the broker cannot reach its database to confirm access is still allowed; try again shortly".to_owned()
            }
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a draining broker writes on the one unidirectional stream it opens
/// to each client: open new streams on another replica; the streams already
/// running here may finish.
pub const MOVE_NOTICE: &[u8] = b"palisade: move to another replica\n";

/// QUIC connection close codes used by the broker.
pub mod close {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The presented certificate does not fit the connection's purpose (role, profile, disabled).
    pub const IDENTITY_REJECTED: u32 = 0x17;
    /// The broker is shutting down; reconnect elsewhere.
    pub const SHUTTING_DOWN: u32 = 0x1a;
    /// The ALPN protocol was missing or unknown.
    pub const BAD_PROTOCOL: u32 = 0x16;
    /// The identity or session was revoked (logout, session revoke, identity disabled).
    pub const REVOKED: u32 = 0x1b;
    /// The identity already holds as many connections as the broker allows.
    pub const TOO_MANY_CONNECTIONS: u32 = 0x19;
    /// The broker could not record the connection (its audit store is
    /// unavailable, e.g. a full disk) and refused it to be safe; try again later.
    pub const UNAVAILABLE: u32 = 0x18;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for code in RejectCode::ALL {
            assert_eq!(RejectCode::from_u64(u64::from(code.as_u32())), Some(code));
        }
        assert_eq!(RejectCode::from_u64(0), None);
        assert_eq!(RejectCode::from_u64(0xffff), None);
    }

    #[test]
    fn messages_name_the_service() {
        assert!(RejectCode::NoConnector.message("llm-prod").contains("no connector is serving llm-prod"));
        assert!(RejectCode::Forbidden.message("llm-prod").starts_with("denied by policy"));
    }
}
