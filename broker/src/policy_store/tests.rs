#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use palisade_policies::{PolicyFile, ServiceEntry, read_policy_dir};

use super::*;
use crate::db::{Db, sqlite_url};

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("store.db"))).await.unwrap();
    (dir, db)
}

fn services() -> Vec<ServiceEntry> {
    vec![
        ServiceEntry { name: "llm-prod".into(), segment: "inference".into(), protocol: "http".into(), labels: vec![] },
        ServiceEntry { name: "qdrant".into(), segment: "vector-db".into(), protocol: "tcp".into(), labels: vec![] },
    ]
}

fn file(name: &str, text: &str) -> PolicyFile {
    PolicyFile { name: name.into(), text: text.into() }
}

const AGENTS: &str = "@id(\"agents\")\npermit (\n  principal in Group::\"ml-agents\",\n  action == Action::\"connect\",\n  resource in Segment::\"inference\"\n);\n";
const INDEXER: &str = "@id(\"indexer\")\npermit (principal is Machine in Group::\"rag-indexer\", action, resource in Segment::\"vector-db\");\n";

fn proposal<'a>(files: &'a [PolicyFile], parent: Option<u64>, services: &'a [ServiceEntry]) -> Proposal<'a> {
    Proposal { files, parent, author: "admin@example.com", comment: "test", services, cases_dir: None }
}

async fn audited(db: &Db, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE kind = $1")
        .bind(kind)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test]
async fn the_example_set_applies_with_its_cases() {
    let (_dir, db) = fresh().await;
    let files = read_policy_dir(&repo("policies/examples")).unwrap();
    let cases = repo("policies/cases");
    let services = services();
    let applied = apply(&db, &Proposal { cases_dir: Some(&cases), ..proposal(&files, None, &services) }).await.unwrap();
    assert_eq!((applied.version, applied.parent), (1, None));
    let (version, stored) = active(&db).await.unwrap().unwrap();
    assert_eq!((version, stored.len()), (1, files.len()));
    assert_eq!(audited(&db, "policy.activated").await, 1);
}

