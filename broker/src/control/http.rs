//! What connectors report about L7 (HTTP) services: one audit event per
//! request (model-access audit), extraction alerts drawn from those records
//! (`extraction`), and the keys connectors sign identity assertions with.

use std::time::SystemTime;

use palisade_proto::control::HttpRequestRecord;
use palisade_proto::id::DecisionId;
use serde_json::json;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::relay::accept::Peer;
use crate::state::Broker;

/// Writes a connector's per-request record to the audit trail. The actor
/// is the caller; the connector that saw the request is in the detail. An
/// alert it raises throttles the caller if so configured, but only on a
/// service this link serves: a connector cannot get callers of other
/// connectors' services throttled.
pub(super) async fn record(
    broker: &Broker,
    peer: &Peer,
    served: &[String],
    decision_id: DecisionId,
    record: Box<HttpRequestRecord>,
) {
    let outcome = match record.decision.as_str() {
        "allow" => Outcome::Allow,
        "error" => Outcome::Failure,
        _ => Outcome::Deny,
    };
    let alerts = super::extraction::detector().observe(&record, std::time::Instant::now());
    let actor = record.identity.clone();
    let mut detail = match serde_json::to_value(&record) {
        Ok(detail) => detail,
        Err(e) => return tracing::error!(error = %e, "cannot serialize an http request record"),
    };
    detail["connector"] = peer.identity.id().uri().into();
    let event = AuditEvent::new(EventKind::ConnectorHttpRequest, outcome)
        .actor(actor)
        .subject(record.service.clone())
        .decision(decision_id)
        .detail(detail);
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit an http request record");
    }
    for alert in alerts {
        tracing::warn!(identity = %alert.identity, rule = alert.rule, "model extraction alert");
        let detail = json!({
            "rule": alert.rule,
            "service": record.service,
            "window_secs": super::extraction::WINDOW.as_secs(),
            "requests": alert.requests,
            "distinct_prompts": alert.distinct_prompts,
            "logprobs_requests": alert.logprobs_requests,
            "baseline_per_minute": alert.baseline_per_minute,
        });
        let event = AuditEvent::new(EventKind::AlertModelExtraction, Outcome::Success)
            .actor(alert.identity.clone())
            .subject(record.service.clone())
            .detail(detail);
        if let Err(e) = broker.audit().record(event).await {
            tracing::error!(error = %e, "could not audit a model extraction alert");
        }
        if broker.config().alerts.throttle_after_alert && served.contains(&record.service) {
            super::throttle::apply(broker, &alert.identity, &record.service, alert.rule).await;
        }
    }
}

/// The most model ids kept from one report.
const MAX_MODELS: usize = 500;

/// Audits the models a connector found behind an HTTP service
/// (`connector.models`); the inventory reads the latest report per service.
pub(super) async fn models(broker: &Broker, peer: &Peer, service: String, mut models: Vec<String>) {
    models.retain(|m| !m.is_empty() && m.len() <= 256);
    models.sort();
    models.dedup();
    models.truncate(MAX_MODELS);
    let event = AuditEvent::new(EventKind::ConnectorModels, Outcome::Success)
        .actor(peer.identity.id().uri())
        .subject(service)
        .detail(json!({ "models": models }));
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit a model inventory report");
    }
}

/// Stores a connector's assertion key for the JWKS.
pub(super) async fn register_key(broker: &Broker, peer: &Peer, jwk: &serde_json::Value) {
    let connector = &peer.identity.id().id;
    match crate::web::jwks::register(broker.db(), connector, jwk, SystemTime::now()).await {
        Ok(()) => tracing::info!(%connector, kid = ?jwk.get("kid"), "connector registered an assertion key"),
        Err(e) => tracing::warn!(%connector, error = %e, "refused a connector's assertion key"),
    }
}
