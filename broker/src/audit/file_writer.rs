//! The writer for a SQLite file: a thread with a connection of its own.
//!
//! A `stream.allowed` event must be durable before the stream carries a byte,
//! so every new tunnel waits for one append. Through the pool that append was
//! a relay: the caller's task to the writer task, to the pooled connection's
//! worker thread and back, each leg a thread wake-up, and it was most of what
//! a new connection waited for in the broker. This thread owns a `rusqlite`
//! connection to the same file (the same bundled SQLite library sqlx links)
//! and writes itself: the caller's job wakes it, and its answer wakes the
//! caller.
//!
//! It keeps the pool's settings ([`crate::db::SQLITE_PRAGMAS`]) and the
//! writer's rules ([`super::writer`]): every queued event in one
//! `BEGIN IMMEDIATE` transaction that reads the chain head under the write
//! lock, lazy events lingering for company, checkpoints in the batch that is
//! due, on a timer, on request and when the last [`super::Audit`] is dropped.
//! After [`Db::close`] it writes nothing and answers every event with
//! [`AuditError::Closed`]. After any error it closes its connection and opens
//! a fresh one for the next batch, so a failed `COMMIT` never leaves it
//! inside a transaction.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::checkpoint::{self, Checkpoint, Signer};
use super::journal::Journal;
use super::linger::Lingering;
use super::writer::{CheckpointPolicy, Job, LINGER, Msg, answer, gather, since_after};
use super::{AuditError, GENESIS, INSERT_EVENT, SELECT_HEAD, chained_row};
use crate::db::{Db, SQLITE_PRAGMAS};

/// The writer thread's state.
pub(super) struct FileWriter {
    path: PathBuf,
    /// The pool: the writer stops writing once it is closed.
    db: Db,
    signer: Option<Arc<Signer>>,
    policy: CheckpointPolicy,
    /// Kept between batches; `None` after an error until the next batch opens one.
    conn: Option<Connection>,
    since_checkpoint: u64,
    /// Where [`super::Audit::record_durable`] made events durable before they reach this thread.
    journal: Option<Arc<Journal>>,
    /// Journaled events whose commit failed, for the next batch.
    retry: Vec<Job>,
    /// Events nobody waits on, left without waking this thread ([`super::linger`]).
    lingering: Arc<Lingering>,
    /// After a commit, until when events left here need no wake-up.
    quiet_until: Option<Instant>,
}

