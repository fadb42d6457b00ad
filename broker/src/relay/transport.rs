//! QUIC transport limits, chosen on purpose rather than left at quinn's defaults.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{AckFrequencyConfig, IdleTimeout, TransportConfig, VarInt};

use super::RelayError;
use crate::state::Broker;

/// Per-stream receive window: large enough for a fast single stream on a
/// LAN-scale bandwidth-delay product.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window. quinn's default is unbounded; this caps the
/// memory one peer can make us buffer whatever its number of streams.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// One stream per tunnelled TCP connection; 10k idle tunnels per client must fit.
const MAX_STREAMS: u32 = 16 * 1024;

/// The stateless-reset key is kept in the database so that a restarted
/// broker (or another replica on the same address) can tell clients of the
/// previous process at once that their connection is gone, instead of them
/// waiting for the idle timeout.
pub(super) async fn endpoint_config(broker: &Broker) -> Result<quinn::EndpointConfig, RelayError> {
    let mut fresh = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| RelayError::Tls("the system random number generator failed".into()))?;
    let fresh = palisade_proto::enroll::hex(&fresh);
    let mut conn = broker.db().pool().acquire().await.map_err(|e| RelayError::Db(e.to_string()))?;
    let secret =
        crate::db::meta::insert_once(&mut conn, RESET_KEY, &fresh).await.map_err(|e| RelayError::Db(e.to_string()))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    // Connection ids must be recognisable by the next process too, or it drops
    // old peers' packets silently instead of answering with a stateless reset.
    let cid_key = ring::hmac::sign(&key, b"palisade connection id key");
    let mut cid_seed = [0u8; 8];
    cid_seed.copy_from_slice(&cid_key.as_ref()[..8]);
    let cid_seed = u64::from_be_bytes(cid_seed);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_seed)));
    Ok(config)
}

const RESET_KEY: &str = "quic_stateless_reset_key";

pub(super) fn server_config(broker: &Broker) -> Result<quinn::ServerConfig, RelayError> {
    let tls = palisade_proto::tls::quic_server_config(broker.server_identity(), broker.trust())
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let quic = QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport()));
    config.retry_token_lifetime(broker.config().relay.retry_token_lifetime);
    Ok(config)
}

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .ack_frequency_config(Some(fewer_acks()));
    t
}

/// See [`palisade_proto::wire::ACK_ELICITING_THRESHOLD`].
fn fewer_acks() -> AckFrequencyConfig {
    let mut acks = AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(palisade_proto::wire::ACK_ELICITING_THRESHOLD));
    acks
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_asked_to_acknowledge_less_often() {
        let config = format!("{:?}", super::transport());
        assert!(config.contains("ack_eliciting_threshold: 9"), "{config}");
    }
}
