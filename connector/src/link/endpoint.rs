//! The QUIC endpoint and its settings.
//!
//! The transport is tuned on purpose; quinn's defaults suit many small
//! streams, not a relay of bulk transfers:
//! - `stream_receive_window` 4 MiB: one tunnel can keep a
//!   bandwidth-delay product of 4 MiB in flight (about 300 Mbit/s at 100 ms).
//! - `receive_window` 32 MiB: the connection-wide limit, so eight busy
//!   tunnels still run at full speed while memory stays bounded (quinn's
//!   default is unbounded).
//! - `send_window` 32 MiB: matches the receive side of the broker.
//! - `max_concurrent_bidi_streams` 16384: the broker opens one stream per
//!   tunnel towards us; 10 000 idle tunnels must fit.
//! - `max_concurrent_uni_streams` 0: nothing uses them, so the broker may open none.
//! - `keep_alive_interval` 2 s and `max_idle_timeout` 10 s: NAT and
//!   firewall state on the way out stays fresh, and a dead peer is noticed
//!   within 10 s on both sides (the effective idle timeout is the smaller of
//!   the two peers'), so the connector reconnects and the broker stops
//!   sending tunnels to a connector that is gone.
//! - UDP socket buffers 4 MiB: the kernel default (about 200 KiB) drops
//!   packets in bursts at a few hundred Mbit/s.
//! - ACK frequency: the broker is asked to acknowledge every tenth packet
//!   rather than every second ([`ACK_ELICITING_THRESHOLD`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::{TlsError, TlsIdentity, quic_client_config};
use palisade_proto::wire::{ACK_ELICITING_THRESHOLD, ALPN_CONNECTOR};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig};
use quinn::{AckFrequencyConfig, Endpoint, EndpointConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

const MIB: u32 = 1024 * 1024;
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// The QUIC client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientConfigError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the TLS configuration has no QUIC cipher suite: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// Transport parameters; see the module documentation for why each is set.
pub(crate) fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(4 * MIB))
        .receive_window(VarInt::from_u32(32 * MIB))
        .send_window(u64::from(32 * MIB))
        .max_concurrent_bidi_streams(VarInt::from_u32(16_384))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(10_000).into()))
        .ack_frequency_config(Some(fewer_acks()));
    transport
}

fn fewer_acks() -> AckFrequencyConfig {
    let mut acks = AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    acks
}

/// mTLS with our certificate, trusting only our CA, ALPN `palisade-connector/1`.
pub(crate) fn client_config(
    identity: &TlsIdentity,
    trust: &TrustAnchors,
) -> Result<quinn::ClientConfig, ClientConfigError> {
    let tls = quic_client_config(identity, trust, ALPN_CONNECTOR)?;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(Arc::new(tls))?));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A client-only endpoint on an ephemeral port of the broker's address family.
pub(crate) fn client_endpoint(remote: SocketAddr) -> std::io::Result<Endpoint> {
    let bind: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps these at net.core.{w,r}mem_max; a smaller buffer is slower, not wrong.
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not raise the UDP send buffer");
    }
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not raise the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    Endpoint::new(EndpointConfig::default(), None, socket.into(), Arc::new(quinn::TokioRuntime))
}