/// Closes [`Lingering`] when the thread ends, however it ends.
struct CloseOnExit(Arc<Lingering>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl FileWriter {
    pub(super) fn new(
        path: PathBuf,
        db: Db,
        (signer, policy): (Option<Arc<Signer>>, CheckpointPolicy),
        (journal, lingering): (Option<Arc<Journal>>, Arc<Lingering>),
    ) -> Self {
        let retry = Vec::new();
        Self { path, db, signer, policy, conn: None, since_checkpoint: 0, journal, retry, lingering, quiet_until: None }
    }

    /// Starts [`FileWriter::run`] on a thread of its own.
    pub(super) fn spawn(self, msgs: flume::Receiver<Msg>) -> std::io::Result<()> {
        std::thread::Builder::new().name("palisade-audit".into()).spawn(move || self.run(&msgs)).map(drop)
    }

    /// Serves `msgs` until every sender is gone.
    fn run(mut self, msgs: &flume::Receiver<Msg>) {
        let _close = CloseOnExit(self.lingering.clone());
        if let Some(journal) = self.journal.clone() {
            journal.replay(|events| self.replay(events));
        }
        if let Err(e) = self.register_key() {
            tracing::error!(error = %e, "could not record the audit signing key");
        }
        let mut next_tick = Instant::now() + self.policy.every;
        let mut batch = Vec::with_capacity(super::writer::MAX_BATCH);
        loop {
            let msg = self.wait(msgs, next_tick);
            self.lingering.unpark();
            match msg {
                // Nobody waits on it: it lingers with those left here.
                Ok(Msg::Event(job)) if job.lazy => self.lingering.keep(job),
                Ok(Msg::Event(job)) => {
                    batch.append(&mut self.retry);
                    self.lingering.take_into(&mut batch);
                    batch.push(job);
                    let request = gather(msgs, &mut batch);
                    self.commit(&mut batch);
                    if let Some(reply) = request {
                        let _ = reply.send(self.checkpoint());
                    }
                }
                Ok(Msg::Checkpoint(reply)) => {
                    let _ = reply.send(self.checkpoint());
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.write_lingering(&mut batch);
                    if self.signer.is_some() && Instant::now() >= next_tick {
                        if let Err(e) = self.checkpoint() {
                            tracing::error!(error = %e, "could not checkpoint the audit trail");
                        }
                        next_tick = Instant::now() + self.policy.every;
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.write_lingering(&mut batch);
        match self.checkpoint() {
            Ok(_) | Err(AuditError::Closed) => {}
            Err(e) => tracing::error!(error = %e, "could not checkpoint the audit trail at shutdown"),
        }
    }

    /// The next message. While events linger, or just after a commit (more
    /// may follow), it waits until the first deadline (the checkpoint
    /// timer's too); otherwise it parks, so that the next event left for it
    /// comes through the channel, and waits for the timer or for ever.
    fn wait(&mut self, msgs: &flume::Receiver<Msg>, next_tick: Instant) -> Result<Msg, flume::RecvTimeoutError> {
        let tick = self.signer.as_ref().map(|_| next_tick);
        loop {
            self.quiet_until = self.quiet_until.filter(|until| *until > Instant::now());
            if let Some(soon) = [self.lingering.due(LINGER), self.quiet_until].into_iter().flatten().min() {
                return msgs.recv_deadline(tick.map_or(soon, |tick| tick.min(soon)));
            }
            if self.lingering.park_if_empty() {
                return match tick {
                    Some(tick) => msgs.recv_deadline(tick),
                    None => msgs.recv().map_err(|_| flume::RecvTimeoutError::Disconnected),
                };
            }
        }
    }

    /// Writes what lingers (and journaled events to try again), if anything.
    fn write_lingering(&mut self, batch: &mut Vec<Job>) {
        batch.append(&mut self.retry);
        self.lingering.take_into(batch);
        if !batch.is_empty() {
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: &mut Vec<Job>) {
        let signer = self.signer.clone();
        let sign = self.policy.due(signer.as_deref(), self.since_checkpoint, batch.len());
        let written = self.write(|conn| {
            let (seqs, head) = append(conn, batch)?;
            if let Some(signer) = sign {
                insert_checkpoint(conn, signer, &head)?;
            }
            Ok(seqs)
        });
        match &written {
            Ok(seqs) => {
                // More events nobody waits on may follow: they need not wake this thread.
                self.quiet_until = Some(Instant::now() + LINGER);
                self.since_checkpoint = since_after(self.since_checkpoint, sign.is_some(), seqs.len());
                let journaled = batch.iter().filter(|job| job.journaled).count();
                if let Some(journal) = self.journal.as_ref().filter(|_| journaled > 0) {
                    journal.folded(u64::try_from(journaled).unwrap_or(u64::MAX));
                }
            }
            // A journaled event is durable and its stream went on: it is not
            // failed but tried again with the next batch or checkpoint timer
            // (and chained from the journal at the next start if the broker
            // stops first).
            Err(e) => {
                self.retry.extend(batch.extract_if(.., |job| job.journaled));
                if !self.retry.is_empty() {
                    tracing::error!(error = %e, journaled = self.retry.len(), "audit events could not be chained yet; they are durable in the journal and tried again");
                }
                // Bounded: the oldest stay in the journal alone, chained at the next start.
                let excess = self.retry.len().saturating_sub(super::writer::QUEUE);
                if excess > 0 {
                    self.retry.drain(..excess);
                    tracing::error!(
                        events = excess,
                        "the audit trail cannot be written: journaled events kept for the next start"
                    );
                }
            }
        }
        answer(batch, written);
    }

    /// Chains the events an earlier run left in the intent journal, except
    /// those the trail already has; `true` once they are committed.
    fn replay(&mut self, events: Vec<(super::AuditEvent, SystemTime)>) -> bool {
        let total = events.len();
        let chained = self.write(|conn| {
            let mut added = 0;
            // One at a time, so that a line left twice is chained once.
            for (event, at) in events {
                if !already_chained(conn, &event, at)? {
                    let (done, _) = tokio::sync::oneshot::channel();
                    append(conn, &[Job { event, at, lazy: false, journaled: false, done }])?;
                    added += 1;
                }
            }
            Ok(added)
        });
        match chained {
            Ok(added) => {
                tracing::info!(added, already = total - added, "chained the audit intent journal left by the last run");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not chain the audit intent journal; it is kept for the next start");
                false
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        let Some(signer) = self.signer.clone() else { return Ok(None) };
        let cp = self.write(|conn| {
            let head = read_head(conn)?;
            insert_checkpoint(conn, &signer, &head)
        })?;
        self.since_checkpoint = 0;
        Ok(cp)
    }

    fn register_key(&mut self) -> Result<(), AuditError> {
        let Some(signer) = self.signer.clone() else { return Ok(()) };
        let key_id = signer.key_id().to_owned();
        let public_key = palisade_proto::enroll::hex(signer.public_key());
        let created_ms = checkpoint::now_ms(SystemTime::now());
        self.write(|conn| {
            conn.execute(checkpoint::INSERT_KEY, params![key_id, checkpoint::ALGORITHM, public_key, created_ms])?;
            Ok(())
        })
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction and commits it. Any
    /// error lets the connection go, which rolls back what it had begun.
    fn write<T>(&mut self, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, AuditError> {
        if self.db.pool().is_closed() {
            self.conn = None;
            return Err(AuditError::Closed);
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => open(&self.path)?,
        };
        let value = in_transaction(&conn, work)?;
        self.conn = Some(conn);
        Ok(value)
    }
}

/// `BEGIN IMMEDIATE`, `work`, `COMMIT`: every statement prepared once per
/// connection, as the pool's driver does.
fn in_transaction<T>(conn: &Connection, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let value = work(conn)?;
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(value)
}

/// Opens the database file with the pool's settings. The file exists: the
/// pool created it and ran the migrations.
fn open(path: &std::path::Path) -> Result<Connection, AuditError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    for pragma in SQLITE_PRAGMAS {
        conn.execute_batch(pragma)?;
    }
    Ok(conn)
}

/// The chain head `(seq, hash)`, read inside the write transaction.
fn read_head(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let head = conn.prepare_cached(SELECT_HEAD)?.query_row([], |row| Ok((row.get(0)?, row.get(1)?))).optional()?;
    Ok(head.unwrap_or_else(|| (0, GENESIS.to_owned())))
}

/// Appends `batch` after the head, returning each event's seq and the new head.
fn append(conn: &Connection, batch: &[Job]) -> rusqlite::Result<(Vec<u64>, (i64, String))> {
    let mut head = read_head(conn)?;
    let mut insert = conn.prepare_cached(INSERT_EVENT)?;
    let mut seqs = Vec::with_capacity(batch.len());
    for job in batch {
        let row = chained_row(head, &job.event, job.at);
        insert.execute(params![
            row.seq,
            row.ts_ms,
            row.kind,
            row.outcome,
            row.actor,
            row.subject,
            row.decision_id,
            row.detail,
            row.prev_hash,
            row.hash
        ])?;
        seqs.push(u64::try_from(row.seq).unwrap_or(0));
        head = (row.seq, row.hash);
    }
    Ok((seqs, head))
}

/// Whether the trail already holds `event` as journaled at `at` (same kind,
/// time, decision, actor and subject).
fn already_chained(conn: &Connection, event: &super::AuditEvent, at: SystemTime) -> rusqlite::Result<bool> {
    let row = chained_row((0, String::new()), event, at);
    let mut find = conn.prepare_cached(
        "SELECT 1 FROM audit_events WHERE kind = ?1 AND ts_ms = ?2 AND decision_id IS ?3 \
         AND actor IS ?4 AND subject IS ?5 LIMIT 1",
    )?;
    find.exists(params![row.kind, row.ts_ms, row.decision_id, row.actor, row.subject])
}

/// Signs and stores `head` unless it is empty or already checkpointed.
fn insert_checkpoint(conn: &Connection, signer: &Signer, head: &(i64, String)) -> rusqlite::Result<Option<Checkpoint>> {
    if head.0 == 0 {
        return Ok(None);
    }
    let cp = signer.sign(head.0, &head.1, checkpoint::now_ms(SystemTime::now()));
    let inserted = conn.prepare_cached(checkpoint::INSERT_CHECKPOINT)?.execute(params![
        cp.seq,
        cp.hash,
        cp.ts_ms,
        cp.signature,
        cp.key_id
    ])?;
    Ok((inserted == 1).then_some(cp))
}
