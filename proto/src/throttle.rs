//! Throttles the broker sets after an extraction or abuse alert.
//!
//! The broker alone decides them (they live in its database); it sends each
//! connector, on every control link, the whole current set for the services
//! that connector serves ([`crate::control::BrokerToConnector::Throttles`]).
//! A connector replaces what it knew with each set, and keeps the last set
//! while no broker is linked. There is no connector → broker frame for
//! throttles: a connector can neither set nor clear one.

use serde::{Deserialize, Serialize};

/// The most throttles in one frame; the broker sends the newest ones first.
pub const MAX_THROTTLES: usize = 4_096;

/// One identity held to a request rate on one service until an admin clears it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// The service name.
    pub service: String,
    /// The caller's SPIFFE id.
    pub identity: String,
    /// Requests per (sliding) minute the identity may make to the service; at least 1.
    pub requests_per_minute: u32,
}
