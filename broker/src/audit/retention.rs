//! Retention: deleting the oldest events without breaking verification.
//!
//! [`prune`] refuses a chain that does not verify, archives what it will
//! delete, then in one write transaction signs the current head as a
//! checkpoint, records a signed prune anchor (the last deleted event's seq
//! and hash, which the first kept event's `prev_hash` names) and deletes the
//! events up to it. `verify` starts the chain from the newest valid anchor;
//! deleting a prefix without the key leaves no valid anchor and is reported
//! as deleted events.
//!
//! [`prune_periodically`] runs [`prune`] inside the broker every
//! `audit.prune_interval` with the cut at `now - audit.retention`, appending
//! to `audit.archive` first when it is set.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use sqlx::Any;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint, Signer, now_ms};
use super::export::{self, ExportError, Filter, Format};
use super::{Audit, AuditError, Broken, verify_with};
use crate::config::AuditTrailConfig;
use crate::db::Db;

/// What [`prune`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneReport {
    /// The anchor: events up to its seq were deleted. `None` if nothing was old enough.
    pub anchor: Option<Checkpoint>,
    /// How many events were deleted.
    pub deleted: u64,
}

/// Pruning refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The chain does not verify; deleting would destroy the evidence.
    #[error("the audit chain is broken at event #{}: {}; refusing to prune", .0.seq, .0.reason)]
    Broken(Broken),
    /// Reading the trail or writing the archive failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The database refused.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<sqlx::Error> for PruneError {
    fn from(e: sqlx::Error) -> Self {
        Self::Audit(e.into())
    }
}

/// Deletes every event up to the newest one recorded before `before_ms`,
/// first writing them as JSON lines to `archive` if given.
///
/// # Errors
/// The chain does not verify against `signer`'s key, or a database or archive error.
pub async fn prune<W: Write + ?Sized>(
    db: &Db,
    signer: &Signer,
    before_ms: i64,
    archive: Option<&mut W>,
) -> Result<PruneReport, PruneError> {
    let Some(through) = last_to_prune(db, signer, before_ms).await? else {
        return Ok(PruneReport { anchor: None, deleted: 0 });
    };
    if let Some(out) = archive {
        export::write_rows(db, Filter { through_seq: Some(through), ..Filter::default() }, Format::Jsonl, out).await?;
    }
    cut(db, signer, through).await
}

/// Verifies the chain, then finds the newest event recorded before `before_ms`.
async fn last_to_prune(db: &Db, signer: &Signer, before_ms: i64) -> Result<Option<i64>, PruneError> {
    checkpoint::register_key(db, signer).await?;
    if let Some(broken) = verify_with(db, Some(signer.public_key())).await?.broken {
        return Err(PruneError::Broken(broken));
    }
    let through = sqlx::query_scalar::<Any, Option<i64>>("SELECT MAX(seq) FROM audit_events WHERE ts_ms < $1")
        .bind(before_ms)
        .fetch_one(db.pool())
        .await?;
    Ok(through)
}

/// Checkpoints the head, anchors at `through` and deletes up to it, in one transaction.
async fn cut(db: &Db, signer: &Signer, through: i64) -> Result<PruneReport, PruneError> {
    let now = SystemTime::now();
    let mut tx = db.begin_write().await?;
    let head = super::head(&mut tx).await?;
    checkpoint::write(&mut tx, signer, (head.0, &head.1), now).await?;
    let hash = sqlx::query_scalar::<Any, String>("SELECT hash FROM audit_events WHERE seq = $1")
        .bind(through)
        .fetch_one(&mut *tx)
        .await?;
    let anchor = signer.sign_anchor(through, &hash, now_ms(now));
    sqlx::query("INSERT INTO audit_prune_anchors (seq, hash, ts_ms, signature, key_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(anchor.seq)
        .bind(&anchor.hash)
        .bind(anchor.ts_ms)
        .bind(&anchor.signature)
        .bind(&anchor.key_id)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= $1").bind(through).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(PruneReport { anchor: Some(anchor), deleted: deleted.rows_affected() })
}

/// Prunes every `trail.prune_interval` (first right away) what is older than
/// `trail.retention`, until `shutdown`. A failed prune is logged and retried
/// at the next interval; nothing is deleted without its archive written.
pub async fn prune_periodically(db: Db, audit: Audit, trail: AuditTrailConfig, shutdown: CancellationToken) {
    let Some(retention) = trail.retention else { return };
    let Some(signer) = audit.signer().cloned() else {
        return tracing::error!("audit retention is set but there is no checkpoint signing key: not pruning");
    };
    loop {
        let cut = now_ms(SystemTime::now()) - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match prune_once(&db, &signer, cut, trail.archive.as_deref()).await {
            Ok(PruneReport { deleted: 0, .. }) => {}
            Ok(report) => tracing::info!(deleted = report.deleted, "audit trail pruned past the retention period"),
            Err(e) => tracing::error!(error = %e, "audit retention: prune failed; retrying at the next interval"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(trail.prune_interval.max(Duration::from_secs(1))) => {}
        }
    }
}

/// [`prune`], with the archive on disk (fsync) before anything is deleted.
async fn prune_once(
    db: &Db,
    signer: &Signer,
    before_ms: i64,
    archive: Option<&Path>,
) -> Result<PruneReport, PruneError> {
    let Some(through) = last_to_prune(db, signer, before_ms).await? else {
        return Ok(PruneReport { anchor: None, deleted: 0 });
    };
    if let Some(path) = archive {
        let io = |e| PruneError::Export(ExportError::Io(e));
        let mut file = open_archive(path).map_err(io)?;
        let filter = Filter { through_seq: Some(through), ..Filter::default() };
        export::write_rows(db, filter, Format::Jsonl, &mut std::io::BufWriter::new(&mut file)).await?;
        file.sync_all().map_err(io)?;
    }
    cut(db, signer, through).await
}

/// Opens the archive for appending, created with mode 0600.
fn open_archive(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
