//! QUIC Initial flood (catalogue Q-01): thousands of client Initials, each a
//! new connection attempt from one of hundreds of source ports, none ever
//! completing. The broker must switch to stateless Retry once too many
//! handshakes are in progress, never send an unvalidated address more than
//! three times what it received, and keep serving legitimate clients.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use palisade_client::{Profile, Tunnel};
use palisade_proto::id::ServiceName;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv};

use crate::dos::{capture_initials, echo_once, tunnel_echo};

/// Connection attempts in the flood.
const INITIALS: usize = 1_500;
/// Source ports they come from (five attempts each).
const SOURCES: usize = 300;

/// What the flood's sockets sent and got back.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    received: usize,
    retries: usize,
    /// Bytes received per flood socket.
    per_source: Vec<usize>,
}

/// Sends every Initial, `INITIALS / SOURCES` from each socket, in bursts of
/// one per socket, and returns the sockets (kept open, never answering).
async fn flood(initials: &[Vec<u8>], broker: SocketAddr, tally: &mut Tally) -> Vec<UdpSocket> {
    let sockets: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a flood socket");
            socket.set_nonblocking(true).expect("non-blocking");
            socket
        })
        .collect();
    for (i, initial) in initials.iter().enumerate() {
        let socket = &sockets[i % SOURCES];
        if socket.send_to(initial, broker).is_ok() {
            tally.sent += initial.len();
        }
        if i % SOURCES == SOURCES - 1 {
            drain(&sockets, broker, tally);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sockets
}

/// Reads whatever the broker sent to the flood sockets. Datagrams from
/// anywhere else are not counted: tests run side by side on 127.0.0.1, and
/// another test's broker may still be sending to a client that had the
/// same port a moment before.
fn drain(sockets: &[UdpSocket], broker: SocketAddr, tally: &mut Tally) {
    let mut buf = [0u8; 2048];
    tally.per_source.resize(sockets.len(), 0);
    for (i, socket) in sockets.iter().enumerate() {
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            if from != broker {
                continue;
            }
            tally.received += len;
            tally.per_source[i] += len;
            // Long header (0b11..), packet type Retry (0b..11....).
            if len > 0 && buf[0] & 0xf0 == 0xf0 {
                tally.retries += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_flood_gets_stateless_retries_and_legitimate_clients_still_connect() {
    let env = TestEnv::alone();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let other = broker.machine("agent-2").group("ml-agents").enroll().await;
    let service: ServiceName = "echo".parse().expect("service name");
    let held = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    assert!(tunnel_echo(&held, &service, b"before").await, "the held tunnel works before the flood");

    let trust = broker.trust_anchors(&agent.trust_domain());
    let initials = capture_initials(INITIALS, &agent.identity(), &trust).await;
    let started = Instant::now();
    let mut tally = Tally::default();
    let sockets = flood(&initials, broker.quic_addr(), &mut tally).await;
    eprintln!("Q-01: {INITIALS} Initials from {SOURCES} ports sent in {:?}", started.elapsed());

    assert!(tunnel_echo(&held, &service, b"during").await, "the held tunnel keeps working during the flood");
    echo_once(&agent, "a new client right after the flood").await;
    echo_once(&other, "another identity right after the flood").await;

    // Whatever the broker still sends (handshake retransmissions) arrives within its PTOs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drain(&sockets, broker.quic_addr(), &mut tally);
    let busiest = tally.per_source.iter().copied().max().unwrap_or(0);
    eprintln!(
        "Q-01: sent {} B, received {} B, {} Retry packets, at most {busiest} B to one port",
        tally.sent, tally.received, tally.retries
    );
    assert!(tally.retries > 0, "over 256 handshakes in progress the broker answers with a stateless Retry");
    let per_source_sent = tally.sent / SOURCES;
    assert!(
        busiest <= 3 * per_source_sent,
        "an unvalidated address gets at most 3× what it sent (anti-amplification): {busiest} B for {per_source_sent} B"
    );
    assert!(tunnel_echo(&held, &service, b"after").await, "the held tunnel still works after the flood");
    assert!(broker.process().pid().is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()));
}
