//! The shipped example policies and their case files.

use std::path::{Path, PathBuf};

use palisade_policies::{
    CaseError, Engine, PolicyEffect, PolicyFile, read_policy_dir, run_case_dir, run_cases, schema,
};

fn crate_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn example_files() -> Vec<PolicyFile> {
    read_policy_dir(&crate_dir("examples")).expect("examples are readable")
}

#[test]
fn built_in_schema_parses() {
    let schema = schema().expect("schema parses");
    let actions: Vec<String> = schema.actions().map(ToString::to_string).collect();
    assert!(actions.contains(&r#"Action::"connect""#.to_owned()), "{actions:?}");
    assert!(actions.contains(&r#"Action::"http""#.to_owned()), "{actions:?}");
}

#[test]
fn examples_load_and_validate_with_their_ids() {
    let engine = Engine::from_dir(&crate_dir("examples"), Vec::new(), 1).expect("examples validate");
    let mut ids: Vec<&str> = engine.policies().iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "break-glass",
            "inference-business-hours",
            "machines-inference",
            "ml-team-inference-mfa",
            "model-admin-only",
            "quarantined-services",
            "vector-db-service-account",
        ]
    );
    let forbid = engine.policies().iter().find(|p| p.id == "quarantined-services").expect("forbid present");
    assert_eq!(forbid.effect, PolicyEffect::Forbid);
    assert_eq!(forbid.file, "guardrails.cedar");
    assert!(!forbid.dry_run);
    let rollout = engine.policies().iter().find(|p| p.id == "inference-business-hours").expect("dry-run present");
    assert!(rollout.dry_run, "@mode(\"dry_run\") marks the policy audit-only");
    assert!(engine.has_dry_run());
}

#[test]
fn example_files_are_read_in_name_order() {
    let names: Vec<String> = example_files().into_iter().map(|f| f.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.iter().all(|n| n.ends_with(".cedar")));
}

#[test]
fn every_example_case_passes() {
    let reports = run_case_dir(&example_files(), &crate_dir("cases")).expect("case files run");
    let total: usize = reports.iter().map(|r| r.outcomes.len()).sum();
    assert!(total >= 10, "only {total} cases");
    for report in &reports {
        assert!(report.passed(), "{report}");
    }
    let allows = reports.iter().flat_map(|r| &r.outcomes).filter(|o| o.detail.starts_with("allow")).count();
    assert!(allows > 0 && allows < total, "cases must cover allow and deny");
}

const ONE_SERVICE: &str = r#"
[[service]]
name = "llm-prod"
segment = "inference"
protocol = "http"
"#;

#[test]
fn a_case_with_the_wrong_expectation_fails() {
    let text = format!(
        r#"{ONE_SERVICE}
[[case]]
name = "agents are wrongly expected to be denied"
principal = {{ kind = "machine", id = "m-1", groups = ["ml-agents"] }}
service = "llm-prod"
expect = "deny"

[[case]]
name = "right decision, wrong policy"
principal = {{ kind = "machine", id = "m-1", groups = ["ml-agents"] }}
service = "llm-prod"
expect = "allow"
expect_policies = ["break-glass"]

[[case]]
name = "right decision, wrong reason"
principal = {{ kind = "machine", id = "m-1" }}
service = "llm-prod"
expect = "deny"
expect_reason = "forbidden"
"#
    );
    let report = run_cases(&example_files(), "wrong.toml", &text).expect("runs");
    assert!(!report.passed());
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 3, "{report}");
    assert!(failures[0].detail.contains("expected deny, got allow"), "{report}");
    assert!(failures[1].detail.contains("expected policies [break-glass]"), "{report}");
    assert!(failures[2].detail.contains("expected reason forbidden"), "{report}");
}

#[test]
fn a_case_file_with_an_unknown_key_is_refused() {
    let text = format!(
        r#"{ONE_SERVICE}
[[case]]
name = "typo"
principal = {{ kind = "machine", id = "m-1" }}
service = "llm-prod"
expect = "deny"
expected_policies = []
"#
    );
    let err = run_cases(&example_files(), "typo.toml", &text).expect_err("unknown key");
    assert!(matches!(err, CaseError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("expected_policies"), "{err}");
}

#[test]
fn a_case_file_without_cases_is_refused() {
    let err = run_cases(&example_files(), "empty.toml", ONE_SERVICE).expect_err("no cases");
    assert!(matches!(err, CaseError::NoCases { .. }), "{err}");
}

/// docs/policy-guide.md points at the example files for its recipes: every
/// example is there, every file it links exists, and every policy id it
/// names is a policy of the file on the same row.
#[test]
fn the_policy_guide_names_real_examples_and_policy_ids() {
    let guide = std::fs::read_to_string(crate_dir("../docs/policy-guide.md")).expect("docs/policy-guide.md");
    let mut files = Vec::new();
    for dir in ["examples", "examples/ai-http"] {
        for f in read_policy_dir(&crate_dir(dir)).expect("readable") {
            files.push(format!("{dir}/{}", f.name));
        }
    }
    for file in &files {
        assert!(guide.contains(&format!("(../policies/{file})")), "the guide does not link policies/{file}");
    }
    for row in guide.lines().filter(|l| l.starts_with('|') && l.contains("(../policies/examples/")) {
        let link = row.split("(../policies/").nth(1).and_then(|r| r.split(')').next()).expect("a link");
        let text = std::fs::read_to_string(crate_dir(link)).unwrap_or_else(|_| panic!("{link} does not exist"));
        let ids = row.rsplit('|').nth(1).expect("an ids column");
        for id in ids.split(',').map(|i| i.trim().trim_matches('`')).filter(|i| !i.is_empty()) {
            assert!(text.contains(&format!("@id(\"{id}\")")), "{link} has no policy {id}");
        }
    }
}
