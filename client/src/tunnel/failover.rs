//! Broker replicas: which one to dial, and when a connection has gone quiet.
//!
//! A profile lists the broker it enrolled with and, when several brokers
//! share one database, the other replicas the broker named. The tunnel keeps
//! using the replica that last answered. With keep-alives twice a second, a
//! connection that has received nothing for [`QUIET_FOR`] is taken for dead
//! when there is somewhere else to go: new streams go to the next replica at
//! once instead of waiting out the idle timeout, while streams already on the
//! quiet connection are left to end on their own. A broker that is stopping
//! says so ([`MOVE_NOTICE`] on a unidirectional stream): new streams go to
//! the next replica at once, and the ones running there finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_proto::reject::MOVE_NOTICE;
use tokio::time::Instant;

/// How often the client pings an idle connection.
pub(super) const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Nothing received for this long, despite three keep-alives: the replica is
/// gone (or so slow that another one serves new streams better).
pub(super) const QUIET_FOR: Duration = Duration::from_millis(1500);
/// How long the replica in use has to answer a handshake before one to the
/// next replica starts too (and so on down the list).
pub(super) const STAGGER: Duration = Duration::from_millis(300);
/// How long a handshake may take when another replica could be tried instead.
pub(super) const REPLICA_HANDSHAKE: Duration = Duration::from_secs(2);

/// Tells a connection that stopped receiving anything, or whose broker
/// asked its clients to move.
#[derive(Debug)]
pub(super) struct Liveness {
    datagrams: u64,
    changed: Instant,
    moving: Arc<AtomicBool>,
    /// The task listening for the notice; it holds the connection, so it
    /// ends with this value (a dropped tunnel must close its connection).
    listener: tokio::task::AbortHandle,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Liveness {
    /// Starts watching `conn` (and listening for the broker's move notice).
    pub(super) fn new(conn: &quinn::Connection) -> Liveness {
        let moving = Arc::new(AtomicBool::new(false));
        let listener = tokio::spawn(listen_for_move(conn.clone(), moving.clone())).abort_handle();
        Liveness { datagrams: conn.stats().udp_rx.datagrams, changed: Instant::now(), moving, listener }
    }

    /// Whether the broker asked its clients to open new streams elsewhere.
    pub(super) fn moving(&self) -> bool {
        self.moving.load(Ordering::Relaxed)
    }

    /// Whether `conn` has received nothing for [`QUIET_FOR`] up to `now`.
    pub(super) fn quiet(&mut self, conn: &quinn::Connection, now: Instant) -> bool {
        let datagrams = conn.stats().udp_rx.datagrams;
        if datagrams != self.datagrams {
            self.datagrams = datagrams;
            self.changed = now;
            return false;
        }
        now.saturating_duration_since(self.changed) > QUIET_FOR
    }
}

/// Waits for the broker's move notice on `conn`; anything else on a
/// unidirectional stream is ignored.
async fn listen_for_move(conn: quinn::Connection, moving: Arc<AtomicBool>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        if let Ok(notice) = recv.read_to_end(MOVE_NOTICE.len()).await
            && notice == MOVE_NOTICE
        {
            tracing::info!("the broker is stopping; new streams go to another replica");
            moving.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// The indexes of `count` replicas in the order to try them: `current`
/// first, then the ones after it, wrapping around.
pub(super) fn order(count: usize, current: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (current + i) % count.max(1))
}

#[cfg(test)]
mod tests {
    use super::order;

    #[test]
    fn the_replica_in_use_is_tried_first_then_the_rest_in_turn() {
        assert_eq!(order(3, 1).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(order(1, 0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(order(0, 0).count(), 0);
    }
}
