//! A client's stream: read its header, decide, and relay it to a connector.
//!
//! The decision and its audit event come first; a connector's stream is only
//! opened for an allowed request whose `stream.allowed` event is durable. Any
//! error on the way denies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_policies::{
    AccessRequest, Action, Decision, DenyReason, Principal, PrincipalKind, RequestContext, Verdict,
};
use palisade_proto::id::{DecisionId, ServiceName};
use palisade_proto::identity::{PeerRole, VerifiedPeer};
use palisade_proto::reject::RejectCode;
use palisade_proto::wire::{self, Dispatch, StreamHeader};
use quinn::{RecvStream, SendStream, VarInt};
use serde_json::json;

use super::accept::Peer;
use super::membership::Membership;
use super::registry::Link;
use super::splice::{SpliceStats, splice};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::config::WhenUnavailable;
use crate::metrics::{self, StreamOpen};
use crate::policy::ActivePolicy;
use crate::state::Broker;
use crate::sync::Admission;

/// A client that opens a stream and never sends its header is cut off.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one client stream to its end.
pub(crate) async fn handle(broker: Broker, peer: Arc<Peer>, mut send: SendStream, mut recv: RecvStream) {
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut recv)).await {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => return bad_request(&mut send, &mut recv, &e),
        Err(_) => return bad_request(&mut send, &mut recv, "no stream header in time"),
    };
    match header {
        StreamHeader::Open(open) => relay(&broker, &peer, open.service, send, recv).await,
        StreamHeader::Query(query) => super::query::answer(&broker, &peer, query, send).await,
        other => bad_request(&mut send, &mut recv, &format!("unexpected {:?} stream", other.kind())),
    }
}

fn bad_request(send: &mut SendStream, recv: &mut RecvStream, why: &str) {
    metrics::stream_open(StreamOpen::BadRequest);
    reset(send, recv, RejectCode::BadRequest, why);
}

