//! Continuous enforcement: when the policy set changes, every live tunnel is
//! decided again with the new set, and the ones it no longer allows are cut.

use palisade_policies::Decision;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::open::decide;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::state::Broker;

/// Re-evaluates live streams on every policy change until shutdown.
pub(crate) async fn watch(broker: Broker, shutdown: CancellationToken) {
    let mut policy = broker.policy().subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = policy.changed() => if changed.is_err() { return },
        }
        let version = policy.borrow_and_update().version();
        let cut = cut_disallowed(&broker);
        if cut.is_empty() {
            continue;
        }
        tracing::info!(version, streams = cut.len(), "policy change closed live tunnels");
        let event = AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success).detail(json!({
            "reason": "policy change", "policy_version": version, "streams_closed": cut.len(), "streams": cut,
        }));
        if let Err(e) = broker.audit().record(event).await {
            tracing::error!(error = %e, "could not audit tunnels closed by a policy change");
        }
    }
}

/// Cuts every live stream the current policy denies; returns who and what.
fn cut_disallowed(broker: &Broker) -> Vec<serde_json::Value> {
    let mut cut = Vec::new();
    for stream in broker.live().streams() {
        let peer = &stream.peer;
        if let Decision::Deny(reason) = decide(broker, &peer.identity, peer.remote.ip(), &stream.service) {
            stream.cut.cancel();
            cut.push(json!({
                "identity": peer.identity.id().uri(), "service": stream.service,
                "reason": reason.code(), "policy_ids": reason.policy_ids(),
            }));
        }
    }
    cut
}
