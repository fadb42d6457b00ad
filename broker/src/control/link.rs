//! One connector's live link: it says hello with the services it serves, gets
//! the policy bundle (and every later version), reports how streams ended,
//! shares quota usage with the other connectors ([`super::usage`]), and
//! renews its certificate before it expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_policies::PolicyBundle;
use palisade_proto::bundle::SignedBundle;
use palisade_proto::control::{BrokerToConnector, ConnectorToBroker, StreamOutcome};
use palisade_proto::identity::PeerRole;
use palisade_proto::reject::close;
use palisade_proto::wire::StreamHeader;
use quinn::{RecvStream, SendStream, VarInt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frames::{FrameError, read_frame, write_frame};
use super::throttle::{self, ThrottleLink};
use super::usage::{self, UsageLink};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::db::connector_links;
use crate::issuance::ca::{Ca, CaError, unix};
use crate::relay::accept::Peer;
use crate::relay::open::read_header;
use crate::relay::registry::Link;
use crate::state::Broker;

/// A connector must open its control stream and say hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a connector's connection until it or the broker goes away.
pub(crate) async fn serve(broker: Broker, conn: quinn::Connection, peer: Arc<Peer>, shutdown: CancellationToken) {
    let (send, recv, version, services) = match tokio::time::timeout(HELLO_TIMEOUT, hello(&conn)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return refuse(&conn, &peer, &e),
        Err(_) => return refuse(&conn, &peer, "no control stream in time"),
    };
    // Every advertised service is recorded (new ones without a segment, so
    // nobody reaches them until an admin assigns one) and routable; the
    // policy decides who reaches what.
    let served = crate::inventory::on_hello(broker.db(), &peer.identity.id().id, peer.identity.name(), services).await;
    let engine = broker.policy().current();
    let unknown: Vec<&String> = served.iter().filter(|s| engine.service(s).is_none()).collect();
    if !unknown.is_empty() {
        tracing::warn!(connector = %peer.identity.name(), ?unknown, "connector offers services no segment holds yet: `palisade-broker service assign`");
    }
    let link = Link {
        connector_id: peer.identity.id().id.clone(),
        name: peer.identity.name().to_owned(),
        conn,
        shares: Arc::default(),
    };
    broker.registry().register(&link, &served);
    crate::metrics::CONNECTOR_LINKS.get(&[&link.name]).inc();
    let link_id = uuid::Uuid::new_v4().to_string();
    record_link(&broker, &link.connector_id, &link_id, Some((&peer.remote().to_string(), &version))).await;
    audit(
        &broker,
        &peer,
        EventKind::ConnectorOnline,
        json!({ "services": served, "remote": peer.remote().to_string() }),
    )
    .await;
    let shared = Shared { usage: UsageLink::new(served.clone()), throttles: ThrottleLink::new(served.clone()) };
    run_link(&broker, &link, &peer, shared, (send, recv), &shutdown).await;
    broker.registry().unregister(&link.conn);
    crate::metrics::CONNECTOR_LINKS.get(&[&link.name]).dec();
    record_link(&broker, &link.connector_id, &link_id, None).await;
    let detail = json!({ "remote": peer.remote().to_string(), "broker_stopping": shutdown.is_cancelled() });
    audit(&broker, &peer, EventKind::ConnectorOffline, detail).await;
    let code = if shutdown.is_cancelled() { close::SHUTTING_DOWN } else { close::NORMAL };
    link.conn.close(VarInt::from_u32(code), b"control stream ended");
}

async fn hello(conn: &quinn::Connection) -> Result<(SendStream, RecvStream, String, Vec<String>), String> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    match read_header(&mut recv).await? {
        StreamHeader::ConnectorControl => {}
        other => return Err(format!("expected the control stream, got a {:?} stream", other.kind())),
    }
    match read_frame::<ConnectorToBroker>(&mut recv).await.map_err(|e| e.to_string())? {
        ConnectorToBroker::Hello { version, services } => {
            tracing::info!(version, ?services, "connector said hello");
            Ok((send, recv, version, services))
        }
        _ => Err("the first control frame must be hello".into()),
    }
}

/// Records the link up (`Some((remote, version))`) or down in
/// `connector_links`, for the connector's status and the offline alert. A
/// failure is logged: the link itself works without the record.
async fn record_link(broker: &Broker, connector_id: &str, link_id: &str, up: Option<(&str, &str)>) {
    let (db, here, now) = (broker.db(), broker.config().quic_public_addr(), crate::db::unix_seconds(SystemTime::now()));
    let link = connector_links::LinkRef { connector_id, broker: &here, link_id };
    let recorded = match up {
        Some((remote, version)) => connector_links::connected(db, link, remote, version, now).await,
        None => connector_links::disconnected(db, link, now).await,
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, connector_id, "cannot record the connector link's state");
    }
}

