//! The client's flows against an in-test broker: enroll, store, forward,
//! proxy, reconnect, refusals, and the `palisade` binary itself.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod cli;
mod doctor;
mod enroll;
mod fake_login;
mod forward;
mod login;
mod proxy;
mod support;
