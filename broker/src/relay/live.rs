//! Live client connections, by identity and session, so a revocation can
//! close exactly the tunnels it applies to; the database's view of those
//! identities' groups, so a group change is enforced at once
//! ([`super::groups`]); and the channel that carries revocations to every
//! connector link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
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

/// The identities with a live connection, and their groups as the database
/// last said; both change under one lock, so an identity with a connection
/// always has a view of its groups.
#[derive(Default)]
struct Clients {
    conns: HashMap<String, Vec<Entry>>,
    groups: HashMap<String, Arc<[String]>>,
}

impl Clients {
    fn forget_if_idle(&mut self, identity: &str) {
        if self.conns.get(identity).is_some_and(Vec::is_empty) {
            self.conns.remove(identity);
        }
        if !self.conns.contains_key(identity) {
            self.groups.remove(identity);
        }
    }
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
    /// Why it was cut, when a change cut it: named in its `stream.ended` event.
    pub closed_by: Arc<OnceLock<String>>,
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

/// An identity whose groups in the database changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupsChanged {
    /// The identity's id.
    pub identity: String,
    /// Its groups as this broker knew them.
    pub before: Arc<[String]>,
    /// Its groups now.
    pub after: Arc<[String]>,
}

/// Every live client connection and relayed stream on this broker.
pub struct Live {
    by_identity: RwLock<Clients>,
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

    /// Tracks a relayed stream until [`Live::remove_stream`]; returns its
    /// key, and where a change that cuts it leaves its reason.
    pub fn add_stream(
        &self,
        peer: Arc<Peer>,
        service: String,
        cut: CancellationToken,
        traffic: Arc<Traffic>,
    ) -> (u64, Arc<OnceLock<String>>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let closed_by = Arc::new(OnceLock::new());
        let stream = LiveStream { peer, service, cut, closed_by: closed_by.clone(), traffic, started: Instant::now() };
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).insert(id, stream);
        (id, closed_by)
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

    /// The clients that have at least one live stream, each once.
    pub(crate) fn stream_peers(&self) -> Vec<Arc<Peer>> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut peers: Vec<Arc<Peer>> = streams.values().map(|s| s.peer.clone()).collect();
        drop(streams);
        peers.sort_by_key(|p| Arc::as_ptr(p) as usize);
        peers.dedup_by(|a, b| Arc::ptr_eq(a, b));
        peers
    }

    /// Tracks a client connection unless its identity already holds
    /// `limit` connections; check and insert happen under one lock, so
    /// concurrent handshakes cannot overshoot the cap. `groups` is what the
    /// database said at the handshake.
    pub fn try_add(
        &self,
        identity: &str,
        session: Option<&str>,
        conn: &quinn::Connection,
        limit: usize,
        groups: &[String],
    ) -> bool {
        let mut clients = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        let entries = clients.conns.entry(identity.to_owned()).or_default();
        if entries.len() >= limit {
            clients.forget_if_idle(identity);
            return false;
        }
        entries.push(Entry { session: session.map(str::to_owned), conn: conn.clone() });
        clients.groups.insert(identity.to_owned(), groups.into());
        true
    }

    /// Every client connection tracked now.
    #[must_use]
    pub fn client_connections(&self) -> Vec<quinn::Connection> {
        let clients = self.by_identity.read().unwrap_or_else(PoisonError::into_inner);
        clients.conns.values().flat_map(|entries| entries.iter().map(|e| e.conn.clone())).collect()
    }

    /// Stops tracking a connection.
    pub fn remove(&self, identity: &str, conn: &quinn::Connection) {
        let mut clients = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = clients.conns.get_mut(identity) {
            entries.retain(|e| e.conn.stable_id() != conn.stable_id());
        }
        clients.forget_if_idle(identity);
    }

    /// The connections a batch applies to (removed from tracking).
    pub fn take_matching(&self, batch: &RevokedBatch) -> Vec<quinn::Connection> {
        let mut clients = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for identity in &batch.identities {
            out.extend(clients.conns.remove(identity).unwrap_or_default().into_iter().map(|e| e.conn));
        }
        for entries in clients.conns.values_mut() {
            let (hit, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
                .into_iter()
                .partition(|e| e.session.as_ref().is_some_and(|s| batch.sessions.contains(s)));
            *entries = keep;
            out.extend(hit.into_iter().map(|e| e.conn));
        }
        clients.conns.retain(|_, entries| !entries.is_empty());
        let Clients { conns, groups } = &mut *clients;
        groups.retain(|identity, _| conns.contains_key(identity));
        out
    }

    /// The database's groups of an identity with a live connection here
    /// (`None`: it has none, so nothing is known).
    #[must_use]
    pub fn db_groups(&self, identity: &str) -> Option<Arc<[String]>> {
        self.by_identity.read().unwrap_or_else(PoisonError::into_inner).groups.get(identity).cloned()
    }

    /// The identities with a live connection here.
    #[must_use]
    pub fn identities(&self) -> Vec<String> {
        self.by_identity.read().unwrap_or_else(PoisonError::into_inner).groups.keys().cloned().collect()
    }

    /// Replaces the groups of the tracked identities named in `asked` with
    /// `fresh` (an identity `fresh` lacks — deleted — is left with none);
    /// returns the identities whose groups changed. Identities that
    /// disconnected meanwhile are not tracked again.
    pub fn refresh_groups(&self, asked: &[String], mut fresh: HashMap<String, Vec<String>>) -> Vec<GroupsChanged> {
        let mut clients = self.by_identity.write().unwrap_or_else(PoisonError::into_inner);
        let mut changed = Vec::new();
        for identity in asked {
            let Some(known) = clients.groups.get_mut(identity) else { continue };
            let now: Arc<[String]> = fresh.remove(identity).unwrap_or_default().into();
            if sorted(known) != sorted(&now) {
                let before = std::mem::replace(known, now.clone());
                changed.push(GroupsChanged { identity: identity.clone(), before, after: now });
            }
        }
        changed
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

fn sorted(groups: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = groups.iter().collect();
    out.sort();
    out.dedup();
    out
}
