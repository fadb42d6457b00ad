//! `palisade-bench --llm`: what a token stream from an OpenAI-compatible
//! model server feels like through Palisade. The same upstream streams the
//! same answer four ways — directly, through Palisade as a plain TCP
//! service, through Palisade as an HTTP-aware service (the connector parses
//! every request, decides it with the Cedar `http` action, signs an identity
//! assertion, counts `usage` and writes a model-access audit record), and
//! through `ssh -L` — interleaved, on one machine.
//!
//! Every request is a new connection (`connection: close`), as a client
//! without a connection pool makes it, so the time to the first token
//! includes opening the tunnelled connection. The difference between the
//! two Palisade columns is what the L7 path adds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::chat;
use super::options::Options;
use super::report::{Header, num};
use super::setup::{Network, Role, Setup, SetupId, TunnelProcess};
use super::ssh::{Placement, SshForward};
use super::stats::{Summary, percentile};
use super::{Upstream, header};
use crate::Broker;
use crate::client::{Agent, Forward};
use crate::connector::Connector;
use crate::env::TestEnv;
use crate::process::Proc;

/// The example policies for OpenAI-compatible servers: `ml-team` may call
/// the inference endpoints of services in `inference`.
const AI_HTTP: &str = include_str!("../../../policies/examples/ai-http/ai-http.cedar");

/// Sizes of the LLM workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LlmParams {
    /// Streamed answers per setup and run.
    pub requests: usize,
    /// Tokens per answer.
    pub tokens: u32,
    /// Pause between tokens at the upstream, µs.
    pub interval_us: u32,
    /// Interleaved runs.
    pub runs: usize,
}

/// The ways the answer travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmPath {
    /// Straight to the upstream.
    Direct,
    /// Palisade, the service as plain TCP.
    PalisadeTcp,
    /// Palisade, the service with `protocol = "http"`.
    PalisadeHttp,
    /// `ssh -L`.
    Ssh,
}

impl LlmPath {
    fn label(self) -> &'static str {
        match self {
            LlmPath::Direct => "direct",
            LlmPath::PalisadeTcp => "Palisade, TCP service",
            LlmPath::PalisadeHttp => "Palisade, HTTP-aware service",
            LlmPath::Ssh => "ssh -L (aes128-gcm)",
        }
    }
}

/// One setup's measurement in one run.
#[derive(Clone, Debug, Serialize)]
pub struct LlmSample {
    /// Run number, from 1.
    pub run: usize,
    /// The path.
    pub path: LlmPath,
    /// `first_token_p50_ms`, `gap_p99_us`, `cpu_us_per_request.broker`…
    pub values: BTreeMap<String, f64>,
}

/// The rows of the table: key, label, unit.
const ROWS: &[(&str, &str, &str)] = &[
    ("first_token_p50_ms", "time to first token p50", "ms"),
    ("first_token_p99_ms", "time to first token p99", "ms"),
    ("gap_p50_us", "inter-token gap p50", "µs"),
    ("gap_p99_us", "inter-token gap p99", "µs"),
    ("delay_p50_us", "token delay (upstream write → arrival) p50", "µs"),
    ("delay_p99_us", "token delay p99", "µs"),
    ("whole_p50_ms", "whole answer p50", "ms"),
    ("cpu_us_per_request.total", "CPU per request, all tunnel processes", "µs"),
    ("cpu_us_per_request.client", "… client", "µs"),
    ("cpu_us_per_request.broker", "… broker", "µs"),
    ("cpu_us_per_request.server", "… connector / sshd", "µs"),
];

