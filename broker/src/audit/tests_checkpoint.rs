//! Signed checkpoints and the tampering only they reveal.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::checkpoint::{self, KEY_FILE};
use super::*;
use crate::db::{Db, sqlite_url};

const NEVER: CheckpointPolicy = CheckpointPolicy { every_events: u64::MAX, every: Duration::from_secs(3600) };

async fn fresh(policy: CheckpointPolicy) -> (tempfile::TempDir, Db, Audit, Arc<Signer>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    let signer = Arc::new(Signer::load_or_create(&dir.path().join(KEY_FILE)).unwrap());
    let audit = Audit::with_signer(db.clone(), Some(signer.clone()), policy);
    (dir, db, audit, signer)
}

async fn record_n(audit: &Audit, n: u64) {
    for i in 0..n {
        let event =
            AuditEvent::new(EventKind::LoginFailed, Outcome::Failure).subject("user/alice").detail(json!({ "i": i }));
        audit.record(event).await.unwrap();
    }
}

async fn drop_triggers(db: &Db) {
    for t in ["audit_events_no_update", "audit_events_no_delete"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}"))).execute(db.pool()).await.unwrap();
    }
}

async fn broken(db: &Db, trusted: Option<&[u8]>) -> Broken {
    verify_with(db, trusted).await.unwrap().broken.expect("tampering must be detected")
}

async fn eventually_checkpointed(db: &Db, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if checkpoint::all(db).await.unwrap().last().is_some_and(|cp| cp.seq == seq) {
            return;
        }
        assert!(Instant::now() < deadline, "no checkpoint at #{seq}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn audit_new_creates_a_private_key_beside_the_database_and_records_its_public_half() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
    let audit = Audit::new(db.clone());
    audit.record(AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    let path = dir.path().join(KEY_FILE);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let signer = Signer::load(&path).unwrap().unwrap();
    let cp = audit.checkpoint().await.unwrap().unwrap();
    assert_eq!((cp.seq, cp.key_id.as_str()), (1, signer.key_id()));
    assert!(cp.signature_valid(signer.public_key()));
    let report = verify(&db).await.unwrap();
    assert_eq!(report.keys.len(), 1);
    assert_eq!(report.keys[0].public_key, palisade_proto::enroll::hex(signer.public_key()));
    assert_eq!((report.checkpoints, report.broken), (1, None));
    // A second broker on the same data directory uses the same key.
    let again = Signer::load_or_create(&path).unwrap();
    assert_eq!(again.key_id(), signer.key_id());
}

#[tokio::test]
async fn the_writer_checkpoints_every_n_events_and_on_demand_only_when_the_head_moved() {
    let policy = CheckpointPolicy { every_events: 3, every: Duration::from_secs(3600) };
    let (_dir, db, audit, _) = fresh(policy).await;
    record_n(&audit, 7).await;
    let seqs: Vec<i64> = checkpoint::all(&db).await.unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3, 6]);
    assert_eq!(audit.checkpoint().await.unwrap().map(|c| c.seq), Some(7));
    assert_eq!(audit.checkpoint().await.unwrap(), None);
    let report = verify(&db).await.unwrap();
    assert_eq!((report.events, report.checkpoints, report.broken), (7, 3, None));
}

#[tokio::test]
async fn the_writer_checkpoints_on_a_timer_and_when_the_last_handle_is_dropped() {
    let (_dir, db, audit, _) =
        fresh(CheckpointPolicy { every_events: u64::MAX, every: Duration::from_millis(50) }).await;
    record_n(&audit, 2).await;
    eventually_checkpointed(&db, 2).await;
    let (_dir2, db2, audit2, _) = fresh(NEVER).await;
    record_n(&audit2, 4).await;
    assert!(checkpoint::all(&db2).await.unwrap().is_empty());
    drop(audit2);
    eventually_checkpointed(&db2, 4).await;
}

#[tokio::test]
async fn a_truncated_tail_after_a_checkpoint_is_named() {
    let (_dir, db, audit, signer) = fresh(NEVER).await;
    record_n(&audit, 6).await;
    audit.checkpoint().await.unwrap().unwrap();
    drop_triggers(&db).await;
    sqlx::query("DELETE FROM audit_events WHERE seq >= 4").execute(db.pool()).await.unwrap();
    let b = broken(&db, Some(signer.public_key())).await;
    assert_eq!((b.seq, b.kind), (4, BreakKind::Truncated));
    assert!(b.reason.contains("#4 to #6"), "{}", b.reason);
    assert_eq!(verify(&db).await.unwrap().events, 3);
}

#[tokio::test]
async fn events_after_the_newest_checkpoint_can_be_cut_unnoticed_which_is_why_checkpoints_are_frequent() {
    let (_dir, db, audit, _) = fresh(NEVER).await;
    record_n(&audit, 3).await;
    audit.checkpoint().await.unwrap().unwrap();
    record_n(&audit, 2).await;
    drop_triggers(&db).await;
    sqlx::query("DELETE FROM audit_events WHERE seq > 3").execute(db.pool()).await.unwrap();
    let report = verify(&db).await.unwrap();
    assert_eq!((report.events, report.broken), (3, None));
}

