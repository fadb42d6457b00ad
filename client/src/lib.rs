//! The Palisade client: enroll, then carry local TCP connections to private
//! services through the broker.
//!
//! The flow, in module order:
//! - [`enroll`] trades a one-time token for a certificate (the key stays here);
//!   [`store`] keeps the files under `PALISADE_HOME`.
//! - [`tunnel`] is the one QUIC connection to the broker, made lazily and made
//!   again after it closes; one stream per TCP connection, refusals as
//!   [`RejectCode`](palisade_proto::reject::RejectCode)s.
//! - [`splice`] relays bytes between a TCP connection and its stream.
//! - [`listen`] binds loopback listeners; [`forward`] (`palisade connect`) and
//!   [`proxy`] (SOCKS5 / HTTP CONNECT) accept on them.
//! - [`services`] renders what the broker says about services and identity.

pub mod enroll;
pub mod forward;
pub mod listen;
pub mod proxy;
pub mod services;
pub mod splice;
pub mod store;
pub mod tunnel;

pub use enroll::{EnrollError, Enrolled, enroll};
pub use listen::{ListenError, bind_local};
pub use splice::{SpliceStats, splice_tcp};
pub use store::{Profile, StoreError};
pub use tunnel::{Tunnel, TunnelError};
