//! The single writer task: group commit for [`super::Audit::record`].
//!
//! Callers queue a job and wait for its oneshot. The task takes every job
//! already queued (up to [`MAX_BATCH`]), appends them in one `BEGIN IMMEDIATE`
//! transaction, commits, and only then answers each caller. SQLite's write
//! lock, taken before the chain head is read, keeps the chain linear when
//! other processes (the admin CLI) append to the same file.

use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::{AuditError, AuditEvent, append_after, head};
use crate::db::Db;

pub(super) const QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;

pub(super) struct Job {
    pub(super) event: AuditEvent,
    pub(super) at: SystemTime,
    pub(super) done: oneshot::Sender<Result<u64, AuditError>>,
}

pub(super) async fn run(db: Db, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match write_batch(&db, &batch).await {
            Ok(seqs) => {
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
}

async fn write_batch(db: &Db, batch: &[Job]) -> Result<Vec<u64>, AuditError> {
    let mut tx = db.begin_write().await?;
    let mut seqs = Vec::with_capacity(batch.len());
    let mut head = head(&mut tx).await?;
    for job in batch {
        head = append_after(&mut tx, head, &job.event, job.at).await?;
        seqs.push(u64::try_from(head.0).unwrap_or(0));
    }
    tx.commit().await?;
    Ok(seqs)
}
