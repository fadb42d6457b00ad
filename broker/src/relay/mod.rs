//! The QUIC side of the broker, in the order a tunnel flows through it:
//! [`accept`] a connection and check who it is, [`open`] a client's stream
//! (decide, pick a connector from the [`registry`], dispatch), then
//! [`splice`] bytes both ways. Connectors' control streams live in
//! [`crate::control`].

pub mod accept;
pub mod live;
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

/// Serves QUIC on `socket` until `shutdown` fires, then closes every
/// connection with the "shutting down" code so clients reconnect.
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
    tokio::spawn(revoke::watch(broker.clone(), shutdown.clone()));
    tokio::spawn(reevaluate::watch(broker.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(accept::handle(broker.clone(), incoming, shutdown.clone()));
                }
                None => break,
            },
        }
    }
    endpoint.close(quinn::VarInt::from_u32(palisade_proto::reject::close::SHUTTING_DOWN), b"broker shutting down");
    endpoint.wait_idle().await;
    Ok(())
}
