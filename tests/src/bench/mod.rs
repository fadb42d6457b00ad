//! `palisade-bench`: Palisade's full path (client → broker → connector)
//! against a direct TCP connection and `ssh -L`, measured in one run,
//! interleaved, on this machine. See `BENCHMARKS.md` for what each workload
//! means and how CPU and memory are read.
//!
//! The flow of a run: raise the open-file limit → start the upstream
//! (its own process) → start each setup → warm up → for every run, for
//! every workload, for every setup (rotated) → measure, then wait until the
//! upstream has no connection left → report.

pub mod cedar;
pub mod chat;
pub mod control_plane;
pub mod llm;
pub mod netns;
pub mod options;
pub mod procfs;
pub mod report;
pub mod setup;
pub mod ssh;
pub mod stats;
pub mod upstream;
pub mod workload;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use self::options::{Options, SetupArg};
use self::report::{Failure, Header, Results, SetupInfo};
use self::setup::{Network, Role, Setup, SetupId, TunnelProcess, connect, wait_until_echoes};
use self::ssh::SshForward;
use self::workload::{Params, Workload, measure};
use crate::client::{Agent, Forward};
use crate::connector::Connector;
use crate::env::TestEnv;
use crate::process::Proc;
use crate::{ALLOW_ML_AGENTS, Broker};

/// The service name the connector serves the upstream as.
const SERVICE: &str = "bench";
/// Descriptors each process needs beyond one per idle connection.
const FD_SLACK: u64 = 1024;
/// Bytes moved each way per setup before measuring (connections, windows, caches).
const WARM_UP_BYTES: u64 = 8 * 1024 * 1024;

/// Runs the benchmark and writes `results.md` and `results.json` under `--out`.
/// Returns the markdown; `Err` after writing when any measurement failed.
///
/// # Errors
/// Setup failed, the output cannot be written, or a measurement failed.
pub async fn run(opts: &Options) -> anyhow::Result<String> {
    let mut params = opts.params();
    let mut notes = Vec::new();
    let limit = procfs::raise_nofile_limit(params.idle as u64 + FD_SLACK);
    if (limit as usize) < params.idle + FD_SLACK as usize {
        let lowered = (limit as usize).saturating_sub(FD_SLACK as usize).max(1);
        notes.push(format!(
            "the open-file limit is {limit} (raise it with `ulimit -n`, as scripts/bench does): idle connections lowered from {} to {lowered}",
            params.idle
        ));
        params.idle = lowered;
    }
    let header = header(opts, params).await;
    let env = TestEnv::new();
    let upstream = Upstream::spawn(&env, "127.0.0.1:0".parse().expect("an address"), None).await?;

    let deployment = Deployment::start(opts, &env, upstream.addr, &mut notes).await;
    if opts.workloads().contains(&Workload::Sse) {
        let pace = match params.sse_interval_us {
            0 => "as fast as the upstream could write them (not paced)".to_owned(),
            us => format!("one every {us} µs"),
        };
        notes.push(format!(
            "SSE: {}-byte `data:` events {pace}; the event delay compares the upstream's wall-clock stamp with the arrival time (same machine, same clock).",
            params.sse_event_size
        ));
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        notes
            .push(format!("RUST_LOG={filter} was passed to the broker and connector (the harness default is `info`)."));
    }

    let setups = &deployment.setups;
    let mut results =
        Results { header, setups: deployment.infos.clone(), samples: Vec::new(), failures: Vec::new(), notes };
    for s in setups {
        if !wait_until_echoes(s.addr, Duration::from_secs(30)).await {
            anyhow::bail!("{} ({}) does not carry bytes to the upstream", s.id.label(), s.network.as_str());
        }
        warm_up(s).await.with_context(|| format!("warm up {}", s.id.label()))?;
    }
    measure_all(opts, &params, setups, &upstream, deployment.veth.as_ref(), &mut results).await;
    deployment.stop().await;

    let markdown = write_results(&opts.out, &results)?;
    if !results.failures.is_empty() {
        println!("{markdown}");
        anyhow::bail!("{} measurement(s) failed; see the notes", results.failures.len());
    }
    Ok(markdown)
}

