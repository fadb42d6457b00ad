//! Which connectors are online, and which services each can reach.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use palisade_proto::share::LinkShares;

/// A connector's live QUIC connection.
#[derive(Clone)]
pub struct Link {
    /// The connector's identity id.
    pub connector_id: String,
    /// Its display name.
    pub name: String,
    /// The connection streams are opened on.
    pub conn: quinn::Connection,
    /// The streams each identity has open on it, which set their send priority.
    pub shares: Arc<LinkShares>,
}

/// Service name → connectors serving it.
#[derive(Default)]
pub struct Registry {
    by_service: RwLock<HashMap<String, Vec<Link>>>,
    next: AtomicUsize,
}

impl Registry {
    /// Records that `link` serves `services`.
    pub fn register(&self, link: &Link, services: &[String]) {
        let mut map = self.by_service.write().unwrap_or_else(PoisonError::into_inner);
        for service in services {
            map.entry(service.clone()).or_default().push(link.clone());
        }
    }

    /// Forgets a connection (by quinn's stable id) everywhere.
    pub fn unregister(&self, conn: &quinn::Connection) {
        let id = conn.stable_id();
        let mut map = self.by_service.write().unwrap_or_else(PoisonError::into_inner);
        for links in map.values_mut() {
            links.retain(|l| l.conn.stable_id() != id);
        }
        map.retain(|_, links| !links.is_empty());
    }

    /// A live connector for `service`, spreading streams round-robin.
    #[must_use]
    pub fn pick(&self, service: &str) -> Option<Link> {
        let map = self.by_service.read().unwrap_or_else(PoisonError::into_inner);
        let live: Vec<&Link> = map.get(service)?.iter().filter(|l| l.conn.close_reason().is_none()).collect();
        if live.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[i].clone())
    }

    /// Whether any live connector serves `service`.
    #[must_use]
    pub fn is_online(&self, service: &str) -> bool {
        let map = self.by_service.read().unwrap_or_else(PoisonError::into_inner);
        map.get(service).is_some_and(|links| links.iter().any(|l| l.conn.close_reason().is_none()))
    }
}
