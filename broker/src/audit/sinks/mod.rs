//! Audit sinks: stream the trail out of the broker as it is written.
//!
//! Each `[[audit.sinks]]` entry runs one task that reads events after its
//! cursor (`audit_sink_cursors`), hands a bounded batch to its output
//! ([`webhook`] or [`syslog`]) and only then advances the cursor. A crash
//! between delivery and the cursor update re-sends that batch, so delivery is
//! at-least-once and in seq order across restarts. While the receiver is down
//! the task retries the same batch with capped exponential backoff.
//! [`alerts`] follows the trail the same way and records alert events.

pub mod alerts;
mod novelty;
mod offline;
mod syslog;
mod webhook;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sqlx::Any;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::chain::EventRow;
use super::query::{RawRow, from_raw};
use crate::audit::Audit;
use crate::config::{AuditSinkConfig, AuditSinkTarget, AuditTrailConfig};
use crate::db::{Db, unix_seconds};
use crate::state::Broker;

/// How often an idle sink looks for new events.
const POLL: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A batch could not be delivered (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Reading events or writing the cursor failed.
    #[error("audit sink database: {0}")]
    Db(#[from] sqlx::Error),
    /// The webhook request failed or was answered with an error status.
    #[error("webhook: {0}")]
    Webhook(String),
    /// The syslog connection failed.
    #[error("syslog: {0}")]
    Syslog(#[from] std::io::Error),
    /// An alert event could not be recorded.
    #[error("recording an alert: {0}")]
    Alert(String),
}

/// [`serve`] with the broker's database, trail and `[[audit.sinks]]`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_for(broker: Broker, shutdown: CancellationToken) -> anyhow::Result<&'static str> {
    let audit = &broker.config().audit;
    serve_configured(broker.db().clone(), broker.audit().clone(), audit.sinks.clone(), audit.trail.clone(), shutdown)
        .await
}

/// Runs the alert rules and every configured sink until `shutdown`; returns
/// `Ok("audit sinks")` then.
///
/// # Errors
/// A sink's CA file cannot be read or its client cannot be built.
pub async fn serve(
    db: Db,
    audit: Audit,
    sinks: Vec<AuditSinkConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<&'static str> {
    serve_configured(db, audit, sinks, AuditTrailConfig::default(), shutdown).await
}

/// [`serve`] with the `[audit]` settings: the connector-offline threshold of
/// the alerts, and the periodic prune when `retention` is set.
///
/// # Errors
/// As [`serve`].
pub async fn serve_configured(
    db: Db,
    audit: Audit,
    sinks: Vec<AuditSinkConfig>,
    trail: AuditTrailConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<&'static str> {
    let mut tasks = JoinSet::new();
    if trail.retention.is_some() {
        tasks.spawn(crate::audit::retention::prune_periodically(
            db.clone(),
            audit.clone(),
            trail.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(alerts::run(db.clone(), audit, trail.connector_offline_alert, shutdown.clone()));
    for config in sinks {
        let output = Output::new(&config).with_context(|| format!("audit sink {:?}", config.name))?;
        tasks.spawn(run_sink(db.clone(), config, output, shutdown.clone()));
    }
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok("audit sinks")
}

enum Output {
    Webhook(webhook::Webhook),
    Syslog(syslog::Syslog),
}

impl Output {
    fn new(config: &AuditSinkConfig) -> anyhow::Result<Self> {
        let tls = config.ca_file.as_deref().map(client_tls).transpose()?;
        Ok(match &config.target {
            AuditSinkTarget::Webhook { url, bearer_token } => {
                Self::Webhook(webhook::Webhook::new(url.clone(), bearer_token.clone(), tls)?)
            }
            AuditSinkTarget::Syslog { address, tls: use_tls } => {
                Self::Syslog(syslog::Syslog::new(address.clone(), if *use_tls { tls } else { None })?)
            }
        })
    }

    async fn deliver(&mut self, rows: &[EventRow]) -> Result<(), SinkError> {
        match self {
            Self::Webhook(w) => w.deliver(rows).await,
            Self::Syslog(s) => s.deliver(rows).await,
        }
    }
}

/// A rustls client config that trusts the certificates in `ca_file`.
fn client_tls(ca_file: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read_to_string(ca_file).with_context(|| format!("cannot read {}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in palisade_proto::pem::certs(&pem)? {
        roots.add(cert).with_context(|| format!("{} holds an unusable certificate", ca_file.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca_file.display());
    let config = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn run_sink(db: Db, config: AuditSinkConfig, mut output: Output, shutdown: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = match deliver_next(&db, &config, &mut output).await {
            Ok(0) => POLL,
            Ok(n) => {
                tracing::debug!(sink = %config.name, events = n, "audit events delivered");
                backoff = FIRST_BACKOFF;
                after_delivery(n, config.batch_size)
            }
            Err(e) => {
                tracing::warn!(sink = %config.name, error = %e, retry_in = ?backoff, "audit sink delivery failed");
                let wait = backoff;
                backoff = (backoff * 2).min(config.max_backoff);
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The wait after delivering `delivered` events, for the configured sinks
/// and the alert task alike: none after a full batch (more are waiting), a
/// poll interval after anything less (caught up; see `alerts::wait_after`
/// for why).
fn after_delivery(delivered: usize, batch_size: usize) -> Duration {
    if delivered >= batch_size { Duration::ZERO } else { POLL }
}

/// Delivers the next batch after the cursor; returns how many events it held.
async fn deliver_next(db: &Db, config: &AuditSinkConfig, output: &mut Output) -> Result<usize, SinkError> {
    let after = cursor(db, &config.name).await?;
    let rows = events_after(db, after, config.batch_size).await?;
    let Some(last) = rows.last().map(|r| r.seq) else { return Ok(0) };
    output.deliver(&rows).await?;
    set_cursor(db, &config.name, last).await?;
    Ok(rows.len())
}

/// The seq of the last event `sink` delivered (0 before the first).
///
/// # Errors
/// The table could not be read.
pub async fn cursor(db: &Db, sink: &str) -> Result<i64, sqlx::Error> {
    let seq = sqlx::query_scalar::<Any, i64>("SELECT last_seq FROM audit_sink_cursors WHERE sink = $1")
        .bind(sink)
        .fetch_optional(db.pool())
        .await?;
    Ok(seq.unwrap_or(0))
}

async fn set_cursor(db: &Db, sink: &str, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_sink_cursors (sink, last_seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sink) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at",
    )
    .bind(sink)
    .bind(seq)
    .bind(unix_seconds(SystemTime::now()))
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn events_after(db: &Db, after: i64, limit: usize) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, RawRow>(
        "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
         FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(from_raw).collect())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alerts;
