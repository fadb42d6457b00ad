//! Alerts as events: a task that follows the trail like a sink (its own
//! cursor, [`CURSOR`]) and records an alert event when a burst crosses a
//! threshold, a person signs in from a new device or address
//! ([`super::novelty`]) or a connector stays offline too long
//! ([`super::offline`]). The alert lands in the chain, so every sink streams
//! it too.
//!
//! [`Detector`] is pure: it takes events and their timestamps, keeps sliding
//! windows per key and decides; the task only feeds it and records.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{POLL, SinkError, cursor, events_after, novelty, offline, set_cursor};
use crate::audit::chain::EventRow;
use crate::audit::checkpoint::now_ms;
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::Db;

/// The alert task's cursor; `~` keeps it apart from configured sink names.
pub(super) const CURSOR: &str = "~alerts";
pub(super) const BATCH: usize = 500;

/// One burst rule: `threshold` matching events for one key within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Events needed to alert.
    pub threshold: usize,
    /// How far apart the first and last may be.
    pub window: Duration,
}

/// `login.failed` for one account or from one address: 5 within 5 minutes.
pub const LOGIN_FAILURES: Rule = Rule { threshold: 5, window: Duration::from_secs(300) };
/// `stream.denied` for one identity: 10 within 1 minute.
pub const STREAM_DENIALS: Rule = Rule { threshold: 10, window: Duration::from_secs(60) };

/// The alert kind, the key field (`account`, `address`, `identity`) and its value.
type Key = (EventKind, &'static str, String);

/// Sliding windows of `(ts_ms, seq)` per key.
#[derive(Debug, Default)]
pub struct Detector {
    windows: HashMap<Key, VecDeque<(i64, i64)>>,
}

impl Detector {
    /// Feeds one event; returns the alerts it triggers.
    pub fn observe(&mut self, row: &EventRow) -> Vec<AuditEvent> {
        let detail = serde_json::from_str::<Value>(&row.detail).unwrap_or(Value::Null);
        let mut keys: Vec<(EventKind, &'static str, Option<String>, Rule)> = Vec::new();
        match row.kind.as_str() {
            "login.failed" => {
                keys.push((EventKind::AlertLoginFailures, "account", row.subject.clone(), LOGIN_FAILURES));
                let source = detail["source"].as_str().map(str::to_owned);
                keys.push((EventKind::AlertLoginFailures, "address", source, LOGIN_FAILURES));
            }
            "stream.denied" => {
                keys.push((EventKind::AlertStreamDenials, "identity", row.actor.clone(), STREAM_DENIALS));
            }
            _ => {}
        }
        let mut alerts = Vec::new();
        for (kind, field, value, rule) in keys {
            let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
            let window = self.windows.entry((kind, field, value.clone())).or_default();
            window.push_back((row.ts_ms, row.seq));
            let oldest = row.ts_ms - i64::try_from(rule.window.as_millis()).unwrap_or(i64::MAX);
            while window.front().is_some_and(|&(ts, _)| ts < oldest) {
                window.pop_front();
            }
            if window.len() >= rule.threshold {
                let seqs: Vec<i64> = window.drain(..).map(|(_, seq)| seq).collect();
                alerts.push(alert(kind, field, &value, rule, &seqs));
            }
        }
        self.windows.retain(|_, w| !w.is_empty());
        alerts
    }
}

fn alert(kind: EventKind, field: &str, value: &str, rule: Rule, seqs: &[i64]) -> AuditEvent {
    let event = AuditEvent::new(kind, Outcome::Failure).detail(json!({
        "key": field,
        "value": value,
        "count": seqs.len(),
        "window_ms": u64::try_from(rule.window.as_millis()).unwrap_or(u64::MAX),
        "seqs": seqs,
    }));
    if field == "address" { event } else { event.subject(value) }
}

pub(super) async fn run(db: Db, audit: Audit, offline_after: Duration, shutdown: CancellationToken) {
    let mut detector = Detector::default();
    let mut seen = 0;
    let seeded = match cursor(&db, CURSOR).await {
        Ok(after) => offline::seed(&db, after, now_ms(SystemTime::now())).await,
        Err(e) => Err(e.into()),
    };
    match seeded {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(connectors = n, "audit alerts: waiting for connectors that were linked before the start")
        }
        Err(e) => tracing::warn!(error = %e, "audit alerts: cannot tell which connectors were linked before the start"),
    }
    loop {
        let stepped = step(&db, &audit, &mut detector, &mut seen, offline_after).await;
        if let Err(e) = &stepped {
            tracing::warn!(error = %e, "audit alerts: evaluation failed");
        }
        let wait = wait_after(&stepped);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long to wait before the next step. A full batch means more are
/// waiting; anything less means the task has caught up, and the next look
/// waits a poll interval, so that under steady traffic the cursor is written
/// a few times a second rather than after every few events (each write takes
/// the database's write lock, and the audit writer then waits for it).
pub(super) fn wait_after(stepped: &Result<usize, SinkError>) -> Duration {
    match stepped {
        Ok(n) => super::after_delivery(*n, BATCH),
        Err(_) => POLL * 4,
    }
}

/// `seen` is the last seq fed to the burst detector, so a batch retried
/// after a failed write is not counted twice (the database-backed rules are
/// idempotent on their own). Offline connectors are checked only once the
/// task has caught up, so a `connector.online` still unread cannot be missed.
async fn step(
    db: &Db,
    audit: &Audit,
    detector: &mut Detector,
    seen: &mut i64,
    offline_after: Duration,
) -> Result<usize, SinkError> {
    let after = cursor(db, CURSOR).await?;
    let rows = events_after(db, after, BATCH).await?;
    let Some(last) = rows.last().map(|r| r.seq) else {
        offline::overdue(db, offline_after, now_ms(SystemTime::now())).await?;
        return Ok(0);
    };
    let from = *seen;
    for row in &rows {
        if row.seq > from {
            for event in detector.observe(row) {
                tracing::warn!(kind = %event.kind, "audit alert");
                audit.record(event).await.map_err(|e| SinkError::Alert(e.to_string()))?;
            }
            *seen = row.seq;
        }
        for kind in novelty::observe(db, row).await? {
            tracing::warn!(%kind, "audit alert");
        }
        offline::observe(db, row).await?;
    }
    set_cursor(db, CURSOR, last).await?;
    if rows.len() < BATCH {
        offline::overdue(db, offline_after, now_ms(SystemTime::now())).await?;
    }
    Ok(rows.len())
}
