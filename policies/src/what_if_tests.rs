//! Explain and compare on the example policy sets.

use std::path::Path;

use crate::{
    AccessRequest, Action, Decision, Engine, PolicyBundle, PolicyFile, PolicyOutcome, Principal, PrincipalKind,
    RequestContext, ScopePart, ServiceEntry, compare, read_policy_dir,
};

fn service(name: &str, segment: &str, labels: &[&str]) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        segment: segment.into(),
        protocol: "http".into(),
        labels: labels.iter().map(|&l| l.into()).collect(),
    }
}

fn catalog() -> Vec<ServiceEntry> {
    vec![
        service("llm-prod", "inference", &[]),
        service("llm-suspect", "inference", &["quarantined"]),
        service("qdrant", "vector-db", &[]),
        service("model-registry", "model-management", &[]),
    ]
}

fn examples() -> Engine {
    let files = read_policy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap();
    Engine::new(&PolicyBundle { version: 1, files, services: catalog() }).unwrap()
}

fn engine(files: &[(&str, &str)]) -> Engine {
    let files = files.iter().map(|(name, text)| PolicyFile { name: (*name).into(), text: (*text).into() }).collect();
    Engine::new(&PolicyBundle { version: 1, files, services: catalog() }).unwrap()
}

fn principal(kind: PrincipalKind, id: &str, groups: &[&str]) -> Principal {
    Principal { kind, id: id.into(), name: id.into(), groups: groups.iter().map(|&g| g.into()).collect() }
}

fn context(mfa_age_secs: Option<u64>) -> RequestContext {
    RequestContext {
        mfa_age_secs,
        auth_methods: vec!["oidc".into()],
        now_unix_secs: 1_700_000_000,
        ..RequestContext::default()
    }
}

fn outcome<'a>(explanation: &'a crate::Explanation, id: &str) -> &'a PolicyOutcome {
    &explanation.policies.iter().find(|t| t.id == id).unwrap().outcome
}

#[test]
fn ml_agent_is_allowed_by_machines_inference() {
    let engine = examples();
    let agent = principal(PrincipalKind::Machine, "m-1", &["ml-agents"]);
    let ctx = context(None);
    let request = AccessRequest { principal: &agent, action: Action::Connect, service: "llm-prod", context: &ctx };
    let explanation = engine.explain(&request);
    assert!(explanation.decision.is_allow());
    assert_eq!(explanation.permitted_by(), ["machines-inference"]);
    assert!(explanation.forbidden_by().is_empty());
    assert!(explanation.closest_permits().is_empty());
    // `is User` does not hold for a machine.
    assert_eq!(
        outcome(&explanation, "ml-team-inference-mfa"),
        &PolicyOutcome::ScopeMismatch { parts: vec![ScopePart::Principal] }
    );
}

#[test]
fn bob_without_a_group_is_denied_because_no_policy_permits() {
    let engine = examples();
    let bob = principal(PrincipalKind::User, "u-bob", &[]);
    let ctx = context(Some(60));
    let request = AccessRequest { principal: &bob, action: Action::Connect, service: "llm-prod", context: &ctx };
    let explanation = engine.explain(&request);
    assert_eq!(explanation.decision.code(), "no_policy");
    assert!(explanation.permitted_by().is_empty());
    let closest: Vec<&str> = explanation.closest_permits().iter().map(|t| t.id.as_str()).collect();
    // These permits cover the action and resource; only the group is missing.
    assert_eq!(closest, ["break-glass", "machines-inference", "ml-team-inference-mfa"]);
    assert_eq!(
        outcome(&explanation, "machines-inference"),
        &PolicyOutcome::ScopeMismatch { parts: vec![ScopePart::Principal] }
    );
    assert_eq!(
        outcome(&explanation, "model-admin-only"),
        &PolicyOutcome::ScopeMismatch { parts: vec![ScopePart::Principal, ScopePart::Resource] }
    );
}

#[test]
fn ml_team_member_without_mfa_fails_the_mfa_condition() {
    let engine = examples();
    let alice = principal(PrincipalKind::User, "u-alice", &["ml-team"]);
    let ctx = context(None);
    let request = AccessRequest { principal: &alice, action: Action::Connect, service: "llm-prod", context: &ctx };
    let explanation = engine.explain(&request);
    assert!(!explanation.decision.is_allow());
    let closest = explanation.closest_permits();
    assert_eq!(closest.len(), 1);
    assert_eq!(closest[0].id, "ml-team-inference-mfa");
    let PolicyOutcome::ConditionFailed { clause, text } = &closest[0].outcome else {
        panic!("{}", closest[0]);
    };
    assert_eq!(*clause, 1);
    assert!(text.starts_with("when") && text.contains("mfa_age_secs"), "{text}");
}

#[test]
fn a_quarantined_service_is_forbidden_by_quarantined_services() {
    let engine = examples();
    let agent = principal(PrincipalKind::Machine, "m-1", &["ml-agents"]);
    let ctx = context(None);
    let request = AccessRequest { principal: &agent, action: Action::Connect, service: "llm-suspect", context: &ctx };
    let explanation = engine.explain(&request);
    assert_eq!(explanation.decision.code(), "forbidden");
    assert_eq!(explanation.forbidden_by(), ["quarantined-services"]);
    // The permit still applied; the forbid won.
    assert_eq!(explanation.permitted_by(), ["machines-inference"]);
}

