//! `palisade-broker policy …` end to end on a data directory, without a running broker.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_broker::db::{Db, sqlite_url};
use palisade_broker::init::{InitOptions, init};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples")
}

/// Runs the CLI; returns (success, stdout, stderr).
fn policy(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-broker"))
        .arg("policy")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn data_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("data");
    init(&InitOptions { data_dir: dir.clone(), policy_src: Some(examples()), ..InitOptions::default() }).await.unwrap();
    let mut config = std::fs::read_to_string(dir.join("broker.toml")).unwrap();
    config.push_str(
        "\n[[services]]\nname = \"llm-prod\"\nsegment = \"inference\"\nprotocol = \"http\"\n\
         \n[[services]]\nname = \"llm-suspect\"\nsegment = \"inference\"\nprotocol = \"http\"\nlabels = [\"quarantined\"]\n",
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    let db = Db::open(&sqlite_url(&dir.join("palisade.db"))).await.unwrap();
    sqlx::query(
        "INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES \
         ('m-1', 'machine', 'summariser', '[\"ml-agents\"]', 0, 0), ('u-1', 'user', 'Bob', '[]', 0, 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO users (identity_id, issuer, subject, email, created_at) VALUES ('u-1', 'local', 'b', 'bob@example.com', 0)")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    dir
}

#[tokio::test]
async fn apply_explain_compare_diff_and_rollback_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path()).await;
    let examples = examples();
    let cases = examples.join("../cases");

    let (ok, out, err) = policy(
        &dir,
        &["apply", examples.to_str().unwrap(), "--cases", cases.to_str().unwrap(), "--comment", "examples"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("policy version 1 stored and active"), "{out}");
    assert!(out.contains("no broker is running"), "{out}");

    let (ok, out, _) = policy(&dir, &["explain", "--principal", "machine:summariser", "--service", "llm-prod"]);
    assert!(ok && out.contains("allow: permitted by machines-inference"), "{out}");
    let (ok, out, _) = policy(&dir, &["explain", "--principal", "user:bob@example.com", "--service", "llm-prod"]);
    assert!(ok && out.contains("deny (no_policy)"), "{out}");
    let (ok, out, _) = policy(&dir, &["explain", "--principal", "machine:summariser", "--service", "llm-suspect"]);
    assert!(ok && out.contains("forbidden by quarantined-services"), "{out}");

    // A proposal that renames the agents' group: the agent loses llm-prod.
    let proposed = tmp.path().join("proposed");
    std::fs::create_dir(&proposed).unwrap();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace("ml-agents", "ml-bots");
        std::fs::write(proposed.join(path.file_name().unwrap()), text).unwrap();
    }
    let (ok, out, _) = policy(&dir, &["compare", proposed.to_str().unwrap()]);
    assert!(ok && out.contains("0 gain access, 1 lose access"), "{out}");
    assert!(out.contains("- machine:summariser (m-1) -> llm-prod"), "{out}");

    std::fs::write(proposed.join("bad.cedar"), "permit (principal in Grop::\"x\", action, resource);\n").unwrap();
    let (ok, _, err) = policy(&dir, &["apply", proposed.to_str().unwrap(), "--comment", "bad", "--parent", "1"]);
    assert!(!ok && err.contains("bad.cedar:1:"), "{err}");
    std::fs::remove_file(proposed.join("bad.cedar")).unwrap();

    let (ok, out, err) = policy(&dir, &["apply", proposed.to_str().unwrap(), "--comment", "bots", "--parent", "1"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = policy(&dir, &["apply", proposed.to_str().unwrap(), "--comment", "late", "--parent", "1"]);
    assert!(!ok && err.contains("conflict"), "{err}");
    // The broker's policy directory mirrors the active version.
    let mirrored = std::fs::read_to_string(dir.join("policies/inference.cedar")).unwrap();
    assert!(mirrored.contains("ml-bots"), "{mirrored}");

    let (ok, out, _) = policy(&dir, &["diff", "1", "2"]);
    assert!(ok && out.contains("-  principal in Group::\"ml-agents\",\n+  principal in Group::\"ml-bots\","), "{out}");

    let (ok, out, err) = policy(&dir, &["rollback", "1"]);
    assert!(ok && out.contains("policy version 3 stored"), "{out}{err}");
    let (ok, out, _) = policy(&dir, &["history"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(ok && lines.len() == 3, "{out}");
    assert!(lines[0].starts_with("*    3") && lines[0].ends_with("rollback to version 1"), "{out}");
    let mirrored = std::fs::read_to_string(dir.join("policies/inference.cedar")).unwrap();
    assert!(mirrored.contains("ml-agents"), "{mirrored}");
}
