use palisade_proto::usage::{UsageElsewhere, UsageKey};

use super::*;

/// A moment whose wall clock is at the start of a minute (and of an hour), so windows start with the test.
fn t0() -> Now {
    Now { at: std::time::Instant::now(), unix_ms: 1_800_000_000_000 }
}

fn spec(text: &[(&str, &str)]) -> Result<LimitSpec, LimitError> {
    parse_spec("p", |key| text.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
}

fn one(spec: LimitSpec) -> Vec<(String, LimitSpec)> {
    vec![("p".to_owned(), spec)]
}

#[test]
fn annotations_parse_and_bad_values_are_refused() {
    let parsed = spec(&[
        ("requests_per_second", "2.5"),
        ("burst", "5"),
        ("max_in_flight", "3"),
        ("tokens_per_window", "1000"),
        ("requests_per_window", "50"),
        ("token_window", "1m"),
    ])
    .expect("valid");
    assert_eq!(parsed.requests_per_second, Some(2.5));
    assert_eq!(parsed.burst, Some(5));
    assert_eq!(parsed.max_in_flight, Some(3));
    assert_eq!(parsed.tokens_per_window, Some(1000));
    assert_eq!(parsed.requests_per_window, Some(50));
    assert_eq!(parsed.token_window, Some(Duration::from_secs(60)));
    for bad in [
        ("requests_per_second", "0"),
        ("requests_per_second", "fast"),
        ("requests_per_second", "NaN"),
        ("burst", "-1"),
        ("max_in_flight", "0"),
        ("tokens_per_window", "1e3"),
        ("requests_per_window", "0"),
        ("token_window", "0s"),
        ("token_window", "soon"),
    ] {
        assert!(spec(&[bad]).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_request_past_the_burst_is_refused_until_the_bucket_refills() {
    let limiter = Arc::new(Limiter::default());
    let specs = one(LimitSpec { requests_per_second: Some(2.0), burst: Some(3), ..LimitSpec::default() });
    let t0 = t0();
    for _ in 0..3 {
        limiter.admit("alice", "llm", &specs, t0).expect("within the burst").finish(0);
    }
    let over = limiter.admit("alice", "llm", &specs, t0).expect_err("the fourth is over");
    assert_eq!(over.what, "requests per second");
    assert_eq!(over.retry_after, Duration::from_millis(500));
    limiter.admit("alice", "llm", &specs, t0 + Duration::from_millis(500)).expect("refilled one").finish(0);
    limiter.admit("bob", "llm", &specs, t0).expect("bob has his own bucket").finish(0);
}

#[test]
fn in_flight_slots_are_freed_when_a_response_ends_or_is_dropped() {
    let limiter = Arc::new(Limiter::default());
    let specs = one(LimitSpec { max_in_flight: Some(2), ..LimitSpec::default() });
    let now = t0();
    let first = limiter.admit("alice", "llm", &specs, now).expect("one");
    let second = limiter.admit("alice", "llm", &specs, now).expect("two");
    assert_eq!(limiter.admit("alice", "llm", &specs, now).expect_err("three").what, "concurrent requests");
    first.finish(0);
    let third = limiter.admit("alice", "llm", &specs, now).expect("a slot was freed");
    drop(second);
    drop(third);
    let _a = limiter.admit("alice", "llm", &specs, now).expect("dropped admissions free their slots");
    let _b = limiter.admit("alice", "llm", &specs, now).expect("both");
}

#[test]
fn a_token_quota_refuses_after_it_is_used_up_and_resets_with_the_window() {
    let limiter = Arc::new(Limiter::default());
    let window = Duration::from_secs(60);
    let specs = one(LimitSpec { tokens_per_window: Some(100), token_window: Some(window), ..LimitSpec::default() });
    let t0 = t0();
    limiter.admit("alice", "llm", &specs, t0).expect("fresh quota").finish(60);
    limiter.admit("alice", "llm", &specs, t0).expect("60 of 100 used").finish(60);
    let over = limiter.admit("alice", "llm", &specs, t0 + Duration::from_secs(20)).expect_err("120 of 100 used");
    assert_eq!(over.what, "tokens in this window");
    assert_eq!(over.retry_after, Duration::from_secs(40));
    limiter.admit("bob", "llm", &specs, t0).expect("bob's quota is his own").finish(0);
    limiter.admit("alice", "other", &specs, t0).expect("another service has its own quota").finish(0);
    limiter.admit("alice", "llm", &specs, t0 + window).expect("the window reset").finish(0);
}

#[tokio::test]
async fn a_stream_learns_at_once_when_another_response_exceeds_the_quota() {
    let limiter = Arc::new(Limiter::default());
    let specs = one(LimitSpec { tokens_per_window: Some(100), ..LimitSpec::default() });
    let now = t0();
    let mut streaming = limiter.admit("alice", "llm", &specs, now).expect("fresh quota");
    let watch = streaming.quota_watch().expect("a quota applies");
    let exceeded = tokio::spawn(watch.exceeded());
    streaming.progress(40);
    streaming.progress(80);
    streaming.progress(80);
    limiter.admit("bob", "llm", &specs, now).expect("bob's quota").finish(500);
    limiter.admit("alice", "llm", &specs, now).expect("80 of 100 used").finish(20);
    tokio::task::yield_now().await;
    assert!(!exceeded.is_finished(), "exactly at the quota is not past it");
    limiter.admit("alice", "other", &specs, now).expect("another service").finish(500);
    tokio::task::yield_now().await;
    assert!(!exceeded.is_finished(), "another service's quota is its own");
    limiter.admit("alice", "llm", &specs, now).expect_err("the quota is used up");
    streaming.progress(81);
    tokio::time::timeout(Duration::from_secs(5), exceeded).await.expect("the watch fired").expect("no panic");
    streaming.finish(81);
    let rate_only = one(LimitSpec { max_in_flight: Some(1), ..LimitSpec::default() });
    let unlimited = limiter.admit("alice", "llm", &rate_only, now).expect("no quota here");
    assert!(unlimited.quota_watch().is_none(), "no quota, nothing to watch");
}

#[tokio::test]
async fn a_quota_exceeded_before_the_watch_starts_is_seen() {
    let limiter = Arc::new(Limiter::default());
    let specs = one(LimitSpec { tokens_per_window: Some(10), ..LimitSpec::default() });
    let now = t0();
    let streaming = limiter.admit("alice", "llm", &specs, now).expect("fresh quota");
    limiter.admit("alice", "llm", &specs, now).expect("still under").finish(11);
    let watch = streaming.quota_watch().expect("a quota applies");
    tokio::time::timeout(Duration::from_secs(5), watch.exceeded()).await.expect("already exceeded");
}

/// What the broker would tell the other replica: the reports of `from`, as counts elsewhere.
fn relay(from: &Limiter, to: &Limiter, now: Now) {
    let told: Vec<UsageElsewhere> = from
        .take_report(now.unix_ms, 256)
        .into_iter()
        .map(|d| UsageElsewhere { key: d.key, tokens: d.tokens, requests: d.requests })
        .collect();
    to.learn(told, now.unix_ms);
}

fn quota(tokens: u64) -> Vec<(String, LimitSpec)> {
    one(LimitSpec {
        tokens_per_window: Some(tokens),
        token_window: Some(Duration::from_secs(60)),
        ..LimitSpec::default()
    })
}

#[test]
fn a_quota_used_up_on_one_replica_is_refused_on_another_once_it_hears_of_it() {
    let (a, b) = (Arc::new(Limiter::default()), Arc::new(Limiter::default()));
    let specs = quota(100);
    let t0 = t0();
    a.admit("alice", "llm", &specs, t0).expect("fresh").finish(120);
    b.admit("alice", "llm", &specs, t0).expect("b has not heard yet: its own count is all it knows").finish(0);
    relay(&a, &b, t0);
    let over = b.admit("alice", "llm", &specs, t0 + Duration::from_secs(15)).expect_err("used up on a");
    assert_eq!(over.what, "tokens in this window");
    assert!(over.with_other_replicas, "b's own count was within the quota");
    assert_eq!(over.retry_after, Duration::from_secs(45), "until the window all replicas share ends");
    b.admit("bob", "llm", &specs, t0).expect("bob's quota is his own").finish(0);
    b.admit("alice", "llm", &specs, t0 + Duration::from_secs(60)).expect("a new window").finish(0);
    let own = a.admit("alice", "llm", &specs, t0).expect_err("a's own count");
    assert!(!own.with_other_replicas);
}

#[test]
fn a_window_counts_its_own_usage_plus_the_others_not_just_the_larger() {
    let (a, b) = (Arc::new(Limiter::default()), Arc::new(Limiter::default()));
    let specs = quota(100);
    let t0 = t0();
    a.admit("alice", "llm", &specs, t0).expect("fresh").finish(60);
    b.admit("alice", "llm", &specs, t0).expect("fresh").finish(60);
    relay(&a, &b, t0);
    // max(60, 60) would still admit; 60 here + 60 on a is past 100.
    assert!(b.admit("alice", "llm", &specs, t0).expect_err("120 of 100").with_other_replicas);
}

#[test]
fn reports_carry_each_count_once_and_a_failed_send_is_reported_again() {
    let limiter = Arc::new(Limiter::default());
    let specs = quota(1_000);
    let t0 = t0();
    limiter.admit("alice", "llm", &specs, t0).expect("fresh").finish(18);
    limiter.admit("alice", "llm", &specs, t0).expect("fresh").finish(7);
    let report = limiter.take_report(t0.unix_ms, 256);
    assert_eq!(report.len(), 1);
    let key = &report[0].key;
    assert_eq!((key.service.as_str(), key.identity.as_str(), key.policy.as_str()), ("llm", "alice", "p"));
    assert_eq!((key.window_ms, key.window_start_ms), (60_000, t0.unix_ms));
    assert_eq!((report[0].tokens, report[0].requests), (25, 2));
    assert!(limiter.take_report(t0.unix_ms, 256).is_empty(), "reported once");
    limiter.put_back(report);
    limiter.admit("alice", "llm", &specs, t0).expect("fresh").finish(5);
    let again = limiter.take_report(t0.unix_ms, 256);
    assert_eq!((again[0].tokens, again[0].requests), (30, 3), "what could not be sent goes with the next report");
    let stale = t0 + Duration::from_secs(600);
    limiter.put_back(again);
    assert!(limiter.take_report(stale.unix_ms, 256).is_empty(), "counts of long-ended windows are dropped");
}

#[test]
fn what_other_replicas_counted_never_goes_down_and_ended_windows_are_forgotten() {
    let limiter = Arc::new(Limiter::default());
    let specs = quota(100);
    let t0 = t0();
    let told = |tokens| {
        let key = UsageKey {
            service: "llm".into(),
            identity: "alice".into(),
            policy: "p".into(),
            window_ms: 60_000,
            window_start_ms: t0.unix_ms,
        };
        vec![UsageElsewhere { key, tokens, requests: 1 }]
    };
    limiter.learn(told(150), t0.unix_ms);
    limiter.learn(told(10), t0.unix_ms);
    limiter.admit("alice", "llm", &specs, t0).expect_err("an older, smaller answer does not lower the count");
    let later = t0 + Duration::from_secs(600);
    limiter.learn(told(150), later.unix_ms);
    limiter.admit("alice", "llm", &specs, later).expect("a new window, and the old count is gone").finish(0);
}

#[test]
fn a_request_quota_per_window_is_shared_too() {
    let (a, b) = (Arc::new(Limiter::default()), Arc::new(Limiter::default()));
    let specs = one(LimitSpec {
        requests_per_window: Some(3),
        token_window: Some(Duration::from_secs(60)),
        ..LimitSpec::default()
    });
    let t0 = t0();
    for _ in 0..2 {
        a.admit("alice", "llm", &specs, t0).expect("within").finish(0);
    }
    b.admit("alice", "llm", &specs, t0).expect("third").finish(0);
    relay(&a, &b, t0);
    assert_eq!(b.admit("alice", "llm", &specs, t0).expect_err("fourth").what, "requests in this window");
}

#[tokio::test]
async fn a_stream_is_cut_when_another_replica_uses_up_the_quota() {
    let (a, b) = (Arc::new(Limiter::default()), Arc::new(Limiter::default()));
    let specs = quota(100);
    let t0 = t0();
    let mut streaming = b.admit("alice", "llm", &specs, t0).expect("fresh");
    streaming.progress(30);
    let exceeded = tokio::spawn(streaming.quota_watch().expect("a quota applies").exceeded());
    a.admit("alice", "llm", &specs, t0).expect("fresh on a").finish(71);
    tokio::task::yield_now().await;
    assert!(!exceeded.is_finished(), "b has not heard yet");
    relay(&a, &b, t0);
    tokio::time::timeout(Duration::from_secs(5), exceeded).await.expect("the watch fired").expect("no panic");
    streaming.finish(30);
}
