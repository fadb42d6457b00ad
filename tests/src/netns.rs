//! A network namespace of its own, joined to ours by a veth pair: a real
//! network path between processes on one machine. Processes started with
//! [`Namespace::command`] live in it; everything else stays in ours. Needs
//! root (`ip netns add`).
//!
//! Each namespace gets a /30 of 198.18.0.0/15 (RFC 2544's benchmarking
//! range, never routed) that no interface uses yet, and names that carry
//! this process's id and a counter, so parallel tests and concurrent runs do
//! not collide. The namespace and the veth pair are removed on drop, also while
//! a failed test unwinds; namespaces left behind by a killed run (whose
//! process id no longer exists) are removed by the next one.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::Command;

use crate::process::command;

/// Every namespace this code makes starts with this.
const PREFIX: &str = "palisade-";

/// A namespace, its veth pair and their addresses; deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: IpAddr,
    ns_ip: IpAddr,
}

impl Namespace {
    /// Creates the namespace (`ip netns add`), the veth pair with MTU 1500,
    /// and brings up both ends and the namespace's loopback. `tag` (a few
    /// letters) names what it is for.
    ///
    /// # Errors
    /// An `ip` command failed (most often: not root); the message says which.
    pub async fn create(tag: &str) -> Result<Self, String> {
        remove_abandoned();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let base = free_subnet(pid.wrapping_mul(64).wrapping_add(n)).await?;
        let ns = Self {
            name: format!("{PREFIX}{tag}-{pid}-{n}"),
            // Interface names are at most 15 bytes.
            host_if: format!("pv{pid}h{n}"),
            ns_if: format!("pv{pid}n{n}"),
            host_ip: IpAddr::V4(Ipv4Addr::from(base + 1)),
            ns_ip: IpAddr::V4(Ipv4Addr::from(base + 2)),
        };
        ip(&["netns", "add", &ns.name]).await?;
        // From here on, drop cleans up whatever was made.
        let (name, host, peer) = (ns.name.as_str(), ns.host_if.as_str(), ns.ns_if.as_str());
        let (host_cidr, ns_cidr) = (format!("{}/30", ns.host_ip), format!("{}/30", ns.ns_ip));
        ip(&["link", "add", host, "type", "veth", "peer", "name", peer]).await?;
        ip(&["link", "set", peer, "netns", name]).await?;
        ip(&["addr", "add", &host_cidr, "dev", host]).await?;
        ip(&["link", "set", host, "mtu", "1500", "up"]).await?;
        ip(&["-n", name, "addr", "add", &ns_cidr, "dev", peer]).await?;
        ip(&["-n", name, "link", "set", peer, "mtu", "1500", "up"]).await?;
        ip(&["-n", name, "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns list`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of the veth pair: where the namespace reaches us.
    #[must_use]
    pub fn host_ip(&self) -> IpAddr {
        self.host_ip
    }

    /// The namespace's end of the veth pair: where we reach it.
    #[must_use]
    pub fn ns_ip(&self) -> IpAddr {
        self.ns_ip
    }

    /// The interfaces' names, host end first.
    #[must_use]
    pub fn interfaces(&self) -> (&str, &str) {
        (&self.host_if, &self.ns_if)
    }

    /// As [`command`] for one of our binaries, run inside the namespace.
    #[must_use]
    pub fn command(&self, bin: &str) -> Command {
        exec_in(&self.name, &command(bin))
    }
}

/// `cmd` (program, arguments and environment) run inside the namespace
/// `name` with `ip netns exec`, which execs it: the process id is the program's.
#[must_use]
pub fn exec_in(name: &str, cmd: &Command) -> Command {
    let plain = cmd.as_std();
    let mut wrapped = Command::new("ip");
    wrapped.args(["netns", "exec", name]).arg(plain.get_program()).args(plain.get_args());
    for (key, value) in plain.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    wrapped.stdin(Stdio::null()).kill_on_drop(true);
    wrapped
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Synchronous on purpose: this also runs while a failed test unwinds.
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(&["netns", "del", &self.name]);
        quiet(&["link", "del", &self.host_if]);
    }
}

/// Removes namespaces of ours whose creating process is gone (a run that was
/// killed, so its drops never ran). Deleting one also removes its veth pair.
fn remove_abandoned() {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(PREFIX)) else { continue };
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The first address of a /30 in 198.18.0.0/15 that no interface of ours
/// uses, trying slots from `seed` on.
async fn free_subnet(seed: u32) -> Result<u32, String> {
    let range = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    for attempt in 0..32 {
        let base = range + (seed.wrapping_add(attempt * 7919) % (1 << 15)) * 4;
        let cidr = format!("{}/30", Ipv4Addr::from(base));
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "to", &cidr])
            .output()
            .await
            .map_err(|e| format!("ip addr show: {e}"))?;
        if out.status.success() && out.stdout.is_empty() {
            return Ok(base);
        }
    }
    Err("no free /30 in 198.18.0.0/15 after 32 tries".into())
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
