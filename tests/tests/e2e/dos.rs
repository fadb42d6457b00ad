//! QUIC denial of service (catalogue Q-04): stalled handshakes. The broker
//! must free what stalled peers hold and keep serving everyone else. Also
//! Q-14: early data (0-RTT), which an attacker could replay, is off, and a
//! client whose address changes is decided again. Q-05, a client that never
//! reads its streams, is in `unread_streams.rs`.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_client::{Profile, Tunnel};
use palisade_proto::id::ServiceName;
use palisade_proto::identity::TrustAnchors;
use palisade_proto::reject::RejectCode;
use palisade_proto::tls::TlsIdentity;
use palisade_proto::wire::{ALPN_CLIENT, OpenStream, StreamHeader};
use palisade_tests::{ALLOW_ML_AGENTS, Broker, EchoUpstream, Probe, QuicProbe, TestEnv};

/// The broker's QUIC handshake timeout (`broker/src/relay/accept.rs`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn client_config(
    identity: &TlsIdentity,
    trust: &TrustAnchors,
    transport: Option<quinn::TransportConfig>,
) -> quinn::ClientConfig {
    let tls = palisade_proto::tls::quic_client_config(identity, trust, ALPN_CLIENT).expect("client TLS config");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(transport) = transport {
        config.transport_config(Arc::new(transport));
    }
    config
}

/// `n` distinct client Initial datagrams (each a real quinn ClientHello with
/// its own destination connection id), captured on a local socket instead of
/// being sent to the broker.
pub(crate) async fn capture_initials(n: usize, identity: &TlsIdentity, trust: &TrustAnchors) -> Vec<Vec<u8>> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind the capture socket");
    let target = capture.local_addr().expect("capture address");
    let config = client_config(identity, trust, None);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
    let mut seen = HashSet::new();
    let mut initials = Vec::with_capacity(n);
    // The connection attempts stay alive until every Initial is captured;
    // retransmissions (same connection id) are skipped.
    let mut attempts = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    while initials.len() < n {
        if attempts.len() < n {
            attempts.push(endpoint.connect_with(config.clone(), target, "127.0.0.1").expect("start a connection"));
        }
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), capture.recv_from(&mut buf))
            .await
            .expect("a client Initial within 5 s")
            .expect("receive");
        let packet = &buf[..len];
        // Long header, Initial: 1 flag byte, 4 version bytes, then the DCID length and the DCID.
        if len < 1200 || packet[0] & 0xc0 != 0xc0 || packet[0] & 0x30 != 0 {
            continue;
        }
        let dcid_len = usize::from(packet[5]);
        if seen.insert(packet[6..6 + dcid_len].to_vec()) {
            initials.push(packet.to_vec());
        }
    }
    drop(attempts);
    endpoint.close(0u32.into(), b"");
    initials
}

/// Replays each Initial from its own UDP socket (its own 4-tuple) and never
/// answers the broker: every handshake stalls before the client's Finished
/// and before the client certificate is sent. The sockets are returned so the
/// ports stay open (no ICMP unreachable ends the attempts early).
fn stall_handshakes(initials: &[Vec<u8>], broker: SocketAddr) -> Vec<UdpSocket> {
    initials
        .iter()
        .map(|initial| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a raw UDP socket");
            socket.send_to(initial, broker).expect("send the Initial");
            socket.set_nonblocking(true).expect("non-blocking");
            socket
        })
        .collect()
}

/// What the broker sent back to the raw sockets, by their first datagram.
#[derive(Debug, Default)]
struct Answers {
    /// A server Initial: the broker started a handshake and holds its state.
    handshakes: usize,
    /// A Retry: the broker asked for address validation and kept nothing.
    retries: usize,
}

fn answers(sockets: &[UdpSocket]) -> Answers {
    let mut buf = [0u8; 2048];
    let mut answers = Answers::default();
    for socket in sockets {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            // Long header packet type in bits 4-5: 0b11 is Retry.
            if len > 0 && buf[0] & 0xf0 == 0xf0 {
                answers.retries += 1;
            } else {
                answers.handshakes += 1;
            }
        }
    }
    answers
}

