//! Walking the chain and checking it against the signed checkpoints: the
//! first thing that does not hold is reported, with what kind of damage it is.

use std::collections::HashMap;

use futures::TryStreamExt as _;
use sqlx::Any;

use super::AuditError;
use super::chain::{EventRow, GENESIS};
use super::checkpoint::{self, Checkpoint, SigningKey, key_id_of, unhex};
use super::query::{RawRow, from_raw};
use crate::db::Db;

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events read before the first broken one (all of them if intact).
    pub events: u64,
    /// The first broken link, if any.
    pub broken: Option<Broken>,
    /// Checkpoints whose signature and hash were confirmed.
    pub checkpoints: u64,
    /// The newest checkpoint, if any.
    pub last_checkpoint: Option<Checkpoint>,
    /// The public keys recorded in the database.
    pub keys: Vec<SigningKey>,
    /// Events up to this seq were pruned under a signed anchor; the chain starts after it.
    pub pruned_through: Option<u64>,
}

/// The first event at which the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The seq of the offending row (for a truncated tail: the first missing one;
    /// for a forged checkpoint: the seq it claims).
    pub seq: u64,
    /// What kind of damage.
    pub kind: BreakKind,
    /// What is wrong, in words.
    pub reason: String,
}

/// The kinds of damage [`verify`] tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// A row's hash does not match its columns.
    Edited,
    /// A gap in seq.
    Deleted,
    /// A row's `prev_hash` does not name the row before it.
    Reordered,
    /// A row does not carry the hash a signed checkpoint recorded for it:
    /// the chain was rewritten (hashes recomputed) from there on or before.
    Rewritten,
    /// Events a signed checkpoint covers are gone from the end.
    Truncated,
    /// A checkpoint's signature is invalid, or made by a key other than the trusted one.
    ForgedCheckpoint,
}

impl BreakKind {
    /// A short stable name (`edited`, `deleted`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Rewritten => "rewritten",
            Self::Truncated => "truncated",
            Self::ForgedCheckpoint => "forged-checkpoint",
        }
    }
}

/// [`verify_with`] trusting the public keys recorded in the database.
///
/// # Errors
/// The tables could not be read.
pub async fn verify(db: &Db) -> Result<VerifyReport, AuditError> {
    verify_with(db, None).await
}

/// Checks every checkpoint's signature, then walks the chain from seq 1 and
/// reports the first broken row: an edited row (its hash does not match its
/// columns), a missing row (a gap in seq), a row whose `prev_hash` does not
/// name the row before it, a row whose hash differs from a checkpoint's, or a
/// tail shorter than the newest checkpoint.
///
/// With `trusted` (a raw Ed25519 public key, e.g. from the key file or a copy
/// kept elsewhere), only checkpoints signed by that key count; otherwise the
/// keys in `audit_signing_keys` are used, which someone who can write the
/// database could replace; compare the printed key with a copy you hold.
///
/// # Errors
/// The tables could not be read.
pub async fn verify_with(db: &Db, trusted: Option<&[u8]>) -> Result<VerifyReport, AuditError> {
    let keys = checkpoint::keys(db).await?;
    let checkpoints = checkpoint::all(db).await?;
    let anchors = checkpoint::anchors(db).await?;
    let mut report =
        VerifyReport { events: 0, broken: None, checkpoints: 0, last_checkpoint: None, keys, pruned_through: None };
    let forgery = forged(&checkpoints, &report.keys, trusted, Checkpoint::signature_valid, "checkpoint")
        .or_else(|| forged(&anchors, &report.keys, trusted, Checkpoint::anchor_signature_valid, "prune anchor"));
    if let Some(broken) = forgery {
        report.broken = Some(broken);
        return Ok(report);
    }
    report.last_checkpoint = checkpoints.last().cloned();
    let (mut expected_seq, mut prev_hash) = match anchors.last() {
        Some(anchor) => {
            report.pruned_through = u64::try_from(anchor.seq).ok();
            (anchor.seq + 1, anchor.hash.clone())
        }
        None => (1, GENESIS.to_owned()),
    };
    let start = expected_seq;
    // Collected so no closure type is held across the awaits below: the
    // future stays `Send` for every lifetime (spawned tasks, axum handlers).
    let pending: Vec<&Checkpoint> = checkpoints.iter().filter(|cp| cp.seq >= start).collect();
    let mut pending = pending.into_iter().peekable();
    let mut rows = sqlx::query_as::<Any, RawRow>(
        "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
         FROM audit_events WHERE seq >= $1 ORDER BY seq",
    )
    .bind(expected_seq)
    .fetch(db.pool());
    while let Some(raw) = rows.try_next().await? {
        let row = from_raw(raw);
        let mut broken = check(&row, expected_seq, &prev_hash);
        while broken.is_none()
            && let Some(cp) = pending.next_if(|cp| cp.seq <= row.seq)
        {
            broken = against_checkpoint(&row, cp);
            report.checkpoints += 1;
        }
        if let Some((kind, reason)) = broken {
            report.broken = Some(Broken { seq: u64::try_from(row.seq).unwrap_or(0), kind, reason });
            return Ok(report);
        }
        report.events += 1;
        expected_seq = row.seq + 1;
        prev_hash = row.hash;
    }
    if let Some(cp) = checkpoints.last().filter(|cp| cp.seq >= expected_seq) {
        let reason = format!(
            "events #{expected_seq} to #{} are missing from the end (tail truncated): a checkpoint signed at {} covers #{}",
            cp.seq,
            super::export::rfc3339_ms(cp.ts_ms),
            cp.seq
        );
        report.broken =
            Some(Broken { seq: u64::try_from(expected_seq).unwrap_or(0), kind: BreakKind::Truncated, reason });
    }
    Ok(report)
}

