//! The connector's Prometheus series. [`SERIES`] is the one list of what
//! the connector exports; served on `[metrics] listen` with `/healthz`, and
//! `/readyz` ready while a broker link is up (welcomed).
//!
//! Label values are bounded: service names come from `connector.toml`
//! (a stream or request only gets here for a configured service), status is
//! the HTTP status code, decision and result are fixed words.

use std::sync::Arc;

use palisade_telemetry::{Counter, Family, Gauge, Histogram, Readiness, Series};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CONNECT_BOUNDS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// 1 while a link to a broker is up and welcomed, else 0.
pub(crate) static LINKED: Gauge = Gauge::new();
/// Tunnel streams dispatched by a broker, by `result`.
pub(crate) static STREAMS: Family<Counter> = Family::new(&["result"], Counter::new);
/// Allowed tunnel streams, by the send `priority` their caller's share of the link gave the replies.
pub(crate) static STREAM_PRIORITIES: Family<Counter> = Family::new(&["priority"], Counter::new);
/// L7 requests, by `service`, `status` and `decision`.
pub(crate) static HTTP_REQUESTS: Family<Counter> = Family::new(&["service", "status", "decision"], Counter::new);
/// Model tokens reported by the workload, by `service` and `kind` (prompt, completion).
pub(crate) static TOKENS: Family<Counter> = Family::new(&["service", "kind"], Counter::new);
/// Time to open the TCP connection to a TCP service's workload.
pub(crate) static UPSTREAM_CONNECT: Family<Histogram<11>> =
    Family::new(&["service"], || Histogram::new(CONNECT_BOUNDS));

/// Everything the connector exports, in the order `/metrics` lists it.
pub static SERIES: [Series; 7] = [
    Series {
        name: "palisade_connector_linked",
        help: "1 while a link to a broker is up and welcomed, else 0.",
        metric: &LINKED,
    },
    Series {
        name: "palisade_connector_streams_total",
        help: "Tunnel streams from a broker, by result (allowed, denied, upstream_failed, bad_request).",
        metric: &STREAMS,
    },
    Series {
        name: "palisade_connector_stream_priorities_total",
        help: "Allowed tunnel streams, by the send priority their caller's share of the link gave the replies \
               (0: fewer than 8 of its streams open on the link; -1 to -4: each eightfold more).",
        metric: &STREAM_PRIORITIES,
    },
    Series {
        name: "palisade_connector_http_requests_total",
        help: "HTTP requests on L7 services, by service, status and decision (allow, deny, limited, error, invalid).",
        metric: &HTTP_REQUESTS,
    },
    Series {
        name: "palisade_connector_tokens_total",
        help: "Model tokens the workload reported in responses, by service and kind (prompt, completion).",
        metric: &TOKENS,
    },
    Series {
        name: "palisade_connector_upstream_connect_seconds",
        help: "Time to open the TCP connection to a TCP service's workload, by service.",
        metric: &UPSTREAM_CONNECT,
    },
    palisade_telemetry::runtime::WORKER_THREADS_SERIES,
];

/// Counts one dispatched stream.
pub(crate) fn stream(result: &'static str) {
    STREAMS.get(&[result]).inc();
}

struct Linked;

impl Readiness for Linked {
    async fn check(&self) -> Result<(), String> {
        if LINKED.get() > 0 { Ok(()) } else { Err("not linked to a broker".into()) }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    if let Err(e) = palisade_telemetry::serve(listener, &SERIES, Arc::new(Linked), shutdown).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}
