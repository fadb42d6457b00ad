//! The broker: `palisade-broker init`, our own `broker.toml` and policies,
//! then `palisade-broker run`, and everything a test asks of it afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_proto::identity::TrustAnchors;
use rustls_pki_types::CertificateDer;

use crate::audit::{self, AuditLog};
use crate::certs::OurCa;
use crate::client::MachineBuilder;
use crate::connector::ConnectorBuilder;
use crate::enroll_api::EnrollApi;
use crate::env::TestEnv;
use crate::oidc::OidcProvider;
use crate::person::PersonBuilder;
use crate::process::{CliOutput, Proc, command, run_cli};

const BIN: &str = "palisade-broker";

/// A service in the broker's catalogue.
#[derive(Clone, Debug)]
struct ServiceDef {
    name: String,
    segment: String,
    labels: Vec<String>,
}

/// Describes a broker before it starts: its services and policy files.
#[must_use = "call .spawn().await to start the broker"]
pub struct BrokerBuilder {
    env: TestEnv,
    trust_domain: Option<String>,
    services: Vec<ServiceDef>,
    policies: Vec<(String, String)>,
    oidc: Option<OidcClient>,
    replica_of: Option<Arc<BrokerInfo>>,
    database_url: Option<String>,
    extra_config: String,
    server_names: Vec<String>,
    vars: Vec<(String, String)>,
    observed: Observed,
}

/// `[metrics]` and `[log]` choices of a broker under test.
#[derive(Clone, Copy, Default)]
struct Observed {
    metrics: bool,
    json_logs: bool,
}

/// This broker's client at an OpenID provider.
struct OidcClient {
    provider: OidcProvider,
    client_id: String,
    client_secret: String,
}

impl BrokerBuilder {
    pub(crate) fn new(env: TestEnv) -> Self {
        Self {
            env,
            trust_domain: None,
            services: Vec::new(),
            policies: Vec::new(),
            oidc: None,
            replica_of: None,
            database_url: None,
            extra_config: String::new(),
            server_names: Vec::new(),
            vars: Vec::new(),
            observed: Observed::default(),
        }
    }

    /// Signs people in at `provider`: writes `[oidc]` with a client of this
    /// broker's own, which is registered at the provider once the broker's
    /// port (part of its callback URL) is known.
    pub fn oidc(mut self, provider: &OidcProvider) -> Self {
        let client_id = format!("palisade-{}", hex(&crate::random_bytes(8)));
        let client_secret = hex(&crate::random_bytes(16));
        self.oidc = Some(OidcClient { provider: provider.clone(), client_id, client_secret });
        self
    }

    /// Sets the trust domain given to `init` (the default is the broker's own).
    pub fn trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = Some(trust_domain.to_owned());
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on a loopback port of its own
    /// (`[metrics] listen = "127.0.0.1:0"`); see [`Broker::metrics_addr`].
    pub fn metrics(mut self) -> Self {
        self.observed.metrics = true;
        self
    }

    /// Logs JSON lines (`[log] format = "json"`).
    pub fn json_logs(mut self) -> Self {
        self.observed.json_logs = true;
        self
    }

    /// Adds a TCP service to the catalogue.
    pub fn service(self, name: &str, segment: &str) -> Self {
        self.labelled_service(name, segment, &[])
    }

    /// Adds a TCP service with labels to the catalogue.
    pub fn labelled_service(mut self, name: &str, segment: &str, labels: &[&str]) -> Self {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        self.services.push(ServiceDef { name: name.to_owned(), segment: segment.to_owned(), labels });
        self
    }

    /// Adds a Cedar policy file. When any is given, they replace the
    /// example policy `init` writes; otherwise that one stays.
    pub fn policy(mut self, file: &str, text: &str) -> Self {
        self.policies.push((file.to_owned(), text.to_owned()));
        self
    }

    /// Makes this broker another replica of `first`: the same database, the
    /// same CA (its certificate, encrypted key and KEK) and the same audit
    /// checkpoint key, copied into this broker's data directory before
    /// `init` as an operator would from a secret store; `init` then gives it
    /// a server certificate of its own.
    pub fn replica_of(mut self, first: &Broker) -> Self {
        self.replica_of = Some(first.info.clone());
        self
    }

