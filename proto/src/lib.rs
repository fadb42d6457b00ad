//! What Palisade's broker, connector and client agree on.
//!
//! - [`batch`]: received QUIC chunks on their way into a TCP socket.
//! - [`id`]: identifier newtypes and name rules.
//! - [`identity`]: SPIFFE ids in certificates and [`identity::verify_peer`],
//!   the only way to get a [`identity::VerifiedPeer`].
//! - [`wire`]: the versioned stream header and control-frame encoding.
//! - [`control`]: the connector's control-stream messages.
//! - [`bundle`]: signed policy bundles sent on the control stream.
//! - [`usage`]: quota counts shared by the connector replicas of a service.
//! - [`throttle`]: throttles the broker sets after an abuse alert.
//! - [`reject`]: reason codes in stream resets and their messages.
//! - [`share`]: send priorities that divide a connector link between identities.
//! - [`enroll`]: the enrollment token and the enrollment API's JSON.
//! - [`tls`]: rustls configurations built on the one crypto provider.
//! - [`pem`]: PEM helpers.
//!
//! This crate does no IO and never reads the clock: callers pass `now`.

pub mod batch;
pub mod bundle;
pub mod control;
pub mod enroll;
pub mod id;
pub mod identity;
pub mod pem;
pub mod reject;
pub mod share;
pub mod throttle;
pub mod tls;
pub mod usage;
pub mod wire;
