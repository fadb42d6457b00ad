//! What the broker and the connector share for being watched:
//!
//! - [`exposition`]: counters, gauges and fixed-bucket histograms in atomics,
//!   written in the Prometheus text format (version 0.0.4).
//! - [`endpoint`]: the separate HTTP listener serving `/metrics`, `/healthz`
//!   and `/readyz`, kept off the public ports.
//! - [`logging`]: `--log-format text|json` on stderr.

pub mod endpoint;
pub mod exposition;
pub mod logging;

pub use endpoint::{Readiness, serve};
pub use exposition::{Counter, Family, Gauge, Histogram, Series};
pub use logging::LogFormat;
