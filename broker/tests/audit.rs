//! `palisade-broker audit verify` and `audit export` on a real data directory.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use palisade_broker::audit::{self, Audit, AuditEvent, EventKind, Outcome};
use palisade_broker::db::{Db, sqlite_url};
use palisade_broker::init::{InitOptions, init};

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade-broker"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("PALISADE_LOG", "error")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn data_dir_with_events() -> (tempfile::TempDir, std::path::PathBuf, Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&InitOptions { data_dir: dir.clone(), ..InitOptions::default() }).await.unwrap();
    let db = Db::open(&sqlite_url(&dir.join("palisade.db"))).await.unwrap();
    let audit = Audit::new(db.clone());
    for name in ["alice", "=HYPERLINK(\"http://x\")", "bob\r\n\u{1b}[31m\u{202e}"] {
        let event = AuditEvent::new(EventKind::LoginFailed, Outcome::Failure)
            .actor(name)
            .subject(format!("user/{name}"))
            .detail(serde_json::json!({ "user_agent": name }));
        audit.record(event).await.unwrap();
    }
    audit.checkpoint().await.unwrap().unwrap();
    (tmp, dir, db)
}

#[tokio::test]
async fn verify_prints_the_checkpoint_and_key_then_names_a_truncated_tail() {
    let (_tmp, dir, db) = data_dir_with_events().await;
    let key = audit::Signer::load(&dir.join(audit::checkpoint::KEY_FILE)).unwrap().unwrap();
    let out = cli(&dir, &["audit", "verify"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("audit chain intact: 4 events\n"), "{text}");
    assert!(text.contains("newest at event #4"), "{text}");
    assert!(text.contains(&format!("signing key {} (trusted)", key.key_id())), "{text}");

    for trigger in ["audit_events_no_update", "audit_events_no_delete"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {trigger}"))).execute(db.pool()).await.unwrap();
    }
    sqlx::query("DELETE FROM audit_events WHERE seq = 4").execute(db.pool()).await.unwrap();
    let out = cli(&dir, &["audit", "verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("audit chain broken at event #4: truncated:"), "{text}");

    let stranger = "00".repeat(32);
    let out = cli(&dir, &["audit", "verify", "--public-key", &stranger]);
    assert!(stdout(&out).contains("forged-checkpoint"), "{}", stdout(&out));
}

#[tokio::test]
async fn export_writes_csv_to_a_file_and_jsonl_to_stdout_one_line_per_event() {
    let (tmp, dir, _db) = data_dir_with_events().await;
    let file = tmp.path().join("audit.csv");
    let out = cli(&dir, &["audit", "export", "--format", "csv", "--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(&file).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("exported 4 events to {}", file.display())), "{said}");
    assert!(csv.contains(r#","'=HYPERLINK(""http://x"")","#), "{csv}");
    assert!(!csv.contains(['\r', '\u{1b}', '\u{202e}']), "{csv}");

    let out = cli(&dir, &["audit", "export", "--since", "1h"]);
    let jsonl = stdout(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(jsonl.lines().count(), 4, "{jsonl}");
    assert!(!jsonl.contains(['\r', '\u{1b}', '\u{202e}']), "{jsonl}");
    let last: serde_json::Value = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    assert_eq!(last["subject"], "user/bob\r\n\u{1b}[31m\u{202e}");
    assert_eq!(last["class_uid"], 3002);

    let out = cli(&dir, &["audit", "export", "--until", "2000-01-01"]);
    assert_eq!(stdout(&out), "");
    let out = cli(&dir, &["audit", "export", "--since", "yesterday-ish"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn prune_archives_old_events_and_verify_still_passes() {
    let (tmp, dir, _db) = data_dir_with_events().await;
    let archive = tmp.path().join("archive.jsonl");
    let out =
        cli(&dir, &["audit", "prune", "--before", "2999-01-01T00:00:00Z", "--archive", archive.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("pruned 4 events up to #4"), "{text}");
    assert_eq!(std::fs::read_to_string(&archive).unwrap().lines().count(), 4);
    let out = cli(&dir, &["audit", "verify"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("audit chain intact: 0 events"), "{text}");
    assert!(text.contains("pruned through event #4"), "{text}");
}
