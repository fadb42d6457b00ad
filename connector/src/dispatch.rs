//! One tunnel stream opened by the broker: read the dispatch header,
//! authorize, dial the upstream, splice; report a refusal to the broker.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use palisade_proto::control::{ConnectorToBroker, StreamOutcome};
use palisade_proto::id::DecisionId;
use palisade_proto::reject::RejectCode;
use palisade_proto::share::LinkShares;
use palisade_proto::wire::{self, Dispatch, PREFIX_LEN, StreamHeader, StreamKind};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::authorize::{Authorized, Callers, Engines, PolicyState, authorize};
use crate::config::ServiceConfig;
use crate::http;
use crate::metrics;
use crate::upstream::{self, SpliceEnd};

/// The broker writes the header as soon as it opens the stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every stream of one connection shares.
pub(crate) struct StreamContext {
    pub(crate) policy: Arc<PolicyState>,
    /// The CA callers are verified against, and what it verified.
    pub(crate) callers: Arc<Callers>,
    pub(crate) services: Arc<[ServiceConfig]>,
    pub(crate) connect_timeout: Duration,
    /// Frames for the control stream (stream reports).
    pub(crate) control: mpsc::Sender<ConnectorToBroker>,
    /// The streams each caller has open on this link, which set the send
    /// priority of the replies (see `palisade_proto::share`).
    pub(crate) shares: Arc<LinkShares>,
}

/// Handles one broker-opened bidirectional stream to its end.
pub(crate) async fn handle(ctx: Arc<StreamContext>, mut send: SendStream, mut recv: RecvStream) {
    let dispatch = match read_dispatch(&mut recv).await {
        Ok(dispatch) => dispatch,
        Err(reason) => {
            tracing::warn!(%reason, "refusing a stream with a bad dispatch header");
            metrics::stream("bad_request");
            reject(&mut send, &mut recv, RejectCode::BadRequest);
            return;
        }
    };
    let span = tracing::info_span!(
        "dispatch",
        decision_id = %dispatch.decision_id,
        service = %dispatch.service,
        broker_policy_version = dispatch.policy_version,
    );
    tunnel(&ctx, dispatch, send, recv).instrument(span).await;
}

async fn tunnel(ctx: &StreamContext, dispatch: Dispatch, mut send: SendStream, mut recv: RecvStream) {
    let started = Instant::now();
    let now = SystemTime::now();
    let (engine, local) = (ctx.policy.current(now), ctx.policy.local());
    let engines = Engines {
        bundle: engine.as_deref(),
        local: local.as_deref(),
        revoked: Some(&ctx.policy),
        cache: Some(ctx.policy.decisions()),
    };
    let authorized = match authorize(&dispatch, &ctx.callers, engines, &ctx.services, now) {
        Ok(authorized) => authorized,
        Err(denied) => {
            tracing::info!(reason = denied.code(), detail = %denied, "stream denied by the connector");
            metrics::stream("denied");
            reject(&mut send, &mut recv, RejectCode::ForbiddenByConnector);
            let outcome = StreamOutcome::Denied {
                reason: denied.code().to_owned(),
                detail: denied.to_string(),
                policy_ids: denied.policy_ids(),
            };
            report(ctx, dispatch.decision_id, outcome).await;
            return;
        }
    };
    tracing::debug!(caller = %authorized.peer.id(), policies = ?authorized.grant.policy_ids(), "stream allowed");
    // Held until the tunnel ends. Setting the priority fails only on a stream
    // the broker has already reset, which the splice then ends at once.
    let share = ctx.shares.enter(&authorized.peer.id().id);
    let _ = send.set_priority(share.priority());
    metrics::STREAM_PRIORITIES.get(&[share.label()]).inc();
    if http::is_http_service(&ctx.policy, dispatch.service.as_str(), now) {
        metrics::stream("allowed");
        let outcome = serve_http(ctx, &dispatch, authorized, send, recv, started).await;
        report(ctx, dispatch.decision_id, outcome).await;
        return;
    }
    let dialled = Instant::now();
    let tcp = match upstream::connect(&authorized.grant, authorized.upstream, ctx.connect_timeout).await {
        Ok(tcp) => {
            metrics::stream("allowed");
            metrics::UPSTREAM_CONNECT.get(&[dispatch.service.as_str()]).observe_duration(dialled.elapsed());
            tcp
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            metrics::stream("upstream_failed");
            reject(&mut send, &mut recv, e.reject_code());
            report(ctx, dispatch.decision_id, StreamOutcome::UpstreamFailed { detail: e.to_string() }).await;
            return;
        }
    };
    let spliced = upstream::splice(&mut send, &mut recv, tcp).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &spliced.end {
        SpliceEnd::Clean => tracing::info!(spliced.bytes_up, spliced.bytes_down, duration_ms, "stream completed"),
        end => tracing::info!(spliced.bytes_up, spliced.bytes_down, duration_ms, %end, "stream ended abruptly"),
    }
    let outcome = StreamOutcome::Completed { bytes_up: spliced.bytes_up, bytes_down: spliced.bytes_down, duration_ms };
    report(ctx, dispatch.decision_id, outcome).await;
}

