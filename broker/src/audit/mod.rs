//! The audit trail: an append-only, hash-chained table every step writes to.
//!
//! [`Audit::record`] is durable when it returns; [`Audit::record_durable`]
//! too, on a SQLite file through the intent journal (module `journal`) before the
//! event is chained. Concurrent callers are
//! batched into one write transaction by a single writer (group commit),
//! so the relay can record an event per stream. [`Audit::record_in`] appends
//! inside a caller's transaction, so an event commits together with the
//! change it describes. [`verify`] walks the chain and checks the signed
//! checkpoints; see [`chain`] for the hash encoding and [`checkpoint`] for the
//! signatures. [`export`] writes the trail as JSON lines or CSV; the event
//! catalogue is `docs/audit-events.md`.

pub mod chain;
pub mod checkpoint;
mod event;
pub mod export;
mod file_writer;
mod journal;
mod linger;
pub mod query;
pub mod retention;
pub mod sinks;
mod verify;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::oneshot;

use crate::db::Db;
pub use chain::{EventRow, GENESIS};
pub use checkpoint::{Checkpoint, Signer};
pub use event::{AuditEvent, EventKind, Outcome};
pub use verify::{BreakKind, Broken, VerifyReport, verify, verify_with};
pub use writer::CheckpointPolicy;

/// The event could not be appended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The database refused the write (locked beyond the busy timeout, disk full, …).
    #[error("audit trail: database error: {0}")]
    Db(Arc<sqlx::Error>),
    /// The writer's own connection to the SQLite file failed (locked beyond
    /// the busy timeout, disk full, the file unreadable, …).
    #[error("audit trail: database error: {0}")]
    File(Arc<rusqlite::Error>),
    /// The writer is gone or the database was closed (the broker is shutting down).
    #[error("audit trail: the writer has stopped")]
    Closed,
    /// A stored row could not be read.
    #[error("audit trail: unreadable row: {0}")]
    Corrupt(String),
    /// The intent journal beside the SQLite file could not be written (disk full, read-only, …).
    #[error("audit trail: cannot write the intent journal: {0}")]
    Journal(Arc<std::io::Error>),
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(Arc::new(e))
    }
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        Self::File(Arc::new(e))
    }
}

/// Appends to the audit trail. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Audit {
    msgs: flume::Sender<writer::Msg>,
    signer: Option<Arc<Signer>>,
    /// With the SQLite writer thread: where [`Audit::record_durable`] makes events durable.
    journal: Option<Arc<journal::Journal>>,
    /// With the SQLite writer thread: where events nobody waits on are left for it.
    lingering: Option<Arc<linger::Lingering>>,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").field("queued", &self.msgs.len()).field("signer", &self.signer).finish()
    }
}

impl Audit {
    /// Starts the writer ([`Audit::with_signer`]). Must be called inside a Tokio runtime.
    ///
    /// Checkpoints are signed with the key in [`checkpoint::KEY_FILE`] beside
    /// the database file (created on first use); if that key cannot be loaded
    /// or created the error is logged and the trail is kept without
    /// checkpoints rather than refusing every event.
    #[must_use]
    pub fn new(db: Db) -> Self {
        Self::with_policy(db, CheckpointPolicy::default())
    }

    /// [`Audit::new`] with the checkpoint schedule of `[audit]` in `broker.toml`.
    #[must_use]
    pub fn configured(db: Db, trail: &crate::config::AuditTrailConfig) -> Self {
        let policy = CheckpointPolicy { every_events: trail.checkpoint_events, every: trail.checkpoint_interval };
        Self::with_policy(db, policy)
    }

