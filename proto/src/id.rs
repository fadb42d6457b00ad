//! Identifiers that cross crate and process boundaries.
//!
//! No bare `Uuid` or `String` is used as an identifier between crates: each
//! kind of id has its own type, so a `ConnectorId` cannot be passed where a
//! `MachineId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The input was not a valid identifier of the named kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    /// Which kind of identifier was being parsed.
    pub kind: &'static str,
    /// What was wrong with it.
    pub reason: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random identifier.
            #[must_use]
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The raw 16 bytes, for compact wire encodings.
            #[must_use]
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds the identifier from its 16 raw bytes.
            #[must_use]
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Only the canonical lowercase hyphenated form is accepted, so one
                // identity has exactly one spelling in SANs, logs and the database.
                let uuid = Uuid::try_parse(s).map_err(|e| IdError { kind: $kind, reason: e.to_string() })?;
                if uuid.as_hyphenated().to_string() != s {
                    return Err(IdError { kind: $kind, reason: "not in canonical lowercase hyphenated form".into() });
                }
                Ok(Self(uuid))
            }
        }
    };
}

uuid_id!(
    /// A person, keyed by the broker (one per identity-provider subject).
    UserId,
    "user id"
);
uuid_id!(
    /// A machine identity: a CI job, an AI agent, a script.
    MachineId,
    "machine id"
);
uuid_id!(
    /// A connector that runs beside workloads.
    ConnectorId,
    "connector id"
);
uuid_id!(
    /// A sign-in session (people) or enrollment (machines).
    SessionId,
    "session id"
);
uuid_id!(
    /// One access decision; ties the broker's and the connector's audit events together.
    DecisionId,
    "decision id"
);

/// Checks a human-chosen name: a service, a machine, a connector or a group.
///
/// Names appear in URIs, Cedar entity ids, audit events and shell snippets,
/// so only a conservative alphabet is allowed: ASCII letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit, 1 to 63 characters.
///
/// # Errors
/// Returns [`IdError`] naming the first problem.
pub fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    let err = |reason: &str| IdError { kind, reason: reason.to_owned() };
    if s.is_empty() {
        return Err(err("must not be empty"));
    }
    if s.len() > 63 {
        return Err(err("must be at most 63 characters"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(err("must start with a letter or digit"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(err("may contain only ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_name($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_id!(
    /// A private service behind a connector, e.g. `llm-prod`.
    ServiceName,
    "service name"
);
name_id!(
    /// A group a person or machine belongs to, e.g. `ml-team`.
    GroupName,
    "group name"
);
name_id!(
    /// A display name for a machine or connector, chosen by an admin.
    IdentityName,
    "identity name"
);

/// A SPIFFE trust domain, e.g. `palisade.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| IdError { kind: "trust domain", reason: reason.to_owned() };
        if s.is_empty() || s.len() > 253 {
            return Err(err("must be 1 to 253 characters"));
        }
        let ok = s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
        if !ok {
            return Err(err("must be a lowercase DNS name such as palisade.example.com"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrustDomain> for String {
    fn from(t: TrustDomain) -> String {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_separators_and_control_characters() {
        for bad in ["", "a,b", "a/b", "a\nb", "a\0b", "-lead", "é", "a b", &"x".repeat(64)] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad:?} was accepted");
        }
        for good in ["llm-prod", "vector_db", "gpu.rack-1", "A1"] {
            assert!(good.parse::<ServiceName>().is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn uuid_ids_accept_only_the_canonical_form() {
        let id = MachineId::random();
        assert_eq!(id.to_string().parse::<MachineId>(), Ok(id));
        assert!(id.to_string().to_uppercase().parse::<MachineId>().is_err());
        assert!(id.as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>().parse::<MachineId>().is_err());
    }

    #[test]
    fn trust_domain_is_a_lowercase_dns_name() {
        assert!("palisade.local".parse::<TrustDomain>().is_ok());
        for bad in ["", "Upper.case", "a..b", "-a.b", "a/b", "spiffe://x"] {
            assert!(bad.parse::<TrustDomain>().is_err(), "{bad:?} was accepted");
        }
    }
}
