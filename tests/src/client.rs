//! Machine identities and the `palisade` client: enroll, forward, proxy.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use palisade_client::splice::splice_tcp;
use palisade_client::{Profile, Tunnel, TunnelError};
use palisade_proto::tls::TlsIdentity;
use tokio::net::TcpListener;

use crate::broker::BrokerInfo;
use crate::certs::{LeafInfo, leaf_info};
use crate::process::{CliOutput, Proc, command, run_cli};
use crate::wait::{DEFAULT_TIMEOUT, within};

const BIN: &str = "palisade";

/// Describes a machine identity before it enrolls.
#[must_use = "call .enroll().await"]
pub struct MachineBuilder {
    broker: Arc<BrokerInfo>,
    name: String,
    groups: Vec<String>,
    ttl: Option<String>,
}

impl MachineBuilder {
    pub(crate) fn new(broker: Arc<BrokerInfo>, name: &str) -> Self {
        Self { broker, name: name.to_owned(), groups: Vec::new(), ttl: None }
    }

    /// Adds a group.
    pub fn group(mut self, group: &str) -> Self {
        self.groups.push(group.to_owned());
        self
    }

    /// Sets the token's lifetime (humantime, e.g. `1s`).
    pub fn token_ttl(mut self, ttl: &str) -> Self {
        self.ttl = Some(ttl.to_owned());
        self
    }

    /// Creates the enrollment token only.
    pub async fn token(&self) -> String {
        self.broker.machine_token(&self.name, &self.groups, self.ttl.as_deref()).await
    }

    /// Creates a token and runs `palisade enroll` with it in a fresh home directory.
    pub async fn enroll(self) -> Agent {
        let token = self.token().await;
        let home = self.broker.env.fresh_dir(&format!("home-{}", self.name));
        let agent = Agent { broker: self.broker, home, name: self.name };
        let url = agent.broker.https_url();
        agent.cli(&["enroll", "--broker", &url, "--token", &token]).await.expect_success();
        agent
    }
}

/// An enrolled machine: a `palisade` home directory with its key and certificate.
pub struct Agent {
    broker: Arc<BrokerInfo>,
    home: PathBuf,
    name: String,
}

impl Agent {
    /// A `palisade` home that already holds a key and certificate.
    pub(crate) fn at(broker: Arc<BrokerInfo>, home: PathBuf, name: &str) -> Agent {
        Agent { broker, home, name: name.to_owned() }
    }

    pub(crate) fn broker(&self) -> &Arc<BrokerInfo> {
        &self.broker
    }

    /// The home directory (`--home`).
    #[must_use]
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The name it enrolled under.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A copy of this home (same key and certificate) whose profile names
    /// only `replica` as its broker: the same identity, through another replica.
    #[must_use]
    pub fn copy_pointed_at(&self, replica: &crate::Broker, name: &str) -> Agent {
        let copy = self.broker.env.fresh_dir(name);
        crate::person::copy_dir(&self.home, &copy);
        let path = copy.join("profile.json");
        let text = std::fs::read_to_string(&path).expect("read profile.json");
        let mut profile: serde_json::Value = serde_json::from_str(&text).expect("profile.json is JSON");
        profile["quic_addr"] = replica.quic_addr().to_string().into();
        profile["broker_url"] = replica.https_url().into();
        profile["replicas"] = serde_json::Value::Array(Vec::new());
        std::fs::write(&path, profile.to_string()).expect("write profile.json");
        Agent::at(replica.info.clone(), copy, &self.name)
    }

    /// The SPIFFE id the broker gave it (from `profile.json`).
    #[must_use]
    pub fn spiffe_id(&self) -> String {
        let text = std::fs::read_to_string(self.home.join("profile.json")).expect("read profile.json");
        let profile: serde_json::Value = serde_json::from_str(&text).expect("profile.json is JSON");
        profile["identity"].as_str().expect("profile.json names the identity").to_owned()
    }

    /// The trust domain of its SPIFFE id.
    #[must_use]
    pub fn trust_domain(&self) -> String {
        let id = self.spiffe_id();
        let rest = id.strip_prefix("spiffe://").expect("a SPIFFE id");
        rest.split('/').next().expect("a trust domain").to_owned()
    }