    /// Reaches the database at `url` instead (with [`Self::replica_of`]:
    /// the first replica's database by another way, e.g. a [`crate::CutProxy`]).
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// Adds a name (or an IP address) to the broker's certificate, besides
    /// `localhost` and `127.0.0.1`: where a peer reaches it by another address.
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_names.push(name.to_owned());
        self
    }

    /// Runs `palisade-broker run` (also after a restart) with these
    /// environment variables too (e.g. a [`crate::FakeClock`]'s).
    pub fn run_env(mut self, vars: &[(&str, String)]) -> Self {
        self.vars.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        self
    }

    /// Appends `toml` (whole sections, e.g. `[consistency]`) to `broker.toml`.
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self
    }

    /// Initialises the data directory, writes the configuration and the
    /// policies, starts the broker and waits until it is ready.
    pub async fn spawn(self) -> Broker {
        let data_dir = self.env.fresh_dir("broker");
        if let Some(first) = &self.replica_of {
            for file in ["ca.pem", "ca.key.enc", "kek", "audit-signing.key"] {
                std::fs::copy(first.data_dir.join(file), data_dir.join(file))
                    .unwrap_or_else(|e| panic!("copy {file} from the first replica: {e}"));
            }
        }
        let mut init = command(BIN);
        init.arg("init").arg("--data-dir").arg(&data_dir);
        if let Some(td) = &self.trust_domain {
            init.args(["--trust-domain", td]);
        }
        let database_url = match (&self.database_url, &self.replica_of) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(first)) => Some(first.database_url.clone()),
            (None, None) => self.env.new_database(),
        };
        if let Some(url) = &database_url {
            init.args(["--database-url", url]);
        }
        run_cli(init, self.env.logs()).await.expect_success();
        let database_url =
            database_url.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("palisade.db").display()));

        write_config(&data_dir, &self.services, self.oidc.as_ref(), &self.server_names);
        write_observed(&data_dir, self.observed);
        if !self.extra_config.is_empty() {
            let path = data_dir.join("broker.toml");
            let text = std::fs::read_to_string(&path).expect("read broker.toml") + "\n" + &self.extra_config;
            std::fs::write(&path, text).expect("write broker.toml");
        }
        let policy_dir = data_dir.join("policies");
        if !self.policies.is_empty() {
            for entry in std::fs::read_dir(&policy_dir).expect("init created the policy directory") {
                std::fs::remove_file(entry.expect("policy dir entry").path()).expect("remove the default policy");
            }
        }
        for (file, text) in &self.policies {
            std::fs::write(policy_dir.join(file), text).expect("write a policy file");
        }

        let (proc, https, quic) = start(&self.env, &data_dir, None, &self.vars).await;
        let info = Arc::new(BrokerInfo { env: self.env, data_dir, database_url, https, quic });
        if let Some(oidc) = &self.oidc {
            let callback = format!("{}/login/oidc/callback", info.public_url());
            oidc.provider.register_client(&oidc.client_id, &oidc.client_secret, &callback).await;
        }
        Broker { proc: Some(proc), info, vars: self.vars }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Patches the `broker.toml` that `init` wrote: our listen address, policy
/// directory, services, identity provider and extra server names, keeping
/// every other key as `init` chose it.
fn write_config(data_dir: &Path, services: &[ServiceDef], oidc: Option<&OidcClient>, server_names: &[String]) {
    let path = data_dir.join("broker.toml");
    let mut config: toml::Table = match std::fs::read_to_string(&path) {
        Ok(text) => text.parse().unwrap_or_else(|e| panic!("init wrote an unreadable {}: {e}", path.display())),
        Err(_) => toml::Table::new(),
    };
    config.insert("listen".into(), "127.0.0.1:0".into());
    config.insert("policy_dir".into(), "policies".into());
    let services: Vec<toml::Value> = services
        .iter()
        .map(|s| {
            let mut t = toml::Table::new();
            t.insert("name".into(), s.name.clone().into());
            t.insert("segment".into(), s.segment.clone().into());
            t.insert("protocol".into(), "tcp".into());
            t.insert("labels".into(), toml::Value::Array(s.labels.iter().cloned().map(Into::into).collect()));
            toml::Value::Table(t)
        })
        .collect();
    config.insert("services".into(), toml::Value::Array(services));
    if let Some(toml::Value::Array(names)) = config.get_mut("server_names") {
        names.extend(server_names.iter().cloned().map(Into::into));
    }
    if let Some(oidc) = oidc {
        let mut t = toml::Table::new();
        t.insert("issuer".into(), oidc.provider.issuer().into());
        t.insert("client_id".into(), oidc.client_id.clone().into());
        t.insert("client_secret".into(), oidc.client_secret.clone().into());
        t.insert("scopes".into(), toml::Value::Array(vec!["openid".into(), "email".into(), "profile".into()]));
        t.insert("groups_claim".into(), "groups".into());
        config.insert("oidc".into(), toml::Value::Table(t));
    }
    std::fs::write(&path, toml::to_string(&config).expect("serialise broker.toml")).expect("write broker.toml");
}

