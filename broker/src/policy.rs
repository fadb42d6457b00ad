//! The active policy set: loaded from the policy directory, swapped
//! atomically on reload, and pushed to every connector.
//!
//! A reload that fails to parse or validate changes nothing: the running set
//! keeps deciding and the failure is audited with file and line.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_policies::{Engine, LoadError, PolicyBundle, ServiceEntry, read_policy_dir};
use serde_json::json;
use tokio::sync::watch;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::config::Config;
use crate::state::Broker;

/// A policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading, parsing or validating the Cedar files failed.
    #[error("{0}")]
    Load(#[from] LoadError),
}

/// Holds the engine every decision uses; cheap to read, replaced whole.
pub struct PolicyStore {
    dir: PathBuf,
    services: Vec<ServiceEntry>,
    current: watch::Sender<Arc<Engine>>,
    reload_lock: Mutex<()>,
}

impl PolicyStore {
    /// Loads and validates the policy directory named in the config.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file and line of the first problem.
    pub fn load(config: &Config) -> Result<PolicyStore, PolicyError> {
        let services = catalog(config);
        let engine = compile(&config.policy_dir, &services, 0)?;
        let (current, _) = watch::channel(Arc::new(engine));
        Ok(PolicyStore { dir: config.policy_dir.clone(), services, current, reload_lock: Mutex::new(()) })
    }

    /// The engine to decide with right now.
    #[must_use]
    pub fn current(&self) -> Arc<Engine> {
        self.current.borrow().clone()
    }

    /// Notified with every new engine (connectors' control streams listen here).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Engine>> {
        self.current.subscribe()
    }

    /// Re-reads the policy directory; on success the new set decides every
    /// later stream and is pushed to connectors. Audited either way.
    ///
    /// # Errors
    /// [`PolicyError`] if the new set is invalid; the running set stays.
    pub async fn reload(&self, broker: &Broker) -> Result<u64, PolicyError> {
        let result = {
            let _serial = self.reload_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = self.current().version();
            compile(&self.dir, &self.services, previous).map(|engine| {
                let version = engine.version();
                self.current.send_replace(Arc::new(engine));
                version
            })
        };
        let event = match &result {
            Ok(version) => AuditEvent::new(EventKind::PolicyActivated, Outcome::Success)
                .detail(json!({ "version": version, "dir": self.dir.display().to_string() })),
            Err(e) => AuditEvent::new(EventKind::PolicyRejected, Outcome::Failure)
                .detail(json!({ "error": e.to_string(), "dir": self.dir.display().to_string() })),
        };
        if let Err(e) = broker.audit().record(event.actor("admin")).await {
            tracing::error!(error = %e, "could not audit the policy reload");
        }
        result
    }
}

/// The services the broker knows, from its configuration.
fn catalog(config: &Config) -> Vec<ServiceEntry> {
    config
        .services
        .iter()
        .map(|s| ServiceEntry {
            name: s.name.to_string(),
            segment: s.segment.clone(),
            protocol: s.protocol.clone(),
            labels: s.labels.clone(),
        })
        .collect()
}

/// Versions only grow, also across restarts (connectors refuse a lower
/// version as a rollback), so they are derived from the clock and forced
/// above the previous one.
fn next_version(previous: u64) -> u64 {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(now_ms).unwrap_or(u64::MAX).max(previous.saturating_add(1))
}

fn compile(dir: &std::path::Path, services: &[ServiceEntry], previous: u64) -> Result<Engine, PolicyError> {
    let files = read_policy_dir(dir)?;
    let bundle = PolicyBundle { version: next_version(previous), files, services: services.to_vec() };
    Ok(Engine::new(&bundle)?)
}
