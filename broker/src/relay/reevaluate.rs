//! Continuous enforcement: when the active set changes (a new policy
//! version, or a catalog change such as a service moving to another
//! segment), every live tunnel is decided again with the new set, and the
//! ones it no longer allows are cut, audited with what changed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::accept::Peer;
use super::live::LiveStream;
use super::open::decide;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::policy::ActivePolicy;
use crate::state::Broker;

/// Follows the database for new sets and re-evaluates live streams on every
/// change, until shutdown.
pub(crate) async fn watch(broker: Broker, shutdown: CancellationToken) {
    tokio::spawn(crate::policy::follow(broker.clone(), shutdown.clone()));
    let mut policy = broker.policy().subscribe();
    let mut previous = policy.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = policy.changed() => if changed.is_err() { return },
        }
        let active = policy.borrow_and_update().clone();
        let reason = reason(&previous, &active);
        let cut = cut_disallowed(&broker, |_| true, &format!("{reason}: {}", active.change));
        previous = active.clone();
        if cut.is_empty() {
            continue;
        }
        tracing::info!(policy_version = active.store_version, streams = cut.len(), change = %active.change, "{reason} closed live tunnels");
        let event = AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success).detail(json!({
            "reason": reason, "change": active.change,
            "policy_version": active.store_version, "entity_version": active.entity_version,
            "bundle_version": active.version(), "streams_closed": cut.len(), "streams": cut,
        }));
        if let Err(e) = broker.audit().record(event).await {
            tracing::error!(error = %e, "could not audit tunnels closed by a policy change");
        }
    }
}

/// How often the clients with live streams are checked for a new address.
const MOVE_CHECK: Duration = Duration::from_secs(1);

/// Follows the clients that have live streams: one that moved (QUIC
/// connection migration: NAT rebinding, a new network) has them decided
/// again from its new address. New streams read the current address
/// anyway; an idle connection costs nothing here.
pub(crate) async fn watch_moves(broker: Broker, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MOVE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for peer in broker.live().stream_peers() {
            if let Some((from, to)) = peer.moved() {
                after_move(&broker, &peer, from, to).await;
            }
        }
    }
}

/// A client's connection moved to `to`: its live streams are decided again
/// from the new address, as a new stream would be, and those the policy
/// refuses from there are cut. The move is audited when it cut something.
async fn after_move(broker: &Broker, peer: &Arc<Peer>, from: SocketAddr, to: SocketAddr) {
    tracing::info!(peer = %peer.identity.id(), %from, %to, "client connection moved to a new address");
    let cut = cut_disallowed(broker, |s| Arc::ptr_eq(&s.peer, peer), &format!("address change: {from} -> {to}"));
    if cut.is_empty() {
        return;
    }
    tracing::info!(peer = %peer.identity.id(), streams = cut.len(), "an address change closed live tunnels");
    let event =
        AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success).subject(peer.identity.id().uri()).detail(json!({
            "reason": "address change", "from": from.to_string(), "to": to.to_string(),
            "streams_closed": cut.len(), "streams": cut,
        }));
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit tunnels closed by an address change");
    }
}

fn reason(previous: &Arc<ActivePolicy>, active: &Arc<ActivePolicy>) -> &'static str {
    if previous.store_version == active.store_version && previous.entity_version != active.entity_version {
        "catalog change"
    } else {
        "policy change"
    }
}

/// Cuts every live stream (of those `only` picks) the current set denies,
/// leaving `why` as the reason its `stream.ended` event names; returns who
/// and what.
pub(super) fn cut_disallowed(broker: &Broker, only: impl Fn(&LiveStream) -> bool, why: &str) -> Vec<serde_json::Value> {
    let mut cut = Vec::new();
    for stream in broker.live().streams().into_iter().filter(|s| only(s)) {
        let peer = &stream.peer;
        let decided = decide(broker, &peer.identity, peer.remote().ip(), &stream.service);
        if let palisade_policies::Decision::Deny(reason) = &decided.verdict.decision {
            let _ = stream.closed_by.set(why.to_owned());
            stream.cut.cancel();
            cut.push(json!({
                "identity": peer.identity.id().uri(), "service": stream.service,
                "reason": reason.code(), "policy_ids": reason.policy_ids(),
            }));
        }
    }
    cut
}
