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
use super::writer::{CheckpointPolicy, Job, LINGER, Msg, after_linger, answer, gather, lonely, since_after};
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
}

impl FileWriter {
    pub(super) fn new(path: PathBuf, db: Db, signer: Option<Arc<Signer>>, policy: CheckpointPolicy) -> Self {
        Self { path, db, signer, policy, conn: None, since_checkpoint: 0 }
    }

    /// Starts [`FileWriter::run`] on a thread of its own.
    pub(super) fn spawn(self, msgs: flume::Receiver<Msg>) -> std::io::Result<()> {
        std::thread::Builder::new().name("palisade-audit".into()).spawn(move || self.run(&msgs)).map(drop)
    }

    /// Serves `msgs` until every sender is gone.
    fn run(mut self, msgs: &flume::Receiver<Msg>) {
        if let Err(e) = self.register_key() {
            tracing::error!(error = %e, "could not record the audit signing key");
        }
        let mut next_tick = Instant::now() + self.policy.every;
        let mut batch = Vec::with_capacity(super::writer::MAX_BATCH);
        loop {
            let msg = match self.signer {
                Some(_) => msgs.recv_deadline(next_tick),
                None => msgs.recv().map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Event(job)) => {
                    batch.push(job);
                    let mut request = gather(msgs, &mut batch);
                    if request.is_none() && lonely(&batch) {
                        request = after_linger(msgs.recv_timeout(LINGER).ok(), msgs, &mut batch);
                    }
                    self.commit(&mut batch);
                    if let Some(reply) = request {
                        let _ = reply.send(self.checkpoint());
                    }
                }
                Ok(Msg::Checkpoint(reply)) => {
                    let _ = reply.send(self.checkpoint());
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "could not checkpoint the audit trail");
                    }
                    next_tick = Instant::now() + self.policy.every;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        match self.checkpoint() {
            Ok(_) | Err(AuditError::Closed) => {}
            Err(e) => tracing::error!(error = %e, "could not checkpoint the audit trail at shutdown"),
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
        if let Ok(seqs) = &written {
            self.since_checkpoint = since_after(self.since_checkpoint, sign.is_some(), seqs.len());
        }
        answer(batch, written);
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