fn forged(
    checkpoints: &[Checkpoint],
    keys: &[SigningKey],
    trusted: Option<&[u8]>,
    valid: fn(&Checkpoint, &[u8]) -> bool,
    what: &str,
) -> Option<Broken> {
    let recorded: HashMap<&str, Vec<u8>> =
        keys.iter().filter_map(|k| Some((k.key_id.as_str(), unhex(&k.public_key)?))).collect();
    let trusted_id = trusted.map(key_id_of);
    checkpoints.iter().find_map(|cp| {
        let reason = match (trusted, recorded.get(cp.key_id.as_str())) {
            (Some(key), _) if trusted_id.as_deref() == Some(cp.key_id.as_str()) => {
                (!valid(cp, key)).then(|| "its signature is invalid".to_owned())
            }
            (Some(_), _) => Some(format!("it is signed by key {}, not by the trusted key", cp.key_id)),
            (None, Some(key)) => (!valid(cp, key)).then(|| "its signature is invalid".to_owned()),
            (None, None) => Some(format!("it names key {}, which is not recorded", cp.key_id)),
        }?;
        Some(Broken {
            seq: u64::try_from(cp.seq).unwrap_or(0),
            kind: BreakKind::ForgedCheckpoint,
            reason: format!("the {what} at event #{} is forged: {reason}", cp.seq),
        })
    })
}

fn against_checkpoint(row: &EventRow, cp: &Checkpoint) -> Option<(BreakKind, String)> {
    (cp.seq != row.seq || cp.hash != row.hash).then(|| {
        (
            BreakKind::Rewritten,
            format!(
                "hash differs from the checkpoint signed at {} (the chain was rewritten up to here)",
                super::export::rfc3339_ms(cp.ts_ms)
            ),
        )
    })
}

fn check(row: &EventRow, expected_seq: i64, prev_hash: &str) -> Option<(BreakKind, String)> {
    if row.seq != expected_seq {
        let missing = if row.seq - expected_seq == 1 {
            format!("event #{expected_seq} is missing")
        } else {
            format!("events #{expected_seq} to #{} are missing", row.seq - 1)
        };
        return Some((BreakKind::Deleted, format!("{missing} (deleted?)")));
    }
    if row.prev_hash != prev_hash {
        let before =
            if expected_seq == 1 { "the chain's start".to_owned() } else { format!("event #{}", expected_seq - 1) };
        return Some((
            BreakKind::Reordered,
            format!("prev_hash does not match {before} (rows deleted, reordered or replaced)"),
        ));
    }
    if row.compute_hash() != row.hash {
        return Some((BreakKind::Edited, "hash does not match the row's contents (row edited)".to_owned()));
    }
    None
}
