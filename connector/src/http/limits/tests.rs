use super::*;

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
        ("token_window", "1m"),
    ])
    .expect("valid");
    assert_eq!(parsed.requests_per_second, Some(2.5));
    assert_eq!(parsed.burst, Some(5));
    assert_eq!(parsed.max_in_flight, Some(3));
    assert_eq!(parsed.tokens_per_window, Some(1000));
    assert_eq!(parsed.token_window, Some(Duration::from_secs(60)));
    for bad in [
        ("requests_per_second", "0"),
        ("requests_per_second", "fast"),
        ("requests_per_second", "NaN"),
        ("burst", "-1"),
        ("max_in_flight", "0"),
        ("tokens_per_window", "1e3"),
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
    let t0 = Instant::now();
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
    let now = Instant::now();
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
    let t0 = Instant::now();
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
    let now = Instant::now();
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
    let now = Instant::now();
    let streaming = limiter.admit("alice", "llm", &specs, now).expect("fresh quota");
    limiter.admit("alice", "llm", &specs, now).expect("still under").finish(11);
    let watch = streaming.quota_watch().expect("a quota applies");
    tokio::time::timeout(Duration::from_secs(5), watch.exceeded()).await.expect("already exceeded");
}