/// Runs the workload and writes `llm.md` and `llm.json` under `out`; returns the markdown.
///
/// # Errors
/// A setup did not start or a measurement failed.
pub async fn run_and_write(opts: &Options, out: &FsPath) -> anyhow::Result<String> {
    let params = opts.llm_params();
    let head = header(opts, opts.params()).await;
    let env = TestEnv::new();
    let upstream = Upstream::spawn(&env, "127.0.0.1:0".parse().expect("an address"), None).await?;
    let mut notes = Vec::new();
    eprintln!("starting broker, connector (a TCP and an HTTP service) and client");
    let palisade = Deployment::start(&env, upstream.addr()).await;
    let ssh = match SshForward::start(&env, upstream.addr(), &Placement::loopback()).await {
        Ok(ssh) => Some(ssh),
        Err(why) => {
            notes.push(format!("the ssh -L column is left out: {why}"));
            None
        }
    };
    let mut paths = vec![(LlmPath::Direct, direct(upstream.addr()))];
    paths.extend(palisade.setups());
    paths.extend(ssh.as_ref().map(|s| (LlmPath::Ssh, s.setup())));
    for (path, setup) in &paths {
        chat::call(setup.addr, 4, Duration::ZERO)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} does not stream an answer from the upstream", path.label()))?;
    }
    let samples = measure_all(&params, &paths, &upstream).await?;
    if let Some(ssh) = ssh {
        ssh.stop().await;
    }
    drop(palisade);
    let markdown = render(&head, &params, &paths, &samples, &notes);
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    std::fs::write(out.join("llm.md"), &markdown).context("write llm.md")?;
    let json = serde_json::json!({ "schema_version": 1, "header": head, "params": params, "samples": samples, "notes": notes });
    std::fs::write(out.join("llm.json"), serde_json::to_vec(&json)?).context("write llm.json")?;
    Ok(markdown)
}

fn direct(addr: SocketAddr) -> Setup {
    Setup { id: SetupId::Direct, network: Network::Loopback, addr, processes: vec![] }
}

async fn measure_all(
    params: &LlmParams,
    paths: &[(LlmPath, Setup)],
    upstream: &Upstream,
) -> anyhow::Result<Vec<LlmSample>> {
    let mut samples = Vec::new();
    for run in 1..=params.runs {
        for i in 0..paths.len() {
            // Rotate the order every run so no setup always goes first.
            let (path, setup) = &paths[(i + run - 1) % paths.len()];
            let sample = measure(*path, setup, params, run)
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("run {run}, {}", path.label()))?;
            eprintln!(
                "run {run}/{} llm {:<30} first token p50 {} ms, gap p99 {} µs",
                params.runs,
                path.label(),
                num(sample.values["first_token_p50_ms"]),
                num(sample.values["gap_p99_us"])
            );
            samples.push(sample);
            upstream.wait_until_idle(Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        }
    }
    Ok(samples)
}

/// `params.requests` streamed answers, one after another, each on a new connection.
async fn measure(path: LlmPath, setup: &Setup, params: &LlmParams, run: usize) -> Result<LlmSample, String> {
    let interval = Duration::from_micros(u64::from(params.interval_us));
    let (mut first, mut gaps, mut delays, mut whole) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let before = setup.cpu();
    for _ in 0..params.requests {
        let seen = chat::call(setup.addr, params.tokens, interval).await?;
        first.push(seen.first_token.as_secs_f64() * 1e3);
        whole.push(seen.whole.as_secs_f64() * 1e3);
        gaps.extend(seen.gaps.iter().map(|g| g.as_secs_f64() * 1e6));
        delays.extend(seen.delays_us);
    }
    let cpu = setup.cpu().used_since(&before);
    let mut values = BTreeMap::new();
    for (key, series, p) in [
        ("first_token_p50_ms", &first, 50.0),
        ("first_token_p99_ms", &first, 99.0),
        ("gap_p50_us", &gaps, 50.0),
        ("gap_p99_us", &gaps, 99.0),
        ("delay_p50_us", &delays, 50.0),
        ("delay_p99_us", &delays, 99.0),
        ("whole_p50_ms", &whole, 50.0),
    ] {
        values.insert(key.to_owned(), percentile(series, p).unwrap_or(f64::NAN));
    }
    if !setup.processes.is_empty() {
        let per_request = |seconds: f64| seconds * 1e6 / params.requests as f64;
        for (role, seconds) in &cpu {
            values.insert(format!("cpu_us_per_request.{}", role.as_str()), per_request(*seconds));
        }
        values.insert("cpu_us_per_request.total".into(), per_request(cpu.values().sum()));
    }
    Ok(LlmSample { run, path, values })
}

