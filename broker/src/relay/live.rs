//! Live client connections, by identity and session, so a revocation can
//! close exactly the tunnels it applies to; and the channel that carries
//! revocations to every connector link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::accept::Peer;

/// A batch of revocations, as pushed to connectors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedBatch {
    /// Revoked session ids.
    pub sessions: Vec<String>,
    /// Revoked identity ids.
    pub identities: Vec<String>,
}

struct Entry {
    session: Option<String>,
    conn: quinn::Connection,
}

/// A relayed stream, kept so a policy change can re-evaluate and cut it.
#[derive(Clone)]
pub struct LiveStream {
    /// Who opened it.
    pub peer: Arc<Peer>,
    /// The service it reaches.
    pub service: String,
    /// Cancelling ends the tunnel with the `Revoked` code.
    pub cut: CancellationToken,
    /// Bytes moved so far, updated by the splice as chunks pass.
    pub traffic: Arc<Traffic>,
    /// When the stream was admitted.
    pub started: Instant,
}

/// Live byte counters of one relayed stream.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client → connector bytes so far.
    pub up: AtomicU64,
    /// Connector → client bytes so far.
    pub down: AtomicU64,
}

/// Every live client connection and relayed stream on this broker.
pub struct Live {
    by_identity: RwLock<HashMap<String, Vec<Entry>>>,
    streams: Mutex<HashMap<u64, LiveStream>>,
    next_stream: AtomicU64,
    revoked: broadcast::Sender<RevokedBatch>,
    /// Whether the QUIC endpoint is bound and accepting (for `/readyz`).
    quic_accepting: AtomicBool,
}

impl Default for Live {
    fn default() -> Self {
        let (revoked, _) = broadcast::channel(256);
        Self {
            by_identity: RwLock::default(),
            streams: Mutex::default(),
            next_stream: AtomicU64::new(1),
            revoked,
            quic_accepting: AtomicBool::new(false),
        }
    }
}

impl Live {
    /// Records whether the QUIC endpoint accepts connections.
    pub fn set_quic_accepting(&self, accepting: bool) {
        self.quic_accepting.store(accepting, Ordering::Relaxed);
    }

    /// Whether the QUIC endpoint is bound and accepting connections.
    #[must_use]
    pub fn quic_accepting(&self) -> bool {
        self.quic_accepting.load(Ordering::Relaxed)
    }

    /// Tracks a relayed stream until [`Live::remove_stream`]; returns its key.
    pub fn add_stream(&self, peer: Arc<Peer>, service: String, cut: CancellationToken, traffic: Arc<Traffic>) -> u64 {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream = LiveStream { peer, service, cut, traffic, started: Instant::now() };
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).insert(id, stream);
        id
    }

    /// Stops tracking a stream.
    pub fn remove_stream(&self, id: u64) {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// A copy of every live stream, for re-evaluation.
    #[must_use]
    pub fn streams(&self) -> Vec<LiveStream> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Tracks a client connection unless its identity already holds
    /// `limit` connections; check and insert happen under one lock, so
    /// concurrent handshakes cannot overshoot the cap.
    pub fn try_add(&self, identity: &str, session: Option<&str>, conn: &quinn::Connection, limit: usize) -> bool {
        let mut map = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        let entries = map.entry(identity.to_owned()).or_default();
        if entries.len() >= limit {
            return false;
        }
        entries.push(Entry { session: session.map(str::to_owned), conn: conn.clone() });
        true
    }

    /// Every client connection tracked now.
    #[must_use]
    pub fn client_connections(&self) -> Vec<quinn::Connection> {
        let map = self.by_identity.read().unwrap_or_else(PoisonError::into_inner);
        map.values().flat_map(|entries| entries.iter().map(|e| e.conn.clone())).collect()
    }

    /// Stops tracking a connection.
    pub fn remove(&self, identity: &str, conn: &quinn::Connection) {
        let mut map = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = map.get_mut(identity) {
            entries.retain(|e| e.conn.stable_id() != conn.stable_id());
            if entries.is_empty() {
                map.remove(identity);
            }
        }
    }

    /// The connections a batch applies to (removed from tracking).
    pub fn take_matching(&self, batch: &RevokedBatch) -> Vec<quinn::Connection> {
        let mut map = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for identity in &batch.identities {
            out.extend(map.remove(identity).unwrap_or_default().into_iter().map(|e| e.conn));
        }
        for entries in map.values_mut() {
            let (hit, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
                .into_iter()
                .partition(|e| e.session.as_ref().is_some_and(|s| batch.sessions.contains(s)));
            *entries = keep;
            out.extend(hit.into_iter().map(|e| e.conn));
        }
        map.retain(|_, entries| !entries.is_empty());
        out
    }

    /// Connector links subscribe here to forward revocations.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<RevokedBatch> {
        self.revoked.subscribe()
    }

    /// Announces a batch to every connector link.
    pub fn announce(&self, batch: RevokedBatch) {
        // No receiver simply means no connector is online right now.
        let _ = self.revoked.send(batch);
    }
}
