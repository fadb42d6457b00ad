//! Staying current with the database that every replica shares.
//!
//! A broker acts on state that other processes change: revocations, the
//! active policy version, the service catalog, identities. Three loops read
//! it ([`crate::relay::revoke::watch`], [`crate::policy::follow`] and
//! `relay::groups::watch`, for the groups of connected identities). They
//! wake when [`Freshness::announce`] says something changed — on PostgreSQL a
//! `LISTEN` on [`CHANNEL`], which triggers on those tables notify
//! ([`listen`]) — and at the latest every resync interval, so a lost
//! notification (the listener's session was terminated, the network
//! dropped it) is repaired without anyone noticing.
//!
//! Each successful read confirms its [`View`]. A broker whose views have
//! not all been confirmed within `[consistency] max_staleness` is stale:
//! in strict mode (the default) it refuses new streams; in best-effort
//! mode it keeps deciding on what it last knew, logs it, marks the
//! decisions in the audit trail and reports it in `/readyz` and the
//! `palisade_broker_stale` gauge ([`report`]).

pub mod listen;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsistencyConfig, StaleMode};
use crate::db::Backend;
use crate::state::Broker;

/// The PostgreSQL notification channel the change triggers write to
/// (`migrations/postgres/0014_change_notifications.sql`).
pub const CHANNEL: &str = "palisade_changes";

/// How often the followers read without a notification on SQLite, where
/// another process (`palisade-broker policy apply`) can only be polled.
pub const RESYNC_SQLITE: Duration = Duration::from_millis(200);

/// How often they read anyway on PostgreSQL, where notifications wake them:
/// the repair time for a lost notification, well inside the 2 s in which
/// a change must reach every replica.
pub const RESYNC_POSTGRES: Duration = Duration::from_secs(1);

/// What a broker must keep reading to be current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The revocation feed.
    Revocations,
    /// The active policy version, the catalog and what the policy depends on.
    Policy,
    /// The groups of the identities connected to this broker.
    Groups,
}

/// May a new stream be decided on this broker's view?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every view was confirmed within the bound.
    Current,
    /// Stale, strict mode: refuse.
    Refuse {
        /// Time since the oldest view was confirmed.
        age: Duration,
    },
    /// Stale, best-effort mode: decide on the last known state and say so.
    Proceed {
        /// Time since the oldest view was confirmed.
        age: Duration,
    },
}

/// Change notifications and the freshness of this broker's views.
pub struct Freshness {
    changes: watch::Sender<u64>,
    resync: Duration,
    config: ConsistencyConfig,
    epoch: Instant,
    /// Per [`View`], when it was last confirmed (ms since `epoch`).
    confirmed_ms: [AtomicU64; 3],
}

impl Freshness {
    /// Starts with every view confirmed: the broker has just loaded them.
    #[must_use]
    pub fn new(backend: Backend, config: ConsistencyConfig) -> Self {
        let resync = match backend {
            Backend::Sqlite => RESYNC_SQLITE,
            Backend::Postgres => RESYNC_POSTGRES,
        };
        // Several reads fit in the bound, so a broker whose database is fine
        // never looks stale between two of them.
        let resync = resync.min(config.max_staleness / 3);
        let (changes, _) = watch::channel(0);
        Self { changes, resync, config, epoch: Instant::now(), confirmed_ms: Default::default() }
    }

    /// Something may have changed in the database: wake every follower.
    pub fn announce(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A handle a follower waits on between reads.
    #[must_use]
    pub fn waiter(&self) -> Waiter {
        Waiter { changes: self.changes.subscribe(), resync: self.resync }
    }

    /// Records a successful read of `view`.
    pub fn confirmed(&self, view: View) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.confirmed_ms[view as usize].store(now, Ordering::Relaxed);
    }

    /// Time since the least recently confirmed view was read.
    #[must_use]
    pub fn age(&self) -> Duration {
        let oldest = self.confirmed_ms.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0);
        self.epoch.elapsed().saturating_sub(Duration::from_millis(oldest))
    }

    /// Whether new streams may be decided now.
    #[must_use]
    pub fn admission(&self) -> Admission {
        let age = self.age();
        if age <= self.config.max_staleness {
            return Admission::Current;
        }
        match self.config.mode {
            StaleMode::Strict => Admission::Refuse { age },
            StaleMode::BestEffort => Admission::Proceed { age },
        }
    }
}

/// Waits for the next reason to read: a notification or the resync tick.
pub struct Waiter {
    changes: watch::Receiver<u64>,
    resync: Duration,
}

impl Waiter {
    /// Returns when something was announced or the resync interval passed.
    pub async fn wait(&mut self) {
        let changed = tokio::time::timeout(self.resync, self.changes.changed()).await;
        if matches!(changed, Ok(Err(_))) {
            // The sender is gone (shutting down): fall back to the tick.
            tokio::time::sleep(self.resync).await;
        }
    }
}

/// How often [`report`] looks at the views' age.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Keeps `palisade_broker_stale` and the log in step with the views' age
/// until shutdown: one warning when the broker becomes stale (saying what
/// it does about it), one note when it is current again.
pub async fn report(broker: Broker, shutdown: CancellationToken) {
    let mut stale = false;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let admission = broker.sync().admission();
        let now_stale = admission != Admission::Current;
        crate::metrics::STALE.set(i64::from(now_stale));
        match (stale, admission) {
            (false, Admission::Refuse { age }) => tracing::error!(
                age_ms = age.as_millis(),
                "this broker cannot confirm it is current with the database; new streams are refused until it can (consistency.mode = strict)"
            ),
            (false, Admission::Proceed { age }) => tracing::warn!(
                age_ms = age.as_millis(),
                "this broker cannot confirm it is current with the database; deciding on its last known state (consistency.mode = best-effort)"
            ),
            (true, Admission::Current) => tracing::info!("this broker is current with the database again"),
            _ => {}
        }
        stale = now_stale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(max_ms: u64, mode: StaleMode) -> Freshness {
        Freshness::new(Backend::Sqlite, ConsistencyConfig { max_staleness: Duration::from_millis(max_ms), mode })
    }

    #[test]
    fn a_view_not_confirmed_within_the_bound_makes_the_broker_stale() {
        let strict = sync(40, StaleMode::Strict);
        assert_eq!(strict.admission(), Admission::Current);
        std::thread::sleep(Duration::from_millis(60));
        strict.confirmed(View::Revocations);
        // The policy view is still old: one current view is not enough.
        assert!(matches!(strict.admission(), Admission::Refuse { age } if age >= Duration::from_millis(40)));
        strict.confirmed(View::Policy);
        assert!(matches!(strict.admission(), Admission::Refuse { .. }), "the groups view is still old");
        strict.confirmed(View::Groups);
        assert_eq!(strict.admission(), Admission::Current);
    }

    #[test]
    fn best_effort_proceeds_and_reports_the_age() {
        let lenient = sync(10, StaleMode::BestEffort);
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(lenient.admission(), Admission::Proceed { age } if age >= Duration::from_millis(10)));
    }

    #[tokio::test]
    async fn an_announcement_wakes_a_waiter_before_the_resync_tick() {
        let sync = Freshness::new(Backend::Postgres, ConsistencyConfig::default());
        let mut waiter = sync.waiter();
        let started = Instant::now();
        let woke = tokio::spawn(async move { waiter.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sync.announce();
        woke.await.expect("waiter");
        assert!(started.elapsed() < RESYNC_POSTGRES / 2, "woke after {:?}", started.elapsed());
    }
}
