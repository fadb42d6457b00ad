//! `palisade connect SERVICE --listen 127.0.0.1:PORT`: every local TCP
//! connection becomes one stream to SERVICE.

use std::future::Future;

use palisade_proto::id::ServiceName;
use tokio::net::{TcpListener, TcpStream};

use crate::listen::{accept_loop, report};
use crate::splice::{SpliceStats, splice_tcp};
use crate::tunnel::{Tunnel, TunnelError};

/// Forwards connections accepted on `listener` to `service` until `shutdown`
/// resolves. A refused connection is closed and reported on stderr; the
/// listener keeps running.
pub async fn serve(listener: TcpListener, tunnel: Tunnel, service: ServiceName, shutdown: impl Future<Output = ()>) {
    accept_loop(listener, shutdown, move |tcp, peer| {
        let tunnel = tunnel.clone();
        let service = service.clone();
        async move {
            match forward(tcp, &tunnel, &service).await {
                Ok(stats) => tracing::debug!(%peer, %service, stats.bytes_up, stats.bytes_down, "connection ended"),
                Err(error) => report(peer, service.as_str(), &error),
            }
        }
    })
    .await;
}

/// Carries one local connection to `service`.
///
/// # Errors
/// As [`splice_tcp`]; when no stream could be opened, the local connection is reset.
pub async fn forward(tcp: TcpStream, tunnel: &Tunnel, service: &ServiceName) -> Result<SpliceStats, TunnelError> {
    match tunnel.open(service).await {
        Ok((send, recv)) => splice_tcp(tcp, send, recv, service.as_str()).await,
        Err(e) => {
            let _ = tcp.set_zero_linger();
            Err(e)
        }
    }
}
