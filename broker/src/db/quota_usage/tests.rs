#![allow(clippy::unwrap_used)]

use palisade_proto::identity::PeerRole;
use palisade_proto::usage::{UsageDelta, UsageKey};

use super::*;
use crate::db::{IdentityRecord, sqlite_url};

const NOW: i64 = 1_800_000_030_000;
const START: u64 = 1_800_000_000_000;

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("store.db"))).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    for id in ["rack-1", "rack-2"] {
        let record = IdentityRecord {
            id: id.into(),
            role: PeerRole::Connector,
            name: id.into(),
            groups: vec![],
            disabled: false,
        };
        crate::db::identities::insert(&mut tx, &record, 0).await.unwrap();
    }
    tx.commit().await.unwrap();
    (dir, db)
}

fn delta(identity: &str, tokens: u64) -> UsageDelta {
    let key = UsageKey {
        service: "llm".into(),
        identity: identity.into(),
        policy: "quota".into(),
        window_ms: 60_000,
        window_start_ms: START,
    };
    UsageDelta { key, tokens, requests: 1 }
}

const A: Reporter<'static> = Reporter { connector_id: "rack-1", instance: "a" };
const B: Reporter<'static> = Reporter { connector_id: "rack-2", instance: "b" };

async fn seen_by(db: &Db, who: Reporter<'_>) -> Vec<(String, u64, u64)> {
    let mut seen: Vec<_> = elsewhere(db, who, "llm", NOW, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key.identity, e.tokens, e.requests))
        .collect();
    seen.sort();
    seen
}

#[tokio::test]
async fn each_connector_is_told_what_the_others_counted_never_its_own() {
    let (_dir, db) = fresh().await;
    add(&db, A, &[delta("alice", 18), delta("bob", 2)], NOW).await.unwrap();
    add(&db, A, &[delta("alice", 5)], NOW).await.unwrap();
    add(&db, B, &[delta("alice", 7)], NOW).await.unwrap();
    assert_eq!(seen_by(&db, B).await, [("alice".into(), 23, 2), ("bob".into(), 2, 1)]);
    assert_eq!(seen_by(&db, A).await, [("alice".into(), 7, 1)]);
    // A restarted connector (a new instance) counts its earlier self as elsewhere.
    let a_again = Reporter { connector_id: "rack-1", instance: "a2" };
    assert_eq!(seen_by(&db, a_again).await, [("alice".into(), 30, 3), ("bob".into(), 2, 1)]);
}

#[tokio::test]
async fn a_report_only_adds_to_its_own_rows() {
    let (_dir, db) = fresh().await;
    add(&db, A, &[delta("alice", 18)], NOW).await.unwrap();
    // B naming A's instance still writes B's own rows: A's count is untouched.
    let b_as_a = Reporter { connector_id: "rack-2", instance: "a" };
    add(&db, b_as_a, &[delta("alice", 1)], NOW).await.unwrap();
    assert_eq!(seen_by(&db, B).await, [("alice".into(), 19, 2)]);
    assert_eq!(seen_by(&db, b_as_a).await, [("alice".into(), 18, 1)]);
    // A count saturates rather than wrapping around to a small number.
    add(&db, A, &[delta("carol", u64::MAX)], NOW).await.unwrap();
    add(&db, A, &[delta("carol", u64::MAX)], NOW).await.unwrap();
    let carol = seen_by(&db, B).await.into_iter().find(|(i, _, _)| i == "carol").unwrap();
    assert_eq!(carol.1, 1 << 62);
}

#[tokio::test]
async fn a_report_that_fails_part_way_adds_nothing() {
    let (_dir, db) = fresh().await;
    let stranger = Reporter { connector_id: "not-enrolled", instance: "x" };
    assert!(add(&db, stranger, &[delta("alice", 18)], NOW).await.is_err(), "unknown connectors are refused");
    assert!(seen_by(&db, B).await.is_empty());
}

#[tokio::test]
async fn only_recent_changes_are_sent_again_and_ended_windows_are_pruned() {
    let (_dir, db) = fresh().await;
    add(&db, A, &[delta("alice", 18)], NOW - 10_000).await.unwrap();
    add(&db, A, &[delta("bob", 2)], NOW).await.unwrap();
    let recent = elsewhere(&db, B, "llm", NOW, NOW - 5_000, 100).await.unwrap();
    assert_eq!(recent.iter().map(|e| e.key.identity.as_str()).collect::<Vec<_>>(), ["bob"]);
    let after_window = i64::try_from(START).unwrap() + 60_000;
    assert!(elsewhere(&db, B, "llm", after_window, 0, 100).await.unwrap().is_empty(), "the window ended");
    assert_eq!(prune(&db, after_window - 1).await.unwrap(), 0, "the window had not ended then");
    assert_eq!(prune(&db, after_window + 1).await.unwrap(), 2);
}