pub(crate) async fn echo_once(agent: &palisade_tests::Agent, what: &str) {
    echo_within(agent, "echo", what, Duration::from_secs(5)).await;
}

/// One echo through `agent`'s tunnel to `service`, answered within `limit`; how long it took.
pub(crate) async fn echo_within(agent: &palisade_tests::Agent, service: &str, what: &str, limit: Duration) -> Duration {
    let asked = Instant::now();
    let reply = tokio::time::timeout(limit, agent.tunnel_exchange(service, what.as_bytes()))
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply, what.as_bytes(), "{what}");
    asked.elapsed()
}

async fn timed_out_handshakes(broker: &Broker) -> usize {
    broker
        .audit_events()
        .await
        .of_kind("quic.refused")
        .iter()
        .filter(|r| r.detail_str("reason") == Some("handshake timed out"))
        .count()
}

/// Q-04: 1,000 handshakes stalled at once (Initial sent, then silence).
/// The broker starts handshakes for the first few hundred; above 256
/// connections in progress it answers with a stateless Retry, which a
/// stalled peer never follows, so those hold nothing. While the stall lasts
/// a tunnel opened before keeps working and new clients of two identities
/// connect (through a Retry themselves); after the 10 s handshake timeout
/// the broker has given up on every handshake it started (one `quic.refused`
/// "handshake timed out" each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_handshakes_time_out_or_get_a_retry_while_legitimate_clients_connect() {
    const STALLED: usize = 1_000;
    let env = TestEnv::alone();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let other = broker.machine("agent-2").group("ml-agents").enroll().await;
    let service: ServiceName = "echo".parse().expect("service name");

    // A tunnel held across the whole attack.
    let held = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    assert!(tunnel_echo(&held, &service, b"before").await, "the held tunnel works before the attack");

    let trust = broker.trust_anchors(&agent.trust_domain());
    let initials = capture_initials(STALLED, &agent.identity(), &trust).await;
    let flood = Instant::now();
    let sockets = stall_handshakes(&initials, broker.quic_addr());

    // While the stalled handshakes are still pending.
    assert!(tunnel_echo(&held, &service, b"during").await, "the held tunnel keeps working during the stall");
    echo_once(&agent, "a new client during the stall").await;
    echo_once(&other, "another identity during the stall").await;
    assert!(
        flood.elapsed() < HANDSHAKE_TIMEOUT,
        "the legitimate clients were served before the stalled ones timed out"
    );
    let answers = answers(&sockets);
    eprintln!("Q-04: {STALLED} stalled Initials: {answers:?}, legitimate clients served after {:?}", flood.elapsed());
    assert!(
        answers.handshakes + answers.retries >= STALLED * 9 / 10,
        "the broker answered the stalled peers: {answers:?}"
    );
    assert!(answers.handshakes >= 200, "the broker held handshake state for the first stalled peers: {answers:?}");
    assert!(answers.retries >= STALLED / 2, "under load the broker asked the rest for a Retry: {answers:?}");
    // 256 connections in progress (the broker's RETRY_ABOVE), the held tunnel's among them.
    assert!(
        answers.handshakes <= 256,
        "a flood of Initials outran the broker's count of handshakes in progress: {answers:?}"
    );

    // The broker gives up on each stalled handshake it started and frees its slot.
    palisade_tests::wait_for(
        "every stalled handshake to time out",
        HANDSHAKE_TIMEOUT + Duration::from_secs(8) - flood.elapsed().min(HANDSHAKE_TIMEOUT),
        || async { timed_out_handshakes(&broker).await >= answers.handshakes },
    )
    .await;
    assert!(tunnel_echo(&held, &service, b"after").await, "the held tunnel still works after the stall");
    echo_once(&other, "another identity after the stall").await;
    drop(sockets);
}

