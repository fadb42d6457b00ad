//! One-shot queries from a client: which services may I reach, who am I.

use std::time::UNIX_EPOCH;

use palisade_policies::Decision;
use palisade_proto::reject::RejectCode;
use palisade_proto::wire::{self, Query, ServiceInfo, ServiceListing, WhoAmI};
use quinn::{SendStream, VarInt};

use super::accept::Peer;
use super::open::decide;
use crate::state::Broker;

/// Answers `query` with one frame and finishes the stream.
pub(crate) async fn answer(broker: &Broker, peer: &Peer, query: Query, mut send: SendStream) {
    let frame = match query {
        Query::Services => wire::encode_frame(&services(broker, peer)),
        Query::WhoAmI => wire::encode_frame(&whoami(peer)),
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
        .filter(|s| matches!(decide(broker, &peer.identity, peer.remote.ip(), &s.name), Decision::Allow(_)))
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            segment: s.segment.clone(),
            protocol: s.protocol.clone(),
            online: broker.registry().is_online(&s.name),
        })
        .collect();
    ServiceListing { services }
}

fn whoami(peer: &Peer) -> WhoAmI {
    WhoAmI {
        identity: peer.identity.id().uri(),
        name: peer.identity.name().to_owned(),
        groups: peer.identity.groups().to_vec(),
        not_after_unix: peer.identity.not_after().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}
