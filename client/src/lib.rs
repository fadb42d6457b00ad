//! The Palisade client: sign in (people) or enroll (machines), then carry
//! local TCP connections to private services through the broker.
//!
//! The flow, in module order:
//! - [`login`] signs a person in through the browser or a device code and
//!   [`enroll`](mod@enroll) trades a machine's one-time token; either way the key stays
//!   here and the broker signs a CSR. [`store`] keeps the files under
//!   `PALISADE_HOME`; [`status`](mod@status) reads them; [`logout`](mod@logout) ends the session.
//! - [`tunnel`] is the one QUIC connection to the broker, made lazily and made
//!   again after it closes; one stream per TCP connection, refusals as
//!   [`RejectCode`](palisade_proto::reject::RejectCode)s.
//! - [`splice`] relays bytes between a TCP connection and its stream.
//! - [`listen`] binds loopback listeners; [`forward`] (`palisade connect`) and
//!   [`proxy`] (SOCKS5 / HTTP CONNECT) accept on them.
//! - [`services`] renders what the broker says about services and identity.
//! - [`doctor`](mod@doctor) checks all of the above and says what to do.

pub mod doctor;
pub mod enroll;
pub mod forward;
pub mod listen;
pub mod login;
pub mod logout;
pub mod proxy;
pub mod services;
pub mod splice;
pub mod status;
pub mod store;
pub mod tunnel;

pub use doctor::{DoctorOptions, Report, doctor};
pub use enroll::{EnrollError, Enrolled, enroll};
pub use listen::{ListenError, bind_local};
pub use login::{CaSource, DeviceCode, LoggedIn, LoginError, LoginOptions, login_browser, login_device};
pub use logout::{LoggedOut, LogoutError, RemoteLogout, logout};
pub use splice::{SpliceStats, splice_tcp};
pub use status::{Status, status};
pub use store::{Profile, StoreError};
pub use tunnel::{Tunnel, TunnelError};
