//! Acting on revocations: every broker polls the revocation feed, closes
//! the live connections it names (all their tunnels end with them) and tells
//! its connectors, which then refuse those identities on their own.

use std::time::{Duration, SystemTime};

use palisade_proto::reject::close;
use quinn::VarInt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::live::RevokedBatch;
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::db::revocations::{self, Revocation, RevocationKind};
use crate::state::Broker;
use crate::sync::View;

/// How far back a connector is told about revocations when it connects:
/// the longest a certificate may be valid.
const LOOKBACK: Duration = Duration::from_secs(30 * 24 * 3600);

/// Follows the revocation feed until shutdown: read when a change is
/// announced, and at least every resync interval ([`crate::sync`]).
/// Revocations take effect within that bound plus the time to close a
/// connection.
pub(crate) async fn watch(broker: Broker, shutdown: CancellationToken) {
    let mut waiter = broker.sync().waiter();
    let mut last = match revocations::head(broker.db()).await {
        Ok(seq) => {
            broker.sync().confirmed(View::Revocations);
            seq
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the revocation feed; retrying");
            0
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = waiter.wait() => {}
        }
        match revocations::after(broker.db(), last).await {
            Ok(rows) if rows.is_empty() => broker.sync().confirmed(View::Revocations),
            Ok(rows) => {
                last = rows.last().map_or(last, |r| r.seq);
                apply(&broker, &rows).await;
                broker.sync().confirmed(View::Revocations);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the revocation feed; new streams are refused until it can")
            }
        }
    }
}

fn batch_of(rows: &[Revocation]) -> RevokedBatch {
    let mut batch = RevokedBatch::default();
    for row in rows {
        match row.kind {
            RevocationKind::Session => batch.sessions.push(row.target.clone()),
            RevocationKind::Identity => batch.identities.push(row.target.clone()),
        }
    }
    batch
}

async fn apply(broker: &Broker, rows: &[Revocation]) {
    let batch = batch_of(rows);
    let conns = broker.live().take_matching(&batch);
    for conn in &conns {
        conn.close(VarInt::from_u32(close::REVOKED), b"revoked");
    }
    tracing::info!(revocations = rows.len(), connections = conns.len(), "revocations applied");
    let event = AuditEvent::new(EventKind::TunnelsRevoked, Outcome::Success).detail(json!({
        "sessions": batch.sessions, "identities": batch.identities, "connections_closed": conns.len(),
    }));
    broker.live().announce(batch);
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit closed connections");
    }
}

/// Revocations a newly connected connector must know about.
pub(crate) async fn recent(broker: &Broker) -> RevokedBatch {
    let since = crate::db::unix_seconds(SystemTime::now() - LOOKBACK);
    match revocations::since(broker.db(), since).await {
        Ok(rows) => batch_of(&rows),
        Err(e) => {
            tracing::error!(error = %e, "cannot read recent revocations for a connector");
            RevokedBatch::default()
        }
    }
}
