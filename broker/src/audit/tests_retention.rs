//! Pruning keeps the chain verifiable; deleting a prefix without the key does not.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::checkpoint::{self, KEY_FILE};
use super::retention::{PruneError, prune};
use super::*;
use crate::db::{Db, sqlite_url};

const NEVER: CheckpointPolicy = CheckpointPolicy { every_events: u64::MAX, every: Duration::from_secs(3600) };

async fn fresh() -> (tempfile::TempDir, Db, Audit, Arc<Signer>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    let signer = Arc::new(Signer::load_or_create(&dir.path().join(KEY_FILE)).unwrap());
    let audit = Audit::with_signer(db.clone(), Some(signer.clone()), NEVER);
    (dir, db, audit, signer)
}

async fn record_n(audit: &Audit, n: u64) {
    for _ in 0..n {
        audit.record(AuditEvent::new(EventKind::SessionCreated, Outcome::Success)).await.unwrap();
    }
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Records 4 old events (checkpointed at #2), then 2 new ones; returns the cut time.
async fn old_and_new(audit: &Audit) -> i64 {
    record_n(audit, 2).await;
    audit.checkpoint().await.unwrap().unwrap();
    record_n(audit, 2).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    record_n(audit, 2).await;
    cut
}

#[tokio::test]
async fn prune_archives_then_deletes_under_a_signed_anchor_and_the_chain_still_verifies() {
    let (_dir, db, audit, signer) = fresh().await;
    let cut = old_and_new(&audit).await;
    let mut archive = Vec::new();
    let report = prune(&db, &signer, cut, Some(&mut archive)).await.unwrap();
    assert_eq!((report.anchor.unwrap().seq, report.deleted), (4, 4));
    let archived: Vec<i64> = String::from_utf8(archive)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(archived, [1, 2, 3, 4]);
    let report = verify_with(&db, Some(signer.public_key())).await.unwrap();
    assert_eq!((report.events, report.pruned_through, report.broken), (2, Some(4), None));
    assert_eq!(report.last_checkpoint.unwrap().seq, 6, "prune checkpoints the head first");
    record_n(&audit, 1).await;
    assert!(verify(&db).await.unwrap().broken.is_none());
    // Nothing older is left: a second prune with the same cut does nothing.
    assert_eq!(prune(&db, &signer, cut, None::<&mut Vec<u8>>).await.unwrap().deleted, 0);
}

#[tokio::test]
async fn the_database_allows_deletes_only_at_or_below_an_anchor() {
    let (_dir, db, audit, signer) = fresh().await;
    let cut = old_and_new(&audit).await;
    prune(&db, &signer, cut, None::<&mut Vec<u8>>).await.unwrap();
    let delete = sqlx::query("DELETE FROM audit_events WHERE seq = 5").execute(db.pool()).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn a_prefix_deleted_without_an_anchor_is_named() {
    let (_dir, db, audit, _) = fresh().await;
    old_and_new(&audit).await;
    sqlx::query("DROP TRIGGER audit_events_no_delete").execute(db.pool()).await.unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq <= 3").execute(db.pool()).await.unwrap();
    let b = verify(&db).await.unwrap().broken.unwrap();
    assert_eq!((b.seq, b.kind), (4, BreakKind::Deleted));
}

#[tokio::test]
async fn an_anchor_not_signed_by_the_key_is_named_forged() {
    let (dir, db, audit, signer) = fresh().await;
    old_and_new(&audit).await;
    let hash3 = query::recent(&db, None, 10).await.unwrap().into_iter().find(|r| r.seq == 3).unwrap().hash;
    let forger = Signer::load_or_create(&dir.path().join("forger.key")).unwrap();
    checkpoint::register_key(&db, &forger).await.unwrap();
    let anchor = forger.sign_anchor(3, &hash3, now_ms());
    sqlx::query("INSERT INTO audit_prune_anchors (seq, hash, ts_ms, signature, key_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(anchor.seq)
        .bind(&anchor.hash)
        .bind(anchor.ts_ms)
        .bind(&anchor.signature)
        .bind(&anchor.key_id)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq <= 3").execute(db.pool()).await.unwrap();
    let b = verify_with(&db, Some(signer.public_key())).await.unwrap().broken.unwrap();
    assert_eq!((b.seq, b.kind), (3, BreakKind::ForgedCheckpoint));
    assert!(b.reason.contains("prune anchor"), "{}", b.reason);
    // A checkpoint signature is not an anchor signature either.
    let (_dir2, db2, audit2, signer2) = fresh().await;
    old_and_new(&audit2).await;
    let cp = checkpoint::all(&db2).await.unwrap().remove(0);
    sqlx::query("INSERT INTO audit_prune_anchors (seq, hash, ts_ms, signature, key_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.ts_ms)
        .bind(&cp.signature)
        .bind(&cp.key_id)
        .execute(db2.pool())
        .await
        .unwrap();
    let b = verify_with(&db2, Some(signer2.public_key())).await.unwrap().broken.unwrap();
    assert_eq!(b.kind, BreakKind::ForgedCheckpoint);
}

#[tokio::test]
async fn prune_refuses_a_broken_chain() {
    let (_dir, db, audit, signer) = fresh().await;
    let cut = old_and_new(&audit).await;
    sqlx::query("DROP TRIGGER audit_events_no_update").execute(db.pool()).await.unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'failure' WHERE seq = 2").execute(db.pool()).await.unwrap();
    let err = prune(&db, &signer, cut, None::<&mut Vec<u8>>).await.unwrap_err();
    assert!(matches!(err, PruneError::Broken(Broken { seq: 2, .. })), "{err}");
    assert_eq!(query::recent(&db, None, 100).await.unwrap().len(), 6);
}

#[tokio::test]
async fn the_broker_prunes_past_the_retention_period_on_its_own_archiving_first() {
    let (dir, db, audit, _signer) = fresh().await;
    record_n(&audit, 5).await;
    let archive = dir.path().join("archive.jsonl");
    let trail = crate::config::AuditTrailConfig {
        retention: Some(Duration::from_millis(300)),
        archive: Some(archive.clone()),
        prune_interval: Duration::from_secs(1),
        ..crate::config::AuditTrailConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(retention::prune_periodically(db.clone(), audit.clone(), trail, stop.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while query::count(&db, EventKind::SessionCreated).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    record_n(&audit, 2).await;
    stop.cancel();
    task.await.unwrap();

    let archived: Vec<Value> =
        std::fs::read_to_string(&archive).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<i64> = archived.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "every pruned event is in the archive, in order");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let report = verify_with(&db, None).await.unwrap();
    assert!(report.broken.is_none(), "the chain verifies across the cut: {report:?}");
    assert_eq!((report.pruned_through, report.events), (Some(5), 2), "{report:?}");
}

#[tokio::test]
async fn after_a_prune_that_took_every_event_the_chain_goes_on_from_the_anchor() {
    let (_dir, db, audit, signer) = fresh().await;
    record_n(&audit, 3).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(prune(&db, &signer, now_ms(), None::<&mut Vec<u8>>).await.unwrap().deleted, 3);
    // The running writer, a transaction and a writer started later (a restarted broker) alike.
    assert_eq!(audit.record(AuditEvent::new(EventKind::SessionCreated, Outcome::Success)).await.unwrap(), 4);
    let mut tx = db.begin_write().await.unwrap();
    let seq = Audit::record_in(&mut tx, AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seq, 5);
    drop(audit);
    let restarted = Audit::with_signer(db.clone(), Some(signer.clone()), NEVER);
    assert_eq!(restarted.record(AuditEvent::new(EventKind::SessionCreated, Outcome::Success)).await.unwrap(), 6);
    let report = verify_with(&db, Some(signer.public_key())).await.unwrap();
    assert_eq!((report.events, report.pruned_through, report.broken.as_ref()), (3, Some(3), None), "{report:?}");
}
