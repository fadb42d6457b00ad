//! The connector: `palisade-connector enroll`, a config file, then `run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::broker::BrokerInfo;
use crate::process::{Proc, command, run_cli};

const BIN: &str = "palisade-connector";

/// Describes a connector before it enrolls.
#[must_use = "call .spawn().await to start the connector"]
pub struct ConnectorBuilder {
    broker: Arc<BrokerInfo>,
    name: String,
    services: Vec<(String, SocketAddr)>,
    local_policies: Vec<(String, String)>,
    replicas: Vec<SocketAddr>,
    dial: Option<SocketAddr>,
    netns: Option<String>,
    metrics: bool,
    json_logs: bool,
    vars: Vec<(String, String)>,
}

impl ConnectorBuilder {
    pub(crate) fn new(broker: Arc<BrokerInfo>, name: &str) -> Self {
        Self {
            broker,
            name: name.to_owned(),
            services: Vec::new(),
            local_policies: Vec::new(),
            replicas: Vec::new(),
            dial: None,
            netns: None,
            metrics: false,
            json_logs: false,
            vars: Vec::new(),
        }
    }

    /// Links to `replica` too (config `brokers`), besides the broker it enrolls with.
    pub fn also_linked_to(mut self, replica: &crate::Broker) -> Self {
        self.replicas.push(replica.quic_addr());
        self
    }

    /// Dials the broker at `addr` (config `broker`) instead of the address it
    /// enrolled with: a relay in between, or the broker's address as seen
    /// from another network. The broker's certificate must name its IP
    /// ([`crate::BrokerBuilder::server_name`]).
    pub fn dial(mut self, addr: SocketAddr) -> Self {
        self.dial = Some(addr);
        self
    }

    /// Runs the connector inside `ns` (it enrolls from ours, over loopback).
    pub fn in_namespace(mut self, ns: &crate::netns::Namespace) -> Self {
        self.netns = Some(ns.name().to_owned());
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on a loopback port of its
    /// own; see [`Connector::metrics_addr`].
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Logs JSON lines (`[log] format = "json"`).
    pub fn json_logs(mut self) -> Self {
        self.json_logs = true;
        self
    }

    /// Runs `palisade-connector run` (also after a restart) with these
    /// environment variables too (e.g. a [`crate::FakeClock`]'s).
    pub fn run_env(mut self, vars: &[(&str, String)]) -> Self {
        self.vars.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        self
    }

    /// Serves `name` by dialling `upstream`.
    pub fn service(mut self, name: &str, upstream: SocketAddr) -> Self {
        self.services.push((name.to_owned(), upstream));
        self
    }

    /// Adds a Cedar file to the connector's own local policy set, enforced
    /// in addition to the broker's bundle (both must allow).
    pub fn local_policy(mut self, file: &str, text: &str) -> Self {
        self.local_policies.push((file.to_owned(), text.to_owned()));
        self
    }

    /// Enrolls with a fresh connector token, writes the config, starts the
    /// connector and waits until it has its first policy bundle.
    pub async fn spawn(self) -> Connector {
        let mut connector = self.enroll().await;
        connector.start().await;
        connector
    }

    /// Enrolls with a fresh connector token and writes the config, without
    /// starting the connector (see [`Connector::start_unlinked`]).
    pub async fn enroll(self) -> Connector {
        let token = self.broker.connector_token(&self.name).await;
        let dir = self.broker.env.fresh_dir(&format!("connector-{}", self.name));
        let state_dir = dir.join("state");
        let mut enroll = command(BIN);
        enroll
            .args(["enroll", "--broker", &self.broker.https_url(), "--token", &token])
            .arg("--state-dir")
            .arg(&state_dir);
        run_cli(enroll, self.broker.env.logs()).await.expect_success();

        let mut config = toml::Table::new();
        config.insert("state_dir".into(), state_dir.to_string_lossy().into_owned().into());
        config.insert("connect_timeout".into(), "5s".into());
        if let Some(addr) = self.dial {
            config.insert("broker".into(), addr.to_string().into());
        }
        if !self.replicas.is_empty() {
            let all = std::iter::once(self.broker.quic).chain(self.replicas.iter().copied());
            config.insert("brokers".into(), all.map(|a| toml::Value::from(a.to_string())).collect::<Vec<_>>().into());
        }
        if !self.local_policies.is_empty() {
            let policy_dir = dir.join("policies");
            std::fs::create_dir(&policy_dir).expect("create the connector's policy dir");
            for (file, text) in &self.local_policies {
                std::fs::write(policy_dir.join(file), text).expect("write a connector policy");
            }
            config.insert("policy_dir".into(), policy_dir.to_string_lossy().into_owned().into());
        }
        let services = self
            .services
            .iter()
            .map(|(name, upstream)| {
                let mut t = toml::Table::new();
                t.insert("name".into(), name.clone().into());
                t.insert("upstream".into(), upstream.to_string().into());
                toml::Value::Table(t)
            })
            .collect();
        config.insert("service".into(), toml::Value::Array(services));
        if self.metrics {
            let mut metrics = toml::Table::new();
            metrics.insert("listen".into(), "127.0.0.1:0".into());
            config.insert("metrics".into(), toml::Value::Table(metrics));
        }
        if self.json_logs {
            let mut log = toml::Table::new();
            log.insert("format".into(), "json".into());
            config.insert("log".into(), toml::Value::Table(log));
        }
        let config_path = dir.join("connector.toml");
        std::fs::write(&config_path, toml::to_string(&config).expect("serialise connector.toml"))
            .expect("write connector.toml");

        Connector {
            proc: None,
            broker: self.broker,
            name: self.name,
            state_dir,
            config_path,
            netns: self.netns,
            vars: self.vars,
        }
    }
}

/// A running connector and its state directory.
pub struct Connector {
    proc: Option<Proc>,
    broker: Arc<BrokerInfo>,
    name: String,
    state_dir: PathBuf,
    config_path: PathBuf,
    netns: Option<String>,
    vars: Vec<(String, String)>,
}

impl Connector {
    /// The state directory (`key.pem`, `cert.pem`, `ca.pem`, `identity.json`).
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The running process.
    ///
    /// # Panics
    /// If the connector was killed and not restarted.
    #[must_use]
    pub fn process(&self) -> &Proc {
        self.proc.as_ref().expect("the connector is running")
    }