/// Q-04, the slots: with the global cap (`relay.max_connections`) below the
/// number of stalled handshakes, the stalled peers fill every slot; the
/// handshake timeout frees them and a new legitimate client gets in without
/// anyone restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_frees_slots_filled_by_stalled_handshakes() {
    const CAP: i64 = 40;
    const STALLED: usize = 80;
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_relay(&broker, "max_connections", CAP.into());
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    echo_once(&agent, "before the stall").await;
    let service: ServiceName = "echo".parse().expect("service name");
    let held = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    assert!(tunnel_echo(&held, &service, b"held").await, "a tunnel held through the stall works before it");

    let trust = broker.trust_anchors(&agent.trust_domain());
    let initials = capture_initials(STALLED, &agent.identity(), &trust).await;
    let flood = Instant::now();
    let sockets = stall_handshakes(&initials, broker.quic_addr());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused_while_full = tokio::time::timeout(Duration::from_secs(5), agent.tunnel_exchange("echo", b"full"))
        .await
        .map_or(true, |r| r.is_err());
    assert!(refused_while_full, "with every slot held by a stalled handshake, a new connection is refused");
    assert!(tunnel_echo(&held, &service, b"full").await, "the held tunnel keeps carrying data while the cap is full");

    // Slots free once quinn has also drained the abandoned connections (a
    // few PTOs after the 10 s timeout), so allow some seconds beyond it.
    palisade_tests::wait_for("a new client once the stalled handshakes time out", Duration::from_secs(18), || async {
        matches!(
            tokio::time::timeout(Duration::from_secs(3), agent.tunnel_exchange("echo", b"freed")).await,
            Ok(Ok(reply)) if reply == b"freed"
        )
    })
    .await;
    let waited = flood.elapsed();
    eprintln!(
        "Q-04: a legitimate client got in again {waited:?} after {STALLED} stalled handshakes filled {CAP} slots"
    );
    assert!(waited < HANDSHAKE_TIMEOUT + Duration::from_secs(8), "slots freed by the handshake timeout ({waited:?})");
    drop(sockets);
}

pub(crate) fn set_relay(broker: &Broker, key: &str, value: toml::Value) {
    let path = broker.data_dir().join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let relay = config.entry("relay").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    relay.as_table_mut().expect("[relay] is a table").insert(key.into(), value);
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

pub(crate) async fn tunnel_echo(tunnel: &Tunnel, service: &ServiceName, payload: &[u8]) -> bool {
    let attempt = async {
        let Ok((mut send, mut recv)) = tunnel.open(service).await else { return false };
        if send.write_all(payload).await.is_err() || send.finish().is_err() {
            return false;
        }
        matches!(recv.read_to_end(1024).await, Ok(bytes) if bytes == payload)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.unwrap_or(false)
}

/// A quinn connection to the broker's QUIC port with `identity`, outside
/// the client library, so a test controls every stream.
pub(crate) async fn raw_connection(
    broker: &Broker,
    identity: &TlsIdentity,
    trust: &TrustAnchors,
    transport: Option<quinn::TransportConfig>,
) -> quinn::Connection {
    let config = client_config(identity, trust, transport);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
    endpoint
        .connect_with(config, broker.quic_addr(), &broker.quic_addr().ip().to_string())
        .expect("connect")
        .await
        .expect("handshake")
}

/// Q-14 (0-RTT): a client with early data enabled that holds the broker's
/// resumption tickets asks quinn for 0-RTT on its next connection. The
/// broker's tickets allow no early data (`max_early_data_size = 0` in
/// `proto/src/tls.rs`), so there is no 0-RTT and nothing to replay; the
/// connection completes in 1-RTT and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_refused_even_with_a_resumption_ticket() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let probe = QuicProbe::new(broker.quic_addr(), broker.trust_anchors(&agent.trust_domain()));

    let attempt = probe.try_zero_rtt(&agent.identity(), "echo").await;
    eprintln!("Q-14: {attempt:?}");
    assert!(!attempt.tickets.is_empty(), "the broker sent a resumption ticket, so the client had one to try");
    assert!(attempt.tickets.iter().all(|&max| max == 0), "no ticket may allow early data: {:?}", attempt.tickets);
    assert!(!attempt.zero_rtt, "0-RTT must not be available: {attempt:?}");
    assert_eq!(attempt.then, Probe::Served(b"ping".to_vec()), "the 1-RTT connection is served");
    assert_eq!(upstream.accepted(), 2);
}

/// Q-14 (NAT rebinding): a client's source port changes mid-connection (the
/// client endpoint moves to a new UDP socket). The broker keeps serving the
/// same connection, so the identity it verified at the handshake is unchanged;
/// quinn validates the new path before sending more than the anti-amplification
/// limit to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_address_changes_mid_connection_keeps_its_connection() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let probe = QuicProbe::new(broker.quic_addr(), broker.trust_anchors(&agent.trust_domain()));

    let [(from, before), (to, after)] = probe.echo_across_rebind(&agent.identity(), "echo").await;
    eprintln!("Q-14 rebinding: {from} {before:?} -> {to} {after:?}");
    assert_ne!(from, to, "the client moved to a new address");
    let served = Probe::Served(b"ping".to_vec());
    assert_eq!((before, after), (served.clone(), served), "the same connection is served from the new address");
    assert_eq!(upstream.accepted(), 2);
}

