#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use palisade_proto::id::DecisionId;
use serde_json::json;

use super::journal::{self, Journal};
use super::*;
use crate::db::{Db, sqlite_url};

fn allowed(subject: &str) -> AuditEvent {
    AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow)
        .actor("spiffe://test/machine/agent")
        .subject(subject)
        .decision(DecisionId::random())
        .detail(json!({ "policy_ids": ["allow"], "remote": "127.0.0.1:1" }))
}

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    (dir, db)
}

async fn count(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events").fetch_one(db.pool()).await.unwrap()
}

fn journal_path(db: &Db) -> PathBuf {
    Journal::path_for(db.sqlite_file().unwrap())
}

fn replay_path(db: &Db) -> PathBuf {
    let mut path = journal_path(db).into_os_string();
    path.push(".replay");
    PathBuf::from(path)
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a broker killed after writing to its journal leaves: these lines, appended.
fn left_by_a_killed_broker(db: &Db, lines: &[&[u8]]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(journal_path(db)).unwrap();
    for line in lines {
        file.write_all(line).unwrap();
    }
}

/// Drops `audit` and waits until its writer thread has let go of the journal.
async fn stopped(db: &Db, audit: Audit) {
    drop(audit);
    eventually("the journal released", || async { Journal::open(db.sqlite_file().unwrap()).unwrap().is_some() }).await;
}

async fn eventually<F, Fut>(what: &str, ok: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ok().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_durable_event_is_journaled_then_chained_and_the_journal_cut() {
    let (_dir, db) = fresh().await;
    let audit = Audit::new(db.clone());
    audit.record_durable(allowed("echo")).await.unwrap();
    eventually("the event chained", || async { count(&db).await == 1 }).await;
    eventually("the journal cut", || async { file_len(&journal_path(&db)) == 0 }).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(journal_path(&db)).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the journal is the broker's alone");
    assert_eq!(audit.record(allowed("next")).await.unwrap(), 2);
    assert!(verify(&db).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn another_process_on_the_database_gets_no_journal_and_waits_for_its_commits() {
    let (_dir, db) = fresh().await;
    let owner = Audit::new(db.clone());
    assert!(owner.journal.is_some());
    let other = Audit::new(db.clone());
    assert!(other.journal.is_none(), "the owner holds the journal's lock");
    other.record_durable(allowed("from the cli")).await.unwrap();
    assert_eq!(count(&db).await, 1, "committed when record_durable returned");
    owner.record_durable(allowed("from the broker")).await.unwrap();
    eventually("the owner's event chained", || async { count(&db).await == 2 }).await;
}

#[tokio::test]
async fn lines_left_by_a_killed_broker_are_chained_once_before_anything_else() {
    let (_dir, db) = fresh().await;
    let first = Audit::new(db.clone());
    assert_eq!(first.record(allowed("before")).await.unwrap(), 1);
    stopped(&db, first).await;

    // Killed after journaling a and b, before the chain had them.
    let (a, b, c) = (allowed("a"), allowed("b"), allowed("c"));
    let at = SystemTime::now();
    let (line_a, line_b, line_c) =
        (journal::line(&a, at).unwrap(), journal::line(&b, at).unwrap(), journal::line(&c, at).unwrap());
    left_by_a_killed_broker(&db, &[&line_a, &line_b]);
    let second = Audit::new(db.clone());
    assert_eq!(second.record(allowed("after the start")).await.unwrap(), 4, "a and b chained first");
    assert_eq!(file_len(&journal_path(&db)), 0);
    assert!(!replay_path(&db).exists(), "removed once chained");
    stopped(&db, second).await;

    // Killed after the chain had a but before the cut, with c journaled twice
    // (moved to the replay file, killed before the cut) and a torn last line.
    left_by_a_killed_broker(&db, &[&line_a, &line_c, &line_c, br#"{"ts_ms":1,"kind":"stream.allo"#]);
    let third = Audit::new(db.clone());
    assert_eq!(third.record(allowed("again")).await.unwrap(), 6, "a skipped, c chained once, the torn line dropped");
    let subjects: Vec<Option<String>> =
        sqlx::query_scalar("SELECT subject FROM audit_events ORDER BY seq").fetch_all(db.pool()).await.unwrap();
    let subjects: Vec<&str> = subjects.iter().map(|s| s.as_deref().unwrap_or("")).collect();
    assert_eq!(subjects, ["before", "a", "b", "after the start", "c", "again"]);
    let report = verify(&db).await.unwrap();
    assert_eq!((report.events, report.broken), (6, None));
}

#[tokio::test]
async fn a_durable_event_does_not_wait_for_the_commit_but_is_in_the_journal_when_it_returns() {
    let (_dir, db) = fresh().await;
    let audit = Audit::new(db.clone());
    assert_eq!(audit.record(allowed("first")).await.unwrap(), 1);
    // Another transaction holds the write lock: the chain cannot move.
    let mut tx = db.begin_write().await.unwrap();
    Audit::record_in(&mut tx, AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    let durable = tokio::time::timeout(Duration::from_secs(2), audit.record_durable(allowed("held up"))).await;
    assert!(matches!(durable, Ok(Ok(()))), "record_durable waited for the commit: {durable:?}");
    let journaled = std::fs::read_to_string(journal_path(&db)).unwrap();
    assert_eq!(journaled.lines().count(), 1, "in the journal before the chain has it: {journaled}");
    assert!(journaled.contains("held up") && journaled.ends_with('\n'));
    tx.commit().await.unwrap();
    eventually("chained after the lock", || async { count(&db).await == 3 }).await;
    eventually("the journal cut", || async { file_len(&journal_path(&db)) == 0 }).await;
    assert!(verify(&db).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn a_journaled_event_whose_commit_fails_is_tried_again_with_the_next_batch() {
    let (_dir, db) = fresh().await;
    let audit = Audit::new(db.clone());
    assert_eq!(audit.record(allowed("first")).await.unwrap(), 1);
    // Refuses every insert while the table `refusing` has a row.
    sqlx::query("CREATE TABLE refusing (x)").execute(db.pool()).await.unwrap();
    sqlx::query("INSERT INTO refusing VALUES (1)").execute(db.pool()).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_while BEFORE INSERT ON audit_events WHEN EXISTS (SELECT 1 FROM refusing) \
         BEGIN SELECT RAISE(ABORT, 'refused for now'); END",
    )
    .execute(db.pool())
    .await
    .unwrap();
    audit.record_durable(allowed("journaled")).await.unwrap();
    let refused = audit.record(allowed("waited on")).await.unwrap_err().to_string();
    assert!(refused.contains("refused for now"), "the batch failed: {refused}");
    assert_eq!(count(&db).await, 1);
    assert!(file_len(&journal_path(&db)) > 0, "kept in the journal while not chained");

    sqlx::query("DELETE FROM refusing").execute(db.pool()).await.unwrap();
    assert_eq!(audit.record(allowed("later")).await.unwrap(), 3, "the journaled event went first");
    let subjects: Vec<Option<String>> =
        sqlx::query_scalar("SELECT subject FROM audit_events ORDER BY seq").fetch_all(db.pool()).await.unwrap();
    let subjects: Vec<&str> = subjects.iter().map(|s| s.as_deref().unwrap_or("")).collect();
    assert_eq!(subjects, ["first", "journaled", "later"]);
    eventually("the journal cut", || async { file_len(&journal_path(&db)) == 0 }).await;
}

#[tokio::test]
async fn events_nobody_waits_on_are_written_together_within_the_linger_with_or_without_company() {
    let (_dir, db) = fresh().await;
    let audit = Audit::new(db.clone());
    assert_eq!(audit.record(allowed("first")).await.unwrap(), 1);
    // Just after a commit the writer looks again on its own: these are left for it.
    let started = std::time::Instant::now();
    for i in 0..5 {
        audit.record_durable(allowed(&format!("tunnel {i}"))).await.unwrap();
    }
    assert!(started.elapsed() < writer::LINGER, "record_durable waited: {:?}", started.elapsed());
    eventually("all five chained", || async { count(&db).await == 6 }).await;
    // Long after, the writer is parked: a lone event reaches it through the channel.
    tokio::time::sleep(writer::LINGER * 3).await;
    audit.record_durable(allowed("after a quiet spell")).await.unwrap();
    eventually("the lone one chained", || async { count(&db).await == 7 }).await;
    eventually("the journal cut", || async { file_len(&journal_path(&db)) == 0 }).await;
    assert!(verify(&db).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn events_left_for_the_writer_are_written_when_it_stops() {
    let (_dir, db) = fresh().await;
    let audit = Audit::new(db.clone());
    assert_eq!(audit.record(allowed("first")).await.unwrap(), 1);
    audit.record_durable(allowed("left")).await.unwrap();
    drop(audit);
    eventually("written at the stop", || async { count(&db).await == 2 }).await;
    eventually("the journal cut", || async { file_len(&journal_path(&db)) == 0 }).await;
}
