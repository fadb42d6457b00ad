//! Dry-run policies never change a decision; the decision cache never
//! serves a verdict of another engine or of another moment the policies
//! can tell apart.

use palisade_policies::{
    AccessRequest, Action, Decision, DecisionCache, Engine, LoadError, PolicyBundle, PolicyFile, Principal,
    PrincipalKind, RequestContext, ServiceEntry,
};

fn engine(version: u64, text: &str) -> Engine {
    try_engine(version, text).expect("valid set")
}

fn try_engine(version: u64, text: &str) -> Result<Engine, LoadError> {
    Engine::new(&PolicyBundle {
        version,
        files: vec![PolicyFile { name: "set.cedar".into(), text: text.into() }],
        services: vec![ServiceEntry {
            name: "llm".into(),
            segment: "inference".into(),
            protocol: "tcp".into(),
            labels: vec![],
        }],
    })
}

fn machine(groups: &[&str]) -> Principal {
    Principal {
        kind: PrincipalKind::Machine,
        id: "m-1".into(),
        name: "agent".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn user(groups: &[&str]) -> Principal {
    Principal { kind: PrincipalKind::User, ..machine(groups) }
}

fn at(now_unix_secs: u64, mfa_age_secs: Option<u64>) -> RequestContext {
    RequestContext { now_unix_secs, mfa_age_secs, ..RequestContext::default() }
}

fn request<'a>(principal: &'a Principal, context: &'a RequestContext) -> AccessRequest<'a> {
    AccessRequest { principal, action: Action::Connect, service: "llm", context }
}

const AGENTS: &str =
    r#"@id("agents") permit (principal in Group::"ml-agents", action, resource in Segment::"inference");"#;

#[test]
fn a_dry_run_forbid_never_denies_but_reports_would_deny() {
    let text = format!(
        "{AGENTS}\n@id(\"no-interns\") @mode(\"dry_run\")\nforbid (principal in Group::\"interns\", action, resource);"
    );
    let engine = engine(1, &text);
    let intern = machine(&["ml-agents", "interns"]);
    let context = at(1_700_000_000, None);
    let verdict = engine.verdict(&request(&intern, &context));
    let Decision::Allow(grant) = &verdict.decision else { panic!("dry-run must not deny: {verdict:?}") };
    assert_eq!(grant.policy_ids(), ["agents"], "the dry-run forbid is not among the deciders");
    let dry = verdict.dry_run.expect("the dry-run forbid matched");
    assert_eq!(dry.outcome(), "would_deny");
    assert_eq!(dry.forbids, ["no-interns"]);
    assert!(dry.changes(&verdict.decision));
    assert_eq!(engine.decide(&request(&intern, &context)), verdict.decision);

    let agent = machine(&["ml-agents"]);
    assert_eq!(engine.verdict(&request(&agent, &context)).dry_run, None, "nothing matched, nothing to report");
}

#[test]
fn a_dry_run_permit_never_allows_but_reports_would_allow() {
    let text =
        format!("{AGENTS}\n@id(\"web\") @mode(\"dry_run\")\npermit (principal in Group::\"web\", action, resource);");
    let engine = engine(1, &text);
    let web = machine(&["web"]);
    let context = at(1_700_000_000, None);
    let verdict = engine.verdict(&request(&web, &context));
    assert_eq!(verdict.decision.code(), "no_policy", "a dry-run permit must not grant access: {verdict:?}");
    let dry = verdict.dry_run.expect("the dry-run permit matched");
    assert_eq!((dry.outcome(), dry.permits.as_slice()), ("would_allow", ["web".to_owned()].as_slice()));
}

#[test]
fn an_unknown_mode_is_refused_with_file_and_line() {
    let text = format!("{AGENTS}\n\n@id(\"typo\") @mode(\"dryrun\")\nforbid (principal, action, resource);");
    let err = try_engine(1, &text).expect_err("a mistyped mode must not be guessed");
    assert!(matches!(err, LoadError::UnknownMode { line: 3, .. }), "{err}");
    assert!(err.to_string().starts_with("set.cedar:3:"), "{err}");
}

#[test]
fn a_cached_allow_is_not_used_once_a_new_version_denies() {
    let cache = DecisionCache::new(100);
    let agent = machine(&["ml-agents"]);
    let context = at(1_700_000_000, None);
    let old = engine(1, AGENTS);
    assert!(cache.verdict(&old, &request(&agent, &context)).decision.is_allow());
    assert!(cache.verdict(&old, &request(&agent, &context)).decision.is_allow());
    assert_eq!(cache.stats(), (1, 1), "the second lookup is a hit");

    let new = engine(2, r#"@id("gpu") permit (principal in Group::"gpu-team", action, resource);"#);
    let verdict = cache.verdict(&new, &request(&agent, &context));
    assert_eq!(verdict.decision.code(), "no_policy", "the old version's allow must not be served: {verdict:?}");
    assert_eq!(cache.stats(), (1, 2));

    // Same version number, different content (a catalog change): no reuse either.
    let same_number = engine(2, AGENTS);
    assert!(cache.verdict(&same_number, &request(&agent, &context)).decision.is_allow());
    assert_eq!(cache.stats(), (1, 3));
}

#[test]
fn the_key_covers_who_asks_and_the_mfa_age_the_policies_read() {
    let text = r#"@id("fresh") permit (principal in Group::"ml-team", action, resource)
        when { context has mfa_age_secs && context.mfa_age_secs < 900 };"#;
    let engine = engine(1, text);
    let cache = DecisionCache::new(100);
    let ana = user(&["ml-team"]);
    let fresh = at(1_700_000_000, Some(899));
    let stale = at(1_700_000_001, Some(900));
    assert!(cache.verdict(&engine, &request(&ana, &fresh)).decision.is_allow());
    assert!(!cache.verdict(&engine, &request(&ana, &stale)).decision.is_allow(), "one second later MFA is too old");
    let outsider = user(&[]);
    assert!(!cache.verdict(&engine, &request(&outsider, &fresh)).decision.is_allow(), "another principal");
    assert_eq!(cache.stats().0, 0, "no lookup above may be a hit");
}

#[test]
fn without_time_in_the_policies_a_later_second_is_a_hit() {
    let engine = engine(1, AGENTS);
    let cache = DecisionCache::new(100);
    let agent = machine(&["ml-agents"]);
    let _ = cache.verdict(&engine, &request(&agent, &at(1_700_000_000, None)));
    let _ = cache.verdict(&engine, &request(&agent, &at(1_700_000_005, Some(3))));
    assert_eq!(cache.stats(), (1, 1));
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let engine = engine(1, AGENTS);
    let cache = DecisionCache::new(8);
    let context = at(1_700_000_000, None);
    for i in 0..50 {
        let principal = Principal { id: format!("m-{i}"), ..machine(&["ml-agents"]) };
        assert!(cache.verdict(&engine, &request(&principal, &context)).decision.is_allow());
        assert!(cache.len() <= 8, "{} entries", cache.len());
    }
}