/// Every setup that started, and what keeps its processes alive.
struct Deployment {
    setups: Vec<Setup>,
    infos: Vec<SetupInfo>,
    palisade: Option<PalisadeDeployment>,
    ssh: Option<SshForward>,
    veth: Option<netns::Veth>,
}

impl Deployment {
    async fn start(opts: &Options, env: &TestEnv, upstream: SocketAddr, notes: &mut Vec<String>) -> Self {
        let mut d = Self { setups: Vec::new(), infos: Vec::new(), palisade: None, ssh: None, veth: None };
        if opts.wants(SetupArg::Direct) {
            d.setups.push(Setup { id: SetupId::Direct, network: Network::Loopback, addr: upstream, processes: vec![] });
            d.infos.push(info(SetupId::Direct, Network::Loopback, None));
        }
        if opts.wants(SetupArg::Palisade) {
            eprintln!("starting broker, connector and client");
            let palisade = PalisadeDeployment::start(env, upstream).await;
            d.setups.push(palisade.setup(Network::Loopback));
            d.infos.push(info(SetupId::Palisade, Network::Loopback, None));
            d.palisade = Some(palisade);
        }
        d.ssh = start_ssh(opts, env, upstream, notes, &mut d.infos).await;
        if let Some(ssh) = &d.ssh {
            d.setups.push(ssh.setup());
        }
        if opts.netns {
            d.veth = netns::Veth::start(env, opts, notes).await;
        }
        if let Some(veth) = &d.veth {
            for s in veth.setups() {
                d.infos.push(info(s.id, Network::Veth, None));
                d.setups.push(s);
            }
        }
        d
    }

    /// ssh first (its session processes are found through sshd), then the rest.
    async fn stop(self) {
        if let Some(ssh) = self.ssh {
            ssh.stop().await;
        }
        if let Some(veth) = self.veth {
            veth.stop().await;
        }
        drop(self.palisade);
    }
}

async fn start_ssh(
    opts: &Options,
    env: &TestEnv,
    upstream: SocketAddr,
    notes: &mut Vec<String>,
    infos: &mut Vec<SetupInfo>,
) -> Option<SshForward> {
    if !opts.wants(SetupArg::Ssh) {
        notes.push("the ssh -L baseline was left out (--setups)".into());
        return None;
    }
    eprintln!("starting sshd and ssh -L");
    match SshForward::start(env, upstream, &ssh::Placement::loopback()).await {
        Ok(ssh) => {
            infos.push(info(SetupId::Ssh, Network::Loopback, None));
            Some(ssh)
        }
        Err(why) => {
            let note = format!("the ssh -L column is left out: {why}");
            eprintln!("{note}");
            notes.push(note.clone());
            infos.push(SetupInfo {
                id: SetupId::Ssh,
                network: Network::Loopback,
                label: SetupId::Ssh.label().into(),
                available: false,
                note: Some(note),
            });
            None
        }
    }
}

fn info(id: SetupId, network: Network, note: Option<String>) -> SetupInfo {
    SetupInfo { id, network, label: id.label().into(), available: true, note }
}

async fn measure_all(
    opts: &Options,
    params: &Params,
    setups: &[Setup],
    upstream: &Upstream,
    veth: Option<&netns::Veth>,
    results: &mut Results,
) {
    let ctx = Measuring { params, setups, upstream, veth, runs: opts.runs() };
    let mut broken: Vec<(SetupId, Network)> = Vec::new();
    for pass in passes(&opts.workloads()) {
        for run in 1..=ctx.runs {
            for &workload in &pass {
                ctx.measure_setups(workload, run, &mut broken, results).await;
            }
        }
    }
}

/// The workloads in the order they run: every run of the others first, then
/// every run of the idle workload. Holding 10,000 connections leaves lasting
/// state in a tunnel process (an `ssh -L` that has forwarded 10,000 channels
/// answers a 1 KiB echo in about 320 µs instead of 140 µs from then on), so
/// nothing is measured after it.
fn passes(workloads: &[Workload]) -> Vec<Vec<Workload>> {
    let (idle, others): (Vec<Workload>, Vec<Workload>) = workloads.iter().partition(|w| **w == Workload::Idle);
    [others, idle].into_iter().filter(|pass| !pass.is_empty()).collect()
}

