//! `--netns`: the same setups over a real network path. The server side
//! (upstream, broker, connector, sshd) runs in a network namespace of its
//! own; the application side (this program, `palisade connect`, `ssh`)
//! stays in ours; a veth pair with MTU 1500 joins them, so every setup's
//! bytes cross it exactly once, as 1,500-byte frames rather than loopback's
//! 64 KiB segments ([`crate::netns`]: addresses from a range that is never
//! routed; the namespace and the veth pair are removed on drop, also when
//! the run is interrupted).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::options::{Options, SetupArg};
use super::setup::{Network, Role, Setup, SetupId, TunnelProcess};
use super::ssh::{Placement, SshForward};
use super::workload::Workload;
use super::{SERVICE, Upstream};
use crate::broker::BrokerInfo;
use crate::client::{Agent, Forward, MachineBuilder};
use crate::env::TestEnv;
use crate::netns::Namespace;
use crate::process::{Proc, command, run_cli};

/// Whether a workload is also measured over the veth pair.
#[must_use]
pub fn measures(workload: Workload) -> bool {
    matches!(workload, Workload::BulkUpload | Workload::BulkDownload | Workload::Echo)
}

/// The namespace, the veth pair and the setups across it.
pub struct Veth {
    direct: bool,
    ssh: Option<SshForward>,
    palisade: Option<NsPalisade>,
    upstream: Upstream,
    // Dropped last: the processes in the namespace are gone by then.
    _link: Namespace,
}

impl Veth {
    /// Creates the namespace and starts everything; `None` (with a note) where
    /// namespaces cannot be made or a step fails.
    pub async fn start(env: &TestEnv, opts: &Options, notes: &mut Vec<String>) -> Option<Self> {
        let link = match Namespace::create("bench").await {
            Ok(link) => link,
            Err(why) => {
                notes.push(format!("--netns: skipped, cannot create a network namespace ({why})"));
                return None;
            }
        };
        eprintln!(
            "--netns: namespace {} with {} ({}) <-> {} ({}), MTU 1500",
            link.name(),
            link.interfaces().0,
            link.host_ip(),
            link.interfaces().1,
            link.ns_ip()
        );
        let upstream = match Upstream::spawn(env, SocketAddr::new(link.ns_ip(), 0), Some(link.name())).await {
            Ok(u) => u,
            Err(e) => {
                notes.push(format!("--netns: skipped, the upstream did not start in the namespace: {e:#}"));
                return None;
            }
        };
        let palisade = if opts.wants(SetupArg::Palisade) {
            match NsPalisade::start(env, &link, upstream.addr()).await {
                Ok(p) => Some(p),
                Err(why) => {
                    notes.push(format!("--netns: Palisade left out: {why}"));
                    None
                }
            }
        } else {
            None
        };
        let place = Placement { netns: Some(link.name().to_owned()), ip: link.ns_ip(), network: Network::Veth };
        let ssh = if opts.wants(SetupArg::Ssh) {
            match SshForward::start(env, upstream.addr(), &place).await {
                Ok(s) => Some(s),
                Err(why) => {
                    notes.push(format!("--netns: ssh -L left out: {why}"));
                    None
                }
            }
        } else {
            None
        };
        Some(Self { direct: opts.wants(SetupArg::Direct), ssh, palisade, upstream, _link: link })
    }

    /// Direct, Palisade and ssh across the veth pair (those that started).
    #[must_use]
    pub fn setups(&self) -> Vec<Setup> {
        let mut setups = Vec::new();
        if self.direct {
            setups.push(Setup {
                id: SetupId::Direct,
                network: Network::Veth,
                addr: self.upstream.addr(),
                processes: vec![],
            });
        }
        if let Some(p) = &self.palisade {
            setups.push(p.setup());
        }
        if let Some(s) = &self.ssh {
            setups.push(s.setup());
        }
        setups
    }

    /// The upstream in the namespace.
    #[must_use]
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Stops ssh politely (its session processes too).
    pub async fn stop(mut self) {
        if let Some(ssh) = self.ssh.take() {
            ssh.stop().await;
        }
    }
}

/// Broker and connector in the namespace, the client outside.
struct NsPalisade {
    forward: Forward,
    _agent: Agent,
    connector: Proc,
    broker: Proc,
}

