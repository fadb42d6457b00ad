//! The end-to-end harness: real `palisade-broker`, `palisade-connector` and
//! `palisade` processes on 127.0.0.1, each test in its own temporary
//! directory with its own ports.
//!
//! A test builds its deployment step by step, in the order of the flow:
//!
//! ```no_run
//! # async fn flow() {
//! use palisade_tests::{EchoUpstream, TestEnv};
//! let env = TestEnv::new();
//! let broker = env.broker().service("echo", "inference").policy("allow.cedar", palisade_tests::ALLOW_ML_AGENTS).spawn().await;
//! let upstream = EchoUpstream::spawn().await;
//! let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
//! let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
//! let forward = agent.connect("echo").await;
//! forward.assert_echoes(b"hello").await;
//! # }
//! ```
//!
//! Every child process is killed when its handle is dropped. When a test
//! fails, the output of every process it started is printed. Set
//! `PALISADE_TEST_KEEP=1` to keep the temporary directories.

#![allow(clippy::unwrap_used)]

mod audit;
pub mod bench;
mod bins;
mod broker;
mod broker_ca;
pub mod browser;
mod certs;
mod client;
mod connector;
mod cut_proxy;
mod enroll_api;
mod env;
mod fake_clock;
mod faulty_path;
mod flow;
pub mod fuzz;
pub mod netns;
pub mod oidc;
pub mod openai;
mod person;
mod process;
mod quic;
pub mod scrape;
mod socks;
pub mod store;
mod upstream;
pub mod wait;
pub mod webdriver;

#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

pub use audit::{AuditLog, AuditRow, open as open_db};
pub use bins::bin_path;
pub use broker::{Broker, BrokerBuilder};
pub use browser::{Browser, Page, Passkey};
pub use certs::{ForeignCa, LeafInfo, LeafSpec, OurCa, csr_pem, leaf_info};
pub use client::{Agent, Forward, MachineBuilder, Proxy, exchange};
pub use connector::{Connector, ConnectorBuilder};
pub use cut_proxy::CutProxy;
pub use enroll_api::{EnrollAnswer, EnrollApi};
pub use env::TestEnv;
pub use fake_clock::FakeClock;
pub use faulty_path::{FaultyPath, Impairment};
pub use flow::{Flow, FlowEnd};
pub use oidc::OidcProvider;
pub use openai::OpenAiUpstream;
pub use person::{DeviceLogin, Person, PersonBuilder};
pub use process::{CliOutput, Proc, command};
pub use quic::{ControlLink, Probe, QuicProbe, ZeroRttAttempt};
pub use socks::socks5_connect;
pub use upstream::{DigestUpstream, EchoUpstream};
pub use wait::{DEFAULT_TIMEOUT, wait_for, wait_for_some, wait_until_clock_passes, within};

/// Machines in `ml-agents` may connect to every service in the `inference` segment.
pub const ALLOW_ML_AGENTS: &str = r#"@id("ml-agents-inference")
permit (
  principal in Group::"ml-agents",
  action == Action::"connect",
  resource in Segment::"inference"
);
"#;

/// People in `ml-team` may connect to every service in the `inference`
/// segment when their second factor is less than 12 hours old.
pub const ALLOW_ML_TEAM_WITH_MFA: &str = r#"@id("ml-team-inference-mfa")
permit (
  principal is User in Group::"ml-team",
  action == Action::"connect",
  resource in Segment::"inference"
)
when { context has mfa_age_secs && context.mfa_age_secs < 43200 };
"#;

/// `n` random bytes.
#[must_use]
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// SHA-256 of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    palisade_proto::enroll::sha256(data)
}
