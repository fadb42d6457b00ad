//! the PostgreSQL connection dies between a state change and its
//! audit event, inside one write transaction: neither is kept, the chain
//! still verifies, and the next write goes through.

use palisade_broker::audit::{self, Audit, AuditEvent, EventKind, Outcome};
use palisade_broker::db::Db;
use palisade_tests::store::TestDatabase;

async fn count(db: &Db, sql: &'static str) -> i64 {
    sqlx::query_scalar::<sqlx::Any, i64>(sql).fetch_one(db.pool()).await.expect(sql)
}

async fn write_version(db: &Db, version: i64) -> sqlx::Transaction<'static, sqlx::Any> {
    let mut tx = db.begin_write().await.expect("a write transaction");
    sqlx::query(
        "INSERT INTO policy_versions (version, parent, author, comment, created_at, files, digest) \
         VALUES ($1, NULL, 'test', 'r-01', 0, '[]', 'x')",
    )
    .bind(version)
    .execute(&mut *tx)
    .await
    .expect("the policy write");
    let event = AuditEvent::new(EventKind::PolicyActivated, Outcome::Success).actor("test");
    Audit::record_in(&mut tx, event).await.expect("the audit write");
    tx
}

#[tokio::test]
async fn a_connection_killed_between_the_policy_write_and_its_audit_event_keeps_neither() {
    let pg = TestDatabase::create();
    let db = Db::open(pg.url()).await.expect("PostgreSQL");
    let killer = Db::open(pg.url()).await.expect("a second handle");

    let mut tx = write_version(&db, 1).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await.expect("backend pid");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(killer.pool())
        .await
        .expect("terminate the writer's backend");
    assert!(killed, "the writer's backend was terminated");
    assert!(tx.commit().await.is_err(), "a commit on a killed connection fails");

    assert_eq!(count(&killer, "SELECT COUNT(*) FROM policy_versions").await, 0, "the policy write is gone");
    assert_eq!(count(&killer, "SELECT COUNT(*) FROM audit_events").await, 0, "and so is its audit event");
    let report = audit::verify(&killer).await.expect("verify");
    assert!(report.broken.is_none(), "{report:?}");

    // The pool drops the dead connection; the next write and its event land together.
    write_version(&db, 1).await.commit().await.expect("the retried write commits");
    assert_eq!(count(&killer, "SELECT COUNT(*) FROM policy_versions").await, 1);
    assert_eq!(count(&killer, "SELECT COUNT(*) FROM audit_events").await, 1);
    assert!(audit::verify(&killer).await.expect("verify").broken.is_none());
    db.close().await;
    killer.close().await;
}