#[tokio::test]
async fn a_chain_rewritten_with_recomputed_hashes_is_caught_by_the_checkpoint() {
    let (_dir, db, audit, signer) = fresh(NEVER).await;
    record_n(&audit, 5).await;
    audit.checkpoint().await.unwrap().unwrap();
    drop_triggers(&db).await;
    // Edit event 3 and recompute every hash after it: the chain itself links up.
    let mut rows = query::recent(&db, None, 10).await.unwrap();
    rows.reverse();
    let mut prev = rows[1].hash.clone();
    for row in &mut rows[2..] {
        if row.seq == 3 {
            row.outcome = "success".into();
        }
        row.prev_hash = prev;
        row.hash = row.compute_hash();
        prev = row.hash.clone();
        sqlx::query("UPDATE audit_events SET outcome = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&row.outcome)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(row.seq)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let b = broken(&db, Some(signer.public_key())).await;
    assert_eq!((b.seq, b.kind), (5, BreakKind::Rewritten));
}

#[tokio::test]
async fn a_reordered_row_is_named() {
    let (_dir, db, audit, _) = fresh(NEVER).await;
    record_n(&audit, 4).await;
    drop_triggers(&db).await;
    for sql in [
        "UPDATE audit_events SET seq = -2 WHERE seq = 2",
        "UPDATE audit_events SET seq = 2 WHERE seq = 3",
        "UPDATE audit_events SET seq = 3 WHERE seq = -2",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    let b = verify(&db).await.unwrap().broken.unwrap();
    assert_eq!((b.seq, b.kind), (2, BreakKind::Reordered));
}

#[tokio::test]
async fn a_checkpoint_with_a_bad_signature_is_named_forged() {
    let (_dir, db, audit, signer) = fresh(NEVER).await;
    record_n(&audit, 3).await;
    let mut cp = audit.checkpoint().await.unwrap().unwrap();
    drop_triggers(&db).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 3").execute(db.pool()).await.unwrap();
    // The attacker cut event 3 and moves the checkpoint back without the key.
    cp.seq = 2;
    cp.hash = query::recent(&db, None, 1).await.unwrap()[0].hash.clone();
    sqlx::query("DROP TRIGGER audit_checkpoints_no_delete").execute(db.pool()).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(db.pool()).await.unwrap();
    sqlx::query("INSERT INTO audit_checkpoints (seq, hash, ts_ms, signature, key_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.ts_ms)
        .bind(&cp.signature)
        .bind(&cp.key_id)
        .execute(db.pool())
        .await
        .unwrap();
    for trusted in [None, Some(signer.public_key())] {
        let b = broken(&db, trusted).await;
        assert_eq!((b.seq, b.kind), (2, BreakKind::ForgedCheckpoint));
        assert!(b.reason.contains("signature is invalid"), "{}", b.reason);
    }
}

#[tokio::test]
async fn a_checkpoint_signed_by_the_attackers_own_key_fails_against_the_trusted_key() {
    let (dir, db, audit, signer) = fresh(NEVER).await;
    record_n(&audit, 3).await;
    audit.checkpoint().await.unwrap().unwrap();
    drop_triggers(&db).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 3").execute(db.pool()).await.unwrap();
    sqlx::query("DROP TRIGGER audit_checkpoints_no_delete").execute(db.pool()).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(db.pool()).await.unwrap();
    let forger = Signer::load_or_create(&dir.path().join("forger.key")).unwrap();
    checkpoint::register_key(&db, &forger).await.unwrap();
    checkpoint::checkpoint_now(&db, &forger).await.unwrap().unwrap();
    let b = broken(&db, Some(signer.public_key())).await;
    assert_eq!((b.seq, b.kind), (2, BreakKind::ForgedCheckpoint));
    assert!(b.reason.contains(forger.key_id()), "{}", b.reason);
}

#[test]
fn the_signature_covers_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&dir.path().join(KEY_FILE)).unwrap();
    let cp = signer.sign(7, GENESIS, 1_700_000_000_000);
    assert!(cp.signature_valid(signer.public_key()));
    type Edit = Box<dyn Fn(&mut Checkpoint)>;
    let edits: Vec<Edit> = vec![
        Box::new(|c| c.seq += 1),
        Box::new(|c| c.hash = "1".repeat(64)),
        Box::new(|c| c.ts_ms += 1),
        Box::new(|c| c.key_id = "0".repeat(32)),
        Box::new(|c| c.signature = "zz".into()),
    ];
    for edit in edits {
        let mut c = cp.clone();
        edit(&mut c);
        assert!(!c.signature_valid(signer.public_key()));
    }
}

#[test]
fn a_corrupt_key_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEY_FILE);
    std::fs::write(&path, "not a key").unwrap();
    assert!(matches!(Signer::load_or_create(&path), Err(checkpoint::KeyError::Invalid(_))));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
}
