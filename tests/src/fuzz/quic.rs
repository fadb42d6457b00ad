//! Client Initial packets at the broker's QUIC configuration (case Q-07).
//!
//! Random datagrams die at the Initial's AEAD, so this target encrypts what
//! the fuzzer writes with the Initial keys itself, and the bytes reach the
//! parsers behind it: frames (`mode` byte even) or, wrapped in a genuine
//! rustls ClientHello, the client's transport parameters (`mode` odd). The
//! server side is a quinn-proto endpoint with the broker's rustls
//! configuration (`palisade_proto::tls::quic_server_config`), driven
//! without sockets.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::TlsIdentity;
use palisade_proto::wire::ALPN_CLIENT;
use quinn_proto::crypto::ServerConfig as _;
use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{ConnectionId, DatagramEvent, Endpoint, EndpointConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

const VERSION: u32 = 1;
const DCID: [u8; 8] = *b"palisade";
const SCID: [u8; 8] = *b"fuzzscid";
/// Flags, version, both connection ids, an empty token and a 2-byte length.
const PN_OFFSET: usize = 1 + 4 + 1 + DCID.len() + 1 + SCID.len() + 1 + 2;
const PN_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// Clients must pad Initials to at least this size.
const MIN_DATAGRAM: usize = 1200;
const MAX_PAYLOAD: usize = 1350;

struct Server {
    quic: Arc<QuicServerConfig>,
    config: Arc<ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (trust, identity) = pki();
        let tls = palisade_proto::tls::quic_server_config(&identity, &trust).expect("the broker's QUIC TLS");
        let quic = Arc::new(QuicServerConfig::try_from(Arc::new(tls)).expect("a QUIC TLS config"));
        let config = Arc::new(ServerConfig::with_crypto(quic.clone()));
        let client_tls = palisade_proto::tls::quic_client_config(&identity, &trust, ALPN_CLIENT).expect("client TLS");
        Server { quic, config, client_tls: Arc::new(client_tls) }
    })
}

/// A CA and one leaf it signed, used as the server's certificate (and,
/// unverified anyway, as the ClientHello's client identity).
fn pki() -> (TrustAnchors, TlsIdentity) {
    let ca_key = rcgen::KeyPair::generate().expect("a key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_der = ca.self_signed(&ca_key).expect("a CA").der().clone();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("a leaf").der().clone();
    let trust =
        TrustAnchors::new("fuzz.palisade.test".parse().expect("a trust domain"), vec![ca_der]).expect("trust anchors");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (trust, TlsIdentity { chain: vec![CertificateDer::from(cert.to_vec())], key })
}

/// The target body: the first byte picks what the rest is.
pub fn quic_initial(data: &[u8]) {
    let _ = serve_input(data);
}

/// What the server made of one input: `None` if the datagram made no
/// connection attempt, else how many datagrams the server sent and what it
/// reported (connection events, or `refused: …` when the first packet
/// already failed).
#[must_use]
pub fn serve_input(data: &[u8]) -> Option<(usize, Vec<String>)> {
    let (&mode, rest) = data.split_first()?;
    let payload = if mode % 2 == 0 { rest.to_vec() } else { client_hello_frames(rest) };
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    serve(&initial(&payload))
}

/// A CRYPTO frame carrying a real ClientHello with `params` as its QUIC
/// transport parameters.
#[must_use]
pub fn client_hello_frames(params: &[u8]) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("a name");
    let Ok(mut tls) = rustls::quic::ClientConnection::new(
        server().client_tls.clone(),
        rustls::quic::Version::V1,
        name,
        params.to_vec(),
    ) else {
        return Vec::new();
    };
    let mut hello = Vec::new();
    tls.write_hs(&mut hello);
    let mut frames = vec![0x06, 0x00];
    put_varint(&mut frames, hello.len() as u64);
    frames.extend_from_slice(&hello);
    frames
}

