//! L7: services whose catalog entry says `protocol = "http"`.
//!
//! Inside an authorized tunnel the connector is the caller's HTTP server
//! (HTTP/1.1, or HTTP/2 when the caller speaks it) and the workload's
//! client. Each request is checked on its own: the path is made canonical
//! (`normalize`), JSON bodies are read (bounded) for their model and
//! sampling fields (`request_body`, `openai`), the Cedar `http` action is
//! decided with the method, that path and those fields (`decide`), then the
//! request goes to the workload with identity headers replaced, over a
//! kept-alive connection (`forward`), and the response
//! streams back unbuffered (`body`). Plain TCP services never come here.

mod assertion;
mod body;
mod decide;
mod forward;
mod inventory;
mod io;
mod limits;
pub(crate) mod normalize;
pub(crate) mod openai;
mod per_link;
mod record;
mod reply;
mod request_body;
pub(crate) mod throttle;
pub(crate) mod usage;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_proto::control::ConnectorToBroker;
use palisade_proto::id::DecisionId;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::authorize::PolicyState;
use body::{BoxError, MeteredBody};
pub(crate) use decide::{Caller, is_http_service};
pub(crate) use io::CutSwitch;
use io::{Counters, QuicIo};
use record::RequestRecord;
use reply::ResponseBody;

/// The request id the connector gives each request, in its answer and the assertion.
const REQUEST_ID_HEADER: &str = "x-palisade-request-id";

/// One authorized HTTP tunnel: who is calling, which service, where it lives.
pub(crate) struct Tunnel {
    pub(crate) policy: Arc<PolicyState>,
    pub(crate) caller: Caller,
    pub(crate) service: String,
    pub(crate) upstream: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) control: mpsc::Sender<ConnectorToBroker>,
    pub(crate) decision_id: DecisionId,
    pub(crate) cut: CutSwitch,
}

/// What the tunnel moved and how it ended.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) revoked: bool,
}

