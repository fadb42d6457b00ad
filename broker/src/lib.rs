//! The Palisade broker: issuing CA, policy decision point, QUIC relay and web API.
//!
//! The flow, in module order:
//! - [`init`] creates a data directory; [`config`] reads `broker.toml`.
//! - [`issuance`] is the CA: CSR checks ([`issuance::csr`]) and signing ([`issuance::ca`]).
//! - [`web`] serves HTTPS: enrollment (`POST /api/v1/enroll`), health, and
//!   [`login`]: people signing in with OIDC + WebAuthn, sessions, device codes.
//! - [`policy_store`] keeps every applied policy set as a version in the database.
//! - [`relay`] accepts QUIC connections, decides with [`policy`] and splices
//!   client streams to connectors; [`control`] is the connector's control stream.
//! - [`audit`] is the hash-chained trail every step writes to; [`db`] holds the SQL.
//! - [`run`] wires the listeners together; [`admin`] is the local admin socket;
//!   [`metrics`] lists the Prometheus series served by [`web::metrics`].

pub mod admin;
pub mod audit;
pub mod config;
pub mod console;
pub mod control;
pub mod db;
pub mod init;
pub mod inventory;
pub mod issuance;
pub mod login;
pub mod metrics;
pub mod policy;
pub mod policy_store;
pub mod quickstart;
pub mod relay;
pub mod run;
pub mod state;
pub mod sync;
pub mod web;

pub use run::run;
pub use state::Broker;
