//! The QUIC side of the broker, in the order a tunnel flows through it:
//! [`accept`] a connection and check who it is, [`open`] a client's stream
//! (decide, pick a connector from the [`registry`], dispatch), then
//! [`splice`] bytes both ways. Connectors' control streams live in
//! [`crate::control`].

pub mod accept;
mod drain;
mod groups;
pub mod live;
mod membership;
pub mod open;
pub mod query;
mod reevaluate;
pub mod registry;
pub mod revoke;
pub mod splice;
mod transport;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::state::Broker;

/// The QUIC listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TLS configuration was refused.
    #[error("QUIC TLS configuration: {0}")]
    Tls(String),
    /// The UDP socket could not be used.
    #[error("QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be reached while starting.
    #[error("QUIC endpoint: database: {0}")]
    Db(String),
}

/// Above this many connections in progress, new clients must prove their
/// address with a Retry before the broker keeps any handshake state.
const RETRY_ABOVE: usize = 256;

/// Decides, before any TLS work, whether to take an incoming connection:
/// refuse over the global cap, ask for address validation when configured
/// or under load, otherwise hand it to [`accept::handle`].
fn admit(broker: &Broker, endpoint: &quinn::Endpoint, incoming: quinn::Incoming, shutdown: &CancellationToken) {
    let relay = &broker.config().relay;
    let open = endpoint.open_connections();
    if open >= relay.max_connections {
        tracing::warn!(open, limit = relay.max_connections, remote = %incoming.remote_address(), "QUIC connection refused: at capacity");
        incoming.refuse();
        return;
    }
    let must_validate = match relay.retry {
        crate::config::RetryPolicy::Always => true,
        crate::config::RetryPolicy::UnderLoad => open >= RETRY_ABOVE,
    };
    if must_validate && !incoming.remote_address_validated() && incoming.may_retry() {
        if let Err(e) = incoming.retry() {
            tracing::debug!(error = %e, "could not send a QUIC Retry");
        }
        return;
    }
    // Accepted here, not in the spawned task: the endpoint counts a
    // connection from `accept` on, and a flood of Initials must not outrun
    // the tasks that would accept them and so stay under `RETRY_ABOVE`.
    let remote = incoming.remote_address();
    tokio::spawn(accept::handle(broker.clone(), remote, incoming.accept(), shutdown.clone()));
}

/// Serves QUIC on `socket` until `shutdown` fires, drains (see [`drain`]),
/// then closes every connection with the "shutting down" code so clients
/// reconnect.
///
/// # Errors
/// [`RelayError`] if the endpoint cannot be created.
pub async fn serve(broker: Broker, socket: std::net::UdpSocket, shutdown: CancellationToken) -> Result<(), RelayError> {
    let server_config = transport::server_config(&broker)?;
    let endpoint = quinn::Endpoint::new(
        transport::endpoint_config(&broker).await?,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    // `shutdown` starts the drain; `stop` ends what the drain let finish.
    let stop = CancellationToken::new();
    tokio::spawn(revoke::watch(broker.clone(), stop.clone()));
    tokio::spawn(reevaluate::watch(broker.clone(), stop.clone()));
    tokio::spawn(reevaluate::watch_moves(broker.clone(), stop.clone()));
    tokio::spawn(groups::watch(broker.clone(), stop.clone()));
    broker.live().set_quic_accepting(true);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => admit(&broker, &endpoint, incoming, &stop),
                None => break,
            },
        }
    }
    broker.live().set_quic_accepting(false);
    drain::run(&broker, &endpoint).await;
    stop.cancel();
    endpoint.close(quinn::VarInt::from_u32(palisade_proto::reject::close::SHUTTING_DOWN), b"broker shutting down");
    endpoint.wait_idle().await;
    Ok(())
}
