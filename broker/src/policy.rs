//! The active policy set: the policy store's active version (in the
//! database) compiled with the service catalog (also in the database),
//! swapped atomically whenever either changes, and pushed to every
//! connector.
//!
//! The database is the truth. On first start the policy directory seeds
//! store version 1; afterwards the broker follows the database: it reads
//! the active version and the catalog version ([`follow`]) when a change is
//! announced and at least every resync interval ([`crate::sync`]: 200 ms on
//! SQLite; on PostgreSQL at once by notification and at the latest after
//! 1 s), so a change made by `palisade-broker policy apply`, `service
//! assign`, the admin socket, the web UI or another replica takes effect
//! within that bound. The directory is kept as a mirror of the active
//! version; `policy reload` and SIGHUP import it as a new version when an
//! admin edited it (GitOps). A set that fails to parse or validate is
//! refused with file and line, audited, and changes nothing.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_policies::{
    AccessRequest, DecisionCache, Engine, LoadError, PolicyBundle, PolicyFile, Verdict, read_policy_dir,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::inventory::{self, InventoryError};
use crate::policy_store::{self, PolicyStoreError, Proposal};
use crate::state::Broker;
use crate::sync::View;

/// The policy engine crate, re-exported for tools built on the broker
/// (the Cedar benchmark in palisade-tests).
pub use palisade_policies as engine;

/// How many verdicts the relay's decision cache holds.
pub const DECISION_CACHE_CAPACITY: usize = 10_000;

