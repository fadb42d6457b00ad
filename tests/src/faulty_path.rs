//! A UDP relay that is a bad network: it carries datagrams between its peers
//! and one target (a broker's QUIC port) and, as the test asks, drops a share
//! of them, delays every one, or drops all of them (a partition: nothing is
//! answered, no ICMP, exactly what a dead path looks like to QUIC).
//!
//! It stands in for `tc qdisc … netem`, which needs `sch_netem` in the
//! kernel: not every kernel the tests run on has it (the one these tests
//! were written on is built without it), while a relay works on any. Each direction is impaired on its own,
//! with the same settings, as netem on both ends of a link would be.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What the path does to each datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// The share of datagrams dropped, each independently (0.0 to 1.0).
    pub loss: f64,
    /// How long each datagram that gets through is held first (one way).
    pub delay: Duration,
    /// Drops every datagram.
    pub partitioned: bool,
}

/// A running relay; stops when dropped.
pub struct FaultyPath {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    impairment: Mutex<Impairment>,
    carried: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    /// When a datagram arriving now leaves, or `None` if it is dropped.
    fn admit(&self) -> Option<Instant> {
        let now = *self.impairment.lock().unwrap_or_else(PoisonError::into_inner);
        if now.partitioned || (now.loss > 0.0 && rand::random::<f64>() < now.loss) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.carried.fetch_add(1, Ordering::Relaxed);
        Some(Instant::now() + now.delay)
    }
}

impl FaultyPath {
    /// Listens on `bind` (port 0 for any) and relays every peer's datagrams
    /// to `target` from a socket of the peer's own, and the answers back.
    ///
    /// # Panics
    /// `bind` cannot be bound.
    pub async fn spawn(bind: SocketAddr, target: SocketAddr) -> Self {
        let listener = UdpSocket::bind(bind).await.unwrap_or_else(|e| panic!("bind the relay on {bind}: {e}"));
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(relay(Arc::new(listener), target, shared.clone()));
        Self { addr, shared, task }
    }

    /// Where peers send to instead of the target.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `impairment` to every datagram from now on (queued ones keep their delay).
    pub fn set(&self, impairment: Impairment) {
        *self.shared.impairment.lock().unwrap_or_else(PoisonError::into_inner) = impairment;
    }

    /// Drops everything from now on.
    pub fn partition(&self) {
        self.set(Impairment { partitioned: true, ..Impairment::default() });
    }

    /// Carries everything again, without loss or delay.
    pub fn heal(&self) {
        self.set(Impairment::default());
    }

    /// Datagrams carried and dropped so far, both directions together.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.carried.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for FaultyPath {
    fn drop(&mut self) {
        // Dropping the task's JoinSet aborts every task it started.
        self.task.abort();
    }
}

/// A datagram waiting out its delay.
struct Held {
    until: Instant,
    bytes: Vec<u8>,
    from: Arc<UdpSocket>,
    to: SocketAddr,
}

/// Sends held datagrams in arrival order, each at its time (the delay is
/// the same for all, so arrival order is also departure order).
async fn deliver(mut queue: mpsc::UnboundedReceiver<Held>) {
    while let Some(held) = queue.recv().await {
        tokio::time::sleep_until(held.until).await;
        // A send error is one more lost datagram.
        let _ = held.from.send_to(&held.bytes, held.to).await;
    }
}

async fn relay(listener: Arc<UdpSocket>, target: SocketAddr, shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    let (towards_target, queue) = mpsc::unbounded_channel();
    tasks.spawn(deliver(queue));
    let (towards_peers, queue) = mpsc::unbounded_channel();
    tasks.spawn(deliver(queue));
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((len, peer)) = listener.recv_from(&mut buf).await else { continue };
        let outbound = match peers.get(&peer) {
            Some(socket) => socket.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind(unspecified(target)).await.map(Arc::new) else { continue };
                tasks.spawn(answers(
                    target,
                    socket.clone(),
                    listener.clone(),
                    peer,
                    shared.clone(),
                    towards_peers.clone(),
                ));
                peers.insert(peer, socket.clone());
                socket
            }
        };
        if let Some(until) = shared.admit() {
            let _ = towards_target.send(Held { until, bytes: buf[..len].to_vec(), from: outbound, to: target });
        }
    }
}

/// Carries the target's answers to one peer back through the listener.
async fn answers(
    target: SocketAddr,
    outbound: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    towards_peers: mpsc::UnboundedSender<Held>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, from)) = outbound.recv_from(&mut buf).await {
        if from != target {
            continue;
        }
        if let Some(until) = shared.admit() {
            let held = Held { until, bytes: buf[..len].to_vec(), from: listener.clone(), to: peer };
            if towards_peers.send(held).is_err() {
                return;
            }
        }
    }
}

fn unspecified(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