/// An HTTP service: the connector serves HTTP in the tunnel and decides each request.
async fn serve_http(
    ctx: &StreamContext,
    dispatch: &Dispatch,
    authorized: Authorized<'_>,
    mut send: SendStream,
    mut recv: RecvStream,
    started: Instant,
) -> StreamOutcome {
    let upstream = authorized.upstream.upstream.clone();
    let Some(caller) = http::Caller::new(authorized.peer, &dispatch.source_addr) else {
        reject(&mut send, &mut recv, RejectCode::ForbiddenByConnector);
        let detail = "only people and machines call services".to_owned();
        return StreamOutcome::Denied { reason: "identity_rejected".into(), detail, policy_ids: Vec::new() };
    };
    http::register_assertion_key(&ctx.control);
    http::report_models(&ctx.control, dispatch.service.as_str(), &upstream, ctx.connect_timeout);
    let tunnel = http::Tunnel {
        policy: ctx.policy.clone(),
        caller,
        service: dispatch.service.to_string(),
        upstream,
        connect_timeout: ctx.connect_timeout,
        control: ctx.control.clone(),
        decision_id: dispatch.decision_id,
        cut: http::CutSwitch::default(),
    };
    let served = http::serve(tunnel, send, recv).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(served.bytes_up, served.bytes_down, duration_ms, served.revoked, "http tunnel ended");
    StreamOutcome::Completed { bytes_up: served.bytes_up, bytes_down: served.bytes_down, duration_ms }
}

async fn read_dispatch(recv: &mut RecvStream) -> Result<Dispatch, String> {
    let read = async {
        let mut prefix = [0u8; PREFIX_LEN];
        recv.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
        let (kind, len) = wire::parse_prefix(&prefix).map_err(|e| e.to_string())?;
        if kind != StreamKind::Dispatch {
            return Err(format!("expected a dispatch header, got {kind:?}"));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        match StreamHeader::decode(kind, &body).map_err(|e| e.to_string())? {
            StreamHeader::Dispatch(dispatch) => Ok(dispatch),
            other => Err(format!("expected a dispatch header, got {:?}", other.kind())),
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, read).await.map_err(|_| "no header in time".to_owned())?
}

fn reject(send: &mut SendStream, recv: &mut RecvStream, code: RejectCode) {
    let code = VarInt::from_u32(code.as_u32());
    // Either half may already be closed by the peer; the stream is over either way.
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// Reports what the broker cannot see for itself: a refusal here or an
/// unreachable workload (audited as `connector.stream_denied`). A tunnel
/// that ran is not reported: the broker audits its end (`stream.ended`) from
/// its own relay, and this connector logs its byte counts ("stream
/// completed"); a frame per stream would cost both sides a wake-up for
/// nothing (about 4 % of the CPU of a new connection).
async fn report(ctx: &StreamContext, decision_id: DecisionId, outcome: StreamOutcome) {
    if matches!(outcome, StreamOutcome::Completed { .. }) {
        return;
    }
    if ctx.control.send(ConnectorToBroker::StreamReport { decision_id, outcome }).await.is_err() {
        // Debug only: when a link drops, every open tunnel ends at once and would flood the log.
        tracing::debug!(%decision_id, "control stream closed: stream report lost");
    }
}
