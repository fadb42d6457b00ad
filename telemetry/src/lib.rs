//! What the broker and the connector share as long-running processes:
//!
//! - [`exposition`]: counters, gauges and fixed-bucket histograms in atomics,
//!   written in the Prometheus text format (version 0.0.4).
//! - [`endpoint`]: the separate HTTP listener serving `/metrics`, `/healthz`
//!   and `/readyz`, kept off the public ports.
//! - [`logging`]: `--log-format text|json` on stderr.
//! - [`runtime`]: how many worker threads the async runtime gets.

pub mod endpoint;
pub mod exposition;
pub mod logging;
pub mod runtime;

pub use endpoint::{Readiness, serve};
pub use exposition::{Counter, Family, Gauge, Histogram, Series};
pub use logging::LogFormat;