/// Adds `[metrics]` and `[log]` to the `broker.toml` as asked.
fn write_observed(data_dir: &Path, observed: Observed) {
    let path = data_dir.join("broker.toml");
    let mut text = std::fs::read_to_string(&path).expect("read broker.toml");
    if observed.metrics {
        text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    }
    if observed.json_logs {
        text.push_str("\n[log]\nformat = \"json\"\n");
    }
    std::fs::write(&path, text).expect("write broker.toml");
}

/// Starts `palisade-broker run` and waits for its ready line. With `listen`
/// set (a restart), the broker must come back on exactly that address.
async fn start(
    env: &TestEnv,
    data_dir: &Path,
    listen: Option<SocketAddr>,
    vars: &[(String, String)],
) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = command(BIN);
    cmd.arg("run").arg("--config").arg(data_dir.join("broker.toml"));
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    if let Some(addr) = listen {
        cmd.env("PALISADE_LISTEN", addr.to_string());
    }
    let proc = Proc::spawn("broker", cmd, env.logs());
    let line = proc.wait_for_line("its ready line", |l| l.starts_with("palisade-broker ready ")).await;
    let field = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key}ADDR in the ready line {line:?}"))
    };
    let (https, quic) = (field("https="), field("quic="));
    if let Some(addr) = listen {
        assert_eq!(https, addr, "the restarted broker must listen where it did before");
    }
    (proc, https, quic)
}

/// What builders and clients need to know about a broker; stable across restarts.
pub(crate) struct BrokerInfo {
    pub(crate) env: TestEnv,
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: String,
    pub(crate) https: SocketAddr,
    pub(crate) quic: SocketAddr,
}

impl BrokerInfo {
    pub(crate) fn https_url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// Where people sign in: the broker names a loopback address `localhost`
    /// (WebAuthn needs a domain), and its cookies and passkeys belong to that origin.
    pub(crate) fn public_url(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    pub(crate) fn ca_der(&self) -> CertificateDer<'static> {
        let pem = std::fs::read_to_string(self.data_dir.join("ca.pem")).expect("read ca.pem");
        palisade_proto::pem::certs(&pem).expect("ca.pem holds the CA").remove(0)
    }

    pub(crate) async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = command(BIN);
        cmd.args(args).arg("--data-dir").arg(&self.data_dir);
        run_cli(cmd, self.env.logs()).await
    }

    pub(crate) async fn machine_token(&self, name: &str, groups: &[String], ttl: Option<&str>) -> String {
        let mut args = vec!["token", "create", "--machine", name];
        for g in groups {
            args.extend(["--group", g.as_str()]);
        }
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        token_line(&self.cli(&args).await)
    }

    pub(crate) async fn connector_token(&self, name: &str) -> String {
        token_line(&self.cli(&["token", "create", "--connector", name]).await)
    }
}

fn token_line(out: &CliOutput) -> String {
    let stdout = out.expect_success();
    let lines: Vec<_> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "`token create` must print only the token:\n{out}");
    lines[0].trim().to_owned()
}

/// A running broker process and its data directory.
pub struct Broker {
    proc: Option<Proc>,
    pub(crate) info: Arc<BrokerInfo>,
    vars: Vec<(String, String)>,
}

