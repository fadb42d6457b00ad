//! The ways a benchmark connection reaches the upstream, and the processes
//! whose CPU time and memory each one costs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::procfs;
use super::upstream::ECHO;

/// Which path a measurement took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupId {
    /// Straight to the upstream.
    Direct,
    /// `palisade connect` → broker → connector → upstream.
    Palisade,
    /// `ssh -L` → sshd → upstream.
    Ssh,
}

impl SetupId {
    /// Short name, used in JSON and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SetupId::Direct => "direct",
            SetupId::Palisade => "palisade",
            SetupId::Ssh => "ssh",
        }
    }

    /// Column heading.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            SetupId::Direct => "direct TCP",
            SetupId::Palisade => "Palisade",
            SetupId::Ssh => "ssh -L (aes128-gcm)",
        }
    }
}

/// What the packets cross between the application side and the server side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Everything on 127.0.0.1 (TCP segments up to 64 KiB).
    Loopback,
    /// Client side and server side in two network namespaces joined by a veth pair, MTU 1500.
    Veth,
}

impl Network {
    /// Name used in JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Loopback => "loopback",
            Network::Veth => "veth",
        }
    }
}

/// What a tunnel process does, so that ssh's processes line up with Palisade's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The process the application connects to: `palisade connect`, `ssh`.
    Client,
    /// The relay in the middle: the broker (ssh has none).
    Broker,
    /// The process that dials the upstream: the connector, sshd (with its per-connection children).
    Server,
}

impl Role {
    /// Name used in JSON keys.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Broker => "broker",
            Role::Server => "server",
        }
    }
}

/// One process of a tunnel.
#[derive(Clone, Copy, Debug)]
pub struct TunnelProcess {
    /// What it does.
    pub role: Role,
    /// Its process id.
    pub pid: u32,
    /// Count its descendants too (sshd forks a session process per client).
    pub tree: bool,
}

impl TunnelProcess {
    fn pids(&self) -> Vec<u32> {
        if self.tree { procfs::with_descendants(self.pid) } else { vec![self.pid] }
    }
}

/// A path to the upstream, ready to measure.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Which one.
    pub id: SetupId,
    /// Over what.
    pub network: Network,
    /// Where benchmark connections go.
    pub addr: SocketAddr,
    /// The processes in the path (none for direct TCP).
    pub processes: Vec<TunnelProcess>,
}

impl Setup {
    /// CPU time of every thread of every tunnel process, per role; subtract
    /// two readings with [`CpuReading::used_since`].
    #[must_use]
    pub fn cpu(&self) -> CpuReading {
        let mut roles: BTreeMap<Role, HashMap<u32, f64>> = BTreeMap::new();
        for p in &self.processes {
            let threads = roles.entry(p.role).or_default();
            for pid in p.pids() {
                threads.extend(procfs::thread_cpu_seconds(pid));
            }
        }
        CpuReading(roles)
    }

    /// Peak RSS in bytes, per role.
    #[must_use]
    pub fn peak_rss(&self) -> BTreeMap<Role, f64> {
        self.per_role(|pid| procfs::peak_rss(pid).unwrap_or(0) as f64)
    }

    /// Current RSS in bytes, per role.
    #[must_use]
    pub fn rss(&self) -> BTreeMap<Role, f64> {
        self.per_role(|pid| procfs::rss(pid).unwrap_or(0) as f64)
    }

    /// Resets every process's peak RSS to its current RSS.
    ///
    /// # Errors
    /// The kernel refused for one of them (not our process, or an old kernel).
    pub fn reset_peak_rss(&self) -> std::io::Result<()> {
        for p in &self.processes {
            for pid in p.pids() {
                procfs::reset_peak_rss(pid)?;
            }
        }
        Ok(())
    }

    /// The first tunnel process that is gone, if any.
    #[must_use]
    pub fn dead_process(&self) -> Option<TunnelProcess> {
        self.processes.iter().copied().find(|p| !procfs::alive(p.pid))
    }

    fn per_role(&self, read: impl Fn(u32) -> f64) -> BTreeMap<Role, f64> {
        let mut out = BTreeMap::new();
        for p in &self.processes {
            let sum: f64 = p.pids().into_iter().map(&read).sum();
            *out.entry(p.role).or_insert(0.0) += sum;
        }
        out
    }
}

/// CPU seconds per thread, per role, at one moment.
#[derive(Clone, Debug, Default)]
pub struct CpuReading(BTreeMap<Role, HashMap<u32, f64>>);

impl CpuReading {
    /// CPU seconds each role used between `before` and this reading.
    #[must_use]
    pub fn used_since(&self, before: &CpuReading) -> BTreeMap<Role, f64> {
        let empty = HashMap::new();
        self.0.iter().map(|(role, now)| (*role, procfs::cpu_used(before.0.get(role).unwrap_or(&empty), now))).collect()
    }
}

/// Connects with `TCP_NODELAY`, as every benchmark socket does.
///
/// # Errors
/// The connection failed.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One byte through the echo mode and back, within `timeout`.
pub async fn echoes(addr: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = connect(addr).await?;
        s.write_all(&[ECHO, b'p']).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        std::io::Result::Ok(b[0] == b'p')
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

/// Polls [`echoes`] until it succeeds or `deadline` passes.
pub async fn wait_until_echoes(addr: SocketAddr, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < until {
        if echoes(addr, Duration::from_secs(2)).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
