//! Loading and deciding with small, purpose-built bundles.

use std::net::IpAddr;

use palisade_policies::{
    AccessRequest, Action, BodyFields, Decision, DenyReason, Engine, LoadError, PolicyBundle, PolicyFile, Principal,
    PrincipalKind, RequestContext, ServiceEntry,
};

fn file(name: &str, text: &str) -> PolicyFile {
    PolicyFile { name: name.to_owned(), text: text.to_owned() }
}

fn service(name: &str, segment: &str, protocol: &str, labels: &[&str]) -> ServiceEntry {
    ServiceEntry {
        name: name.to_owned(),
        segment: segment.to_owned(),
        protocol: protocol.to_owned(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
    }
}

fn catalog() -> Vec<ServiceEntry> {
    vec![
        service("llm-prod", "inference", "http", &[]),
        service("llm-suspect", "inference", "http", &["quarantined"]),
        service("postgres", "data", "tcp", &[]),
    ]
}

fn load(files: &[PolicyFile]) -> Result<Engine, LoadError> {
    Engine::new(&PolicyBundle { version: 42, files: files.to_vec(), services: catalog() })
}

fn engine(text: &str) -> Engine {
    load(&[file("test.cedar", text)]).expect("policies load")
}

fn agent() -> Principal {
    Principal {
        kind: PrincipalKind::Machine,
        id: "m-1".to_owned(),
        name: "summariser".to_owned(),
        groups: vec!["ml-agents".to_owned()],
    }
}

fn alice() -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: "u-alice".to_owned(),
        name: "Alice".to_owned(),
        groups: vec!["ml-team".to_owned()],
    }
}

/// Wednesday 1970-01-07, 12:00 UTC.
fn context() -> RequestContext {
    RequestContext {
        mfa_age_secs: Some(60),
        auth_methods: vec!["oidc".to_owned(), "webauthn".to_owned()],
        source_ip: None,
        now_unix_secs: 6 * 86_400 + 12 * 3_600,
        client_version: Some("0.1.0".to_owned()),
    }
}

fn decide(engine: &Engine, principal: &Principal, service: &str, context: &RequestContext) -> Decision {
    engine.decide(&AccessRequest { principal, action: Action::Connect, service, context })
}

const AGENTS: &str = r#"
@id("agents")
permit (principal in Group::"ml-agents", action == Action::"connect", resource in Segment::"inference");
"#;

const QUARANTINE: &str = r#"
@id("quarantine")
forbid (principal, action, resource) when { resource.labels.contains("quarantined") };
"#;

#[test]
fn a_grant_names_the_permitting_policy_service_segment_and_version() {
    let engine = engine(AGENTS);
    let Decision::Allow(grant) = decide(&engine, &agent(), "llm-prod", &context()) else {
        panic!("agent should be allowed");
    };
    assert_eq!(grant.policy_ids(), ["agents"]);
    assert_eq!(grant.service(), "llm-prod");
    assert_eq!(grant.segment(), "inference");
    assert_eq!(grant.policy_version(), 42);
}

#[test]
fn default_is_deny() {
    let engine = engine(AGENTS);
    let decision = decide(&engine, &alice(), "llm-prod", &context());
    assert_eq!(decision, Decision::Deny(DenyReason::NoPolicyPermits));
    assert_eq!(decision.code(), "no_policy");
}