/// A client Initial datagram carrying `payload`, protected with the Initial keys for [`DCID`].
fn initial(payload: &[u8]) -> Vec<u8> {
    let keys = server().quic.initial_keys(VERSION, &ConnectionId::new(&DCID)).expect("version 1");
    let mut packet = vec![0xc0 | (PN_LEN as u8 - 1)];
    packet.extend_from_slice(&VERSION.to_be_bytes());
    packet.push(DCID.len() as u8);
    packet.extend_from_slice(&DCID);
    packet.push(SCID.len() as u8);
    packet.extend_from_slice(&SCID);
    packet.push(0); // no token
    let padded = payload.len().max(MIN_DATAGRAM - PN_OFFSET - PN_LEN - TAG_LEN);
    let length = (PN_LEN + padded + TAG_LEN) as u16;
    packet.extend_from_slice(&(0x4000 | length).to_be_bytes());
    packet.extend_from_slice(&[0; PN_LEN]);
    packet.extend_from_slice(payload);
    packet.resize(PN_OFFSET + PN_LEN + padded + TAG_LEN, 0); // PADDING frames, then room for the tag
    // The server's "remote" keys are the client's: what a client encrypts with.
    keys.packet.remote.encrypt(0, &mut packet, PN_OFFSET + PN_LEN);
    keys.header.remote.encrypt(PN_OFFSET, &mut packet);
    packet
}

/// Hands `datagram` to a fresh endpoint and drives the connection it makes.
fn serve(datagram: &[u8]) -> Option<(usize, Vec<String>)> {
    let server = server();
    let config = Arc::new(EndpointConfig::default());
    let mut endpoint = Endpoint::new(config, Some(server.config.clone()), false, Some([7; 32]));
    let (now, remote) = (Instant::now(), SocketAddr::from(([127, 0, 0, 1], 4433)));
    let mut buf = Vec::new();
    let event = endpoint.handle(now, remote, None, None, BytesMut::from(datagram), &mut buf)?;
    let DatagramEvent::NewConnection(incoming) = event else { return None };
    let mut conn = match endpoint.accept(incoming, now, &mut buf, None) {
        Ok((_, conn)) => conn,
        Err(refused) => {
            return Some((usize::from(refused.response.is_some()), vec![format!("refused: {:?}", refused.cause)]));
        }
    };
    let mut sent = 0;
    while sent < 8 {
        buf.clear();
        if conn.poll_transmit(now, 1, &mut buf).is_none() {
            break;
        }
        sent += 1;
    }
    let events = std::iter::from_fn(|| conn.poll()).map(|e| format!("{e:?}")).collect();
    Some((sent, events))
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes()),
    }
}

/// Transport parameters a well-behaved client sends: its initial source
/// connection id (required), an idle timeout and flow-control limits.
#[must_use]
pub fn valid_params() -> Vec<u8> {
    let mut params = Vec::new();
    let mut put = |id: u64, value: &[u8]| {
        put_varint(&mut params, id);
        put_varint(&mut params, value.len() as u64);
        params.extend_from_slice(value);
    };
    put(0x0f, &SCID); // initial_source_connection_id
    put(0x01, &[0x80, 0x00, 0x75, 0x30]); // max_idle_timeout 30,000 ms
    put(0x04, &[0x80, 0x10, 0x00, 0x00]); // initial_max_data 1 MiB
    put(0x08, &[0x40, 0x64]); // initial_max_streams_bidi 100
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
        [&[mode][..], rest].concat()
    }

    #[test]
    fn a_genuine_client_hello_starts_a_handshake() {
        let (sent, events) = serve_input(&with_mode(1, &valid_params())).expect("a connection");
        assert!(sent >= 1, "the server answered the ClientHello");
        assert!(!events.iter().any(|e| e.contains("ConnectionLost")), "{events:?}");
    }

    #[test]
    fn malformed_transport_parameters_close_the_connection() {
        let mut truncated = valid_params();
        truncated.truncate(truncated.len() - 1);
        let mut duplicated = valid_params();
        duplicated.extend_from_slice(&valid_params());
        for params in [Vec::new(), truncated, duplicated] {
            let (_, events) = serve_input(&with_mode(1, &params)).expect("a connection");
            assert!(
                events.iter().any(|e| e.starts_with("refused") && e.contains("TRANSPORT_PARAMETER")),
                "{params:?}: {events:?}"
            );
        }
    }

    #[test]
    fn frames_written_by_the_fuzzer_reach_the_connection() {
        let hello = client_hello_frames(&valid_params());
        let (sent, _) = serve_input(&with_mode(0, &hello)).expect("a connection");
        assert!(sent >= 1, "the same ClientHello as raw frames starts a handshake");
        // A STREAM frame in an Initial is a protocol violation.
        let (_, events) = serve_input(&with_mode(0, &[0x08, 0x00, 0x01, 0x61])).expect("a connection");
        assert!(events.iter().any(|e| e.starts_with("refused") && e.contains("PROTOCOL_VIOLATION")), "{events:?}");
    }
}
