//! The single writer task: group commit for [`super::Audit::record`], and
//! the periodic signed checkpoints.
//!
//! Callers queue a job and wait for its oneshot. The task takes every job
//! already queued (up to [`MAX_BATCH`]), appends them in one `BEGIN IMMEDIATE`
//! transaction, commits, and only then answers each caller. SQLite's write
//! lock, taken before the chain head is read, keeps the chain linear when
//! other processes (the admin CLI) append to the same file.
//!
//! A short run of events (the common case: one stream decision while
//! nothing else is queued) skips the transaction: the task remembers the
//! head it last wrote and appends after it in one autocommit multi-row
//! `INSERT`, a single round trip to the database thread instead of four.
//! `seq` is the primary key, so if anything else appended meanwhile (a state
//! change recorded in its own transaction, another process) the insert fails
//! as a duplicate, nothing is written, and the events go the transactional
//! way after a fresh read of the head.
//!
//! On SQLite the writer keeps the connection of its last short run for the
//! next one instead of handing it back to the pool: sqlx returns a pooled
//! connection through a spawned task that pings it, a second round trip to
//! the database thread for every stream event. A SQLite connection is a file
//! handle in this process and cannot die with a server; after an error the
//! writer lets it go and takes a fresh one, and it lets go as soon as the pool
//! is closing so that [`Db::close`] does not wait on it.
//!
//! Events nobody waits on ([`super::Audit::record_soon`]: a stream that
//! ended) may linger up to [`LINGER`] for the next event, so that a client
//! opening connection after connection costs one write per connection, not
//! two. On PostgreSQL every append takes the transactional way: there an
//! insert outside the write lock could collide with another replica's locked
//! transaction and fail that transaction's own work.
//!
//! With a signer, the batch that brings [`CheckpointPolicy::every_events`]
//! events since the last checkpoint also signs its new head, in the same
//! transaction; a timer checkpoints the head every
//! [`CheckpointPolicy::every`] if it moved (events appended by other
//! processes included), and the task checkpoints once more when the last
//! [`super::Audit`] is dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::checkpoint::{self, Checkpoint, Signer};
use super::{AuditError, AuditEvent, append_after, chained_row, head};
use crate::db::{Backend, Db};

pub(super) const QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;
/// The most events one multi-row `INSERT` carries (10 parameters each).
const MAX_RUN: usize = 32;
/// How long an event nobody waits on may wait for company.
pub(super) const LINGER: Duration = Duration::from_millis(20);

/// When the writer signs a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many events recorded through this writer.
    pub every_events: u64,
    /// After this long, if the head moved.
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self { every_events: 1000, every: Duration::from_secs(60) }
    }
}

pub(super) struct Job {
    pub(super) event: AuditEvent,
    pub(super) at: SystemTime,
    /// Nobody waits on it: it may linger for [`LINGER`].
    pub(super) lazy: bool,
    pub(super) done: oneshot::Sender<Result<u64, AuditError>>,
}

pub(super) type CheckpointReply = oneshot::Sender<Result<Option<Checkpoint>, AuditError>>;

pub(super) struct Writer {
    pub(super) db: Db,
    pub(super) signer: Option<Arc<Signer>>,
    pub(super) policy: CheckpointPolicy,
}

