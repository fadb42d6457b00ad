//! Retention: deleting the oldest events without breaking verification.
//!
//! [`prune`] refuses a chain that does not verify, archives what it will
//! delete, then in one write transaction signs the current head as a
//! checkpoint, records a signed prune anchor (the last deleted event's seq
//! and hash, which the first kept event's `prev_hash` names) and deletes the
//! events up to it. `verify` starts the chain from the newest valid anchor;
//! deleting a prefix without the key leaves no valid anchor and is reported
//! as deleted events.

use std::io::Write;
use std::time::SystemTime;

use sqlx::Sqlite;

use super::checkpoint::{self, Checkpoint, Signer, now_ms};
use super::export::{self, ExportError, Filter, Format};
use super::{AuditError, Broken, verify_with};
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
    checkpoint::register_key(db, signer).await?;
    if let Some(broken) = verify_with(db, Some(signer.public_key())).await?.broken {
        return Err(PruneError::Broken(broken));
    }
    let through = sqlx::query_scalar::<Sqlite, Option<i64>>("SELECT MAX(seq) FROM audit_events WHERE ts_ms < ?")
        .bind(before_ms)
        .fetch_one(db.pool())
        .await?;
    let Some(through) = through else { return Ok(PruneReport { anchor: None, deleted: 0 }) };
    if let Some(out) = archive {
        export::write_rows(db, Filter { through_seq: Some(through), ..Filter::default() }, Format::Jsonl, out).await?;
    }
    let now = SystemTime::now();
    let mut tx = db.begin_write().await?;
    let head = super::head(&mut tx).await?;
    checkpoint::write(&mut tx, signer, (head.0, &head.1), now).await?;
    let hash = sqlx::query_scalar::<Sqlite, String>("SELECT hash FROM audit_events WHERE seq = ?")
        .bind(through)
        .fetch_one(&mut *tx)
        .await?;
    let anchor = signer.sign_anchor(through, &hash, now_ms(now));
    sqlx::query("INSERT INTO audit_prune_anchors (seq, hash, ts_ms, signature, key_id) VALUES (?, ?, ?, ?, ?)")
        .bind(anchor.seq)
        .bind(&anchor.hash)
        .bind(anchor.ts_ms)
        .bind(&anchor.signature)
        .bind(&anchor.key_id)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= ?").bind(through).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(PruneReport { anchor: Some(anchor), deleted: deleted.rows_affected() })
}
