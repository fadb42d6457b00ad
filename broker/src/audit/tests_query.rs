//! The console's query API: filters, keyset pagination, the login trail.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::query::{Query, login_trail, search};
use super::*;
use crate::db::{Db, sqlite_url};

const ALICE: &str = "9b2f0c1e-alice";
const AGENT: &str = "4d1a-agent";

async fn populated() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let alice = format!("spiffe://corp/user/{ALICE}");
    let agent = format!("spiffe://corp/machine/{AGENT}");
    let events = [
        AuditEvent::new(EventKind::LoginFailed, Outcome::Failure).subject(format!("user/{ALICE}")).detail(
            json!({ "step": "webauthn", "reason": "bad_signature", "source": "192.0.2.1", "user_agent": "UA-1" }),
        ),
        AuditEvent::new(EventKind::LoginSucceeded, Outcome::Success)
            .subject(format!("user/{ALICE}"))
            .detail(json!({ "step": "oidc", "idp": "https://idp", "source": "192.0.2.1" })),
        AuditEvent::new(EventKind::SessionCreated, Outcome::Success).actor(format!("user/{ALICE}")).subject("s-1").detail(
            json!({ "auth_methods": ["oidc", "webauthn"], "source": "192.0.2.1", "user_agent": "UA-1", "via": "browser" }),
        ),
        AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).actor(&alice).subject("llm"),
        AuditEvent::new(EventKind::StreamDenied, Outcome::Deny).actor(&alice).subject("vectors"),
        AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).actor(&agent).subject("llm"),
        AuditEvent::new(EventKind::StreamDenied, Outcome::Deny).actor(&agent).subject("llm"),
        // Another user whose id merely contains Alice's must not match her filter.
        AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow)
            .actor(format!("spiffe://corp/user/x{ALICE}"))
            .subject("llm"),
        AuditEvent::new(EventKind::IdentityDisabled, Outcome::Success).actor("cli").subject(format!("machine/{AGENT}")),
    ];
    for e in events {
        audit.record(e).await.unwrap();
    }
    (dir, db)
}

async fn seqs(db: &Db, q: Query) -> Vec<i64> {
    search(db, &q).await.unwrap().items.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn every_filter_narrows_and_they_combine() {
    let (_dir, db) = populated().await;
    assert_eq!(seqs(&db, Query::default()).await, (1..=9).rev().collect::<Vec<_>>());
    assert_eq!(seqs(&db, Query { person: Some(ALICE.into()), ..Query::default() }).await, vec![5, 4, 3, 2, 1]);
    assert_eq!(seqs(&db, Query { machine: Some(AGENT.into()), ..Query::default() }).await, vec![9, 7, 6]);
    assert_eq!(seqs(&db, Query { service: Some("llm".into()), ..Query::default() }).await, vec![8, 7, 6, 4]);
    assert_eq!(seqs(&db, Query { outcome: Some(Outcome::Deny), ..Query::default() }).await, vec![7, 5]);
    assert_eq!(seqs(&db, Query { class_uid: Some(3002), ..Query::default() }).await, vec![3, 2, 1]);
    assert_eq!(seqs(&db, Query { kinds: vec![EventKind::StreamAllowed], ..Query::default() }).await, vec![8, 6, 4]);
    let q = Query {
        person: Some(ALICE.into()),
        service: Some("llm".into()),
        outcome: Some(Outcome::Allow),
        ..Query::default()
    };
    assert_eq!(seqs(&db, q).await, vec![4]);
    let q = Query { kinds: vec![EventKind::StreamAllowed], class_uid: Some(3002), ..Query::default() };
    assert_eq!(seqs(&db, q).await, Vec::<i64>::new(), "a kind outside the class matches nothing");
    let all = search(&db, &Query::default()).await.unwrap().items;
    let (t3, t4) = (all[6].ts_ms, all[5].ts_ms);
    let q = Query { since_ms: Some(t3), until_ms: Some(t4 + 1), ..Query::default() };
    assert!(seqs(&db, q).await.iter().all(|s| (3..=4).contains(s) || all.iter().any(|r| r.seq == *s && r.ts_ms <= t4)));
    // Wildcards in a filter are data, not patterns.
    assert_eq!(seqs(&db, Query { person: Some("%".into()), ..Query::default() }).await, Vec::<i64>::new());
}

#[tokio::test]
async fn pages_follow_the_keyset_and_are_stable_while_events_are_appended() {
    let (_dir, db) = populated().await;
    let mut q = Query { limit: 4, ..Query::default() };
    let first = search(&db, &q).await.unwrap();
    assert_eq!(first.items.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![9, 8, 7, 6]);
    assert_eq!(first.next_before, Some(6));
    Audit::with_signer(db.clone(), None, CheckpointPolicy::default())
        .record(AuditEvent::new(EventKind::StreamDenied, Outcome::Deny))
        .await
        .unwrap();
    q.before_seq = first.next_before;
    let second = search(&db, &q).await.unwrap();
    assert_eq!(second.items.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 4, 3, 2]);
    q.before_seq = second.next_before;
    let last = search(&db, &q).await.unwrap();
    assert_eq!((last.items.len(), last.next_before), (1, None));
}

#[tokio::test]
async fn the_login_trail_lists_every_attempt_with_result_reason_method_address_and_agent() {
    let (_dir, db) = populated().await;
    let trail = login_trail(&db, ALICE, &Query::default()).await.unwrap();
    let rows: Vec<_> = trail
        .items
        .iter()
        .map(|a| (a.kind.as_str(), a.result.as_str(), a.reason.as_deref(), a.method.as_deref(), a.address.as_deref()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("session.created", "success", None, Some("oidc+webauthn"), Some("192.0.2.1")),
            ("login.succeeded", "success", None, Some("oidc"), Some("192.0.2.1")),
            ("login.failed", "failure", Some("bad_signature"), Some("webauthn"), Some("192.0.2.1")),
        ]
    );
    assert_eq!(trail.items[0].session.as_deref(), Some("s-1"));
    assert_eq!(trail.items[2].user_agent.as_deref(), Some("UA-1"));
    assert!(login_trail(&db, AGENT, &Query::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn sql_metacharacters_in_text_filters_are_data_and_match_nothing() {
    let (_dir, db) = populated().await;
    let hostile = [
        "' OR '1'='1",
        "x' OR 1=1 --",
        "\"; DROP TABLE audit_events; --",
        "%",
        "_",
        "\\",
        "llm' UNION SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash FROM audit_events --",
    ];
    for text in hostile {
        for q in [
            Query { person: Some(text.into()), ..Query::default() },
            Query { machine: Some(text.into()), ..Query::default() },
            Query { service: Some(text.into()), ..Query::default() },
        ] {
            let page = search(&db, &q).await.unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(page.items.is_empty(), "{text:?} matched {:?}", page.items);
        }
        assert!(login_trail(&db, text, &Query::default()).await.unwrap().items.is_empty(), "{text:?}");
    }
    assert_eq!(seqs(&db, Query::default()).await.len(), 9, "the table is intact");
    // A real id with LIKE wildcards around it still matches only itself.
    assert_eq!(seqs(&db, Query { person: Some(format!("%{ALICE}")), ..Query::default() }).await, Vec::<i64>::new());
}