    /// Its certificate chain and key, as enrolled.
    #[must_use]
    pub fn identity(&self) -> TlsIdentity {
        let read = |f: &str| std::fs::read_to_string(self.home.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
        TlsIdentity {
            chain: palisade_proto::pem::certs(&read("cert.pem")).expect("cert.pem"),
            key: palisade_proto::pem::private_key(&read("key.pem")).expect("key.pem"),
        }
    }

    /// What its certificate says.
    #[must_use]
    pub fn certificate(&self) -> LeafInfo {
        leaf_info(&std::fs::read(self.home.join("cert.pem")).expect("read cert.pem"))
    }

    /// Sends `payload` to `service` through the client library (the same
    /// `Tunnel` and splice the `palisade` binary uses), half-closes, and
    /// returns the reply, or the library's error with its reject code.
    ///
    /// # Errors
    /// The [`TunnelError`] the library reports.
    pub async fn tunnel_exchange(&self, service: &str, payload: &[u8]) -> Result<Vec<u8>, TunnelError> {
        let profile = Profile::load(&self.home).map_err(TunnelError::from)?;
        let tunnel = Tunnel::new(profile)?;
        let service_name = service.parse().expect("a service name");
        let (send, recv) = within("open a stream", DEFAULT_TIMEOUT, tunnel.open(&service_name)).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (app, accepted) = tokio::try_join!(TcpStream::connect(listener.local_addr()?), listener.accept())?;
        let splice = splice_tcp(accepted.0, send, recv, service);
        let (spliced, reply) =
            within("a tunnelled exchange", DEFAULT_TIMEOUT, async { tokio::join!(splice, exchange(app, payload)) })
                .await;
        tunnel.close().await;
        spliced?;
        Ok(reply?)
    }

    /// Runs `palisade --home HOME ARGS…` to completion.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = command(BIN);
        cmd.arg("--home").arg(&self.home).args(args);
        run_cli(cmd, self.broker.env.logs()).await
    }

    /// `palisade services --json`, parsed.
    pub async fn services_json(&self) -> serde_json::Value {
        let out = self.cli(&["services", "--json"]).await;
        let stdout = out.expect_success();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("`services --json` printed no JSON ({e}):\n{out}"))
    }

    /// Starts `palisade connect SERVICE --listen 127.0.0.1:0` and waits for its port.
    pub async fn connect(&self, service: &str) -> Forward {
        self.connect_with_env(service, &[]).await
    }

    /// As [`Self::connect`], with more environment variables (e.g. a [`crate::FakeClock`]'s).
    pub async fn connect_with_env(&self, service: &str, vars: &[(&str, String)]) -> Forward {
        let mut cmd = command(BIN);
        cmd.envs(vars.iter().map(|(k, v)| (*k, v)));
        cmd.arg("--home").arg(&self.home).args(["connect", service, "--listen", "127.0.0.1:0"]);
        let proc = Proc::spawn(&format!("connect {service}"), cmd, self.broker.env.logs());
        let line = proc.wait_for_line("`listening on`", |l| l.starts_with("listening on ")).await;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the address in {line:?}"));
        assert!(line.ends_with(&format!("-> {service}")), "unexpected line {line:?}");
        Forward { proc, addr }
    }

    /// Starts `palisade proxy --socks5 127.0.0.1:0` and waits for its port.
    pub async fn proxy(&self) -> Proxy {
        let mut cmd = command(BIN);
        cmd.arg("--home").arg(&self.home).args(["proxy", "--socks5", "127.0.0.1:0"]);
        let proc = Proc::spawn("proxy", cmd, self.broker.env.logs());
        let line = proc.wait_for_line("`proxy listening on`", |l| l.starts_with("proxy listening on ")).await;
        let addr = line
            .strip_prefix("proxy listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the address in {line:?}"));
        Proxy { _proc: proc, addr }
    }
}

/// A running `palisade connect`: a local port tunnelled to one service.
pub struct Forward {
    proc: Proc,
    addr: SocketAddr,
}

impl Forward {
    /// The local address to connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `palisade connect` process (for its stderr).
    #[must_use]
    pub fn process(&self) -> &Proc {
        &self.proc
    }

    /// Connects to the forward, sends `payload`, half-closes, and reads
    /// until the far side closes. Bounded by a timeout that grows with the size.
    pub async fn exchange(&self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let timeout = DEFAULT_TIMEOUT + Duration::from_secs((payload.len() / (256 * 1024)) as u64);
        self.exchange_within(payload, timeout).await
    }

    /// As [`Self::exchange`], with an explicit timeout (`TimedOut` when it passes).
    pub async fn exchange_within(&self, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        let attempt = async {
            let stream = TcpStream::connect(self.addr).await?;
            exchange(stream, payload).await
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Asserts that `payload` comes back unchanged through the tunnel.
    pub async fn assert_echoes(&self, payload: &[u8]) {
        match self.exchange(payload).await {
            Ok(reply) => {
                assert!(reply == payload, "got {} bytes back instead of the {} sent", reply.len(), payload.len())
            }
            Err(e) => panic!("no echo through {}: {e}\nstderr of palisade connect:\n{}", self.addr, self.proc.stderr()),
        }
    }

    /// Whether `payload` comes back unchanged within a few seconds (for polling).
    pub async fn echoes(&self, payload: &[u8]) -> bool {
        matches!(self.exchange_within(payload, Duration::from_secs(5)).await, Ok(reply) if reply == payload)
    }
}

/// A running `palisade proxy --socks5`.
pub struct Proxy {
    _proc: Proc,
    addr: SocketAddr,
}

impl Proxy {
    /// The SOCKS5 listener's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Writes `payload` and half-closes while reading everything until EOF, so
/// neither direction waits for the other.
pub async fn exchange<S>(stream: S, payload: &[u8]) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let mut reply = Vec::with_capacity(payload.len());
    let receive = read.read_to_end(&mut reply);
    let (sent, received) = tokio::join!(send, receive);
    received?;
    // A refused stream may be torn down while we still write; what came back is what matters.
    if reply.is_empty() {
        sent?;
    }
    Ok(reply)
}
