//! Palisade end to end: real broker, connector and client processes on
//! 127.0.0.1, one deployment per test. Suites follow the flow:
//! enrollment → login → certificates → tunnel → policy → revocation →
//! restart → audit, plus the client's own tools.
//!
//! Build the binaries first (`scripts/test` does): `cargo build --workspace --bins`.

#![allow(clippy::unwrap_used)]

mod audit;
mod audit_crash;
mod audit_schema;
mod ca_rotation;
mod certificates;
mod client_tools;
mod clock;
mod consistency;
mod dos;
mod enforcement;
mod enrollment;
mod faults;
mod flood;
mod groups;
mod help;
mod http_limits;
mod issuance_crash;
mod l7;
mod l7_body;
mod l7_throttle;
mod limits;
mod login;
mod metrics;
mod openapi;
mod partition;
mod policy;
mod quickstart;
mod renewal;
mod replicas;
mod restart;
mod retry_token;
mod revocation;
mod segments;
mod shared_quota;
mod store_faults;
mod store_schema;
mod tunnel;
mod unread_streams;
