//! Group membership changes enforced live: every broker keeps the
//! database's groups of the identities connected to it ([`super::live`]),
//! re-reads them when a change is announced and at least every resync
//! interval ([`crate::sync`]; on PostgreSQL an update of `identities`
//! notifies every replica), and when an identity's groups change, decides
//! its live streams again ([`super::membership`]) and cuts those no longer
//! allowed, audited with the change.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::membership::GroupDiff;
use super::reevaluate::cut_disallowed;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::db::identities;
use crate::state::Broker;
use crate::sync::View;

/// Follows the groups of connected identities until shutdown.
pub(crate) async fn watch(broker: Broker, shutdown: CancellationToken) {
    let mut waiter = broker.sync().waiter();
    let mut failing = false;
    loop {
        match refresh(&broker).await {
            Ok(()) if failing => {
                tracing::info!("reading the groups of connected identities works again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::error!(error = %e, "cannot read the groups of connected identities; new streams are refused until it can");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = waiter.wait() => {}
        }
    }
}

/// One read: the groups of every identity connected here, compared with
/// what this broker knew; changes are enforced.
async fn refresh(broker: &Broker) -> Result<(), sqlx::Error> {
    let asked = broker.live().identities();
    if asked.is_empty() {
        broker.sync().confirmed(View::Groups);
        return Ok(());
    }
    let fresh = identities::groups_of(broker.db(), &asked).await?;
    let changed = broker.live().refresh_groups(&asked, fresh);
    broker.sync().confirmed(View::Groups);
    for change in changed {
        enforce(broker, &change.identity, &change.before, &change.after).await;
    }
    Ok(())
}

/// Decides the identity's live streams again with its new groups; cuts and
/// audits the ones no longer allowed.
async fn enforce(broker: &Broker, identity: &str, before: &Arc<[String]>, after: &Arc<[String]>) {
    let diff = GroupDiff::between(before, after);
    let change = format!("groups changed: {}", diff.describe());
    let cut = cut_disallowed(broker, |s| s.peer.identity.id().id == identity, &change);
    tracing::info!(identity, change = %diff.describe(), streams_closed = cut.len(), "group membership changed");
    if cut.is_empty() {
        return;
    }
    let uri = cut.first().and_then(|s| s["identity"].as_str()).unwrap_or(identity).to_owned();
    let event = AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success).subject(uri).detail(json!({
        "reason": "groups changed", "change": change,
        "groups_removed": diff.removed, "groups_added": diff.added, "groups": after.as_ref(),
        "streams_closed": cut.len(), "streams": cut,
    }));
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit tunnels closed by a group change");
    }
}
