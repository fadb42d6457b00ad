//! Model-extraction and abuse alerts, from the per-request records
//! connectors send (`connector.http_request`). Per identity, over the last
//! minute:
//! - a sweep: many distinct prompts (request body digests);
//! - heavy `logprobs` use: many requests asking for log-probabilities, and
//!   most of the identity's requests;
//! - volume far above the identity's own baseline (an average of its
//!   earlier minutes), once a baseline exists.
//!
//! Each rule alerts at most once per identity every [`REALERT_AFTER`]. The
//! counts are kept in this broker process, for the records its connector
//! links carry: an approximation across replicas, like the limits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use palisade_proto::control::HttpRequestRecord;

/// The window every rule looks at.
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// A sweep: this many distinct prompts within the window.
pub(super) const SWEEP_DISTINCT_PROMPTS: usize = 100;
/// Heavy logprobs: this many logprobs requests within the window, and at least half of all requests.
pub(super) const LOGPROBS_REQUESTS: usize = 50;
/// Volume: this many times the baseline requests per minute...
const VOLUME_FACTOR: f64 = 10.0;
/// ...and at least this many requests in the window...
const VOLUME_MIN_REQUESTS: usize = 60;
/// ...once at least this many earlier minutes make the baseline.
const BASELINE_MIN_MINUTES: u32 = 5;
/// One alert per identity and rule within this time.
const REALERT_AFTER: Duration = Duration::from_secs(600);

/// An alert to audit.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Alert {
    pub(super) identity: String,
    pub(super) rule: &'static str,
    pub(super) requests: usize,
    pub(super) distinct_prompts: usize,
    pub(super) logprobs_requests: usize,
    pub(super) baseline_per_minute: Option<f64>,
}

#[derive(Debug)]
struct Seen {
    at: Instant,
    prompt: Option<String>,
    logprobs: bool,
}

#[derive(Debug)]
struct Identity {
    recent: VecDeque<Seen>,
    /// Requests per minute in completed minutes before the window: (sum, minutes).
    baseline: (f64, u32),
    minute_start: Instant,
    minute_count: usize,
    alerted: HashMap<&'static str, Instant>,
}

/// Per-identity windows; one per broker process.
#[derive(Debug, Default)]
pub(super) struct Detector {
    identities: Mutex<HashMap<String, Identity>>,
}

pub(super) fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(Detector::default)
}

impl Detector {
    /// Counts an allowed request and returns the alerts it raises.
    pub(super) fn observe(&self, record: &HttpRequestRecord, now: Instant) -> Vec<Alert> {
        if record.decision != "allow" {
            return Vec::new();
        }
        let mut identities = self.identities.lock().unwrap_or_else(PoisonError::into_inner);
        let state = identities.entry(record.identity.clone()).or_insert_with(|| Identity::new(now));
        state.roll_minutes(now);
        state.recent.push_back(Seen { at: now, prompt: record.body_sha256.clone(), logprobs: record.logprobs });
        while state.recent.front().is_some_and(|s| now.saturating_duration_since(s.at) > WINDOW) {
            state.recent.pop_front();
        }
        state.minute_count += 1;
        state.alerts(&record.identity, now)
    }
}

impl Identity {
    fn new(now: Instant) -> Self {
        Self {
            recent: VecDeque::new(),
            baseline: (0.0, 0),
            minute_start: now,
            minute_count: 0,
            alerted: HashMap::new(),
        }
    }

    fn roll_minutes(&mut self, now: Instant) {
        while now.saturating_duration_since(self.minute_start) >= WINDOW {
            let count = std::mem::take(&mut self.minute_count);
            self.baseline.0 += count as f64;
            self.baseline.1 += 1;
            self.minute_start += WINDOW;
        }
    }