fn refuse(conn: &quinn::Connection, peer: &Peer, why: &str) {
    tracing::warn!(connector = %peer.identity.id(), why, "connector link refused");
    conn.close(VarInt::from_u32(close::BAD_PROTOCOL), why.as_bytes());
}

async fn run_link(
    broker: &Broker,
    link: &Link,
    peer: &Peer,
    mut shared: Shared,
    (mut send, recv): (SendStream, RecvStream),
    shutdown: &CancellationToken,
) {
    let mut policy = broker.policy().subscribe();
    let signed = sign_bundle(broker.ca(), policy.borrow_and_update().bundle(), SystemTime::now());
    let welcome = match signed {
        Ok(policy) => BrokerToConnector::Welcome { connector_id: link.connector_id.clone(), policy },
        Err(e) => return tracing::error!(connector = %link.name, error = %e, "cannot sign the policy bundle"),
    };
    let mut revocations = broker.live().subscribe();
    let recent = crate::relay::revoke::recent(broker).await;
    let revoked = BrokerToConnector::Revoked { sessions: recent.sessions, identities: recent.identities };
    for frame in [welcome, revoked] {
        if let Err(e) = write_frame(&mut send, &frame).await {
            return tracing::warn!(error = %e, "could not welcome the connector");
        }
    }
    let mut frames = spawn_reader(recv);
    let mut usage_poll = tokio::time::interval(usage::POLL);
    usage_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut throttle_poll = tokio::time::interval(throttle::POLL);
    throttle_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = link.conn.closed() => return,
            changed = policy.changed() => match changed {
                Ok(()) => Next::Policy,
                Err(_) => return,
            },
            batch = revocations.recv() => match batch {
                Ok(batch) => Next::Revoked(batch),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "revocations lagged; closing the link so the connector resyncs");
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => Next::Frame(frame),
                Some(Err(e)) => return tracing::info!(connector = %link.name, error = %e, "control stream ended"),
                None => return,
            },
            _ = usage_poll.tick() => Next::UsagePoll,
            _ = throttle_poll.tick() => Next::ThrottlePoll,
        };
        let replies = match next {
            Next::Policy => match sign_bundle(broker.ca(), policy.borrow_and_update().bundle(), SystemTime::now()) {
                Ok(policy) => vec![BrokerToConnector::PolicyUpdate { policy }],
                Err(e) => {
                    // The connector keeps its last good bundle; closing makes it reconnect and get a fresh one.
                    return tracing::error!(connector = %link.name, error = %e, "cannot sign the policy bundle");
                }
            },
            Next::Frame(ConnectorToBroker::Usage { instance, entries }) => {
                shared.usage.report(broker, peer, instance, entries).await;
                Vec::new()
            }
            Next::Frame(frame) => on_frame(broker, peer, shared.throttles.served(), frame).await.into_iter().collect(),
            Next::Revoked(batch) => {
                vec![BrokerToConnector::Revoked { sessions: batch.sessions, identities: batch.identities }]
            }
            Next::UsagePoll => shared.usage.elsewhere(broker, peer).await,
            Next::ThrottlePoll => shared.throttles.poll(broker).await.into_iter().collect(),
        };
        for reply in replies {
            if let Err(e) = write_frame(&mut send, &reply).await {
                return tracing::warn!(connector = %link.name, error = %e, "control stream write failed");
            }
        }
    }
}

/// Why a bundle could not be signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignBundleError {
    #[error("cannot serialize the policy bundle: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot sign the policy bundle: {0}")]
    Sign(#[from] CaError),
}

/// The bundle as JSON, signed by the CA at `now`.
pub(crate) fn sign_bundle(ca: &Ca, bundle: &PolicyBundle, now: SystemTime) -> Result<SignedBundle, SignBundleError> {
    let json = serde_json::to_string(bundle)?;
    Ok(SignedBundle::sign(json, unix(now), |input| ca.sign_bundle(input))?)
}

/// What a link shares with the other connectors through the database.
struct Shared {
    usage: UsageLink,
    throttles: ThrottleLink,
}

enum Next {
    Policy,
    Frame(ConnectorToBroker),
    Revoked(crate::relay::live::RevokedBatch),
    UsagePoll,
    ThrottlePoll,
}