/// What every measurement of a run shares.
struct Measuring<'a> {
    params: &'a Params,
    setups: &'a [Setup],
    upstream: &'a Upstream,
    veth: Option<&'a netns::Veth>,
    runs: usize,
}

impl Measuring<'_> {
    /// One workload on every setup not yet `broken`, in an order rotated by `run`.
    async fn measure_setups(
        &self,
        workload: Workload,
        run: usize,
        broken: &mut Vec<(SetupId, Network)>,
        results: &mut Results,
    ) {
        // Rotate the order every run so no setup always goes first.
        let n = self.setups.len();
        for i in 0..n {
            let setup = &self.setups[(i + run - 1) % n];
            if setup.network == Network::Veth && !netns::measures(workload) {
                continue;
            }
            if broken.contains(&(setup.id, setup.network)) {
                continue;
            }
            let result = measure(workload, setup, self.params, run).await;
            let settle_on = match setup.network {
                Network::Loopback => self.upstream,
                Network::Veth => self.veth.map_or(self.upstream, netns::Veth::upstream),
            };
            let settled = settle_on.wait_until_idle(Duration::from_secs(60)).await;
            progress(run, self.runs, workload, setup, &result);
            match result {
                Ok(sample) => results.samples.push(sample),
                Err(error) => {
                    results.failures.push(Failure { run, setup: setup.id, network: setup.network, workload, error })
                }
            }
            if let Err(e) = settled {
                results.notes.push(format!("run {run}, {}: {e}", workload.as_str()));
            }
            if let Some(dead) = setup.dead_process() {
                let note = format!(
                    "the {} process ({:?}, pid {}) of {} exited; that setup was not measured further",
                    dead.role.as_str(),
                    setup.network,
                    dead.pid,
                    setup.id.label()
                );
                eprintln!("{note}");
                results.notes.push(note);
                broken.push((setup.id, setup.network));
            }
        }
    }
}

