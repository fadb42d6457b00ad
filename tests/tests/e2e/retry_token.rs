//! QUIC Retry tokens (catalogue Q-02). With `relay.retry = "always"` the
//! broker answers a new client's first Initial with a stateless Retry whose
//! token binds the client's address and the time it was issued. An attacker
//! who captured such a token must not get a handshake out of it from another
//! address, nor after `relay.retry_token_lifetime`: the broker then sends no
//! Handshake packet (quinn answers with an Initial carrying a
//! CONNECTION_CLOSE `INVALID_TOKEN`, which holds no state), while the same
//! token from the address it was issued to starts the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::TlsIdentity;
use palisade_proto::wire::ALPN_CLIENT;
use palisade_tests::{ALLOW_ML_AGENTS, TestEnv};
use tokio::net::UdpSocket;

use crate::dos::set_relay;

/// `relay.retry_token_lifetime` for the test: long enough that a fresh token
/// is still good a second after it was issued (quinn stores the issue time
/// in whole seconds), short enough to wait out.
const LIFETIME: Duration = Duration::from_secs(3);
/// How long to collect what the broker sends back to one Initial.
const LISTEN: Duration = Duration::from_millis(600);

/// The long-header packet types of QUIC v1 (RFC 9000 §17.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// One long-header packet of a datagram: its type and, for an Initial, the length of its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packet {
    kind: Kind,
    token_len: usize,
}

/// A QUIC variable-length integer (RFC 9000 §16) and the bytes it took.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let mut value = u64::from(first & 0x3f);
    for b in bytes.get(1..len)? {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, len))
}

/// The long-header packets coalesced in one datagram, in order; parsing
/// stops at a short header or at anything malformed.
fn packets(mut datagram: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Some(&first) = datagram.first() {
        if first & 0x80 == 0 {
            break;
        }
        let kind = [Kind::Initial, Kind::ZeroRtt, Kind::Handshake, Kind::Retry][usize::from((first >> 4) & 0x03)];
        let Some(rest) = skip_connection_ids(datagram) else { break };
        if kind == Kind::Retry {
            out.push(Packet { kind, token_len: 0 });
            break;
        }
        let (token_len, rest) = if kind == Kind::Initial {
            let Some((len, n)) = varint(rest) else { break };
            let Ok(len) = usize::try_from(len) else { break };
            (len, rest.get(n + len..).unwrap_or_default())
        } else {
            (0, rest)
        };
        let Some((len, n)) = varint(rest) else { break };
        out.push(Packet { kind, token_len });
        datagram = usize::try_from(len).ok().and_then(|len| rest.get(n + len..)).unwrap_or_default();
    }
    out
}

/// After the first byte and the version: the destination and source connection ids.
fn skip_connection_ids(packet: &[u8]) -> Option<&[u8]> {
    let dcid_len = usize::from(*packet.get(5)?);
    let scid_at = 6 + dcid_len;
    let scid_len = usize::from(*packet.get(scid_at)?);
    packet.get(scid_at + 1 + scid_len..)
}

/// A client Initial that carries a Retry token, captured before it reached
/// the broker, and the socket (the address) the token was issued to.
struct TokenInitial {
    datagram: Vec<u8>,
    issued_to: UdpSocket,
    issued_at: Instant,
}

/// Runs a real quinn client through a relay socket: its first Initial goes
/// to the broker from `issued_to`, the broker's Retry goes back to the
/// client, and the client's second Initial, now carrying the token, is kept
/// instead of forwarded.
async fn capture_token_initial(broker: SocketAddr, identity: &TlsIdentity, trust: &TrustAnchors) -> TokenInitial {
    let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind the relay's client side");
    let issued_to = UdpSocket::bind("127.0.0.1:0").await.expect("bind the relay's broker side");
    let tls = palisade_proto::tls::quic_client_config(identity, trust, ALPN_CLIENT).expect("client TLS config");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
    let target = front.local_addr().expect("relay address");
    let _connecting = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), target, "127.0.0.1")
        .expect("start a connection");
    let (mut client, mut issued_at) = (None, None);
    let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => panic!("no Initial with a Retry token within 5 s (is relay.retry \"always\"?)"),
            got = front.recv_from(&mut up) => {
                let (len, from) = got.expect("receive from the client");
                client = Some(from);
                match packets(&up[..len]).first() {
                    Some(p) if p.kind == Kind::Initial && p.token_len > 0 => {
                        let issued_at = issued_at.expect("a token only after a Retry");
                        endpoint.close(0u32.into(), b"");
                        return TokenInitial { datagram: up[..len].to_vec(), issued_to, issued_at };
                    }
                    Some(p) if p.kind == Kind::Initial => {
                        issued_to.send_to(&up[..len], broker).await.expect("forward the Initial");
                    }
                    _ => {}
                }
            }
            got = issued_to.recv_from(&mut down) => {
                let (len, _) = got.expect("receive from the broker");
                if packets(&down[..len]).iter().any(|p| p.kind == Kind::Retry) {
                    issued_at.get_or_insert_with(Instant::now);
                    let client = client.expect("the client spoke first");
                    front.send_to(&down[..len], client).await.expect("forward the Retry");
                }
            }
        }
    }
}

/// Sends `datagram` from `socket` and returns every packet the broker sends back within [`LISTEN`].
async fn send_and_listen(socket: &UdpSocket, datagram: &[u8], broker: SocketAddr) -> Vec<Packet> {
    socket.send_to(datagram, broker).await.expect("send the Initial");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 2048];
    let until = tokio::time::Instant::now() + LISTEN;
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
        answer.extend(packets(&buf[..len]));
    }
    answer
}

fn handshake_started(answer: &[Packet]) -> bool {
    answer.iter().any(|p| p.kind == Kind::Handshake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_is_refused_from_another_address_and_after_its_lifetime() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_relay(&broker, "retry", "always".into());
    set_relay(&broker, "retry_token_lifetime", format!("{}s", LIFETIME.as_secs()).into());
    broker.restart().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let trust = broker.trust_anchors(&agent.trust_domain());
    let addr = broker.quic_addr();

    // Captured first, so its lifetime runs out while the other checks run.
    let stale = capture_token_initial(addr, &agent.identity(), &trust).await;
    let token = capture_token_initial(addr, &agent.identity(), &trust).await;

    let elsewhere = UdpSocket::bind("127.0.0.1:0").await.expect("bind another port");
    let answer = send_and_listen(&elsewhere, &token.datagram, addr).await;
    eprintln!("Q-02: token from another port: {answer:?}");
    assert!(!handshake_started(&answer), "a token issued to another address started a handshake: {answer:?}");

    assert!(token.issued_at.elapsed() < LIFETIME - Duration::from_secs(1), "the token is still fresh");
    let answer = send_and_listen(&token.issued_to, &token.datagram, addr).await;
    eprintln!("Q-02: the same token from its own address: {answer:?}");
    assert!(handshake_started(&answer), "the token from the address it was issued to starts the handshake");

    // Past the lifetime for sure, whatever the sub-second part of the issue time.
    let expired = stale.issued_at + LIFETIME + Duration::from_millis(300);
    tokio::time::sleep_until(expired.into()).await;
    let answer = send_and_listen(&stale.issued_to, &stale.datagram, addr).await;
    eprintln!("Q-02: an expired token from its own address: {answer:?}");
    assert!(!handshake_started(&answer), "an expired token started a handshake: {answer:?}");
}