#[tokio::test]
async fn a_schema_invalid_set_is_refused_with_file_and_line_and_the_active_version_stays() {
    let (_dir, db) = fresh().await;
    let services = services();
    let good = [file("agents.cedar", AGENTS)];
    apply(&db, &proposal(&good, None, &services)).await.unwrap();

    let bad = [
        file("agents.cedar", AGENTS),
        file(
            "bad.cedar",
            "// typo in the entity type\n@id(\"bad\")\npermit (principal in Grop::\"x\", action, resource);\n",
        ),
    ];
    let err = apply(&db, &proposal(&bad, Some(1), &services)).await.unwrap_err();
    assert!(matches!(err, PolicyStoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("bad.cedar:3:"), "{err}");

    let syntax = [file("agents.cedar", "permit (principal, action, resource")];
    let err = apply(&db, &proposal(&syntax, Some(1), &services)).await.unwrap_err();
    assert!(err.to_string().contains("agents.cedar:1:"), "{err}");

    assert_eq!(active_version(&db).await.unwrap(), Some(1));
    assert_eq!(active(&db).await.unwrap().unwrap().1, good);
    assert_eq!(history(&db).await.unwrap().len(), 1);
    assert_eq!(audited(&db, "policy.rejected").await, 2);
}

#[tokio::test]
async fn a_policy_file_over_the_size_limit_is_refused_before_parsing_and_the_active_version_stays() {
    let (_dir, db) = fresh().await;
    let services = services();
    let good = [file("agents.cedar", AGENTS)];
    apply(&db, &proposal(&good, None, &services)).await.unwrap();

    // Valid policies all the way, so only the size can refuse it.
    let mut huge = String::new();
    for i in 0.. {
        if huge.len() > palisade_policies::MAX_FILE_BYTES {
            break;
        }
        huge.push_str(&AGENTS.replace("\"agents\"", &format!("\"agents-{i}\"")));
    }
    assert!(huge.len() > palisade_policies::MAX_FILE_BYTES);
    let started = std::time::Instant::now();
    let err = apply(&db, &proposal(&[file("huge.cedar", &huge)], Some(1), &services)).await.unwrap_err();
    assert!(matches!(err, PolicyStoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("huge.cedar") && err.to_string().contains("more than the limit"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused before Cedar parses 8 MiB");

    assert_eq!(active_version(&db).await.unwrap(), Some(1));
    assert_eq!(active(&db).await.unwrap().unwrap().1, good);
    assert_eq!(audited(&db, "policy.rejected").await, 1);
}

#[tokio::test]
async fn a_set_whose_cases_fail_is_refused() {
    let (_dir, db) = fresh().await;
    let cases = tempfile::tempdir().unwrap();
    std::fs::write(
        cases.path().join("indexer.toml"),
        r#"
[[service]]
name = "qdrant"
segment = "vector-db"
protocol = "tcp"

[[case]]
name = "the indexer reaches the vector db"
principal = { kind = "machine", id = "m-2", groups = ["rag-indexer"] }
service = "qdrant"
expect = "allow"
"#,
    )
    .unwrap();
    let services = services();
    let without_indexer = [file("agents.cedar", AGENTS)];
    let err = apply(&db, &Proposal { cases_dir: Some(cases.path()), ..proposal(&without_indexer, None, &services) })
        .await
        .unwrap_err();
    let PolicyStoreError::CasesFailed(report) = &err else { panic!("{err}") };
    assert!(report.contains("the indexer reaches the vector db"), "{report}");
    assert_eq!(active_version(&db).await.unwrap(), None);

    let with_indexer = [file("agents.cedar", AGENTS), file("indexer.cedar", INDEXER)];
    apply(&db, &Proposal { cases_dir: Some(cases.path()), ..proposal(&with_indexer, None, &services) }).await.unwrap();
    assert_eq!(active_version(&db).await.unwrap(), Some(1));
}

#[tokio::test]
async fn two_applies_on_the_same_parent_one_wins_the_other_conflicts() {
    let (_dir, db) = fresh().await;
    let services = services();
    let base = [file("agents.cedar", AGENTS)];
    apply(&db, &proposal(&base, None, &services)).await.unwrap();

    let alice = [file("agents.cedar", AGENTS), file("indexer.cedar", INDEXER)];
    let bob = [file("agents.cedar", &AGENTS.replace("ml-agents", "ml-bots"))];
    let (on_alice, on_bob) = (proposal(&alice, Some(1), &services), proposal(&bob, Some(1), &services));
    let (a, b) = tokio::join!(apply(&db, &on_alice), apply(&db, &on_bob));

    let (winner, winner_files, loser) = match (a, b) {
        (Ok(won), Err(lost)) => (won, &alice[..], lost),
        (Err(lost), Ok(won)) => (won, &bob[..], lost),
        (a, b) => panic!("expected exactly one winner: {a:?} / {b:?}"),
    };
    assert_eq!((winner.version, winner.parent), (2, Some(1)));
    assert!(matches!(loser, PolicyStoreError::Conflict { expected: Some(1), active: Some(2) }), "{loser}");
    assert_eq!(active(&db).await.unwrap().unwrap(), (2, winner_files.to_vec()));
    let versions: Vec<u64> = history(&db).await.unwrap().iter().map(|v| v.version).collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(get(&db, 1).await.unwrap().unwrap().files, base);
    assert_eq!((audited(&db, "policy.activated").await, audited(&db, "policy.rejected").await), (2, 1));
}

#[tokio::test]
async fn diff_history_and_rollback_round_trip() {
    let (_dir, db) = fresh().await;
    let services = services();
    let v1 = [file("agents.cedar", AGENTS)];
    apply(&db, &proposal(&v1, None, &services)).await.unwrap();
    let v2 = [file("agents.cedar", &AGENTS.replace("ml-agents", "ml-bots")), file("indexer.cedar", INDEXER)];
    apply(&db, &Proposal { comment: "bots and indexer", author: "bob", ..proposal(&v2, Some(1), &services) })
        .await
        .unwrap();

    let diffs = diff(&db, 1, 2).await.unwrap();
    assert_eq!(diffs.len(), 2);
    assert_eq!((diffs[0].name.as_str(), diffs[0].change), ("agents.cedar", FileChange::Modified));
    assert_eq!(
        diffs[0].hunks,
        "@@ -1,6 +1,6 @@\n @id(\"agents\")\n permit (\n-  principal in Group::\"ml-agents\",\n+  principal in Group::\"ml-bots\",\n   action == Action::\"connect\",\n   resource in Segment::\"inference\"\n );\n"
    );
    assert_eq!((diffs[1].name.as_str(), diffs[1].change), ("indexer.cedar", FileChange::Added));
    assert!(render_diff(&diffs, "version 1", "version 2").contains("--- /dev/null\t(version 1)\n+++ b/indexer.cedar"));

    let err = rollback(&db, 1, Some(1), "carol", &services, None).await.unwrap_err();
    assert!(matches!(err, PolicyStoreError::Conflict { .. }), "{err}");
    let back = rollback(&db, 1, Some(2), "carol", &services, None).await.unwrap();
    assert_eq!((back.version, back.parent, back.comment.as_str()), (3, Some(2), "rollback to version 1"));
    assert_eq!(active(&db).await.unwrap().unwrap(), (3, v1.to_vec()));
    assert!(diff(&db, 1, 3).await.unwrap().is_empty());
    assert_eq!(get(&db, 3).await.unwrap().unwrap().info.digest, get(&db, 1).await.unwrap().unwrap().info.digest);

    let history = history(&db).await.unwrap();
    let summary: Vec<(u64, &str, &str)> =
        history.iter().map(|v| (v.version, v.author.as_str(), v.comment.as_str())).collect();
    assert_eq!(
        summary,
        [(3, "carol", "rollback to version 1"), (2, "bob", "bots and indexer"), (1, "admin@example.com", "test")]
    );
    assert!(matches!(rollback(&db, 9, Some(3), "carol", &services, None).await, Err(PolicyStoreError::NotFound(9))));
}

#[test]
fn diff_groups_distant_changes_into_separate_hunks() {
    let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    let new = old.replace("line 2\n", "line two\n").replace("line 19\n", "").replace("line 20\n", "line 20\nline 21\n");
    let diffs = diff_files(&[file("a.cedar", &old)], &[file("a.cedar", &new)]);
    let headers: Vec<&str> = diffs[0].hunks.lines().filter(|l| l.starts_with("@@")).collect();
    assert_eq!(headers, ["@@ -1,5 +1,5 @@", "@@ -16,5 +16,5 @@"]);
    assert!(diff_files(&[file("a.cedar", &old)], &[file("a.cedar", &old)]).is_empty());
    let removed = diff_files(&[file("a.cedar", "x\n")], &[]);
    assert_eq!((removed[0].change, removed[0].hunks.as_str()), (FileChange::Removed, "@@ -1,1 +0,0 @@\n-x\n"));
}

#[test]
fn the_policy_dir_mirror_holds_exactly_the_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.cedar"), "stale").unwrap();
    std::fs::write(dir.path().join("README.md"), "kept").unwrap();
    let files = [file("agents.cedar", AGENTS), file("indexer.cedar", INDEXER)];
    write_policy_dir(dir.path(), &files).unwrap();
    assert_eq!(read_policy_dir(dir.path()).unwrap(), files);
    assert!(dir.path().join("README.md").exists());
    assert!(write_policy_dir(dir.path(), &[file("../escape.cedar", "")]).is_err());
    assert!(!dir.path().join("../escape.cedar").exists());
}

#[tokio::test]
async fn principals_are_found_by_machine_name_and_user_email() {
    let (_dir, db) = fresh().await;
    let mut conn = db.pool().acquire().await.unwrap();
    for (id, role, name, groups, disabled) in [
        ("m-1", "machine", "summariser", r#"["ml-agents"]"#, 0),
        ("m-2", "machine", "old-bot", "[]", 1),
        ("u-1", "user", "Bob", "[]", 0),
    ] {
        sqlx::query(
            "INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(id)
        .bind(role)
        .bind(name)
        .bind(groups)
        .bind(disabled)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO users (identity_id, issuer, subject, email, created_at) VALUES ('u-1', 'local', 's', 'bob@example.com', 0)")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let (machine, disabled) = find_principal(&db, "machine:summariser").await.unwrap();
    assert_eq!(
        (machine.id.as_str(), machine.groups.as_slice(), disabled),
        ("m-1", &["ml-agents".to_owned()][..], false)
    );
    let (bob, _) = find_principal(&db, "user:Bob@Example.com").await.unwrap();
    assert_eq!((bob.id.as_str(), bob.kind), ("u-1", palisade_policies::PrincipalKind::User));
    assert!(matches!(find_principal(&db, "user:eve@example.com").await, Err(PrincipalLookupError::Unknown { .. })));
    assert!(matches!(find_principal(&db, "bob").await, Err(PrincipalLookupError::Syntax(_))));

    let known: Vec<String> = known_principals(&db).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(known, ["m-1", "u-1"]);
}
