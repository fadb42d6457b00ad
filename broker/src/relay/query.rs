//! One-shot queries from a client: which services may I reach, who am I.

use std::time::UNIX_EPOCH;

use palisade_policies::Decision;
use palisade_proto::reject::RejectCode;
use palisade_proto::wire::{self, LogoutDone, Query, ServiceInfo, ServiceListing, WhoAmI};
use quinn::{SendStream, VarInt};

use super::accept::Peer;
use super::membership::Membership;
use super::open::decide;
use crate::state::Broker;

/// Answers `query` with one frame and finishes the stream.
pub(crate) async fn answer(broker: &Broker, peer: &Peer, query: Query, mut send: SendStream) {
    let frame = match query {
        Query::Services => wire::encode_frame(&services(broker, peer)),
        Query::WhoAmI => wire::encode_frame(&whoami(broker, peer)),
        Query::Logout => wire::encode_frame(&logout(broker, peer).await),
    };
    let result = match frame {
        Ok(bytes) => send.write_all(&bytes).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not answer a query");
            let _ = send.reset(VarInt::from_u32(RejectCode::Internal.as_u32()));
        }
    }
}

fn services(broker: &Broker, peer: &Peer) -> ServiceListing {
    let engine = broker.policy().current();
    let services = engine
        .bundle()
        .services
        .iter()
        .filter(|s| {
            matches!(decide(broker, &peer.identity, peer.remote().ip(), &s.name).verdict.decision, Decision::Allow(_))
        })
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            segment: s.segment.clone(),
            protocol: s.protocol.clone(),
            online: broker.registry().is_online(&s.name),
        })
        .collect();
    ServiceListing { services }
}

/// Who the caller is; its groups are those that count now: the
/// certificate's, less any the database has removed since.
fn whoami(broker: &Broker, peer: &Peer) -> WhoAmI {
    let db_groups = broker.live().db_groups(&peer.identity.id().id);
    WhoAmI {
        identity: peer.identity.id().uri(),
        name: peer.identity.name().to_owned(),
        groups: Membership::of(peer.identity.groups(), db_groups.as_deref()).within,
        not_after_unix: peer.identity.not_after().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        session: peer.identity.session().map(str::to_owned),
        mfa_at_unix: peer.identity.mfa_at(),
    }
}

/// Revokes the caller's own session (a person logging out). Machine
/// certificates name no session and are not affected.
async fn logout(broker: &Broker, peer: &Peer) -> LogoutDone {
    let Some(session) = peer.identity.session().map(str::to_owned) else {
        return LogoutDone { session: None, revoked: false };
    };
    let actor = peer.identity.id().uri();
    let revoked = match revoke_session(broker, &session, &actor).await {
        Ok(revoked) => revoked,
        Err(e) => {
            tracing::error!(error = %e, "logout could not revoke the session");
            false
        }
    };
    LogoutDone { session: Some(session), revoked }
}

async fn revoke_session(broker: &Broker, session: &str, actor: &str) -> Result<bool, crate::audit::AuditError> {
    let now = crate::db::unix_seconds(std::time::SystemTime::now());
    let mut tx = broker.db().begin_write().await?;
    let revoked = crate::db::sessions::revoke_in(&mut tx, session, actor, "logout", now).await?;
    if revoked {
        let event =
            crate::audit::AuditEvent::new(crate::audit::EventKind::SessionRevoked, crate::audit::Outcome::Success)
                .actor(actor)
                .subject(session)
                .detail(serde_json::json!({ "reason": "logout" }));
        crate::audit::Audit::record_in(&mut tx, event).await?;
    }
    tx.commit().await?;
    Ok(revoked)
}