/// Reads and decodes a stream header without ever allocating more than the limit.
pub(crate) async fn read_header(recv: &mut RecvStream) -> Result<StreamHeader, String> {
    let mut prefix = [0u8; wire::PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(|e| format!("reading the stream header: {e}"))?;
    let (kind, len) = wire::parse_prefix(&prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| format!("reading the stream header: {e}"))?;
    StreamHeader::decode(kind, &body).map_err(|e| e.to_string())
}

fn reset(send: &mut SendStream, recv: &mut RecvStream, code: RejectCode, why: &str) {
    tracing::debug!(code = code.as_str(), why, "stream refused");
    let code = VarInt::from_u32(code.as_u32());
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

async fn relay(broker: &Broker, peer: &Arc<Peer>, service: ServiceName, mut send: SendStream, mut recv: RecvStream) {
    let (decision_id, started) = (DecisionId::random(), Instant::now());
    // Held until the stream is spliced or refused; the semaphore is never closed.
    let Ok(admission) = peer.admissions.acquire().await else {
        return reset(&mut send, &mut recv, RejectCode::Internal, "admission closed");
    };
    let admitted = match admit(broker, peer, &service, decision_id).await {
        Ok(admitted) => admitted,
        Err(code) => {
            metrics::stream_open(StreamOpen::Denied);
            return reset(&mut send, &mut recv, code, "refused");
        }
    };
    // Counted until the tunnel ends: its place in this identity's share of the link.
    let share = admitted.link.shares.enter(&peer.identity.id().id);
    let connector = match dispatch(broker, peer, &service, decision_id, &admitted, share.priority()).await {
        Ok(streams) => streams,
        Err(code) => {
            metrics::stream_open(StreamOpen::Failed);
            return reset(&mut send, &mut recv, code, "dispatch failed");
        }
    };
    drop(admission);
    metrics::stream_open(StreamOpen::Allowed);
    metrics::STREAM_PRIORITIES.get(&[share.label()]).inc();
    metrics::STREAM_SETUP.observe_duration(started.elapsed());
    let caller = peer.identity.id().uri();
    tracing::info!(%decision_id, %service, %caller, connector = %admitted.link.name, "stream allowed");
    let cut = tokio_util::sync::CancellationToken::new();
    let traffic = Arc::new(super::live::Traffic::default());
    let (live_id, closed_by) =
        broker.live().add_stream(peer.clone(), service.to_string(), cut.clone(), traffic.clone());
    metrics::LIVE_TUNNELS.inc();
    let stats = splice((send, recv), connector, &cut, &traffic).await;
    metrics::LIVE_TUNNELS.dec();
    broker.live().remove_stream(live_id);
    let closed_by = closed_by.get().map(String::as_str);
    drop(share);
    ended(broker, peer, &service, decision_id, &admitted.link, stats, closed_by).await;
}

/// An allowed stream and the connector chosen for it.
struct Admitted {
    link: Link,
    policy_ids: Vec<String>,
    /// The signed bundle's version, handed to the connector.
    bundle_version: u64,
    /// Which versions decided, and what dry-run policies said, for the audit event.
    decided: serde_json::Value,
    /// The client's address the decision was made from.
    remote: SocketAddr,
}

/// Decides the stream: a certificate still within its validity (a QUIC
/// connection may outlive the certificate it was opened with; streams in
/// flight keep running, new ones are refused), a current view of the
/// database (or best-effort mode, marked in the event), the policy, a live
/// connector. Every refusal is audited here.
async fn admit(
    broker: &Broker,
    peer: &Peer,
    service: &ServiceName,
    decision_id: DecisionId,
) -> Result<Admitted, RejectCode> {
    let stale_for = match broker.sync().admission() {
        Admission::Current => None,
        Admission::Proceed { age } => Some(age),
        Admission::Refuse { age } => {
            let detail = format!("this broker has not confirmed its view of the database for {} ms", age.as_millis());
            deny(broker, peer, service, decision_id, ("broker_stale", &detail, &[]), json!({})).await;
            return Err(RejectCode::Stale);
        }
    };
    if peer.identity.not_after() <= SystemTime::now() {
        let detail = "the client certificate has expired; reconnect with a renewed one";
        deny(broker, peer, service, decision_id, ("certificate_expired", detail, &[]), json!({})).await;
        return Err(RejectCode::IdentityRejected);
    }
    let remote = peer.remote();
    let decided = decide(broker, &peer.identity, remote.ip(), service.as_str());
    let mut audit_detail = decided.audit_detail();
    if let Some(age) = stale_for {
        audit_detail["stale_view_ms"] = json!(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    }
    let (policy_ids, bundle_version) = match &decided.verdict.decision {
        Decision::Allow(grant) => (grant.policy_ids().to_vec(), grant.policy_version()),
        Decision::Deny(reason) => {
            let why = (reason.code(), reason.to_string(), reason.policy_ids());
            deny(broker, peer, service, decision_id, (why.0, &why.1, why.2), audit_detail).await;
            return Err(reject_for(reason));
        }
    };
    let Some(link) = broker.registry().pick(service.as_str()) else {
        let why = ("no_connector", "no connector is serving the service", &[][..]);
        deny(broker, peer, service, decision_id, why, audit_detail).await;
        return Err(RejectCode::NoConnector);
    };
    Ok(Admitted { link, policy_ids, bundle_version, decided: audit_detail, remote })
}

/// Makes the `stream.allowed` event durable and opens the connector's stream
/// at the same time: the connector may start dialling the workload, but no
/// tunnelled byte moves before the event is durable (splicing starts only
/// after both): in the intent journal beside a SQLite file, chained into the
/// trail a moment later ([`crate::audit::Audit::record_durable`]), or
/// committed on PostgreSQL. If the event cannot be written, the connector's
/// stream is reset and the client is refused.
async fn dispatch(
    broker: &Broker,
    peer: &Peer,
    service: &ServiceName,
    decision_id: DecisionId,
    admitted: &Admitted,
    priority: i32,
) -> Result<(SendStream, RecvStream), RejectCode> {
    let link = &admitted.link;
    let mut detail = json!({
        "policy_ids": admitted.policy_ids, "connector": link.connector_id, "remote": admitted.remote.to_string(),
    });
    merge(&mut detail, &admitted.decided);
    let allowed = stream_event(EventKind::StreamAllowed, Outcome::Allow, peer, service, decision_id).detail(detail);
    let header = Dispatch {
        decision_id,
        service: service.clone(),
        policy_version: admitted.bundle_version,
        caller_chain: peer.chain.clone(),
        source_addr: admitted.remote.to_string(),
    };
    let timeout = broker.config().relay.connect_timeout;
    let open = tokio::time::timeout(timeout, open_towards(link, &header, priority));
    let (recorded, opened) = tokio::join!(broker.audit().record_durable(allowed), open);
    let opened = opened.unwrap_or_else(|_| Err("timed out opening a stream to the connector".into()));
    if let Err(e) = recorded {
        if broker.config().audit.trail.when_unavailable == WhenUnavailable::Allow {
            tracing::error!(error = %e, %decision_id, "audit unavailable; allowing the stream unaudited ([audit] when_unavailable = \"allow\")");
        } else {
            tracing::error!(error = %e, "audit unavailable; denying the stream");
            if let Ok((mut send, mut recv)) = opened {
                reset(&mut send, &mut recv, RejectCode::Internal, "audit unavailable");
            }
            return Err(RejectCode::Internal);
        }
    }
    opened.map_err(|e| {
        tracing::warn!(connector = %link.name, error = %e, "could not open a stream to the connector");
        RejectCode::NoConnector
    })
}

/// A decision, what dry-run policies said, and the set that made it.
pub(crate) struct Decided {
    pub(crate) verdict: Verdict,
    pub(crate) active: Arc<ActivePolicy>,
    /// The groups that could permit, when the database and the certificate disagreed.
    pub(crate) narrowed_to: Option<Vec<String>>,
}

impl Decided {
    /// The versions that decided and the dry-run outcome, for audit details.
    pub(crate) fn audit_detail(&self) -> serde_json::Value {
        let mut detail = json!({
            "policy_version": self.active.store_version,
            "entity_version": self.active.entity_version,
            "bundle_version": self.active.version(),
        });
        if let Some(dry) = &self.verdict.dry_run {
            detail["dry_run"] = json!({
                "outcome": dry.outcome(),
                "changes_decision": dry.changes(&self.verdict.decision),
                "permits": dry.permits,
                "forbids": dry.forbids,
            });
        }
        if let Some(groups) = &self.narrowed_to {
            detail["effective_groups"] = json!(groups);
        }
        detail
    }
}

/// Evaluates the active policy set for this peer and service (through the
/// decision cache, which never outlives the set it was filled by), with the
/// groups the database holds for the peer now ([`Membership`]).
pub(crate) fn decide(broker: &Broker, peer: &VerifiedPeer, source: std::net::IpAddr, service: &str) -> Decided {
    let db_groups = broker.live().db_groups(&peer.id().id);
    let membership = Membership::of(peer.groups(), db_groups.as_deref());
    let now_unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let context = RequestContext {
        source_ip: Some(source),
        now_unix_secs,
        mfa_age_secs: peer.mfa_age_secs(now_unix_secs),
        auth_methods: peer.auth_methods().to_vec(),
        client_version: None,
    };
    let mut principal = principal_of(peer, membership.within.clone());
    let (verdict, active) = broker.policy().verdict(&AccessRequest {
        principal: &principal,
        action: Action::Connect,
        service,
        context: &context,
    });
    if membership.settled() {
        return Decided { verdict, active, narrowed_to: None };
    }
    let narrowed_to = Some(membership.within);
    if matches!(verdict.decision, Decision::Deny(_)) {
        return Decided { verdict, active, narrowed_to };
    }
    // Allowed with the groups both agree on; a group only the database
    // knows (added since the certificate) may still forbid.
    principal.groups = membership.across;
    let request = AccessRequest { principal: &principal, action: Action::Connect, service, context: &context };
    let (wider, wider_active) = broker.policy().verdict(&request);
    match wider.decision {
        Decision::Deny(_) => Decided { verdict: wider, active: wider_active, narrowed_to },
        Decision::Allow(_) => Decided { verdict, active, narrowed_to },
    }
}

fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// The Cedar principal for a verified peer, in `groups`.
fn principal_of(peer: &VerifiedPeer, groups: Vec<String>) -> Principal {
    let kind = if peer.role() == PeerRole::User { PrincipalKind::User } else { PrincipalKind::Machine };
    Principal { kind, id: peer.id().id.clone(), name: peer.name().to_owned(), groups }
}

fn reject_for(reason: &DenyReason) -> RejectCode {
    match reason {
        DenyReason::UnknownService => RejectCode::UnknownService,
        DenyReason::NoPolicyPermits | DenyReason::Forbidden { .. } => RejectCode::Forbidden,
        DenyReason::Invalid(_) => RejectCode::Internal,
    }
}

/// Opens the connector's stream, sending at `priority` on the link (see
/// `palisade_proto::share`), and writes the dispatch header.
async fn open_towards(link: &Link, dispatch: &Dispatch, priority: i32) -> Result<(SendStream, RecvStream), String> {
    let header = StreamHeader::Dispatch(dispatch.clone()).encode().map_err(|e| e.to_string())?;
    let (mut send, recv) = link.conn.open_bi().await.map_err(|e| e.to_string())?;
    send.set_priority(priority).map_err(|e| e.to_string())?;
    send.write_all(&header).await.map_err(|e| e.to_string())?;
    Ok((send, recv))
}

fn stream_event(
    kind: EventKind,
    outcome: Outcome,
    peer: &Peer,
    service: &ServiceName,
    decision_id: DecisionId,
) -> AuditEvent {
    AuditEvent::new(kind, outcome).actor(peer.identity.id().uri()).subject(service.to_string()).decision(decision_id)
}

/// Audits a refused stream: `why` is (reason code, detail, policy ids);
/// `decided` adds the versions and dry-run outcome when a decision was made.
async fn deny(
    broker: &Broker,
    peer: &Peer,
    service: &ServiceName,
    decision_id: DecisionId,
    why: (&str, &str, &[String]),
    decided: serde_json::Value,
) {
    let (reason, detail, policy_ids) = why;
    tracing::info!(%decision_id, %service, caller = %peer.identity.id().uri(), reason, "stream denied");
    let mut detail = json!({
        "reason": reason, "detail": detail, "policy_ids": policy_ids, "remote": peer.remote().to_string(),
    });
    merge(&mut detail, &decided);
    let event = stream_event(EventKind::StreamDenied, Outcome::Deny, peer, service, decision_id).detail(detail);
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit a denied stream");
    }
}

async fn ended(
    broker: &Broker,
    peer: &Peer,
    service: &ServiceName,
    decision_id: DecisionId,
    link: &Link,
    stats: SpliceStats,
    closed_by: Option<&str>,
) {
    let reset =
        stats.reset.map(|code| RejectCode::from_u64(code).map_or_else(|| code.to_string(), |c| c.as_str().into()));
    let duration_ms = u64::try_from(stats.duration.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(%decision_id, %service, stats.bytes_up, stats.bytes_down, duration_ms, ?reset, "stream ended");
    let mut detail = json!({
        "bytes_up": stats.bytes_up,
        "bytes_down": stats.bytes_down,
        "duration_ms": duration_ms,
        "connector": link.connector_id,
        "reset": reset,
    });
    if let Some(change) = closed_by {
        detail["closed_by"] = json!(change);
    }
    let event = stream_event(EventKind::StreamEnded, Outcome::Success, peer, service, decision_id).detail(detail);
    // Nothing waits on this event: let the writer pair it with the next one.
    if let Err(e) = broker.audit().record_soon(event).await {
        tracing::error!(error = %e, "could not audit the end of a stream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_reasons_map_to_codes_people_understand() {
        assert_eq!(reject_for(&DenyReason::NoPolicyPermits), RejectCode::Forbidden);
        assert_eq!(reject_for(&DenyReason::Forbidden { policy_ids: vec![] }), RejectCode::Forbidden);
        assert_eq!(reject_for(&DenyReason::UnknownService), RejectCode::UnknownService);
        assert_eq!(reject_for(&DenyReason::Invalid("x".into())), RejectCode::Internal);
    }
}