impl Broker {
    /// `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn https_url(&self) -> String {
        self.info.https_url()
    }

    /// Where people sign in: `https://localhost:PORT`.
    #[must_use]
    pub fn public_url(&self) -> String {
        self.info.public_url()
    }

    /// The QUIC (UDP) address.
    #[must_use]
    pub fn quic_addr(&self) -> SocketAddr {
        self.info.quic
    }

    /// The data directory (`palisade.db`, `ca.pem`, `policies/`…).
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.info.data_dir
    }

    /// The test environment the broker lives in.
    #[must_use]
    pub fn env(&self) -> &TestEnv {
        &self.info.env
    }

    /// The running process.
    ///
    /// # Panics
    /// If the broker was killed and not restarted.
    #[must_use]
    pub fn process(&self) -> &Proc {
        self.proc.as_ref().expect("the broker is running")
    }

    /// The metrics listener, from the running broker's ready line.
    ///
    /// # Panics
    /// If the broker was not built with [`BrokerBuilder::metrics`].
    #[must_use]
    pub fn metrics_addr(&self) -> SocketAddr {
        let lines = self.process().stdout_lines();
        let ready = lines.iter().rev().find(|l| l.starts_with("palisade-broker ready ")).expect("a ready line");
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics=ADDR in {ready:?}: build the broker with .metrics()"))
    }

    /// Runs `palisade-broker ARGS… --data-dir DIR`.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.info.cli(args).await
    }

    /// Creates a one-time machine enrollment token.
    pub async fn machine_token(&self, name: &str, groups: &[&str], ttl: Option<&str>) -> String {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        self.info.machine_token(name, &groups, ttl).await
    }

    /// Creates a one-time connector enrollment token.
    pub async fn connector_token(&self, name: &str) -> String {
        self.info.connector_token(name).await
    }

    /// Starts describing a machine identity (an AI agent, a CI job).
    pub fn machine(&self, name: &str) -> MachineBuilder {
        MachineBuilder::new(self.info.clone(), name)
    }

    /// Starts describing a person, who signs in at the broker's identity provider.
    pub fn person(&self, name: &str) -> PersonBuilder {
        PersonBuilder::new(self.info.clone(), name)
    }

    /// The ids of `user`'s active sessions, from `palisade-broker session list --user USER`.
    pub async fn active_sessions(&self, user: &str) -> Vec<String> {
        let out = self.cli(&["session", "list", "--user", user]).await;
        let stdout = out.expect_success();
        let mut lines = stdout.lines();
        assert!(lines.next().is_some_and(|header| header.starts_with("SESSION")), "no header:\n{out}");
        lines.filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
    }

    /// Starts describing a connector.
    pub fn connector(&self, name: &str) -> ConnectorBuilder {
        ConnectorBuilder::new(self.info.clone(), name)
    }

    /// The enrollment API, trusting this broker through the token's CA pin.
    #[must_use]
    pub fn enroll_api(&self, token: &str) -> EnrollApi {
        EnrollApi::new(&self.https_url(), token)
    }

    /// Every audit event so far, in order.
    pub async fn audit_events(&self) -> AuditLog {
        audit::read(&self.info.database_url).await
    }

    /// The broker's database: its SQLite file, or the PostgreSQL database
    /// made for this test (see [`crate::store`]).
    #[must_use]
    pub fn database_url(&self) -> &str {
        &self.info.database_url
    }

    /// Writes (or replaces) a policy file; takes effect on reload.
    pub fn write_policy(&self, file: &str, text: &str) {
        std::fs::write(self.info.data_dir.join("policies").join(file), text).expect("write a policy file");
    }

    /// Removes a policy file; takes effect on reload.
    pub fn remove_policy(&self, file: &str) {
        std::fs::remove_file(self.info.data_dir.join("policies").join(file)).expect("remove a policy file");
    }

    /// `palisade-broker policy reload`.
    pub async fn reload_policies(&self) -> CliOutput {
        self.cli(&["policy", "reload"]).await
    }

    /// The CA certificate from `ca.pem`.
    #[must_use]
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.info.ca_der()
    }

    /// Our CA as a verifier sees it, for the given trust domain.
    #[must_use]
    pub fn trust_anchors(&self, trust_domain: &str) -> TrustAnchors {
        TrustAnchors::new(trust_domain.parse().expect("a trust domain"), vec![self.ca_der()]).expect("usable CA")
    }

    /// The broker's real issuing CA, loaded from the data directory with its
    /// KEK, to sign certificates a test forges.
    #[must_use]
    pub fn our_ca(&self) -> OurCa {
        OurCa::load(&self.info.data_dir)
    }

    /// Sends SIGTERM: the broker drains (see `[relay] drain_timeout`), then exits.
    pub async fn terminate(&self) {
        self.process().signal("TERM").await;
    }

    /// Waits for the broker to exit by itself (after [`Broker::terminate`]).
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.take().expect("the broker is running").wait().await
    }

    /// Kills the broker (SIGKILL, like a crash).
    pub async fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// Kills the broker if it runs, and starts it again on the same address
    /// with the same data directory.
    pub async fn restart(&mut self) {
        self.kill().await;
        let (proc, _, quic) = start(&self.info.env, &self.info.data_dir, Some(self.info.https), &self.vars).await;
        assert_eq!(quic, self.info.quic, "the restarted broker must serve QUIC where it did before");
        self.proc = Some(proc);
    }
}