impl NsPalisade {
    async fn start(env: &TestEnv, link: &Namespace, upstream: SocketAddr) -> Result<Self, String> {
        let data_dir = env.fresh_dir("broker-veth");
        let mut init = command("palisade-broker");
        init.arg("init").arg("--data-dir").arg(&data_dir).args(["--server-name", &link.ns_ip().to_string()]);
        let out = run_cli(init, env.logs()).await;
        if !out.success() {
            return Err(format!("palisade-broker init failed:\n{out}"));
        }
        write_broker_config(&data_dir, link.ns_ip())?;
        let mut run = link.command("palisade-broker");
        run.arg("run").arg("--config").arg(data_dir.join("broker.toml"));
        let broker = Proc::spawn("broker (netns)", run, env.logs());
        let line = broker.wait_for_line("its ready line", |l| l.starts_with("palisade-broker ready ")).await;
        let field = |key: &str| -> Result<SocketAddr, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no {key}ADDR in the ready line {line:?}"))
        };
        let database_url = format!("sqlite://{}", data_dir.join("palisade.db").display());
        let (https, quic) = (field("https=")?, field("quic=")?);
        let info = Arc::new(BrokerInfo { env: env.clone(), data_dir, database_url, https, quic });

        let connector = start_connector(env, &info, link, upstream).await?;
        let agent = MachineBuilder::new(info.clone(), "bench-agent-veth").group("ml-agents").enroll().await;
        let forward = agent.connect(SERVICE).await;
        Ok(Self { forward, _agent: agent, connector, broker })
    }

    fn setup(&self) -> Setup {
        let pid = |p: &Proc| p.pid().unwrap_or(0);
        Setup {
            id: SetupId::Palisade,
            network: Network::Veth,
            addr: self.forward.addr(),
            processes: vec![
                TunnelProcess { role: Role::Client, pid: pid(self.forward.process()), tree: false },
                TunnelProcess { role: Role::Broker, pid: pid(&self.broker), tree: false },
                TunnelProcess { role: Role::Server, pid: pid(&self.connector), tree: false },
            ],
        }
    }
}

/// `init`'s `broker.toml`, listening on the namespace's address, serving the benchmark service.
fn write_broker_config(data_dir: &Path, ip: IpAddr) -> Result<(), String> {
    let path = data_dir.join("broker.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut config: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    config.insert("listen".into(), SocketAddr::new(ip, 0).to_string().into());
    config.insert("server_names".into(), toml::Value::Array(vec![ip.to_string().into()]));
    config.insert("policy_dir".into(), "policies".into());
    let mut service = toml::Table::new();
    service.insert("name".into(), SERVICE.into());
    service.insert("segment".into(), "inference".into());
    service.insert("protocol".into(), "tcp".into());
    config.insert("services".into(), toml::Value::Array(vec![toml::Value::Table(service)]));
    std::fs::write(&path, toml::to_string(&config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let policies = data_dir.join("policies");
    if let Ok(dir) = std::fs::read_dir(&policies) {
        for entry in dir.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    std::fs::write(policies.join("allow.cedar"), crate::ALLOW_ML_AGENTS).map_err(|e| format!("write the policy: {e}"))
}

async fn start_connector(
    env: &TestEnv,
    broker: &BrokerInfo,
    ns: &Namespace,
    upstream: SocketAddr,
) -> Result<Proc, String> {
    let token = broker.connector_token("bench-rack-veth").await;
    let dir = env.fresh_dir("connector-veth");
    let state_dir: PathBuf = dir.join("state");
    let mut enroll = command("palisade-connector");
    enroll.args(["enroll", "--broker", &broker.https_url(), "--token", &token]).arg("--state-dir").arg(&state_dir);
    let out = run_cli(enroll, env.logs()).await;
    if !out.success() {
        return Err(format!("palisade-connector enroll failed:\n{out}"));
    }
    let mut config = toml::Table::new();
    config.insert("state_dir".into(), state_dir.to_string_lossy().into_owned().into());
    let mut service = toml::Table::new();
    service.insert("name".into(), SERVICE.into());
    service.insert("upstream".into(), upstream.to_string().into());
    config.insert("service".into(), toml::Value::Array(vec![toml::Value::Table(service)]));
    let config_path = dir.join("connector.toml");
    std::fs::write(&config_path, toml::to_string(&config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let mut run = ns.command("palisade-connector");
    run.arg("run").arg("--config").arg(&config_path);
    let proc = Proc::spawn("connector (netns)", run, env.logs());
    proc.wait_for_line("`palisade-connector ready`", |l| l.trim() == "palisade-connector ready").await;
    Ok(proc)
}
