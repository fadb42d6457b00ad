//! A bad network between connector and broker (catalogue Q-12). The
//! connector and its workload run in a network namespace of their own and
//! reach the broker only across a veth pair, through a relay at its host end
//! that partitions the path, loses and delays datagrams ([`FaultyPath`]).
//! The client stays beside the broker. Needs root, as CI and the
//! development machines have: without it the tests fail, they do not skip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_proto::reject::RejectCode;
use palisade_tests::bench::{Upstream, procfs};
use palisade_tests::netns::Namespace;
use palisade_tests::{
    ALLOW_ML_AGENTS, Agent, AuditLog, Broker, Connector, FaultyPath, Forward, Impairment, TestEnv, random_bytes,
    wait_for, wait_for_some,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The broker's answer when it cannot reach a service's connector: its
/// `[relay] connect_timeout` (10 s) or the link's idle timeout (10 s), plus slack.
const CLEAR_ERROR: Duration = Duration::from_secs(25);
/// A tunnel whose connector is cut off ends once the broker gives the link up.
const HELD_TUNNEL_ENDS: Duration = Duration::from_secs(30);
/// After the path heals: the connector's handshake in flight (15 s at most)
/// or its next one (backoff up to 10 s).
const RECOVERY: Duration = Duration::from_secs(45);
/// File descriptors and threads the broker or the connector may hold beyond
/// its count before the outage, once things settle: the broker's database
/// pool grows on demand up to 8 connections (SQLite's files are not counted;
/// PostgreSQL's are sockets), and tokio's blocking pool keeps idle threads
/// for 10 s. The connector has no database: one descriptor of slack.
const BROKER_FD_SLACK: usize = 4;
const CONNECTOR_FD_SLACK: usize = 1;
const THREAD_SLACK: usize = 4;
/// A partition shorter than the links' idle timeout.
const BLIP: Duration = Duration::from_secs(4);
/// How long the exchanges over a lossy path may take together. QUIC backs
/// off exponentially when its loss probes are lost too, so at 30 % loss each
/// way a few KiB usually take seconds and now and then twenty.
const LOSSY_BUDGET: Duration = Duration::from_secs(40);
/// The first byte the upstream reads selects echo ([`palisade_tests::bench::upstream::ECHO`]).
const ECHO: u8 = palisade_tests::bench::upstream::ECHO;

/// Broker and client in our namespace; connector and workload in another,
/// behind the relay.
struct Site {
    forward: Forward,
    agent: Agent,
    connector: Connector,
    upstream: Upstream,
    relay: FaultyPath,
    broker: Broker,
    _env: TestEnv,
    // Dropped last: the processes in the namespace are gone by then.
    _ns: Namespace,
}

impl Site {
    async fn start() -> Self {
        let ns = Namespace::create("q12").await.unwrap_or_else(|e| {
            panic!("cannot create a network namespace; this test needs root (CI runs it as root): {e}")
        });
        let env = TestEnv::new();
        let broker = env
            .broker()
            .service("echo", "inference")
            .policy("allow.cedar", ALLOW_ML_AGENTS)
            .server_name(&ns.host_ip().to_string())
            .extra_config("[audit]\nconnector_offline_alert = \"2s\"\n")
            .spawn()
            .await;
        let relay = FaultyPath::spawn(SocketAddr::new(ns.host_ip(), 0), broker.quic_addr()).await;
        let upstream = Upstream::spawn(&env, SocketAddr::new(ns.ns_ip(), 0), Some(ns.name()))
            .await
            .expect("the workload starts in the namespace");
        let connector = broker
            .connector("rack-1")
            .service("echo", upstream.addr())
            .in_namespace(&ns)
            .dial(relay.addr())
            .spawn()
            .await;
        let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
        let forward = agent.connect("echo").await;
        Site { forward, agent, connector, upstream, relay, broker, _env: env, _ns: ns }
    }

    fn connector_pid(&self) -> u32 {
        self.connector.process().pid().expect("the connector runs")
    }

    fn broker_pid(&self) -> u32 {
        self.broker.process().pid().expect("the broker runs")
    }

    /// Echoes `payload` through `palisade connect`, the broker and the connector.
    async fn echo(&self, payload: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
        let mut sent = vec![ECHO];
        sent.extend_from_slice(payload);
        self.forward.exchange_within(&sent, within).await
    }

    async fn echoes(&self, payload: &[u8]) -> bool {
        matches!(self.echo(payload, Duration::from_secs(5)).await, Ok(reply) if reply == payload)
    }

    async fn audit(&self) -> AuditLog {
        self.broker.audit_events().await
    }
}

/// Open file descriptors (but SQLite's database files) and threads of one process.
#[derive(Clone, Copy, Debug)]
struct Held {
    fds: usize,
    threads: usize,
}

impl Held {
    fn of(pid: u32) -> Self {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd");
        let database = |target: &std::path::Path| target.to_string_lossy().contains("palisade.db");
        let fds = fds.flatten().filter(|fd| !std::fs::read_link(fd.path()).is_ok_and(|t| database(&t))).count();
        let threads = procfs::threads(pid).expect("read /proc/PID/task");
        Held { fds, threads }
    }

    fn within_slack_of(self, baseline: Held, fd_slack: usize) -> bool {
        self.fds <= baseline.fds + fd_slack && self.threads <= baseline.threads + THREAD_SLACK
    }
}

/// A tunnel held open through `palisade connect`, in echo mode.
async fn hold_tunnel(site: &Site) -> TcpStream {
    let mut tcp = TcpStream::connect(site.forward.addr()).await.expect("connect to palisade connect");
    tcp.write_all(&[ECHO]).await.unwrap();
    tcp.write_all(b"held").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
        .await
        .expect("the held tunnel echoes within 10 s")
        .expect("the held tunnel echoes");
    assert_eq!(&back, b"held");
    tcp
}

/// How a tunnel that was open when the path was cut ended: `Ok(n)` bytes
/// read before EOF, or the error; panics if it is still open at `deadline`.
async fn held_tunnel_end(mut tcp: TcpStream, deadline: Duration) -> std::io::Result<usize> {
    let _ = tcp.write_all(b"anyone there?").await;
    let mut rest = Vec::new();
    match tokio::time::timeout(deadline, tcp.read_to_end(&mut rest)).await {
        Ok(result) => result,
        Err(_) => panic!("a tunnel through the cut path was still open after {deadline:?}: a half-open leak"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_gives_clear_errors_ends_cut_tunnels_and_heals_without_leaks() {
    let site = Site::start().await;
    for round in 0..3 {
        assert!(site.echoes(format!("warm-up {round}").as_bytes()).await, "the tunnel works before the partition");
    }
    let (broker_before, connector_before) = (Held::of(site.broker_pid()), Held::of(site.connector_pid()));
    let held = hold_tunnel(&site).await;
    let online_before = site.audit().await.of_kind("connector.online").len();

    site.relay.partition();
    let cut = Instant::now();
    let outcome = tokio::time::timeout(CLEAR_ERROR, site.agent.tunnel_exchange("echo", b"Eduring the partition")).await;
    let err = match outcome {
        Ok(Ok(reply)) => panic!("a stream crossed the partition: {reply:?}"),
        Ok(Err(err)) => err,
        Err(_) => panic!("no answer within {CLEAR_ERROR:?} during the partition: the client just hangs"),
    };
    eprintln!("during the partition: {err} after {:?}", cut.elapsed());
    assert!(err.reject_code() == Some(RejectCode::NoConnector), "expected a clear reason, got {err}");
    let reply = site.echo(b"through palisade connect", CLEAR_ERROR).await;
    assert!(!matches!(&reply, Ok(r) if !r.is_empty()), "palisade connect carried bytes across the partition");
    wait_for("palisade connect to say why", Duration::from_secs(5), || async {
        site.forward.process().stderr().contains("-> echo: no connector is serving echo right now")
    })
    .await;

    let ended = held_tunnel_end(held, HELD_TUNNEL_ENDS.saturating_sub(cut.elapsed())).await;
    eprintln!("the tunnel held across the partition ended after {:?}: {ended:?}", cut.elapsed());
    assert!(!matches!(ended, Ok(n) if n > 0), "the cut tunnel echoed across the partition");
    let offline = wait_for_some("the broker to audit the connector offline", Duration::from_secs(30), || async {
        let audit = site.audit().await;
        let offline = audit.last_of_kind("connector.offline")?.seq;
        audit.has_kind("alert.connector_offline").then_some(offline)
    })
    .await;
    site.upstream
        .wait_until_idle(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("the connector kept the cut tunnel's workload connection open: {e}"));

    site.relay.heal();
    let healed = Instant::now();
    wait_for("a new tunnel after the path healed", RECOVERY, || site.echoes(b"after the partition")).await;
    eprintln!("after healing: tunnels worked again after {:?}; relay {:?}", healed.elapsed(), site.relay.counts());
    let audit = site.audit().await;
    let online = audit.of_kind("connector.online");
    assert!(online.len() > online_before, "no new link after the partition:\n{}", audit.summary());
    assert!(online.last().unwrap().seq > offline, "the link came back after it was audited offline");
    eprintln!("links made after the partition: {}", online.len() - online_before);

    let processes = [
        ("broker", site.broker_pid(), broker_before, BROKER_FD_SLACK),
        ("connector", site.connector_pid(), connector_before, CONNECTOR_FD_SLACK),
    ];
    for (name, pid, before, fd_slack) in processes {
        let what = format!("the {name}'s descriptors and threads to settle near {before:?}");
        let settled = wait_for_some(&what, Duration::from_secs(30), || async move {
            let now = Held::of(pid);
            now.within_slack_of(before, fd_slack).then_some(now)
        })
        .await;
        eprintln!("{name}: before the partition {before:?}, after {settled:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_carry_exact_bytes_over_a_lossy_path_ride_out_a_blip_and_a_slow_path() {
    let site = Site::start().await;
    assert!(site.echoes(b"on a clean path").await, "the tunnel works on a clean path");
    let online = site.audit().await.of_kind("connector.online").len();

    // First, while QUIC's round-trip estimate is still the clean path's: a
    // slow phase before would leave it long, and every loss probe later.
    site.relay.set(Impairment { loss: 0.3, delay: Duration::from_millis(200), partitioned: false });
    let deadline = Instant::now() + LOSSY_BUDGET;
    let mut cut = Vec::new();
    for size in [64, 1024, 4096] {
        let payload = random_bytes(size);
        let began = Instant::now();
        cut.extend(echo_exactly(&site, &payload, deadline).await);
        eprintln!("30 % loss, 400 ms round trips: {size} bytes echoed exactly in {:?}", began.elapsed());
    }
    let (carried, dropped) = site.relay.counts();
    let links = site.audit().await.of_kind("connector.online").len() - online;
    eprintln!(
        "relay carried {carried} datagrams, dropped {dropped}; tunnels cut and retried: {cut:?}; new links: {links}"
    );
    assert!(dropped > 0, "the relay dropped nothing: the test did not test loss");
    site.relay.heal();
    let online = site.audit().await.of_kind("connector.online").len();

    // Shorter than the links' idle timeout (10 s): nothing is given up.
    let mut held = hold_tunnel(&site).await;
    site.relay.partition();
    tokio::time::sleep(BLIP).await;
    site.relay.heal();
    let mut back = [0u8; 10];
    held.write_all(b"after blip").await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), held.read_exact(&mut back))
        .await
        .expect("the held tunnel answers within 15 s of the blip")
        .expect("the held tunnel outlives a blip");
    assert_eq!(&back, b"after blip");
    drop(held);

    // 2 s round trips, as `netem delay 2s` on one end of the link.
    site.relay.set(Impairment { delay: Duration::from_secs(1), ..Impairment::default() });
    let payload = random_bytes(1024);
    let began = Instant::now();
    let reply = site.echo(&payload, Duration::from_secs(20)).await.expect("an echo over 2 s round trips");
    assert!(reply == payload, "{} bytes back for 1024 sent over 2 s round trips", reply.len());
    eprintln!("2 s round trips: 1 KiB echoed exactly in {:?}", began.elapsed());
    let audit = site.audit().await;
    assert_eq!(audit.of_kind("connector.online").len(), online, "the link was remade:\n{}", audit.summary());
}

/// Echoes `payload` until it comes back whole, opening a new tunnel after
/// one that is cut (as an application would retry), and returns how those
/// ended. A reply with other bytes fails the test, and so does `deadline`.
async fn echo_exactly(site: &Site, payload: &[u8], deadline: Instant) -> Vec<String> {
    let mut cut = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match site.echo(payload, left).await {
            Ok(reply) if reply == payload => return cut,
            Ok(reply) if reply.is_empty() => cut.push("closed before any byte came back".to_owned()),
            Ok(reply) => panic!("{} bytes came back for {} sent, and not the same", reply.len(), payload.len()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!(
                    "{} bytes did not come back over the lossy path within {LOSSY_BUDGET:?} (cut before: {cut:?})",
                    payload.len()
                )
            }
            Err(e) => cut.push(e.to_string()),
        }
    }
}