#[test]
fn an_unknown_service_is_not_evaluated() {
    let engine = examples();
    let agent = principal(PrincipalKind::Machine, "m-1", &["ml-agents"]);
    let ctx = context(None);
    let request = AccessRequest { principal: &agent, action: Action::Connect, service: "nope", context: &ctx };
    let explanation = engine.explain(&request);
    assert_eq!(explanation.decision.code(), "unknown_service");
    assert!(explanation.policies.iter().all(|t| t.outcome == PolicyOutcome::NotEvaluated));
}

#[test]
fn compare_reports_gains_and_losses() {
    let before = engine(&[(
        "a.cedar",
        r#"@id("agents") permit (principal in Group::"ml-agents", action, resource in Segment::"inference");
           @id("indexer") permit (principal in Group::"rag-indexer", action, resource in Segment::"vector-db");"#,
    )]);
    let after = engine(&[(
        "a.cedar",
        r#"@id("agents") permit (principal in Group::"ml-agents", action, resource in Segment::"inference");
           @id("indexer-and-agents") permit (principal in Group::"ml-agents", action, resource in Segment::"vector-db");
           @id("no-quarantine") forbid (principal, action, resource) when { resource.labels.contains("quarantined") };"#,
    )]);
    let agent = principal(PrincipalKind::Machine, "m-agent", &["ml-agents"]);
    let indexer = principal(PrincipalKind::Machine, "m-indexer", &["rag-indexer"]);
    let bob = principal(PrincipalKind::User, "u-bob", &[]);
    let services: Vec<String> = catalog().into_iter().map(|s| s.name).collect();
    let result = compare(&before, &after, &[agent, indexer, bob], &services, &Action::Connect, &context(None));

    assert_eq!(result.pairs, 12);
    let pairs = |changes: &[crate::AccessChange]| -> Vec<(String, String)> {
        changes.iter().map(|c| (c.principal.id.clone(), c.service.clone())).collect()
    };
    assert_eq!(pairs(&result.gained), [("m-agent".to_owned(), "qdrant".to_owned())]);
    assert_eq!(
        pairs(&result.lost),
        [("m-agent".to_owned(), "llm-suspect".to_owned()), ("m-indexer".to_owned(), "qdrant".to_owned())]
    );
    assert!(matches!(result.lost[0].after, Decision::Deny(ref r) if r.code() == "forbidden"));
    assert!(compare(&before, &before, &[], &services, &Action::Connect, &context(None)).is_unchanged());
}

/// Builds an engine from one file on a thread with a Tokio worker's 2 MiB stack.
fn load_on_small_stack(text: String) -> Result<(), crate::LoadError> {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let files = vec![PolicyFile { name: "deep.cedar".into(), text }];
            Engine::new(&PolicyBundle { version: 1, files, services: catalog() }).map(drop)
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_policies_are_refused_with_a_location_instead_of_overflowing_the_stack() {
    let head = "permit (principal, action, resource)\nwhen { ";
    let deep = |open: &str, inner: &str, close: &str, n: usize| {
        format!("{head}{}{inner}{} }};", open.repeat(n), close.repeat(n))
    };

    let err = load_on_small_stack(deep("(", "true", ")", 10_000)).unwrap_err();
    assert!(matches!(err, crate::LoadError::TooDeep { line: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("deep.cedar:2:"), "{err}");
    let err = load_on_small_stack(deep("[", "1", "]", 10_000).replace(" };", ".isEmpty() };")).unwrap_err();
    assert!(matches!(err, crate::LoadError::TooDeep { .. }), "{err}");
    let err = load_on_small_stack(deep("if true then ", "true", " else false", 5_000)).unwrap_err();
    assert!(matches!(err, crate::LoadError::TooDeep { .. }), "{err}");

    load_on_small_stack(deep("(", "true", ")", 20)).unwrap();
    // Brackets in strings and comments, and many policies in a row, do not count.
    let quoted = format!("// {}\n{head}resource.labels.contains(\"{}\") }};", "(".repeat(100), "([{".repeat(100));
    load_on_small_stack(quoted).unwrap();
    let many_ifs = format!("{head}if true then true else false }};\n").repeat(100);
    load_on_small_stack(many_ifs).unwrap();
}

#[test]
fn explain_labels_dry_run_policies_and_never_counts_them_as_deciding() {
    let engine = engine(&[(
        "rollout.cedar",
        r#"@id("agents") permit (principal in Group::"ml-agents", action == Action::"connect", resource);
@id("trial-interns") @mode("dry_run") permit (principal in Group::"interns", action == Action::"connect", resource);
@id("trial-freeze") @mode("dry_run") forbid (principal, action, resource in Segment::"inference");"#,
    )]);
    let intern = principal(PrincipalKind::User, "u-ivy", &["interns"]);
    let ctx = context(Some(10));
    let request = AccessRequest { principal: &intern, action: Action::Connect, service: "llm-prod", context: &ctx };
    let explanation = engine.explain(&request);
    assert!(matches!(explanation.decision, Decision::Deny(_)), "a dry-run permit grants nothing");
    assert_eq!(outcome(&explanation, "trial-interns"), &PolicyOutcome::Applied);
    assert!(explanation.permitted_by().is_empty() && explanation.forbidden_by().is_empty());
    let closest: Vec<&str> = explanation.closest_permits().iter().map(|t| t.id.as_str()).collect();
    assert_eq!(closest, ["agents"], "the enforced permit is the one to look at");
    let text = explanation.to_string();
    let line = |id: &str| text.lines().find(|l| l.contains(id)).unwrap_or_default().to_owned();
    assert!(line("trial-interns").contains("[dry-run"), "{text}");
    assert!(line("trial-freeze").contains("[dry-run"), "{text}");
    assert!(!line("permit agents").contains("[dry-run"), "{text}");
}