    fn alerts(&mut self, identity: &str, now: Instant) -> Vec<Alert> {
        let requests = self.recent.len();
        let distinct_prompts = self.recent.iter().filter_map(|s| s.prompt.as_deref()).collect::<HashSet<_>>().len();
        let logprobs_requests = self.recent.iter().filter(|s| s.logprobs).count();
        let baseline = (self.baseline.1 >= BASELINE_MIN_MINUTES).then(|| self.baseline.0 / f64::from(self.baseline.1));
        let mut rules = Vec::new();
        if distinct_prompts >= SWEEP_DISTINCT_PROMPTS {
            rules.push("prompt_sweep");
        }
        if logprobs_requests >= LOGPROBS_REQUESTS && logprobs_requests * 2 >= requests {
            rules.push("heavy_logprobs");
        }
        if let Some(per_minute) = baseline
            && requests >= VOLUME_MIN_REQUESTS
            && requests as f64 > VOLUME_FACTOR * per_minute.max(1.0)
        {
            rules.push("volume_above_baseline");
        }
        rules
            .into_iter()
            .filter(|rule| {
                let recent =
                    self.alerted.get(rule).is_some_and(|at| now.saturating_duration_since(*at) < REALERT_AFTER);
                if !recent {
                    self.alerted.insert(rule, now);
                }
                !recent
            })
            .map(|rule| Alert {
                identity: identity.to_owned(),
                rule,
                requests,
                distinct_prompts,
                logprobs_requests,
                baseline_per_minute: baseline,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &str, prompt: &str, logprobs: bool) -> HttpRequestRecord {
        HttpRequestRecord {
            request_id: "r".into(),
            identity: identity.into(),
            session: None,
            service: "llm".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            decision: "allow".into(),
            reason: None,
            policy_ids: Vec::new(),
            model: Some("m".into()),
            logprobs,
            stream: false,
            status: 200,
            prompt_tokens: Some(1),
            completion_tokens: Some(1),
            latency_ms: 1,
            bytes_up: 1,
            bytes_down: 1,
            body_sha256: Some(prompt.into()),
            cut: false,
        }
    }

    fn rules(alerts: &[Alert]) -> Vec<&'static str> {
        alerts.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn a_fast_sweep_of_distinct_prompts_alerts_once_and_repeated_prompts_do_not() {
        let detector = Detector::default();
        let t0 = Instant::now();
        let mut raised = Vec::new();
        for i in 0..150 {
            let at = t0 + Duration::from_millis(i * 100);
            raised.extend(detector.observe(&record("sweeper", &format!("p{i}"), false), at));
            assert!(detector.observe(&record("chatty", "same prompt", false), at).is_empty());
        }
        assert_eq!(rules(&raised), ["prompt_sweep"], "one alert, not one per request");
        assert_eq!(raised[0].distinct_prompts, SWEEP_DISTINCT_PROMPTS);
    }

    #[test]
    fn distinct_prompts_spread_over_time_do_not_alert() {
        let detector = Detector::default();
        let t0 = Instant::now();
        for i in 0..300 {
            let at = t0 + Duration::from_secs(i);
            assert!(detector.observe(&record("steady", &format!("p{i}"), false), at).is_empty(), "request {i}");
        }
    }

    #[test]
    fn heavy_logprobs_use_alerts() {
        let detector = Detector::default();
        let t0 = Instant::now();
        let raised: Vec<Alert> = (0..60)
            .flat_map(|i| detector.observe(&record("prober", "x", true), t0 + Duration::from_millis(i * 200)))
            .collect();
        assert_eq!(rules(&raised), ["heavy_logprobs"]);
    }

    #[test]
    fn volume_far_above_the_own_baseline_alerts() {
        let detector = Detector::default();
        let t0 = Instant::now();
        let mut at = t0;
        for _ in 0..30 {
            at += Duration::from_secs(12);
            assert!(detector.observe(&record("quiet", "x", false), at).is_empty(), "five a minute is its normal");
        }
        let raised: Vec<Alert> = (0..80)
            .flat_map(|i| detector.observe(&record("quiet", "x", false), at + Duration::from_millis(i * 10)))
            .collect();
        assert_eq!(rules(&raised), ["volume_above_baseline"]);
        let baseline = raised[0].baseline_per_minute.expect("a baseline");
        assert!((4.0..6.0).contains(&baseline), "baseline {baseline}");
    }
}