/// A policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading, parsing or validating the Cedar files failed.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The policy store refused the set or could not be read.
    #[error("{0}")]
    Store(#[from] PolicyStoreError),
    /// The service catalog could not be read.
    #[error("service catalog: {0}")]
    Catalog(#[from] InventoryError),
    /// The store has no active version (it is seeded at start, so this means
    /// someone emptied it).
    #[error("the policy store has no active version: apply one with `palisade-broker policy apply DIR`")]
    NoActiveVersion,
}

/// The engine every decision uses, and what it was built from.
pub struct ActivePolicy {
    engine: Engine,
    /// The policy store version (`policy history`).
    pub store_version: u64,
    /// The service catalog version.
    pub entity_version: u64,
    /// What made this set active, e.g. `policy version 4` or
    /// `service echo moved from segment inference to quarantine`.
    pub change: String,
}

impl Deref for ActivePolicy {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl ActivePolicy {
    /// The compiled engine (its `version()` is the signed bundle's version).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Holds the active set; cheap to read, replaced whole.
pub struct PolicyStore {
    dir: PathBuf,
    db: Db,
    current: watch::Sender<Arc<ActivePolicy>>,
    sync_lock: tokio::sync::Mutex<()>,
    cache: DecisionCache,
}

impl PolicyStore {
    /// Seeds the catalog from the config and, on first start, store version 1
    /// from the policy directory; then loads the active version.
    ///
    /// # Errors
    /// [`PolicyError`]: the seed set is invalid (file and line), or the
    /// database cannot be read.
    pub async fn load(config: &Config, db: &Db) -> Result<PolicyStore, PolicyError> {
        inventory::seed_from_config(db, config).await?;
        if policy_store::active_version(db).await?.is_none() {
            let files = read_policy_dir(&config.policy_dir)?;
            let comment = format!("seeded from {}", config.policy_dir.display());
            import(db, files, None, "broker", &comment).await?;
        }
        let active = build(db, 0, "broker start".to_owned()).await?;
        let (current, _) = watch::channel(Arc::new(active));
        Ok(PolicyStore {
            dir: config.policy_dir.clone(),
            db: db.clone(),
            current,
            sync_lock: tokio::sync::Mutex::new(()),
            cache: DecisionCache::new(DECISION_CACHE_CAPACITY),
        })
    }

    /// The set to decide with right now.
    #[must_use]
    pub fn current(&self) -> Arc<ActivePolicy> {
        self.current.borrow().clone()
    }

    /// Notified with every new set (connectors' control streams and the
    /// re-evaluation of live streams listen here).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<ActivePolicy>> {
        self.current.subscribe()
    }

    /// Decides `request` with the current set, through the decision cache;
    /// returns the set that decided, for the audit event.
    #[must_use]
    pub fn verdict(&self, request: &AccessRequest<'_>) -> (Verdict, Arc<ActivePolicy>) {
        let active = self.current();
        (self.cache.verdict(&active.engine, request), active)
    }

    /// Cache hits and misses so far.
    #[must_use]
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Loads the store's active version and the catalog if either changed
    /// since the current set was built. Returns whether the set changed.
    ///
    /// # Errors
    /// The database cannot be read or the new set does not compile; the
    /// current set stays.
    pub async fn sync(&self) -> Result<bool, PolicyError> {
        let _serial = self.sync_lock.lock().await;
        let current = self.current();
        let store_version = policy_store::active_version(&self.db).await?.ok_or(PolicyError::NoActiveVersion)?;
        let catalog = inventory::catalog_version(&self.db).await?;
        if store_version == current.store_version && catalog.version == current.entity_version {
            return Ok(false);
        }
        let mut change = Vec::new();
        if store_version != current.store_version {
            change.push(format!("policy version {store_version}"));
        }
        if catalog.version != current.entity_version {
            change.push(catalog.last_change);
        }
        let active = build(&self.db, current.engine.version(), change.join("; ")).await?;
        if active.store_version != current.store_version {
            mirror(&self.dir, &active.engine.bundle().files);
        }
        tracing::info!(
            policy_version = active.store_version,
            entity_version = active.entity_version,
            bundle_version = active.engine.version(),
            change = %active.change,
            "policy set active"
        );
        self.current.send_replace(Arc::new(active));
        Ok(true)
    }

    /// Imports the policy directory as a new store version if an admin
    /// edited it (it differs from the active version), then loads the active
    /// version. Returns the active store version.
    ///
    /// # Errors
    /// The directory does not load, or the store refuses the set (file and
    /// line; audited as `policy.rejected`): the running set stays.
    pub async fn reload(&self, broker: &Broker) -> Result<u64, PolicyError> {
        let files = read_policy_dir(&self.dir);
        let files = match files {
            Ok(files) => files,
            Err(e) => {
                audit_unreadable(broker, &self.dir, &e).await;
                return Err(e.into());
            }
        };
        let active = policy_store::active(&self.db).await?;
        if active.as_ref().is_none_or(|(_, stored)| digest(stored) != digest(&files)) {
            let comment = format!("reloaded from {}", self.dir.display());
            import(&self.db, files, active.map(|(v, _)| v), "admin:reload", &comment).await?;
        }
        self.sync().await?;
        Ok(self.current().store_version)
    }
}

/// Stores `files` as a new version on top of `parent`, validated against
/// the database's catalog. Refusals are audited by the store.
async fn import(
    db: &Db,
    files: Vec<PolicyFile>,
    parent: Option<u64>,
    author: &str,
    comment: &str,
) -> Result<u64, PolicyError> {
    let (_, services) = inventory::catalog(db).await?;
    let proposal = Proposal { files: &files, parent, author, comment, services: &services, cases_dir: None };
    Ok(policy_store::apply(db, &proposal).await?.version)
}

fn digest(files: &[PolicyFile]) -> String {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    PolicyBundle { version: 0, files, services: Vec::new() }.digest()
}

async fn build(db: &Db, previous_bundle: u64, change: String) -> Result<ActivePolicy, PolicyError> {
    let (store_version, files) = policy_store::active(db).await?.ok_or(PolicyError::NoActiveVersion)?;
    let (catalog, services) = inventory::catalog(db).await?;
    let engine = Engine::new(&PolicyBundle { version: next_bundle_version(previous_bundle), files, services })?;
    Ok(ActivePolicy { engine, store_version, entity_version: catalog.version, change })
}

/// Bundle versions only grow, also across restarts (connectors refuse a
/// lower version as a rollback), so they are derived from the clock and
/// forced above the previous one. They are not the store's 1, 2, 3 ….
fn next_bundle_version(previous: u64) -> u64 {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(now_ms).unwrap_or(u64::MAX).max(previous.saturating_add(1))
}

/// Keeps the policy directory equal to the active version, so a later
/// reload imports only what an admin changed there. Best effort.
fn mirror(dir: &Path, files: &[PolicyFile]) {
    if let Err(e) = policy_store::write_policy_dir(dir, files) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not mirror the active policy version into the policy directory");
    }
}

async fn audit_unreadable(broker: &Broker, dir: &Path, error: &LoadError) {
    use crate::audit::{AuditEvent, EventKind, Outcome};
    let event = AuditEvent::new(EventKind::PolicyRejected, Outcome::Failure)
        .actor("admin:reload")
        .detail(serde_json::json!({ "error": error.to_string(), "dir": dir.display().to_string() }));
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit the refused policy reload");
    }
}

/// Follows the database until shutdown: a new active version or catalog
/// becomes the set every later decision uses (and re-decides live streams).
pub async fn follow(broker: Broker, shutdown: CancellationToken) {
    let mut failing = false;
    let mut waiter = broker.sync().waiter();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = waiter.wait() => {}
        }
        match broker.policy().sync().await {
            Ok(_) => {
                failing = false;
                broker.sync().confirmed(View::Policy);
            }
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot load the active policy set; the running set stays");
            }
            Err(_) => {}
        }
    }
}