/// Serves HTTP on the tunnel stream until the caller closes it or is revoked.
pub(crate) async fn serve(tunnel: Tunnel, send: SendStream, recv: RecvStream) -> Served {
    let counters = Counters::default();
    let tunnel = Arc::new(tunnel);
    let io = QuicIo::new(send, recv, tunnel.cut.clone(), counters.clone());
    let handler = tunnel.clone();
    let service = service_fn(move |request| {
        let tunnel = handler.clone();
        async move { Ok::<_, Infallible>(handle(tunnel, request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP tunnel ended with an error");
            }
        }
        () = tunnel.policy.revoked(&tunnel.caller.peer) => {
            tunnel.cut.cut();
            tracing::info!("caller revoked: cutting the HTTP tunnel");
        }
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Served { bytes_up: load(&counters.up), bytes_down: load(&counters.down), revoked: tunnel.cut.is_cut() }
}

async fn handle(tunnel: Arc<Tunnel>, request: Request<Incoming>) -> Response<ResponseBody> {
    let mut record = RequestRecord::start(request.method().as_str(), request.uri().path());
    let request_id = record.request_id.clone();
    let mut response = match admit(&tunnel, request, &mut record).await {
        Ok(admitted) => proxy(&tunnel, admitted, record).await,
        Err(refusal) => {
            record.finish_refused(&tunnel, refusal.status(), None);
            refusal
        }
    };
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

/// A request that passed every check, ready for the workload.
struct Admitted {
    request: Request<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
    /// Held until the response ends; `None` when no limit applies.
    admission: Option<limits::Admission>,
}

/// Checks one request; the `Err` is the answer to send instead.
async fn admit(
    tunnel: &Tunnel,
    request: Request<Incoming>,
    record: &mut RequestRecord,
) -> Result<Admitted, Response<ResponseBody>> {
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        record.reason = "duplicate_host".into();
        return Err(reply::bad_request("the request has more than one Host header"));
    }
    // HTTP/2 always carries a scheme and authority; in HTTP/1.1 an absolute URL is a proxy request.
    let absolute_form = request.version() < http::Version::HTTP_2 && request.uri().scheme().is_some();
    if absolute_form || request.method() == http::Method::CONNECT {
        record.reason = "not_origin_form".into();
        return Err(reply::bad_request("send the request with a path, not an absolute URL or CONNECT"));
    }
    let path = normalize::normalize(request.uri().path()).map_err(|e| {
        record.reason = "non_canonical_path".into();
        reply::bad_request(&e.to_string())
    })?;
    record.path = path.decoded.clone();
    let (mut parts, body) = request.into_parts();
    let body = request_body::prepare(&parts.headers, &path.decoded, body, record).await?;
    let (grant, engine) = decide::decide(
        &tunnel.policy,
        &tunnel.caller,
        &tunnel.service,
        decide::HttpCall { method: parts.method.as_str(), path: &path.decoded, body: body.fields },
        SystemTime::now(),
    )
    .map_err(|denied| {
        tracing::info!(reason = denied.code(), detail = %denied, path = %path.decoded, "request denied by policy");
        record.deny(&denied);
        reply::forbidden()
    })?;
    record.policy_ids = grant.policy_ids().to_vec();
    admit_throttle(tunnel, record).map_err(|refusal| *refusal)?;
    let admission = admit_limits(tunnel, &engine, &grant, record).map_err(|refusal| *refusal)?;
    let body = body.body;
    forward::strip_identity(&mut parts.headers);
    forward::strip_hop_by_hop(&mut parts.headers);
    let token = assert_identity(tunnel, grant.segment(), &record.request_id).map_err(|e| {
        tracing::error!(error = %e, "cannot sign the identity assertion: refusing the request");
        record.reason = "assertion_failed".into();
        reply::error(http::StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the connector could not forward this")
    })?;
    parts.headers.insert(forward::ASSERTION_HEADER, token);
    let mut request = Request::from_parts(parts, body);
    forward::retarget(&mut request, &path.encoded, &tunnel.upstream).map_err(|e| {
        record.reason = "bad_header".into();
        reply::bad_request(&format!("the request cannot be forwarded: {e}"))
    })?;
    Ok(Admitted { request, admission })
}

/// Takes a slot from the limits of the permitting policies, or answers 429.
fn admit_limits(
    tunnel: &Tunnel,
    engine: &palisade_policies::Engine,
    grant: &palisade_policies::Grant,
    record: &mut RequestRecord,
) -> Result<Option<limits::Admission>, Box<Response<ResponseBody>>> {
    let specs = limits::specs_for(engine, grant.policy_ids()).map_err(|e| {
        tracing::error!(error = %e, "limit annotations unusable: refusing the request");
        record.reason = "bad_limit_annotation".into();
        Box::new(reply::error(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the access policy is misconfigured",
        ))
    })?;
    if specs.is_empty() {
        return Ok(None);
    }
    let identity = tunnel.caller.peer.id().uri();
    match limits::limiter().admit(&identity, &tunnel.service, &specs, limits::Now::current()) {
        Ok(admission) => Ok(Some(admission)),
        Err(over) => {
            // The audit record says when other replicas' usage made the difference; the caller is not told.
            let shared = if over.with_other_replicas { " (with other connectors' usage)" } else { "" };
            record.reason = format!("limit: {}{shared}", over.what);
            let secs = over.retry_after.as_secs() + u64::from(over.retry_after.subsec_nanos() > 0);
            Err(Box::new(reply::too_many(&format!("too many requests: the limit on {} is reached", over.what), secs)))
        }
    }
}

/// Refuses with 429 when the broker throttled this identity on this service after an alert.
fn admit_throttle(tunnel: &Tunnel, record: &mut RequestRecord) -> Result<(), Box<Response<ResponseBody>>> {
    let identity = tunnel.caller.peer.id().uri();
    let now_ms = limits::Now::current().unix_ms;
    throttle::throttles().admit(&tunnel.service, &identity, now_ms).map_err(|throttled| {
        record.reason = format!("throttled after alert ({} requests per minute)", throttled.requests_per_minute);
        let secs = throttled.retry_after.as_secs() + u64::from(throttled.retry_after.subsec_nanos() > 0);
        Box::new(reply::too_many("too many requests: this identity is throttled on this service", secs))
    })
}

fn assert_identity(tunnel: &Tunnel, segment: &str, request_id: &str) -> Result<HeaderValue, String> {
    let key = assertion::key().map_err(ToString::to_string)?;
    let peer = &tunnel.caller.peer;
    let subject = peer.id().uri();
    let claims = assertion::Claims {
        subject: &subject,
        name: peer.name(),
        groups: peer.groups(),
        session: peer.session(),
        segment,
        service: &tunnel.service,
        request_id,
    };
    let token = key.sign(&claims, SystemTime::now()).map_err(|e| e.to_string())?;
    HeaderValue::from_str(&token).map_err(|e| e.to_string())
}

/// Makes sure the broker on this control link knows the assertion key.
pub(crate) fn register_assertion_key(control: &mpsc::Sender<ConnectorToBroker>) {
    assertion::register(control, std::time::Instant::now());
}

/// Reports the models behind `service` to the broker on this link, if due (in the background).
pub(crate) fn report_models(
    control: &mpsc::Sender<ConnectorToBroker>,
    service: &str,
    upstream: &str,
    timeout: Duration,
) {
    inventory::report(control, service, upstream, timeout);
}

async fn proxy(tunnel: &Arc<Tunnel>, admitted: Admitted, mut record: RequestRecord) -> Response<ResponseBody> {
    let started = Instant::now();
    let Admitted { request, admission } = admitted;
    let response = match forward::send(&tunnel.upstream, tunnel.connect_timeout, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "the workload did not answer");
            record.reason = "upstream_failed".into();
            let refusal = reply::bad_gateway();
            record.finish_refused(tunnel, refusal.status(), Some(started));
            return refusal;
        }
    };
    record.status = response.status().as_u16();
    let (mut parts, body) = response.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let report = tunnel.clone();
    let on_end = Box::new(move |end| record.finish_forwarded(&report, end));
    let body = MeteredBody::new(body, &content_type, tunnel.clone(), admission, on_end);
    Response::from_parts(parts, body.boxed_unsync())
}
