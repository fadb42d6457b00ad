#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::db::{Db, sqlite_url};

async fn fresh() -> (tempfile::TempDir, Db, Audit) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    let audit = Audit::new(db.clone());
    (dir, db, audit)
}

async fn assert_intact(db: &Db, events: u64) {
    let report = verify(db).await.unwrap();
    assert_eq!((report.events, report.broken), (events, None));
}

async fn record_n(audit: &Audit, n: u64) {
    for i in 0..n {
        let event = AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).actor("tester").detail(json!({ "i": i }));
        assert_eq!(audit.record(event).await.unwrap(), i + 1);
    }
}

/// Someone with write access to the file can drop the append-only triggers; the chain must still tell.
async fn tamper(db: &Db, sql: &'static str) {
    sqlx::query("DROP TRIGGER audit_events_no_update").execute(db.pool()).await.unwrap();
    sqlx::query("DROP TRIGGER audit_events_no_delete").execute(db.pool()).await.unwrap();
    sqlx::query(sql).execute(db.pool()).await.unwrap();
}

#[tokio::test]
async fn a_fresh_chain_verifies() {
    let (_dir, db, audit) = fresh().await;
    assert_intact(&db, 0).await;
    record_n(&audit, 5).await;
    assert_intact(&db, 5).await;
    let first = query::recent(&db, None, 10).await.unwrap().pop().unwrap();
    assert_eq!(first.prev_hash, GENESIS);
}

#[tokio::test]
async fn the_database_refuses_updates_and_deletes() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 2).await;
    let update = sqlx::query("UPDATE audit_events SET outcome = 'deny' WHERE seq = 1").execute(db.pool()).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_events WHERE seq = 2").execute(db.pool()).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn an_edited_row_is_named() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 5).await;
    tamper(&db, "UPDATE audit_events SET outcome = 'deny' WHERE seq = 3").await;
    let report = verify(&db).await.unwrap();
    assert_eq!(report.events, 2);
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.reason.contains("edited"), "{}", broken.reason);
    assert_eq!(broken.kind, BreakKind::Edited);
}

#[tokio::test]
async fn an_edit_that_recomputes_the_hash_breaks_the_next_link() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 4).await;
    let mut row = query::recent(&db, None, 10).await.unwrap().into_iter().find(|r| r.seq == 2).unwrap();
    row.detail = r#"{"i":99}"#.into();
    row.hash = row.compute_hash();
    sqlx::query("DROP TRIGGER audit_events_no_update").execute(db.pool()).await.unwrap();
    sqlx::query("UPDATE audit_events SET detail = $1, hash = $2 WHERE seq = 2")
        .bind(&row.detail)
        .bind(&row.hash)
        .execute(db.pool())
        .await
        .unwrap();
    let broken = verify(&db).await.unwrap().broken.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.reason.contains("prev_hash"), "{}", broken.reason);
    assert_eq!(broken.kind, BreakKind::Reordered);
}

#[tokio::test]
async fn a_deleted_middle_row_is_named() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 5).await;
    tamper(&db, "DELETE FROM audit_events WHERE seq = 3").await;
    let report = verify(&db).await.unwrap();
    assert_eq!(report.events, 2);
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, 4);
    assert!(broken.reason.contains("#3 is missing"), "{}", broken.reason);
    assert_eq!(broken.kind, BreakKind::Deleted);
}

#[tokio::test]
async fn a_deleted_first_row_is_named() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 3).await;
    tamper(&db, "DELETE FROM audit_events WHERE seq = 1").await;
    let broken = verify(&db).await.unwrap().broken.unwrap();
    assert_eq!(broken.seq, 2);
}

#[tokio::test]
async fn concurrent_records_keep_one_valid_chain() {
    let (_dir, db, audit) = fresh().await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50u32 {
        let audit = audit.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40u32 {
                let event = AuditEvent::new(EventKind::StreamEnded, Outcome::Success).subject(format!("{t}/{i}"));
                seqs.push(audit.record(event).await.unwrap());
            }
            seqs
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>());
    assert_intact(&db, 2000).await;
}

#[tokio::test]
async fn record_in_shares_the_chain_with_record() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 2).await;
    let mut tx = db.begin_write().await.unwrap();
    let seq = Audit::record_in(&mut tx, AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seq, 3);
    let second = Audit::new(db.clone());
    assert_eq!(second.record(AuditEvent::new(EventKind::TokenRefused, Outcome::Failure)).await.unwrap(), 4);
    assert_eq!(audit.record(AuditEvent::new(EventKind::TokenRefused, Outcome::Failure)).await.unwrap(), 5);
    assert!(verify(&db).await.unwrap().broken.is_none());
}

fn ended(subject: &str) -> AuditEvent {
    AuditEvent::new(EventKind::StreamEnded, Outcome::Success).subject(subject)
}

/// A lazy event and an urgent one queued after it share one write, in order.
async fn lazy_then_urgent(audit: &Audit) -> (u64, u64) {
    let urgent = async {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        audit.record(AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).subject("next")).await
    };
    let (lazy, urgent) = tokio::join!(audit.record_soon(ended("lingering")), urgent);
    (lazy.unwrap(), urgent.unwrap())
}