fn progress(run: usize, runs: usize, workload: Workload, setup: &Setup, result: &workload::WorkloadResult) {
    let what = match result {
        Ok(sample) => {
            let keys = [
                "mb_per_s",
                "cpu_s_per_gib.total",
                "p50_us",
                "p99_us",
                "first_event_ms",
                "gap_p99_us",
                "open_all_s",
                "peak_rss_mib.broker",
                "peak_rss_mib.server",
            ];
            keys.iter()
                .filter_map(|k| sample.values.get(*k).map(|v| format!("{k}={}", report::num(*v))))
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(e) => format!("FAILED: {e}"),
    };
    eprintln!(
        "run {run}/{runs} {:<13} {:<8} {:<8} {what}",
        workload.as_str(),
        setup.id.as_str(),
        setup.network.as_str()
    );
}

async fn warm_up(setup: &Setup) -> anyhow::Result<()> {
    let params = Params {
        bulk_bytes: WARM_UP_BYTES,
        echo_rounds: 0,
        echo_size: 1024,
        connect_rounds: 0,
        sse_events: 0,
        sse_interval_us: 0,
        sse_event_size: 100,
        idle: 0,
    };
    for w in [Workload::BulkUpload, Workload::BulkDownload] {
        measure(w, setup, &params, 0).await.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn write_results(out: &Path, results: &Results) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let markdown = results.markdown();
    std::fs::write(out.join("results.md"), &markdown).context("write results.md")?;
    let json = serde_json::to_vec(&results.json()).context("serialise the results")?;
    std::fs::write(out.join("results.json"), json).context("write results.json")?;
    eprintln!("wrote {} and {}", out.join("results.md").display(), out.join("results.json").display());
    Ok(markdown)
}

/// The upstream process and how to ask it whether connections are still open.
pub struct Upstream {
    _proc: Proc,
    addr: SocketAddr,
}

impl Upstream {
    /// Starts `palisade-bench upstream`, optionally inside a network namespace.
    ///
    /// # Errors
    /// Its address line does not parse.
    pub async fn spawn(env: &TestEnv, listen: SocketAddr, netns: Option<&str>) -> anyhow::Result<Self> {
        let mut cmd = Command::new(crate::bin_path("palisade-bench"));
        cmd.args(["upstream", "--listen", &listen.to_string()]).stdin(Stdio::null()).kill_on_drop(true);
        if let Some(ns) = netns {
            cmd = crate::netns::exec_in(ns, &cmd);
        }
        let proc = Proc::spawn("upstream", cmd, env.logs());
        let line = proc.wait_for_line("its listening line", |l| l.starts_with(upstream::READY_PREFIX)).await;
        let addr = line[upstream::READY_PREFIX.len()..].trim().parse().context("the upstream's address")?;
        Ok(Self { _proc: proc, addr })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the upstream holds no connection but the one asking, so
    /// the next measurement does not pay for this one's teardown.
    ///
    /// # Errors
    /// Connections were still open at the deadline.
    pub async fn wait_until_idle(&self, deadline: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + deadline;
        let mut open = u64::MAX;
        while tokio::time::Instant::now() < until {
            match self.open_connections().await {
                Ok(0) => return Ok(()),
                Ok(n) => open = n,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("the upstream still had {open} connections open after {deadline:?}"))
    }

    async fn open_connections(&self) -> std::io::Result<u64> {
        let mut s = connect(self.addr).await?;
        s.write_all(&[upstream::ACTIVE]).await?;
        tokio::time::timeout(Duration::from_secs(5), s.read_u64()).await?
    }
}

/// Broker, connector and an enrolled client running `palisade connect bench`.
struct PalisadeDeployment {
    forward: Forward,
    broker: Broker,
    connector: Connector,
    _agent: Agent,
}

impl PalisadeDeployment {
    async fn start(env: &TestEnv, upstream: SocketAddr) -> Self {
        let broker = env.broker().service(SERVICE, "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
        let connector = broker.connector("bench-rack").service(SERVICE, upstream).spawn().await;
        let agent = broker.machine("bench-agent").group("ml-agents").enroll().await;
        let forward = agent.connect(SERVICE).await;
        Self { forward, broker, connector, _agent: agent }
    }

    fn setup(&self, network: Network) -> Setup {
        let pid = |p: &Proc| p.pid().unwrap_or(0);
        Setup {
            id: SetupId::Palisade,
            network,
            addr: self.forward.addr(),
            processes: vec![
                TunnelProcess { role: Role::Client, pid: pid(self.forward.process()), tree: false },
                TunnelProcess { role: Role::Broker, pid: pid(self.broker.process()), tree: false },
                TunnelProcess { role: Role::Server, pid: pid(self.connector.process()), tree: false },
            ],
        }
    }
}

pub(crate) async fn header(opts: &Options, params: Params) -> Header {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let nproc = output("nproc", &[])
        .await
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    Header {
        nproc,
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        memory_mib,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        date: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).await.unwrap_or_else(|| "unknown".into()),
        commit: commit().await,
        command: std::env::args().collect(),
        params,
        runs: opts.runs(),
    }
}

async fn commit() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = repo.to_string_lossy();
    let Some(head) = output("git", &["-C", &repo, "rev-parse", "--short=12", "HEAD"]).await else {
        return "none (the repository has no commit yet)".into();
    };
    let dirty = output("git", &["-C", &repo, "status", "--porcelain", "--untracked-files=no"]).await;
    if dirty.is_some_and(|d| !d.is_empty()) { format!("{head} + uncommitted changes") } else { head }
}

async fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().await.ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_workload_runs_after_every_other() {
        let all = Workload::ALL.to_vec();
        let order = passes(&all);
        assert_eq!(order.len(), 2);
        assert!(!order[0].contains(&Workload::Idle) && order[0].len() == all.len() - 1);
        assert_eq!(order[1], vec![Workload::Idle]);
        assert_eq!(passes(&[Workload::Echo]), vec![vec![Workload::Echo]]);
        assert_eq!(passes(&[Workload::Idle]), vec![vec![Workload::Idle]]);
    }
}
