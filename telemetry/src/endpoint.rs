//! The metrics listener: plain HTTP/1.1 on its own address (loopback or a
//! cluster-internal interface), never on the public HTTPS port.
//!
//! - `GET /metrics`: every series, Prometheus text format 0.0.4.
//! - `GET /healthz`: `200 ok` while the process runs.
//! - `GET /readyz`: `200 ready`, or `503` with a short plain-text reason
//!   from the program's [`Readiness`] check.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::exposition::{self, Series};

/// Scrapers and probes are few; more connections than this at once are dropped.
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A readiness check that takes longer than this is a "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the program can do its job right now.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise a short reason for the `503` body.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
///
/// # Errors
/// Never after binding; the `Result` is for the caller's task supervisor.
pub async fn serve<R: Readiness>(
    listener: TcpListener,
    series: &'static [Series],
    readiness: Arc<R>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections; dropping one");
            continue;
        };
        let readiness = readiness.clone();
        let service = service_fn(move |request| {
            let readiness = readiness.clone();
            async move { Ok::<_, Infallible>(route(&request, series, &*readiness).await) }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            drop(slot);
        });
    }
}

async fn route<R: Readiness>(request: &Request<Incoming>, series: &[Series], readiness: &R) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, exposition::encode(series));
            let content_type = header::HeaderValue::from_static(exposition::CONTENT_TYPE);
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, readiness.check()).await {
            Ok(Ok(())) => text(StatusCode::OK, "ready\n".into()),
            Ok(Err(reason)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the readiness check timed out\n".into()),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::exposition::Counter;

    static HITS: Counter = Counter::new();
    static SERIES: [Series; 1] = [Series { name: "hits_total", help: "Hits.", metric: &HITS }];

    struct Switch(AtomicBool);

    impl Readiness for Switch {
        async fn check(&self) -> Result<(), String> {
            if self.0.load(Ordering::Relaxed) { Ok(()) } else { Err("not linked to a broker".into()) }
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let switch = Arc::new(Switch(AtomicBool::new(false)));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, &SERIES, switch.clone(), shutdown.clone()));
        HITS.add(7);

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("content-type: text/plain; version=0.0.4"), "{metrics}");
        assert!(
            metrics.contains("\r\n\r\n# HELP hits_total Hits.\n# TYPE hits_total counter\nhits_total 7\n"),
            "{metrics}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));

        let unready = get(addr, "/readyz").await;
        assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
        assert!(unready.ends_with("not ready: not linked to a broker\n"), "{unready}");
        switch.0.store(true, Ordering::Relaxed);
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"), "{ready}");

        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        server.await.expect("joined").expect("served");
    }
}
