use super::*;
use crate::control::ConnectorToBroker;
use crate::wire::decode_frame;

const NOW: u64 = 1_800_000_030_000;

fn key(service: &str, identity: &str) -> UsageKey {
    UsageKey {
        service: service.into(),
        identity: identity.into(),
        policy: "quota".into(),
        window_ms: 60_000,
        window_start_ms: window_start(NOW, 60_000),
    }
}

fn delta(service: &str, identity: &str, tokens: u64) -> UsageDelta {
    UsageDelta { key: key(service, identity), tokens, requests: 1 }
}

fn served() -> Vec<String> {
    vec!["llm".to_owned()]
}

#[test]
fn windows_are_aligned_to_the_epoch() {
    assert_eq!(window_start(NOW, 60_000), 1_800_000_000_000);
    assert_eq!(window_start(NOW, 7_000) % 7_000, 0);
    assert!(window_start(NOW, 7_000) <= NOW && NOW < window_start(NOW, 7_000) + 7_000);
}

#[test]
fn a_well_formed_report_passes() {
    let entries = vec![delta("llm", "spiffe://td/user/a", 18), delta("llm", "spiffe://td/user/b", 0)];
    assert_eq!(check_report("inst-1", &entries, &served(), NOW), Ok(()));
}

#[test]
fn bad_reports_are_refused_whole() {
    let good = delta("llm", "spiffe://td/user/a", 18);
    let with = |bad: UsageDelta| vec![good.clone(), bad];
    let refuse = |instance: &str, entries: Vec<UsageDelta>| check_report(instance, &entries, &served(), NOW);
    assert_eq!(refuse("i", Vec::new()), Ok(()), "an announcement of the instance");
    assert_eq!(refuse("i", vec![good.clone(); MAX_ENTRIES + 1]), Err(UsageReportError::Size(MAX_ENTRIES + 1)));
    assert_eq!(refuse("", vec![good.clone()]), Err(UsageReportError::Instance));
    assert_eq!(refuse("a/b", vec![good.clone()]), Err(UsageReportError::Instance));
    assert_eq!(refuse(&"x".repeat(65), vec![good.clone()]), Err(UsageReportError::Instance));
    assert_eq!(refuse("i", with(delta("billing", "a", 1))), Err(UsageReportError::NotServed(1, "billing".into())));
    assert_eq!(refuse("i", with(delta("llm", "", 1))), Err(UsageReportError::Name(1)));
    assert_eq!(refuse("i", with(delta("llm", &"a".repeat(513), 1))), Err(UsageReportError::Name(1)));
    let mut unaligned = delta("llm", "a", 1);
    unaligned.key.window_start_ms += 1;
    assert_eq!(refuse("i", with(unaligned)), Err(UsageReportError::Window(1)));
    let mut zero = delta("llm", "a", 1);
    zero.key.window_ms = 0;
    assert_eq!(refuse("i", with(zero)), Err(UsageReportError::Window(1)));
    let mut old = delta("llm", "a", 1);
    old.key.window_start_ms -= 60_000 * 10;
    assert_eq!(refuse("i", with(old)), Err(UsageReportError::Stale(1)));
    let mut future = delta("llm", "a", 1);
    future.key.window_start_ms += 60_000 * 10;
    assert_eq!(refuse("i", with(future)), Err(UsageReportError::Stale(1)));
    let nothing = UsageDelta { key: key("llm", "a"), tokens: 0, requests: 0 };
    assert_eq!(refuse("i", with(nothing)), Err(UsageReportError::Count(1)));
    assert_eq!(refuse("i", with(delta("llm", "a", MAX_DELTA_TOKENS + 1))), Err(UsageReportError::Count(1)));
    assert_eq!(refuse("i", with(good.clone())), Err(UsageReportError::Duplicate(1)));
}

#[test]
fn negative_counts_and_unknown_fields_do_not_decode() {
    let frame = |entry: &str| format!(r#"{{"type":"usage","instance":"i","entries":[{entry}]}}"#);
    let key = r#""key":{"service":"llm","identity":"a","policy":"p","window_ms":1000,"window_start_ms":0}"#;
    let ok = frame(&format!(r#"{{{key},"tokens":5,"requests":1}}"#));
    assert!(decode_frame::<ConnectorToBroker>(ok.as_bytes()).is_ok(), "{ok}");
    for bad in [
        frame(&format!(r#"{{{key},"tokens":-5,"requests":1}}"#)),
        frame(&format!(r#"{{{key},"tokens":5,"requests":1,"reset":true}}"#)),
        frame(&format!(r#"{{{key},"tokens":5.5,"requests":1}}"#)),
    ] {
        assert!(decode_frame::<ConnectorToBroker>(bad.as_bytes()).is_err(), "{bad}");
    }
}