    fn with_policy(db: Db, policy: CheckpointPolicy) -> Self {
        let signer = checkpoint::key_path_beside(&db).and_then(|path| match Signer::load_or_create(&path) {
            Ok(signer) => Some(Arc::new(signer)),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoints disabled");
                None
            }
        });
        Self::with_signer(db, signer, policy)
    }

    /// The checkpoint signing key, if the trail has one (pruning needs it).
    #[must_use]
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.signer.as_ref()
    }

    /// Starts the writer with an explicit signer (or none) and checkpoint
    /// policy: a thread of its own for a SQLite file, else a task.
    #[must_use]
    pub fn with_signer(db: Db, signer: Option<Arc<Signer>>, policy: CheckpointPolicy) -> Self {
        let (msgs, rx) = flume::bounded(writer::QUEUE);
        let (mut journal, lingering) = (None, Arc::new(linger::Lingering::default()));
        let on_thread = db.sqlite_file().is_some_and(|path| {
            journal = journal::Journal::for_database(path);
            let checkpoints = (signer.clone(), policy);
            let handoff = (journal.clone(), lingering.clone());
            let writer = file_writer::FileWriter::new(path.to_path_buf(), db.clone(), checkpoints, handoff);
            let spawned = writer.spawn(rx.clone());
            spawned
                .inspect_err(|e| tracing::error!(error = %e, "no audit writer thread; writing through the pool"))
                .is_ok()
        });
        if !on_thread {
            journal = None;
            tokio::spawn(writer::Writer { db, signer: signer.clone(), policy }.run(rx));
        }
        let lingering = on_thread.then_some(lingering);
        Self { msgs, signer, journal, lingering }
    }

    /// Signs the current chain head now (for a clean shutdown, or before a
    /// prune). Returns the new checkpoint, or `None` if the head was already
    /// checkpointed, the chain is empty or there is no signing key.
    ///
    /// # Errors
    /// The database refused the write, or the writer has stopped.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (done, wait) = oneshot::channel();
        self.msgs.send_async(writer::Msg::Checkpoint(done)).await.map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends an event; it is committed when this returns. Returns its seq.
    ///
    /// # Errors
    /// The database refused the write, or the writer has stopped.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.queue(event, false).await
    }

    /// Makes an event durable and has it appended: on a SQLite file, one
    /// `write` to the intent journal (`journal`) before this returns, the
    /// append to the chain right after; elsewhere, [`Audit::record`].
    ///
    /// # Errors
    /// The journal (or the database) refused the write, or the writer has stopped.
    pub async fn record_durable(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(journal) = &self.journal else { return self.record(event).await.map(drop) };
        crate::metrics::audit_event(&event);
        let at = SystemTime::now();
        journal.write(&event, at).map_err(|e| AuditError::Journal(Arc::new(e)))?;
        // Nobody waits for the chain: the journal holds the event until it is there.
        let (done, _) = oneshot::channel();
        let job = writer::Job { event, at, lazy: true, journaled: true, done };
        let Some(job) = self.leave(job) else { return Ok(()) };
        self.msgs.send_async(writer::Msg::Event(job)).await.map_err(|_| AuditError::Closed)
    }

    /// Leaves a lazy job for the writer thread without waking it; the job
    /// back if it must be sent (no writer thread, or a parked one).
    fn leave(&self, job: writer::Job) -> Option<writer::Job> {
        match &self.lingering {
            Some(lingering) => lingering.leave(job),
            None => Some(job),
        }
    }

    /// Like [`Audit::record`], for an event nothing waits on (a stream that
    /// has ended): the writer may hold it for a few milliseconds to write it
    /// together with the next event, in one database round trip.
    ///
    /// # Errors
    /// The database refused the write, or the writer has stopped.
    pub async fn record_soon(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.queue(event, true).await
    }

    async fn queue(&self, event: AuditEvent, lazy: bool) -> Result<u64, AuditError> {
        crate::metrics::audit_event(&event);
        let (done, wait) = oneshot::channel();
        let job = writer::Job { event, at: SystemTime::now(), lazy, journaled: false, done };
        let job = if lazy { self.leave(job) } else { Some(job) };
        let Some(job) = job else { return wait.await.map_err(|_| AuditError::Closed)? };
        self.msgs.send_async(writer::Msg::Event(job)).await.map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends an event inside the caller's transaction, on the same chain.
    ///
    /// The transaction must hold SQLite's write lock before it reads anything,
    /// i.e. it must come from [`Db::begin_write`]; otherwise the chain head it
    /// reads may be stale by the time it writes and the commit fails.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_in(tx: &mut Transaction<'_, Any>, event: AuditEvent) -> Result<u64, AuditError> {
        crate::metrics::audit_event(&event);
        append(tx, &event, SystemTime::now()).await
    }
}

/// The chain head `(seq, hash)`: the newest event, or the newest prune anchor
/// when a prune took every event (the next event links to the last one
/// deleted). Every driver runs the same statements.
const SELECT_HEAD: &str = "SELECT seq, hash FROM \
     (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS newest_event \
     UNION ALL SELECT seq, hash FROM \
     (SELECT seq, hash FROM audit_prune_anchors ORDER BY seq DESC LIMIT 1) AS newest_anchor \
     ORDER BY seq DESC LIMIT 1";

/// Appends one row, its columns bound in [`EventRow`]'s order.
const INSERT_EVENT: &str = "INSERT INTO audit_events \
     (seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub(crate) async fn head(conn: &mut AnyConnection) -> Result<(i64, String), sqlx::Error> {
    let head = sqlx::query_as::<Any, (i64, String)>(SELECT_HEAD).fetch_optional(conn).await?;
    Ok(head.unwrap_or_else(|| (0, GENESIS.to_owned())))
}

pub(crate) async fn append(conn: &mut AnyConnection, event: &AuditEvent, at: SystemTime) -> Result<u64, AuditError> {
    let head = head(conn).await?;
    append_after(conn, head, event, at).await.map(|(seq, _)| u64::try_from(seq).unwrap_or(0))
}

/// Appends after a chain head the caller read inside the same write
/// transaction (so a batch reads the head once), returning the new head.
pub(crate) async fn append_after(
    conn: &mut AnyConnection,
    (prev_seq, prev_hash): (i64, String),
    event: &AuditEvent,
    at: SystemTime,
) -> Result<(i64, String), AuditError> {
    let row = chained_row((prev_seq, prev_hash), event, at);
    sqlx::query(INSERT_EVENT)
        .bind(row.seq)
        .bind(row.ts_ms)
        .bind(&row.kind)
        .bind(&row.outcome)
        .bind(&row.actor)
        .bind(&row.subject)
        .bind(&row.decision_id)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(conn)
        .await?;
    Ok((row.seq, row.hash))
}

/// The row that appends `event` after `(prev_seq, prev_hash)`, hashed.
pub(crate) fn chained_row((prev_seq, prev_hash): (i64, String), event: &AuditEvent, at: SystemTime) -> EventRow {
    let mut row = EventRow {
        seq: prev_seq + 1,
        ts_ms: at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        kind: event.kind.as_str().to_owned(),
        outcome: event.outcome.as_str().to_owned(),
        actor: event.actor.clone(),
        subject: event.subject.clone(),
        decision_id: event.decision_id.map(|d| d.to_string()),
        detail: event.detail.to_string(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = row.compute_hash();
    row
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_checkpoint;
#[cfg(test)]
mod tests_export;
#[cfg(test)]
mod tests_journal;
#[cfg(test)]
mod tests_query;
#[cfg(test)]
mod tests_retention;
