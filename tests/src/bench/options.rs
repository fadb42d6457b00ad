//! The command line of `palisade-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::control_plane::ControlParams;
use super::llm::LlmParams;
use super::workload::{Params, Workload};

/// Measures Palisade's tunnel against a direct TCP connection and `ssh -L`,
/// on this machine, with everything started on 127.0.0.1 by the program itself.
#[derive(Debug, Parser)]
#[command(name = "palisade-bench", about, long_about = None)]
pub struct Options {
    /// Smaller sizes for a quick look (explicit sizes still win).
    #[arg(long)]
    pub quick: bool,
    /// MiB per bulk transfer, each direction [default: 1024; quick: 128].
    #[arg(long, value_name = "N")]
    pub bulk_mib: Option<u64>,
    /// 1 KiB round trips on one connection [default: 10000; quick: 2000].
    #[arg(long, value_name = "N")]
    pub echo_rounds: Option<usize>,
    /// New connections, one after another [default: 500; quick: 200].
    #[arg(long, value_name = "N")]
    pub connect_rounds: Option<usize>,
    /// Events in the SSE stream [default: 1000; quick: 300].
    #[arg(long, value_name = "N")]
    pub sse_events: Option<u32>,
    /// Microseconds between SSE events; 0 sends them as fast as possible.
    #[arg(long, value_name = "US", default_value_t = 1000)]
    pub sse_interval_us: u32,
    /// Concurrent idle connections [default: 10000; quick: 1000].
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
    /// Interleaved runs; the report shows their median and min–max [default: 3; quick: 2].
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Only these workloads (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub workloads: Vec<WorkloadArg>,
    /// Only these setups (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub setups: Vec<SetupArg>,
    /// Also measure bulk and echo over a veth pair (MTU 1500) between two
    /// network namespaces (needs root and `ip netns`; skipped with a note otherwise).
    #[arg(long)]
    pub netns: bool,
    /// Measure the control plane instead of the tunnel: certificate
    /// issuances and sign-ins per second, and the broker's CPU for each.
    #[arg(long)]
    pub control_plane: bool,
    /// Certificates issued by `--control-plane` [default: 500; quick: 50].
    #[arg(long, value_name = "N")]
    pub issuances: Option<usize>,
    /// Sign-ins measured by `--control-plane` [default: 24; quick: 12]. The
    /// broker allows one address a burst of 30 sign-in starts, then one per 2 s.
    #[arg(long, value_name = "N")]
    pub sign_ins: Option<usize>,
    /// Control-plane operations in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Measure Cedar decisions per second (uncached and cached, 10 to 10,000
    /// policies) instead of the tunnel; writes `cedar.md`.
    #[arg(long)]
    pub cedar: bool,
    /// Measure an LLM token stream instead (time to first token, gaps
    /// between tokens, CPU per request) directly, through Palisade as a TCP
    /// and as an HTTP-aware service, and through `ssh -L`; writes `llm.md`.
    #[arg(long)]
    pub llm: bool,
    /// Streamed answers per setup and run for `--llm` [default: 50; quick: 20].
    #[arg(long, value_name = "N")]
    pub llm_requests: Option<usize>,
    /// Tokens per answer for `--llm`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub llm_tokens: u32,
    /// Microseconds between tokens at the upstream for `--llm` (a fast
    /// model server streams one every 10–30 ms; the default is a stress test).
    #[arg(long, value_name = "US", default_value_t = 1000)]
    pub token_interval_us: u32,
    /// Where `results.md` and `results.json` go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    #[command(subcommand)]
    pub command: Option<Internal>,
}

/// Workloads by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Bulk upload and download.
    Bulk,
    /// 1 KiB request/response.
    Echo,
    /// New connection to first byte.
    Connect,
    /// Server-sent events.
    Sse,
    /// Concurrent idle connections.
    Idle,
}

/// Setups by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SetupArg {
    /// Straight to the upstream.
    Direct,
    /// `palisade connect` → broker → connector.
    Palisade,
    /// `ssh -L` through a private sshd.
    Ssh,
}

/// Roles the program plays for itself.
#[derive(Debug, Subcommand)]
pub enum Internal {
    /// Serve the benchmark workloads (started by the benchmark itself).
    #[command(hide = true)]
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

impl Options {
    /// Workload sizes after `--quick` and explicit flags.
    #[must_use]
    pub fn params(&self) -> Params {
        let q = self.quick;
        Params {
            bulk_bytes: self.bulk_mib.unwrap_or(if q { 128 } else { 1024 }) * 1024 * 1024,
            echo_rounds: self.echo_rounds.unwrap_or(if q { 2_000 } else { 10_000 }),
            echo_size: 1024,
            connect_rounds: self.connect_rounds.unwrap_or(if q { 200 } else { 500 }),
            sse_events: self.sse_events.unwrap_or(if q { 300 } else { 1_000 }),
            sse_interval_us: self.sse_interval_us,
            sse_event_size: 100,
            idle: self.idle.unwrap_or(if q { 1_000 } else { 10_000 }),
        }
    }

    /// Control-plane sizes after `--quick` and explicit flags.
    #[must_use]
    pub fn control_params(&self) -> ControlParams {
        let q = self.quick;
        ControlParams {
            issuances: self.issuances.unwrap_or(if q { 50 } else { 500 }).max(1),
            sign_ins: self.sign_ins.unwrap_or(if q { 12 } else { 24 }).max(1),
            concurrency: self.concurrency.max(1),
        }
    }

    /// `--llm` sizes after `--quick` and explicit flags.
    #[must_use]
    pub fn llm_params(&self) -> LlmParams {
        LlmParams {
            requests: self.llm_requests.unwrap_or(if self.quick { 20 } else { 50 }).max(1),
            tokens: self.llm_tokens.max(1),
            interval_us: self.token_interval_us,
            runs: self.runs(),
        }
    }

    /// Interleaved runs.
    #[must_use]
    pub fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.quick { 2 } else { 3 }).max(1)
    }

    /// Whether a setup is wanted.
    #[must_use]
    pub fn wants(&self, setup: SetupArg) -> bool {
        self.setups.is_empty() || self.setups.contains(&setup)
    }

    /// The workloads to run, in order.
    #[must_use]
    pub fn workloads(&self) -> Vec<Workload> {
        let wanted = |w: Workload| {
            let arg = match w {
                Workload::BulkUpload | Workload::BulkDownload => WorkloadArg::Bulk,
                Workload::Echo => WorkloadArg::Echo,
                Workload::Connect => WorkloadArg::Connect,
                Workload::Sse => WorkloadArg::Sse,
                Workload::Idle => WorkloadArg::Idle,
            };
            self.workloads.is_empty() || self.workloads.contains(&arg)
        };
        Workload::ALL.into_iter().filter(|w| wanted(*w)).collect()
    }
}