impl Writer {
    pub(super) async fn run(self, mut jobs: mpsc::Receiver<Job>, mut requests: mpsc::Receiver<CheckpointReply>) {
        if let Some(signer) = &self.signer
            && let Err(e) = checkpoint::register_key(&self.db, signer).await
        {
            tracing::error!(error = %e, "could not record the audit signing key");
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.policy.every, self.policy.every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut since_checkpoint = 0u64;
        let mut last_head = None;
        let mut held = None;
        let closing = self.db.pool().close_event();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                () = &mut closing, if held.is_some() => held = None,
                n = jobs.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    if batch.iter().all(|job| job.lazy) {
                        let room = MAX_BATCH - batch.len();
                        let _ = tokio::time::timeout(LINGER, jobs.recv_many(&mut batch, room)).await;
                    }
                    self.commit(&mut batch, &mut since_checkpoint, (&mut last_head, &mut held)).await;
                }
                Some(reply) = requests.recv() => {
                    let _ = reply.send(self.checkpoint(&mut since_checkpoint).await);
                }
                _ = tick.tick(), if self.signer.is_some() => {
                    if let Err(e) = self.checkpoint(&mut since_checkpoint).await {
                        tracing::error!(error = %e, "could not checkpoint the audit trail");
                    }
                }
            }
        }
        // A CLI process that recorded one event may have closed the pool already.
        if self.signer.is_some() && !self.db.pool().is_closed() {
            match self.checkpoint(&mut since_checkpoint).await {
                Ok(_) => {}
                Err(AuditError::Db(e)) if matches!(*e, sqlx::Error::PoolClosed) => {}
                Err(e) => tracing::error!(error = %e, "could not checkpoint the audit trail at shutdown"),
            }
        }
    }

    /// `(last_head, held)`: the head the writer last committed and the
    /// connection it kept for the next short run.
    async fn commit(
        &self,
        batch: &mut Vec<Job>,
        since_checkpoint: &mut u64,
        (last_head, held): (&mut Option<Head>, &mut Option<PoolConnection<Any>>),
    ) {
        let sign = self
            .signer
            .as_deref()
            .filter(|_| *since_checkpoint + u64::try_from(batch.len()).unwrap_or(u64::MAX) >= self.policy.every_events);
        let written = match (sign, batch.as_slice(), last_head.take()) {
            (None, run, Some(head)) if run.len() <= MAX_RUN && self.db.backend() == Backend::Sqlite => {
                match append_run(&self.db, held, head, run).await {
                    Ok(Some(head)) => Ok(head),
                    Ok(None) => write_batch(&self.db, batch, None).await,
                    Err(e) => Err(e),
                }
            }
            _ => write_batch(&self.db, batch, sign).await,
        };
        *last_head = written.as_ref().ok().map(|(_, head)| head.clone());
        match written.map(|(seqs, _)| seqs) {
            Ok(seqs) => {
                *since_checkpoint =
                    if sign.is_some() { 0 } else { *since_checkpoint + u64::try_from(seqs.len()).unwrap_or(0) };
                for (job, seq) in batch.drain(..).zip(seqs) {
                    let _ = job.done.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "audit events could not be written");
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }

    async fn checkpoint(&self, since_checkpoint: &mut u64) -> Result<Option<Checkpoint>, AuditError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let cp = checkpoint::checkpoint_now(&self.db, signer).await?;
        *since_checkpoint = 0;
        Ok(cp)
    }
}

/// The chain head the writer last committed: `(seq, hash)`.
type Head = (i64, String);

/// Appends `run` after `head` in one multi-row `INSERT`, without a
/// transaction (one statement is atomic), on the connection in `held` (taken
/// from the pool when there is none, and kept there unless the insert
/// failed). `Ok(None)`: the head moved (the insert hit an existing `seq`),
/// nothing was written.
async fn append_run(
    db: &Db,
    held: &mut Option<PoolConnection<Any>>,
    head: Head,
    run: &[Job],
) -> Result<Option<(Vec<u64>, Head)>, AuditError> {
    let mut rows = Vec::with_capacity(run.len());
    let mut prev = head;
    for job in run {
        let row = chained_row(prev, &job.event, job.at);
        prev = (row.seq, row.hash.clone());
        rows.push(row);
    }
    let mut sql = String::from(
        "INSERT INTO audit_events (seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash) VALUES ",
    );
    for i in 0..rows.len() {
        let p = i * 10;
        let sep = if i == 0 { "" } else { ", " };
        sql.push_str(&format!(
            "{sep}(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9,
            p + 10
        ));
    }
    // Only numbered placeholders are formatted into the statement; every value is bound.
    let seqs: Vec<u64> = rows.iter().map(|r| u64::try_from(r.seq).unwrap_or(0)).collect();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        query = query
            .bind(row.seq)
            .bind(row.ts_ms)
            .bind(row.kind)
            .bind(row.outcome)
            .bind(row.actor)
            .bind(row.subject)
            .bind(row.decision_id)
            .bind(row.detail)
            .bind(row.prev_hash)
            .bind(row.hash);
    }
    let mut conn = match held.take() {
        Some(conn) => conn,
        None => db.pool().acquire().await?,
    };
    match query.execute(&mut *conn).await {
        Ok(_) => {
            *held = Some(conn);
            Ok(Some((seqs, prev)))
        }
        Err(e) if crate::db::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write_batch(db: &Db, batch: &[Job], sign: Option<&Signer>) -> Result<(Vec<u64>, Head), AuditError> {
    let mut tx = db.begin_write().await?;
    let mut seqs = Vec::with_capacity(batch.len());
    let mut head = head(&mut tx).await?;
    for job in batch {
        head = append_after(&mut tx, head, &job.event, job.at).await?;
        seqs.push(u64::try_from(head.0).unwrap_or(0));
    }
    if let Some(signer) = sign {
        checkpoint::write(&mut tx, signer, (head.0, &head.1), SystemTime::now()).await?;
    }
    tx.commit().await?;
    Ok((seqs, head))
}
