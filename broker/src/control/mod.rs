//! The broker's side of a connector's control stream: registration, policy
//! distribution, stream reports for the audit trail and certificate renewal.

mod extraction;
mod frames;
mod http;
pub mod link;
mod throttle;
mod usage;
