//! The Palisade connector: the policy enforcement point beside the workloads.
//!
//! It listens on nothing. It dials out to the broker over QUIC (mTLS with
//! its own enrolled certificate), keeps a control stream open for policy
//! bundles and certificate renewal, and serves the tunnel streams the
//! broker opens towards it.
//!
//! The flow, in module order:
//! - [`enroll`](crate::enroll()): one-time token → key made here, certificate from the broker.
//! - `store`: key, certificate, CA and `identity.json` in the state directory.
//! - [`config`]: `connector.toml` → [`ConnectorConfig`].
//! - `link`: the QUIC connection, control stream, renewal and reconnects.
//! - `dispatch`: one tunnel stream: header → authorize → upstream → report.
//! - `authorize`: verify the caller against the CA, evaluate the policy again.
//! - `upstream`: dial the workload and splice bytes both ways.

mod authorize;
pub mod config;
mod dispatch;
mod enroll;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod link;
pub mod metrics;
mod store;
mod upstream;

#[cfg(test)]
mod testing;

use std::io::Write as _;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, ConnectorConfig, DEFAULT_BUNDLE_MAX_AGE, ServiceConfig, default_state_dir};
pub use enroll::{EnrollError, Enrolled, enroll};
pub use store::StoreError;

/// The connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The state directory holds no usable enrollment.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No usable broker address.
    #[error("broker address {addr:?}: {reason}")]
    Broker {
        /// The address that was tried.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A startup task failed.
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The local guardrail policies (`policy_dir`) do not load.
    #[error("local guardrail policies: {0}")]
    Guardrails(palisade_policies::LoadError),
    /// `[metrics] listen` could not be bound.
    #[error("cannot listen on {addr} for metrics ([metrics] listen): {source}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the connector until `shutdown` is cancelled.
///
/// # Errors
/// Only startup problems: no enrollment in the state directory, unreadable
/// key or certificate files, or no broker address. Once running, every
/// failure is logged and retried.
pub async fn run(config: ConnectorConfig, shutdown: CancellationToken) -> Result<(), ConnectorError> {
    run_with_ready(config, shutdown, None).await
}

/// [`run`], and signals `ready` once the broker's first `Welcome` has arrived.
///
/// # Errors
/// As [`run`]; `ready` is dropped unsent.
pub async fn run_with_ready(
    config: ConnectorConfig,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<()>>,
) -> Result<(), ConnectorError> {
    serve_metrics(config.metrics_listen, &shutdown).await?;
    let store = store::Store::new(config.state_dir.clone());
    let loader = store.clone();
    let identity = tokio::task::spawn_blocking(move || loader.load()).await??;
    let brokers = config.broker_addresses(&identity.record.quic_addr);
    for broker in &brokers {
        config::split_host_port(broker).map_err(|reason| ConnectorError::Broker { addr: broker.clone(), reason })?;
    }
    if config.services.is_empty() {
        tracing::warn!("no services configured: every dispatched stream will be denied");
    }
    tracing::info!(
        identity = %identity.spiffe,
        brokers = ?brokers,
        services = ?config.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "starting the connector"
    );
    let policy = match &config.policy_dir {
        Some(dir) => {
            let files = palisade_policies::read_policy_dir(dir).map_err(ConnectorError::Guardrails)?;
            let state = authorize::PolicyState::with_local(files).map_err(ConnectorError::Guardrails)?;
            tracing::info!(dir = %dir.display(), "enforcing local guardrail policies");
            state
        }
        None => authorize::PolicyState::default(),
    };
    let policy = Arc::new(policy.with_max_age(config.bundle_max_age));
    let (state, loader, trust) = (policy.clone(), store.clone(), identity.trust.clone());
    let restored = tokio::task::spawn_blocking(move || {
        link::bundle::restore(&state, &loader, &trust, std::time::SystemTime::now())
    });
    match restored.await? {
        Ok(Some(applied)) => tracing::info!(?applied, "enforcing the saved policy bundle until the broker sends one"),
        Ok(None) => tracing::info!("no saved policy bundle: denying every stream until the broker sends one"),
        Err(e) => tracing::warn!(error = %e, "saved policy bundle not used: denying until the broker sends one"),
    }
    let (services, connect_timeout): (Arc<[_]>, _) = (Arc::from(config.services), config.connect_timeout);
    let link_to = move |broker, addr| link::Link {
        store: store.clone(),
        broker,
        addr,
        services: services.clone(),
        connect_timeout,
        policy: policy.clone(),
    };
    link::replicas::run(link_to, brokers, shutdown, Arc::new(std::sync::Mutex::new(ready))).await;
    Ok(())
}

/// Binds `[metrics] listen` (before anything else, so `/healthz` answers and
/// `/readyz` says why while the broker is unreachable) and prints
/// `palisade-connector metrics=<addr>` on stdout.
async fn serve_metrics(
    listen: Option<std::net::SocketAddr>,
    shutdown: &CancellationToken,
) -> Result<(), ConnectorError> {
    let Some(addr) = listen else { return Ok(()) };
    let bound = tokio::net::TcpListener::bind(addr).await;
    let listener = bound.map_err(|source| ConnectorError::Metrics { addr, source })?;
    let local = listener.local_addr().map_err(|source| ConnectorError::Metrics { addr, source })?;
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "palisade-connector metrics={local}");
    let _ = stdout.flush();
    tokio::spawn(metrics::serve(listener, shutdown.clone()));
    Ok(())
}