#[test]
fn an_unknown_service_is_denied() {
    let engine = engine(r#"permit (principal, action, resource);"#);
    let decision = decide(&engine, &agent(), "llm-staging", &context());
    assert_eq!(decision, Decision::Deny(DenyReason::UnknownService));
    assert_eq!(decision.code(), "unknown_service");
}

#[test]
fn forbid_wins_over_permit_and_is_named() {
    let engine = load(&[file("a.cedar", AGENTS), file("b.cedar", QUARANTINE)]).expect("loads");
    let decision = decide(&engine, &agent(), "llm-suspect", &context());
    let Decision::Deny(reason) = decision else {
        panic!("quarantined service must be denied");
    };
    assert_eq!(reason, DenyReason::Forbidden { policy_ids: vec!["quarantine".to_owned()] });
    assert_eq!(reason.policy_ids(), ["quarantine"]);
    assert_eq!(reason.code(), "forbidden");
    assert_eq!(reason.to_string(), "denied by policy: forbidden by quarantine");
    // The permit still applies where the forbid does not.
    assert!(decide(&engine, &agent(), "llm-prod", &context()).is_allow());
}

#[test]
fn a_policy_without_id_is_named_after_its_file_and_line() {
    let engine = engine("// header\n\npermit (principal in Group::\"ml-agents\", action, resource);\n");
    let Decision::Allow(grant) = decide(&engine, &agent(), "postgres", &context()) else {
        panic!("agent should be allowed");
    };
    assert_eq!(grant.policy_ids(), ["test.cedar:3"]);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let text = "@id(\"ok\")\npermit (principal, action, resource);\n\npermit (principal, action resource);\n";
    let err = load(&[file("good.cedar", AGENTS), file("broken.cedar", text)]).expect_err("refused");
    let LoadError::Parse { file, line, column, message } = &err else {
        panic!("expected a parse error, got {err}");
    };
    assert_eq!(file, "broken.cedar");
    assert_eq!(*line, 4, "{err}");
    assert_eq!(*column, 27, "{err}");
    assert!(!message.is_empty());
    assert!(err.to_string().starts_with("broken.cedar:4:27: syntax error"), "{err}");
}

#[test]
fn an_unknown_attribute_fails_validation_at_its_line() {
    let text = format!(
        "{AGENTS}\n@id(\"bad-attr\")\npermit (principal, action, resource)\nwhen {{ principal.nonexistent_attr == \"x\" }};\n"
    );
    let err = load(&[file("attrs.cedar", &text)]).expect_err("refused");
    let LoadError::Validation { file, line, policy_id, message, .. } = &err else {
        panic!("expected a validation error, got {err}");
    };
    assert_eq!(file, "attrs.cedar");
    assert_eq!(*line, 7, "{err}");
    assert_eq!(policy_id, "bad-attr");
    assert!(message.contains("nonexistent_attr"), "{err}");
}

#[test]
fn an_unknown_entity_type_fails_validation() {
    let text = "permit (principal == Robot::\"r2\", action, resource);\n";
    let err = load(&[file("robots.cedar", text)]).expect_err("refused");
    let LoadError::Validation { file, line, column, policy_id, message } = &err else {
        panic!("expected a validation error, got {err}");
    };
    assert_eq!(file, "robots.cedar");
    assert_eq!((*line, *column), (1, 22), "{err}");
    assert_eq!(policy_id, "robots.cedar:1");
    assert!(message.contains("Robot"), "{err}");
}

#[test]
fn a_type_error_on_context_fails_validation() {
    let text = "permit (principal, action, resource) when { context.mfa_age_secs < 900 };";
    let err = load(&[file("mfa.cedar", text)]).expect_err("optional attribute without `has`");
    assert!(matches!(err, LoadError::Validation { .. }), "{err}");
}

#[test]
fn duplicate_ids_are_refused_across_files() {
    let err = load(&[file("a.cedar", AGENTS), file("b.cedar", AGENTS)]).expect_err("refused");
    let LoadError::DuplicatePolicyId { id, files } = &err else {
        panic!("expected a duplicate id, got {err}");
    };
    assert_eq!(id, "agents");
    assert_eq!(files, &["a.cedar", "b.cedar"]);
}

#[test]
fn duplicate_ids_are_refused_within_a_file() {
    let text = format!("{AGENTS}{AGENTS}");
    let err = load(&[file("a.cedar", &text)]).expect_err("refused");
    assert!(matches!(err, LoadError::DuplicatePolicyId { ref id, .. } if id == "agents"), "{err}");
}

#[test]
fn empty_ids_templates_and_repeated_file_names_are_refused() {
    let err = load(&[file("a.cedar", "@id(\"\") permit (principal, action, resource);")]).expect_err("empty id");
    assert!(matches!(err, LoadError::EmptyPolicyId { .. }), "{err}");

    let template = "permit (principal == ?principal, action, resource);";
    let err = load(&[file("t.cedar", template)]).expect_err("template");
    assert!(matches!(err, LoadError::Template { line: 1, .. }), "{err}");

    let err = load(&[file("a.cedar", AGENTS), file("a.cedar", QUARANTINE)]).expect_err("same name");
    assert!(matches!(err, LoadError::DuplicateFile { .. }), "{err}");
}

#[test]
fn a_bad_service_catalog_is_refused() {
    let bundle = |services| PolicyBundle { version: 1, files: vec![file("a.cedar", AGENTS)], services };
    let err = Engine::new(&bundle(vec![service("x", "s", "udp", &[])])).expect_err("udp");
    assert!(matches!(err, LoadError::UnknownServiceProtocol { .. }), "{err}");
    let twice = vec![service("x", "s", "tcp", &[]), service("x", "t", "tcp", &[])];
    let err = Engine::new(&bundle(twice)).expect_err("duplicate");
    assert!(matches!(err, LoadError::DuplicateService { .. }), "{err}");
    let err = Engine::new(&bundle(vec![service("x", "", "tcp", &[])])).expect_err("no segment");
    assert!(matches!(err, LoadError::InvalidService { .. }), "{err}");
}

#[test]
fn a_forbid_that_fails_to_evaluate_denies() {
    // Overflows for any hour above 0: Cedar skips the erroring forbid, and
    // the engine must not let the permit through on that basis.
    let text = format!(
        "{AGENTS}\n@id(\"overflow\")\nforbid (principal, action, resource) when {{ context.hour * 9223372036854775807 > 1 }};"
    );
    let engine = engine(&text);
    let decision = decide(&engine, &agent(), "llm-prod", &context());
    let Decision::Deny(DenyReason::Invalid(message)) = &decision else {
        panic!("expected invalid, got {decision:?}");
    };
    assert!(message.contains("overflow"), "{message}");
}

#[test]
fn a_permit_that_fails_to_evaluate_does_not_allow() {
    let text =
        "@id(\"overflow\")\npermit (principal, action, resource) when { context.hour * 9223372036854775807 > 1 };";
    let decision = decide(&engine(text), &agent(), "llm-prod", &context());
    assert_eq!(decision.code(), "invalid_request", "{decision:?}");
}

#[test]
fn time_of_day_and_weekday_reach_policies() {
    let text = r#"permit (principal, action, resource) when { context.day_of_week < 5 && context.hour >= 8 && context.hour < 18 };"#;
    let engine = engine(text);
    let mut ctx = context();
    assert!(decide(&engine, &alice(), "postgres", &ctx).is_allow(), "Wednesday noon");
    ctx.now_unix_secs = 9 * 86_400 + 12 * 3_600; // Saturday noon
    assert!(!decide(&engine, &alice(), "postgres", &ctx).is_allow());
    ctx.now_unix_secs = 6 * 86_400 + 19 * 3_600; // Wednesday 19:00
    assert!(!decide(&engine, &alice(), "postgres", &ctx).is_allow());
}

#[test]
fn source_addresses_reach_policies() {
    let text = r#"permit (principal, action, resource) when { context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8")) };"#;
    let engine = engine(text);
    let mut ctx = context();
    let ip = |s: &str| Some(s.parse::<IpAddr>().expect("address"));
    ctx.source_ip = ip("10.1.2.3");
    assert!(decide(&engine, &alice(), "postgres", &ctx).is_allow());
    ctx.source_ip = ip("::ffff:10.1.2.3");
    assert!(decide(&engine, &alice(), "postgres", &ctx).is_allow(), "IPv4-mapped");
    ctx.source_ip = ip("192.0.2.1");
    assert!(!decide(&engine, &alice(), "postgres", &ctx).is_allow());
    ctx.source_ip = ip("2001:db8::1");
    assert!(!decide(&engine, &alice(), "postgres", &ctx).is_allow());
    ctx.source_ip = None;
    assert!(!decide(&engine, &alice(), "postgres", &ctx).is_allow());
}

#[test]
fn user_and_machine_attributes_match_the_schema() {
    let text = r#"permit (principal is Machine, action, resource) when { principal.name == "summariser" };"#;
    let engine = engine(text);
    assert!(decide(&engine, &agent(), "postgres", &context()).is_allow());
    let mut other = agent();
    other.name = "scraper".to_owned();
    assert!(!decide(&engine, &other, "postgres", &context()).is_allow());
}

#[test]
fn http_requests_carry_method_and_path() {
    let text = r#"permit (principal, action == Action::"http", resource) when { context.method == "POST" && context.path like "/v1/*" };"#;
    let engine = engine(text);
    let http = |service: &str, method: &str, path: &str| {
        engine.decide(&AccessRequest {
            principal: &agent(),
            action: Action::Http { method: method.to_owned(), path: path.to_owned(), body: None },
            service,
            context: &context(),
        })
    };
    assert!(http("llm-prod", "POST", "/v1/chat").is_allow());
    assert!(!http("llm-prod", "GET", "/v1/chat").is_allow());
    assert!(!http("llm-prod", "POST", "/admin").is_allow());
    assert_eq!(http("postgres", "POST", "/v1/chat").code(), "invalid_request");
    // The http permit does not open tunnels.
    assert!(!decide(&engine, &agent(), "llm-prod", &context()).is_allow());
}

const BODY_RULES: &str = r#"
@id("chat")
permit (principal, action == Action::"http", resource)
when { context has model && ["small", "medium"].contains(context.model) };

@id("caps")
forbid (principal, action == Action::"http", resource)
when { (context has max_tokens && context.max_tokens > 1000) || (context has n && context.n > 2) };

@id("no-logprobs")
forbid (principal, action == Action::"http", resource)
when { context has logprobs && context.logprobs }
unless { principal in Group::"eval" };
"#;

#[test]
fn json_body_fields_reach_http_policies() {
    let engine = engine(BODY_RULES);
    let http = |principal: &Principal, body: Option<BodyFields>| {
        let action = Action::Http { method: "POST".to_owned(), path: "/v1/chat/completions".to_owned(), body };
        engine.decide(&AccessRequest { principal, action, service: "llm-prod", context: &context() })
    };
    let small = BodyFields { model: Some("small".to_owned()), ..BodyFields::default() };
    assert!(http(&agent(), Some(small.clone())).is_allow());
    let large = BodyFields { model: Some("large".to_owned()), ..BodyFields::default() };
    assert_eq!(http(&agent(), Some(large)).code(), "no_policy");
    assert!(!http(&agent(), None).is_allow(), "no body, no model: the allow-list does not match");
    assert!(!http(&agent(), Some(BodyFields::default())).is_allow(), "a body without a model");
    let long = BodyFields { max_tokens: Some(1001), ..small.clone() };
    match http(&agent(), Some(long)) {
        Decision::Deny(reason) => assert_eq!(reason.policy_ids(), ["caps"]),
        Decision::Allow(grant) => panic!("allowed by {:?}", grant.policy_ids()),
    }
    assert!(http(&agent(), Some(BodyFields { max_tokens: Some(1000), n: Some(2), ..small.clone() })).is_allow());
    assert!(!http(&agent(), Some(BodyFields { n: Some(3), ..small.clone() })).is_allow());
    let logprobs = BodyFields { logprobs: true, ..small.clone() };
    assert!(!http(&agent(), Some(logprobs.clone())).is_allow());
    let mut evaluator = agent();
    evaluator.groups.push("eval".to_owned());
    assert!(http(&evaluator, Some(logprobs)).is_allow());
    let beyond_long = BodyFields { max_tokens: Some(u64::MAX), ..small };
    assert_eq!(http(&agent(), Some(beyond_long)).code(), "invalid_request", "a count Cedar cannot hold never allows");
}

#[test]
fn optional_body_fields_need_has() {
    for text in [
        r#"permit (principal, action == Action::"http", resource) when { context.model == "small" };"#,
        r#"forbid (principal, action == Action::"http", resource) when { context.logprobs };"#,
        r#"forbid (principal, action == Action::"http", resource) when { context.max_tokens > 10 };"#,
        r#"permit (principal, action == Action::"http", resource) when { context has n && context.n == "1" };"#,
    ] {
        let err = load(&[file("body.cedar", text)]).expect_err(text);
        assert!(matches!(err, LoadError::Validation { .. }), "{text}: {err}");
    }
}

#[test]
fn a_request_that_does_not_fit_the_schema_is_invalid() {
    let engine = engine(r#"permit (principal, action, resource);"#);
    let mut ctx = context();
    ctx.mfa_age_secs = Some(u64::MAX);
    let decision = decide(&engine, &agent(), "llm-prod", &ctx);
    assert_eq!(decision.code(), "invalid_request", "{decision:?}");
}

#[test]
fn an_engine_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
}