/// Reading a frame is not cancel-safe, so it runs in its own task.
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<ConnectorToBroker, FrameError>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let frame = read_frame::<ConnectorToBroker>(&mut recv).await;
            let stop = frame.is_err();
            if tx.send(frame).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

async fn on_frame(
    broker: &Broker,
    peer: &Peer,
    served: &[String],
    frame: ConnectorToBroker,
) -> Option<BrokerToConnector> {
    match frame {
        ConnectorToBroker::StreamReport { decision_id, outcome } => {
            report(broker, peer, decision_id, outcome).await;
            None
        }
        ConnectorToBroker::Renew { csr_pem } => Some(renew(broker, peer, &csr_pem).await),
        ConnectorToBroker::HttpRequest { decision_id, record } => {
            super::http::record(broker, peer, served, decision_id, record).await;
            None
        }
        ConnectorToBroker::Models { service, models } => {
            super::http::models(broker, peer, service, models).await;
            None
        }
        ConnectorToBroker::AssertionKey { jwk } => {
            super::http::register_key(broker, peer, &jwk).await;
            None
        }
        ConnectorToBroker::Hello { .. } => {
            tracing::warn!(connector = %peer.identity.id(), "ignoring a second hello");
            None
        }
        ConnectorToBroker::Usage { .. } => {
            tracing::error!("a usage report reached the generic frame handler; ignored");
            None
        }
    }
}

async fn report(broker: &Broker, peer: &Peer, decision_id: palisade_proto::id::DecisionId, outcome: StreamOutcome) {
    let event = match outcome {
        StreamOutcome::Denied { reason, detail, policy_ids } => {
            AuditEvent::new(EventKind::ConnectorStreamDenied, Outcome::Deny)
                .detail(json!({ "reason": reason, "detail": detail, "policy_ids": policy_ids }))
        }
        StreamOutcome::UpstreamFailed { detail } => AuditEvent::new(EventKind::ConnectorStreamDenied, Outcome::Failure)
            .detail(json!({ "reason": "upstream_failed", "detail": detail, "policy_ids": [] })),
        // Sent only by connectors from before they stopped reporting tunnels
        // that ran; the relay's own `stream.ended` event records the end.
        StreamOutcome::Completed { bytes_up, bytes_down, duration_ms } => {
            tracing::debug!(%decision_id, bytes_up, bytes_down, duration_ms, "connector reported a completed stream");
            return;
        }
    };
    let event = event.actor(peer.identity.id().uri()).decision(decision_id);
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit a connector report");
    }
}

async fn renew(broker: &Broker, peer: &Peer, csr_pem: &str) -> BrokerToConnector {
    let failed = |message: String| BrokerToConnector::RenewFailed { message };
    let record = match crate::db::identities::get(broker.db(), PeerRole::Connector, &peer.identity.id().id).await {
        Ok(Some(record)) => record,
        Ok(None) => return failed("unknown connector".into()),
        Err(e) => {
            tracing::error!(error = %e, "identity lookup failed during renewal");
            return failed("the broker could not renew now; try again later".into());
        }
    };
    match crate::issuance::issue_for_identity(broker, &record, csr_pem).await {
        Ok(issued) => {
            BrokerToConnector::Renewed { certificate_pem: issued.certificate_pem, ca_pem: broker.trust_bundle_pem() }
        }
        Err(e) => failed(e.to_string()),
    }
}

async fn audit(broker: &Broker, peer: &Peer, kind: EventKind, detail: serde_json::Value) {
    let event = AuditEvent::new(kind, Outcome::Success).actor(peer.identity.id().uri()).detail(detail);
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit a connector event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_bundle_verifies_with_the_ca_certificate() {
        let now = SystemTime::now();
        let (ca, _) = Ca::create(&"td.example".parse().expect("td"), now).expect("ca");
        let bundle = PolicyBundle { version: 7, files: Vec::new(), services: Vec::new() };
        let signed = sign_bundle(&ca, &bundle, now).expect("signed");
        let verified = signed.clone().verify(std::slice::from_ref(ca.cert_der())).expect("verifies");
        let back: PolicyBundle = serde_json::from_str(verified.bundle_json()).expect("json");
        assert_eq!(back.version, 7);
        assert_eq!(verified.signed_at_unix(), unix(now));
        let (other, _) = Ca::create(&"td.example".parse().expect("td"), now).expect("ca");
        assert!(signed.verify(std::slice::from_ref(other.cert_der())).is_err());
    }
}