/// Agents may reach `echo` only from 127.0.0.1.
const ALLOW_AGENTS_FROM_ONE_ADDRESS: &str = r#"@id("ml-agents-from-127.0.0.1")
permit (principal in Group::"ml-agents", action == Action::"connect", resource in Segment::"inference")
when { context has source_ip && context.source_ip.isInRange(ip("127.0.0.1/32")) };
"#;

/// Q-14 and address-bound policy: a client allowed from 127.0.0.1 opens a
/// tunnel, then moves its QUIC connection to 127.0.0.2 without a new
/// handshake. The broker decides again from the new address: the live
/// tunnel is cut (audited as `tunnels.revoked`, reason `address change`),
/// a new stream is refused, and the refusal names the new address. A
/// migration cannot carry access granted to where the client was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_an_address_the_policy_refuses_loses_its_tunnels() {
    let env = TestEnv::new();
    let broker =
        env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_AGENTS_FROM_ONE_ADDRESS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let config = client_config(&agent.identity(), &broker.trust_anchors(&agent.trust_domain()), None);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
    let conn = endpoint
        .connect_with(config, broker.quic_addr(), &broker.quic_addr().ip().to_string())
        .expect("connect")
        .await
        .expect("handshake");
    let header = StreamHeader::Open(OpenStream { service: "echo".parse().expect("service") }).encode().expect("header");
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
    send.write_all(&header).await.expect("write the header");
    send.write_all(b"ping").await.expect("write");
    let mut reply = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut reply)).await.expect("in time").expect("echo");
    assert_eq!(&reply, b"ping", "allowed from 127.0.0.1");

    endpoint.rebind(UdpSocket::bind("127.0.0.2:0").expect("bind on 127.0.0.2")).expect("rebind");
    // Traffic on the moved path lets the broker see the new address.
    let _ = send.write_all(b"more").await;
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = Vec::new();
        loop {
            let mut buf = [0u8; 64];
            match recv.read(&mut buf).await {
                Ok(Some(n)) => rest.extend_from_slice(&buf[..n]),
                Ok(None) | Err(_) => return rest,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the live tunnel was not cut within 10 s of the move");

    let (mut send2, mut recv2) = conn.open_bi().await.expect("a second stream on the moved connection");
    send2.write_all(&header).await.expect("write the header");
    send2.write_all(b"ping").await.expect("write");
    let refused = tokio::time::timeout(Duration::from_secs(5), recv2.read_exact(&mut reply)).await.expect("in time");
    match refused {
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            assert_eq!(RejectCode::from_u64(code.into_inner()), Some(RejectCode::Forbidden), "{code}");
        }
        other => panic!("a stream from 127.0.0.2 was not refused: {other:?}"),
    }
    assert_eq!(upstream.accepted(), 1, "nothing from the new address reached the workload");

    let audit = broker.audit_events().await;
    let moved = audit.of_kind("tunnels.revoked");
    assert!(
        moved.iter().any(|r| r.detail_str("reason") == Some("address change")
            && r.detail_str("to").is_some_and(|to| to.starts_with("127.0.0.2:"))),
        "{}",
        audit.summary()
    );
    let denied = audit.of_kind("stream.denied");
    assert!(
        denied.iter().any(|r| r.detail_str("remote").is_some_and(|a| a.starts_with("127.0.0.2:"))),
        "the refusal names the address the stream came from: {}",
        audit.summary()
    );
    conn.close(0u32.into(), b"done");
}