    /// The connector's certificate chain and key, as enrolled.
    #[must_use]
    pub fn identity(&self) -> palisade_proto::tls::TlsIdentity {
        let read =
            |f: &str| std::fs::read_to_string(self.state_dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
        palisade_proto::tls::TlsIdentity {
            chain: palisade_proto::pem::certs(&read("cert.pem")).expect("cert.pem"),
            key: palisade_proto::pem::private_key(&read("key.pem")).expect("key.pem"),
        }
    }

    async fn start(&mut self) {
        let proc = self.launch();
        proc.wait_for_line("`palisade-connector ready`", |l| l.trim() == "palisade-connector ready").await;
        self.proc = Some(proc);
    }

    /// Starts the connector without waiting for a broker link: only for its
    /// metrics listener (it needs [`ConnectorBuilder::metrics`]).
    pub async fn start_unlinked(&mut self) {
        let proc = self.launch();
        proc.wait_for_line("`palisade-connector metrics=ADDR`", |l| l.starts_with("palisade-connector metrics=")).await;
        self.proc = Some(proc);
    }

    fn launch(&self) -> Proc {
        let mut cmd = command(BIN);
        cmd.arg("run").arg("--config").arg(&self.config_path).envs(self.vars.iter().map(|(k, v)| (k, v)));
        if let Some(ns) = &self.netns {
            cmd = crate::netns::exec_in(ns, &cmd);
        }
        Proc::spawn(&format!("connector {}", self.name), cmd, self.broker.env.logs())
    }

    /// The metrics listener, from the line the connector printed.
    ///
    /// # Panics
    /// If the connector was not built with [`ConnectorBuilder::metrics`].
    #[must_use]
    pub fn metrics_addr(&self) -> SocketAddr {
        let lines = self.process().stdout_lines();
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("palisade-connector metrics="))
            .and_then(|a| a.trim().parse().ok())
            .expect("a `palisade-connector metrics=ADDR` line: build the connector with .metrics()")
    }

    /// Kills the connector (SIGKILL, like a crash).
    pub async fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// Stops the connector cleanly (SIGTERM): it closes its broker links, so
    /// the broker stops routing to it at once. Waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal("TERM").await;
            let status = proc.wait().await;
            assert!(status.success(), "the connector exits cleanly on SIGTERM: {status}");
        }
    }

    /// Kills the connector if it runs and starts it again with the same state.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start().await;
    }
}
