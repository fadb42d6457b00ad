//! The engine's answer: a `Grant` (which only the engine can make) or a
//! reason to deny.

use std::fmt;

/// The outcome of [`Engine::decide`](crate::Engine::decide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Access is granted; pass the grant on to whatever opens the tunnel.
    Allow(Grant),
    /// Access is denied, and why.
    Deny(DenyReason),
}

impl Decision {
    /// Whether access was granted.
    #[must_use]
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// A stable short code: `"allow"` or the [`DenyReason::code`].
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Allow(_) => "allow",
            Self::Deny(reason) => reason.code(),
        }
    }
}

/// Proof that the policy engine allowed a request.
///
/// Its fields are private and it has no public constructor, so a function
/// that takes a `&Grant` cannot be called without a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    service: String,
    segment: String,
    policy_ids: Vec<String>,
    policy_version: u64,
}

impl Grant {
    pub(crate) fn new(service: String, segment: String, policy_ids: Vec<String>, policy_version: u64) -> Self {
        Self { service, segment, policy_ids, policy_version }
    }

    /// The service access was granted to.
    #[must_use]
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The segment the service belongs to.
    #[must_use]
    pub fn segment(&self) -> &str {
        &self.segment
    }

    /// The ids of the policies that permitted the request, sorted.
    #[must_use]
    pub fn policy_ids(&self) -> &[String] {
        &self.policy_ids
    }

    /// The version of the policy bundle that decided.
    #[must_use]
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The service is not in the catalog.
    UnknownService,
    /// No policy permits the request (Cedar's default deny).
    NoPolicyPermits,
    /// An explicit `forbid` matched; it wins over every permit.
    Forbidden {
        /// The ids of the matching forbid policies, sorted.
        policy_ids: Vec<String>,
    },
    /// The request could not be evaluated (it does not fit the schema, or
    /// a policy failed to evaluate where that could have changed the
    /// answer). Deny on doubt.
    Invalid(String),
}

impl DenyReason {
    /// The policies responsible: the forbids for [`DenyReason::Forbidden`],
    /// empty otherwise.
    #[must_use]
    pub fn policy_ids(&self) -> &[String] {
        match self {
            Self::Forbidden { policy_ids } => policy_ids,
            Self::UnknownService | Self::NoPolicyPermits | Self::Invalid(_) => &[],
        }
    }

    /// A stable short code for logs, metrics and the wire:
    /// `unknown_service`, `no_policy`, `forbidden` or `invalid_request`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownService => "unknown_service",
            Self::NoPolicyPermits => "no_policy",
            Self::Forbidden { .. } => "forbidden",
            Self::Invalid(_) => "invalid_request",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownService => f.write_str("denied: unknown service"),
            Self::NoPolicyPermits => f.write_str("denied by policy: no policy permits this request"),
            Self::Forbidden { policy_ids } => {
                write!(f, "denied by policy: forbidden by {}", policy_ids.join(", "))
            }
            Self::Invalid(message) => write!(f, "denied: invalid request: {message}"),
        }
    }
}
