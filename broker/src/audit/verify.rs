//! Walking the chain: the first row that does not link up is reported.

use futures::TryStreamExt as _;
use sqlx::Sqlite;

use super::AuditError;
use super::chain::{EventRow, GENESIS};
use super::query::{RawRow, from_raw};
use crate::db::Db;

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events read before the first broken one (all of them if intact).
    pub events: u64,
    /// The first broken link, if any.
    pub broken: Option<Broken>,
}

/// The first event at which the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The seq of the offending row.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Walks the chain from seq 1 and reports the first broken row: an edited row
/// (its hash does not match its columns), a missing row (a gap in seq), or a
/// row whose `prev_hash` does not name the row before it.
///
/// Deleting events from the end of the chain leaves a shorter chain that is
/// still intact; detecting that needs the head to be anchored elsewhere.
///
/// # Errors
/// The table could not be read.
pub async fn verify(db: &Db) -> Result<VerifyReport, AuditError> {
    let mut rows = sqlx::query_as::<Sqlite, RawRow>(
        "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
         FROM audit_events ORDER BY seq",
    )
    .fetch(db.pool());
    let mut expected_seq: i64 = 1;
    let mut prev_hash = GENESIS.to_owned();
    let mut events = 0u64;
    while let Some(raw) = rows.try_next().await? {
        let row = from_raw(raw);
        if let Some(reason) = check(&row, expected_seq, &prev_hash) {
            return Ok(VerifyReport {
                events,
                broken: Some(Broken { seq: u64::try_from(row.seq).unwrap_or(0), reason }),
            });
        }
        events += 1;
        expected_seq = row.seq + 1;
        prev_hash = row.hash;
    }
    Ok(VerifyReport { events, broken: None })
}

fn check(row: &EventRow, expected_seq: i64, prev_hash: &str) -> Option<String> {
    if row.seq != expected_seq {
        let missing = if row.seq - expected_seq == 1 {
            format!("event #{expected_seq} is missing")
        } else {
            format!("events #{expected_seq} to #{} are missing", row.seq - 1)
        };
        return Some(format!("{missing} (deleted?)"));
    }
    if row.prev_hash != prev_hash {
        let before =
            if expected_seq == 1 { "the chain's start".to_owned() } else { format!("event #{}", expected_seq - 1) };
        return Some(format!("prev_hash does not match {before} (rows deleted, reordered or replaced)"));
    }
    if row.compute_hash() != row.hash {
        return Some("hash does not match the row's contents (row edited)".to_owned());
    }
    None
}
