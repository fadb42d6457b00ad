//! HTTPS: axum on tokio-rustls, one router per module.
//!
//! Routes, in flow order: [`health`] (`GET /healthz`), [`openapi`]
//! (`GET /api/openapi.yaml`, the document of them all), [`enroll`]
//! (`GET /api/v1/trust-bundle`, `POST /api/v1/enroll`). [`metrics`] is a
//! separate plain-HTTP listener (`[metrics] listen`), not on this port. Errors are
//! `palisade_proto::enroll::ApiError` JSON; 5xx bodies are opaque and the cause
//! is logged.

pub mod enroll;
pub mod health;
mod json_only;
pub mod jwks;
mod limits;
pub mod metrics;
pub(crate) mod no_nul;
pub mod openapi;
pub mod security;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use palisade_proto::enroll::ApiError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::Broker;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 4096;

/// The HTTPS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The TLS configuration could not be built from the server identity.
    #[error("HTTPS: {0}")]
    Tls(#[from] palisade_proto::tls::TlsError),
}

/// The TCP peer of an HTTPS request, as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Every route, with the broker as state.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(openapi::routes())
        .merge(enroll::routes())
        .merge(jwks::routes())
        .merge(crate::login::routes(&broker))
        .merge(crate::console::routes(&broker))
        .layer(axum::middleware::from_fn(json_only::guard))
        .layer(axum::middleware::from_fn(no_nul::guard))
        .layer(axum::middleware::from_fn(limits::request_timeout))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::map_response(security::headers))
        .with_state(broker)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An `ApiError` JSON response.
pub(crate) fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(ApiError { error: code.to_owned(), message: message.into() })).into_response()
}

/// A 500 whose body says nothing; the cause goes to the log.
pub(crate) fn internal_error(cause: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %cause, "request failed");
    api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the broker logged the cause")
}

/// Serves HTTPS on `listener` until `shutdown`, then drains open connections for a few seconds.
///
/// # Errors
/// The TLS configuration could not be built.
pub async fn serve(broker: Broker, listener: TcpListener, shutdown: CancellationToken) -> Result<(), WebError> {
    let acceptor = TlsAcceptor::from(Arc::new(palisade_proto::tls::https_server_config(broker.server_identity())?));
    let per_address = limits::PerAddress::new(broker.config().login.trusted_proxies.clone());
    let app = router(broker);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many HTTPS connections; dropping one");
            continue;
        };
        let Some(address_slot) = per_address.try_take(peer.ip()) else {
            tracing::warn!(%peer, limit = limits::PER_ADDRESS, "too many HTTPS connections from one address; dropping one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        tracker.spawn(async move {
            serve_connection(acceptor, app, tcp, peer, shutdown).await;
            drop((slot, address_slot));
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
    Ok(())
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    app: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let app = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        req
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let finish = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => DRAIN_TIMEOUT,
        () = tokio::time::sleep(limits::MAX_AGE) => limits::REQUEST_TIMEOUT,
    };
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(finish, conn).await;
}