#[tokio::test]
async fn an_event_nobody_waits_on_is_written_with_the_next_or_after_a_short_linger() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 1).await;
    let started = std::time::Instant::now();
    assert_eq!(audit.record_soon(ended("alone")).await.unwrap(), 2);
    assert!(started.elapsed() < writer::LINGER * 20, "a lone lazy event waited {:?}", started.elapsed());
    assert_eq!(lazy_then_urgent(&audit).await, (3, 4));
    assert_intact(&db, 4).await;
}

#[tokio::test]
async fn a_batch_after_another_writers_events_is_chained_after_them() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 2).await;
    // Another writer (another process, a transaction) appends: the head moves.
    let other = Audit::new(db.clone());
    assert_eq!(other.record(ended("elsewhere")).await.unwrap(), 3);
    assert_eq!(lazy_then_urgent(&audit).await, (4, 5));
    assert_intact(&db, 5).await;
}

#[tokio::test]
async fn closing_the_database_does_not_wait_on_the_writers_connection() {
    let (_dir, db, audit) = fresh().await;
    // The writer keeps its own connection to the file between events.
    record_n(&audit, 3).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), db.close()).await;
    assert!(closed.is_ok(), "Db::close waited on the audit writer's connection");
    // The writer is still there and says the database is gone; it does not hang.
    let event = AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).actor("tester");
    let after = tokio::time::timeout(Duration::from_secs(5), audit.record(event)).await;
    assert!(matches!(after, Ok(Err(_))), "{after:?}");
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_event() {
    let (_dir, db, audit) = fresh().await;
    let mut tx = db.begin_write().await.unwrap();
    Audit::record_in(&mut tx, AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(audit.record(AuditEvent::new(EventKind::TokenRefused, Outcome::Failure)).await.unwrap(), 1);
}

#[test]
fn kinds_have_stable_names() {
    assert_eq!(EventKind::ConnectorStreamDenied.as_str(), "connector.stream_denied");
    assert_eq!(EventKind::BrokerInitialized.as_str(), "broker.initialized");
    for kind in EventKind::ALL {
        assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
    }
    assert_eq!(Outcome::Deny.as_str(), "deny");
}

#[tokio::test]
async fn keyset_pages_are_counted_and_walk_back_to_the_newest() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 12).await;
    let other = AuditEvent::new(EventKind::PolicyActivated, Outcome::Success).actor("admin");
    audit.record(other).await.unwrap();
    let q = query::Query { kinds: vec![EventKind::StreamAllowed], limit: 5, ..query::Query::default() };
    assert_eq!(query::count_matching(&db, &q).await.unwrap(), 12, "only the matching kind counts");
    assert_eq!(query::previous_before(&db, &q, 5).await.unwrap(), None, "the first page has no newer page");

    let first = query::search(&db, &q).await.unwrap();
    let second_q = query::Query { before_seq: first.next_before, ..q.clone() };
    let second = query::search(&db, &second_q).await.unwrap();
    assert_eq!(query::count_matching(&db, &second_q).await.unwrap(), 7, "events older than page one");
    assert_eq!(query::previous_before(&db, &second_q, 5).await.unwrap(), None, "page one is the newest");

    let third_q = query::Query { before_seq: second.next_before, ..q.clone() };
    let third = query::search(&db, &third_q).await.unwrap();
    assert_eq!(third.items.len(), 2);
    let back = query::previous_before(&db, &third_q, 5).await.unwrap();
    let again = query::search(&db, &query::Query { before_seq: back, ..q.clone() }).await.unwrap();
    assert_eq!(again.items, second.items, "previous from page three is page two");
}

#[tokio::test]
async fn an_event_waits_for_a_transaction_holding_the_write_lock_and_follows_it() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 1).await;
    let mut tx = db.begin_write().await.unwrap();
    Audit::record_in(&mut tx, AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    let behind = audit.clone();
    let waiting = tokio::spawn(async move { behind.record(ended("behind the lock")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the writer did not wait for the lock: {:?}", waiting.await);
    tx.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 3);
    assert_intact(&db, 3).await;
}

#[tokio::test]
async fn a_refused_write_fails_only_its_own_events_and_the_writer_goes_on() {
    let (_dir, db, audit) = fresh().await;
    record_n(&audit, 2).await;
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_events WHEN NEW.subject = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poison refused'); END",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let refused = audit.record(ended("poison")).await.unwrap_err().to_string();
    assert!(refused.contains("poison refused"), "{refused}");
    assert_eq!(audit.record(ended("after")).await.unwrap(), 3);
    assert_intact(&db, 3).await;
}

#[tokio::test]
async fn a_sqlite_trail_is_written_even_while_every_pooled_connection_is_busy() {
    let (_dir, db, audit) = fresh().await;
    let mut held = Vec::new();
    while let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_millis(200), db.pool().acquire()).await {
        held.push(conn);
    }
    assert!(!held.is_empty());
    let recorded = tokio::time::timeout(Duration::from_secs(5), audit.record(ended("pool exhausted"))).await;
    assert_eq!(recorded.expect("a stream's event waited for a pooled connection").unwrap(), 1);
    drop(held);
    assert_intact(&db, 1).await;
}
