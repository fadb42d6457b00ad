//! The `ssh -L` baseline: a private `sshd` on a loopback port with keys made
//! for this run, and an `ssh -N -L` forward through it to the upstream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use super::setup::{Network, Role, Setup, SetupId, TunnelProcess, wait_until_echoes};
use crate::env::TestEnv;
use crate::process::Proc;

const SSHD: &str = "/usr/sbin/sshd";
/// The cipher the issue compares against (the fastest OpenSSH offers on AES-NI hardware).
pub const CIPHER: &str = "aes128-gcm@openssh.com";

/// Where sshd runs: on 127.0.0.1, or in a network namespace on its address there.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The namespace sshd runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// The address sshd listens on and `ssh` dials.
    pub ip: IpAddr,
    /// The network the setup is labelled with.
    pub network: Network,
}

impl Placement {
    /// Everything on 127.0.0.1.
    #[must_use]
    pub fn loopback() -> Self {
        Self { netns: None, ip: IpAddr::V4(Ipv4Addr::LOCALHOST), network: Network::Loopback }
    }
}

/// A running sshd and the `ssh -L` forward through it. Both die with this value.
pub struct SshForward {
    ssh: Proc,
    sshd: Proc,
    addr: SocketAddr,
    network: Network,
}

impl SshForward {
    /// Starts sshd and the forward to `upstream` (as sshd sees it); `Err` says
    /// why the ssh column is left out.
    pub async fn start(env: &TestEnv, upstream: SocketAddr, place: &Placement) -> Result<Self, String> {
        for tool in ["ssh", "ssh-keygen"] {
            if !on_path(tool) {
                return Err(format!("`{tool}` is not installed (apt-get install openssh-client)"));
            }
        }
        if !Path::new(SSHD).is_file() {
            return Err(format!(
                "{SSHD} is not installed (apt-get install openssh-server; scripts/bench does as root)"
            ));
        }
        let dir = env.fresh_dir("ssh");
        let user = current_user().await?;
        if user == "root" {
            // sshd's privilege separation chroots into this directory; its package normally creates it at boot.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        keygen(&dir.join("host_key")).await?;
        keygen(&dir.join("id")).await?;
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).map_err(|e| format!("authorized_keys: {e}"))?;

        let mut last_error = String::new();
        // A free port may be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            match Self::start_on_free_ports(env, &dir, &user, upstream, place).await {
                Ok(forward) => return Ok(forward),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn start_on_free_ports(
        env: &TestEnv,
        dir: &Path,
        user: &str,
        upstream: SocketAddr,
        place: &Placement,
    ) -> Result<Self, String> {
        // A fresh namespace has every port free; on the host ask the kernel for one.
        let sshd_port = if place.netns.is_some() { 2222 } else { free_port()? };
        let sshd_addr = SocketAddr::new(place.ip, sshd_port);
        let config = dir.join("sshd_config");
        std::fs::write(&config, sshd_config(dir, sshd_addr)).map_err(|e| format!("write sshd_config: {e}"))?;
        let mut cmd = match &place.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, SSHD]);
                cmd
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        let mut sshd = Proc::spawn("sshd", quiet(cmd), env.logs());
        if !wait_for_banner(sshd_addr, Duration::from_secs(10)).await {
            let status = sshd.exit_status();
            return Err(format!("sshd did not start ({status:?}): {}", sshd.stderr().trim()));
        }

        let local_port = free_port()?;
        let mut cmd = Command::new("ssh");
        cmd.args(["-N", "-F", "/dev/null", "-L"])
            .arg(format!("127.0.0.1:{local_port}:{upstream}"))
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", &format!("Ciphers={CIPHER}"), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", "-o", "Compression=no"])
            .arg("-i")
            .arg(dir.join("id"))
            .args(["-p", &sshd_port.to_string(), &format!("{user}@{}", place.ip)]);
        let mut ssh = Proc::spawn("ssh -L", quiet(cmd), env.logs());
        let addr: SocketAddr = ([127, 0, 0, 1], local_port).into();
        if !wait_until_echoes(addr, Duration::from_secs(20)).await {
            let status = ssh.exit_status();
            return Err(format!(
                "the ssh -L forward did not carry bytes ({status:?}): {} {}",
                ssh.stderr().trim(),
                sshd.stderr().trim()
            ));
        }
        Ok(Self { ssh, sshd, addr, network: place.network })
    }

    /// The setup: `ssh` is the client side, sshd and its children the server side.
    #[must_use]
    pub fn setup(&self) -> Setup {
        let pid = |p: &Proc| p.pid().unwrap_or(0);
        Setup {
            id: SetupId::Ssh,
            network: self.network,
            addr: self.addr,
            processes: vec![
                TunnelProcess { role: Role::Client, pid: pid(&self.ssh), tree: false },
                TunnelProcess { role: Role::Server, pid: pid(&self.sshd), tree: true },
            ],
        }
    }

    /// Stops the forward, then sshd and the session processes it forked.
    pub async fn stop(mut self) {
        let session = self.sshd.pid().map(super::procfs::with_descendants).unwrap_or_default();
        self.ssh.kill().await;
        self.sshd.kill().await;
        for pid in session.into_iter().skip(1) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status().await;
        }
    }
}

fn sshd_config(dir: &Path, listen: SocketAddr) -> String {
    let path = |f: &str| dir.join(f).display().to_string();
    format!(
        "ListenAddress {listen}\n\
         HostKey {host_key}\n\
         PidFile {pid_file}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         UsePAM no\n\
         PermitRootLogin yes\n\
         StrictModes no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         AllowTcpForwarding yes\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         UseDNS no\n\
         MaxStartups 100\n\
         Ciphers {CIPHER}\n\
         LogLevel ERROR\n",
        host_key = path("host_key"),
        pid_file = path("sshd.pid"),
        authorized_keys = path("authorized_keys"),
    )
}

fn quiet(mut cmd: Command) -> Command {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

async fn current_user() -> Result<String, String> {
    let out = Command::new("id").arg("-un").output().await.map_err(|e| format!("id -un: {e}"))?;
    let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if user.is_empty() { Err("cannot tell the current user name".into()) } else { Ok(user) }
}

async fn keygen(path: &PathBuf) -> Result<(), String> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("ssh-keygen failed: {status}")) }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("find a free port: {e}"))
}

async fn wait_for_banner(addr: SocketAddr, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < until {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let mut banner = [0u8; 4];
            s.read_exact(&mut banner).await?;
            std::io::Result::Ok(&banner == b"SSH-")
        };
        if matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok(true))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