fn render(head: &Header, p: &LlmParams, paths: &[(LlmPath, Setup)], samples: &[LlmSample], notes: &[String]) -> String {
    let mut md = String::from("## Palisade benchmark: an LLM token stream\n\n");
    let _ = writeln!(
        md,
        "- machine: {} × {}, {} MiB RAM, Linux {}; load average at start {}",
        head.nproc, head.cpu_model, head.memory_mib, head.kernel, head.load_average
    );
    let _ = writeln!(md, "- date: {}; commit: {}", head.date, head.commit);
    let _ = writeln!(
        md,
        "- workload: {} streamed chat completions per setup and run, each on a new connection, {} tokens one every {} µs, `usage` in the last chunk",
        p.requests, p.tokens, p.interval_us
    );
    let _ = writeln!(
        md,
        "- {} interleaved run(s); each cell is the median of the runs, (min–max) when they differ",
        p.runs
    );
    let _ = writeln!(md, "- command: `{}`\n", head.command.join(" "));
    let columns: Vec<LlmPath> = paths.iter().map(|(path, _)| *path).collect();
    md.push_str("| metric | unit |");
    for c in &columns {
        let _ = write!(md, " {} |", c.label());
    }
    md.push_str(" HTTP-aware − TCP |\n|---|---|");
    md.push_str(&"---:|".repeat(columns.len() + 1));
    md.push('\n');
    for (key, label, unit) in ROWS {
        let _ = write!(md, "| {label} | {unit} |");
        let median = |path: LlmPath| summary(samples, path, key).map(|s| s.median);
        for c in &columns {
            let _ = write!(md, " {} |", summary(samples, *c, key).map_or("—".into(), |s| cell(&s)));
        }
        let added = median(LlmPath::PalisadeHttp).zip(median(LlmPath::PalisadeTcp)).map(|(h, t)| h - t);
        let _ = writeln!(
            md,
            " {} |",
            added.map_or("—".into(), |d| format!("{}{}", if d >= 0.0 { "+" } else { "" }, num(d)))
        );
    }
    if !notes.is_empty() {
        md.push_str("\nNotes:\n");
        for note in notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

fn summary(samples: &[LlmSample], path: LlmPath, key: &str) -> Option<Summary> {
    Summary::of(samples.iter().filter(|s| s.path == path).filter_map(|s| s.values.get(key).copied()).collect())
}

fn cell(s: &Summary) -> String {
    if s.runs.len() > 1 && (s.max - s.min).abs() > f64::EPSILON {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    } else {
        num(s.median)
    }
}

/// Broker, connector and a client with a forward for each of the two services.
struct Deployment {
    broker: Broker,
    connector: Connector,
    tcp: Forward,
    http: Forward,
    _agent: Agent,
}

impl Deployment {
    async fn start(env: &TestEnv, upstream: SocketAddr) -> Self {
        let mut broker = env
            .broker()
            .service("llm-tcp", "inference")
            .service("llm-http", "inference")
            .policy("ai-http.cedar", AI_HTTP)
            .spawn()
            .await;
        broker.cli(&["service", "assign", "llm-http", "inference", "--protocol", "http"]).await.expect_success();
        // The catalog is in the database once seeded; the bundle carries the protocol after a restart.
        broker.restart().await;
        let connector =
            broker.connector("bench-rack").service("llm-tcp", upstream).service("llm-http", upstream).spawn().await;
        let agent = broker.machine("bench-agent").group("ml-team").enroll().await;
        let tcp = agent.connect("llm-tcp").await;
        let http = agent.connect("llm-http").await;
        Self { broker, connector, tcp, http, _agent: agent }
    }

    fn setups(&self) -> [(LlmPath, Setup); 2] {
        let pid = |p: &Proc| p.pid().unwrap_or(0);
        let setup = |forward: &Forward| Setup {
            id: SetupId::Palisade,
            network: Network::Loopback,
            addr: forward.addr(),
            processes: vec![
                TunnelProcess { role: Role::Client, pid: pid(forward.process()), tree: false },
                TunnelProcess { role: Role::Broker, pid: pid(self.broker.process()), tree: false },
                TunnelProcess { role: Role::Server, pid: pid(self.connector.process()), tree: false },
            ],
        };
        [(LlmPath::PalisadeTcp, setup(&self.tcp)), (LlmPath::PalisadeHttp, setup(&self.http))]
    }
}
