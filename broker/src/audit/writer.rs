//! The single writer: group commit for [`super::Audit::record`], and the
//! periodic signed checkpoints.
//!
//! Callers queue a [`Msg`] and wait for its oneshot. The writer takes every
//! event already queued (up to [`MAX_BATCH`]), appends them in one write
//! transaction, commits, and only then answers each caller. The transaction
//! holds the database's write lock before it reads the chain head, so the
//! chain stays linear when other processes (the admin CLI), other replicas
//! or the broker's own [`super::Audit::record_in`] transactions append too.
//!
//! Which writer runs depends on the database. A SQLite file gets
//! [`super::file_writer`]: a thread with a connection of its own, an intent
//! journal that makes a tunnel's `stream.allowed` durable before it is
//! chained ([`super::journal`]), and events nobody waits on left for it
//! without a wake-up ([`super::linger`]). Anything else (PostgreSQL, an
//! in-memory SQLite database) gets the task in this module, which writes
//! through the pool.
//!
//! Events nobody waits on ([`super::Audit::record_soon`]: a stream that
//! ended) may linger up to [`LINGER`] for company, so that a client opening
//! connection after connection costs fewer writes than events.
//!
//! With a signer, the batch that brings [`CheckpointPolicy::every_events`]
//! events since the last checkpoint also signs its new head, in the same
//! transaction; a timer checkpoints the head every
//! [`CheckpointPolicy::every`] if it moved (events appended by other
//! processes included), and the writer checkpoints once more when the last
//! [`super::Audit`] is dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use super::checkpoint::{self, Checkpoint, Signer};
use super::{AuditError, AuditEvent, append_after, head};
use crate::db::Db;

pub(super) const QUEUE: usize = 8192;
pub(super) const MAX_BATCH: usize = 512;
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

impl CheckpointPolicy {
    /// The signer, if the batch that takes the count since the last
    /// checkpoint to `since + batch` events must sign its head.
    pub(super) fn due<'s>(&self, signer: Option<&'s Signer>, since: u64, batch: usize) -> Option<&'s Signer> {
        signer.filter(|_| since.saturating_add(u64::try_from(batch).unwrap_or(u64::MAX)) >= self.every_events)
    }
}

/// Events since the last checkpoint once a batch of `written` events has
/// committed: none if the batch signed its head.
pub(super) fn since_after(since: u64, signed: bool, written: usize) -> u64 {
    if signed { 0 } else { since.saturating_add(u64::try_from(written).unwrap_or(u64::MAX)) }
}

/// What a writer is asked to do.
pub(super) enum Msg {
    /// Append an event.
    Event(Job),
    /// Sign the chain head now.
    Checkpoint(CheckpointReply),
}

pub(super) struct Job {
    pub(super) event: AuditEvent,
    pub(super) at: SystemTime,
    /// Nobody waits on it: it may linger for [`LINGER`].
    pub(super) lazy: bool,
    /// Already durable in the intent journal ([`super::journal`]), which learns when it is committed.
    pub(super) journaled: bool,
    pub(super) done: oneshot::Sender<Result<u64, AuditError>>,
}

pub(super) type CheckpointReply = oneshot::Sender<Result<Option<Checkpoint>, AuditError>>;

/// Moves the events already queued behind the first into `batch`, up to
/// [`MAX_BATCH`]. Stops at a checkpoint request and returns it: it is
/// answered after the events queued before it are written.
pub(super) fn gather(msgs: &flume::Receiver<Msg>, batch: &mut Vec<Job>) -> Option<CheckpointReply> {
    while batch.len() < MAX_BATCH {
        match msgs.try_recv() {
            Ok(Msg::Event(job)) => batch.push(job),
            Ok(Msg::Checkpoint(reply)) => return Some(reply),
            Err(_) => break,
        }
    }
    None
}

/// Whether every queued event is one nobody waits on: then the batch may
/// wait up to [`LINGER`] for company.
pub(super) fn lonely(batch: &[Job]) -> bool {
    batch.iter().all(|job| job.lazy)
}

/// Adds to `batch` what arrived while it lingered, and what queued behind that.
pub(super) fn after_linger(
    arrived: Option<Msg>,
    msgs: &flume::Receiver<Msg>,
    batch: &mut Vec<Job>,
) -> Option<CheckpointReply> {
    match arrived {
        Some(Msg::Event(job)) => {
            batch.push(job);
            gather(msgs, batch)
        }
        Some(Msg::Checkpoint(reply)) => Some(reply),
        None => None,
    }
}

/// Answers every job of `batch` (emptying it) with its seq, or with the error.
pub(super) fn answer(batch: &mut Vec<Job>, written: Result<Vec<u64>, AuditError>) {
    match written {
        Ok(seqs) => {
            for (job, seq) in batch.drain(..).zip(seqs) {
                let _ = job.done.send(Ok(seq));
            }
        }
        Err(e) => {
            if !batch.is_empty() {
                tracing::error!(error = %e, events = batch.len(), "audit events could not be written");
            }
            for job in batch.drain(..) {
                let _ = job.done.send(Err(e.clone()));
            }
        }
    }
}

/// The writer task, for a database reached through the pool.
pub(super) struct Writer {
    pub(super) db: Db,
    pub(super) signer: Option<Arc<Signer>>,
    pub(super) policy: CheckpointPolicy,
}

impl Writer {
    pub(super) async fn run(self, msgs: flume::Receiver<Msg>) {
        if let Some(signer) = &self.signer
            && let Err(e) = checkpoint::register_key(&self.db, signer).await
        {
            tracing::error!(error = %e, "could not record the audit signing key");
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.policy.every, self.policy.every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut since_checkpoint = 0u64;
        loop {
            tokio::select! {
                msg = msgs.recv_async() => match msg {
                    Ok(Msg::Event(job)) => {
                        batch.push(job);
                        let mut request = gather(&msgs, &mut batch);
                        if request.is_none() && lonely(&batch) {
                            let arrived = tokio::time::timeout(LINGER, msgs.recv_async()).await;
                            request = after_linger(arrived.ok().and_then(Result::ok), &msgs, &mut batch);
                        }
                        self.commit(&mut batch, &mut since_checkpoint).await;
                        if let Some(reply) = request {
                            let _ = reply.send(self.checkpoint(&mut since_checkpoint).await);
                        }
                    }
                    Ok(Msg::Checkpoint(reply)) => {
                        let _ = reply.send(self.checkpoint(&mut since_checkpoint).await);
                    }
                    Err(flume::RecvError::Disconnected) => break,
                },
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

    async fn commit(&self, batch: &mut Vec<Job>, since_checkpoint: &mut u64) {
        let sign = self.policy.due(self.signer.as_deref(), *since_checkpoint, batch.len());
        let written = write_batch(&self.db, batch, sign).await;
        if let Ok(seqs) = &written {
            *since_checkpoint = since_after(*since_checkpoint, sign.is_some(), seqs.len());
        }
        answer(batch, written);
    }

    async fn checkpoint(&self, since_checkpoint: &mut u64) -> Result<Option<Checkpoint>, AuditError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let cp = checkpoint::checkpoint_now(&self.db, signer).await?;
        *since_checkpoint = 0;
        Ok(cp)
    }
}

async fn write_batch(db: &Db, batch: &[Job], sign: Option<&Signer>) -> Result<Vec<u64>, AuditError> {
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
    Ok(seqs)
}
