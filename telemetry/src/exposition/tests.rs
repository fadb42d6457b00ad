use super::*;

static REQUESTS: Family<Counter> = Family::new(&["service", "status"], Counter::new);
static LATENCY: Histogram<3> = Histogram::new([0.1, 0.5, 1.0]);
static BY_SERVICE: Family<Histogram<2>> = Family::new(&["service"], || Histogram::new([1.0, 2.0]));
static LINKED: Gauge = Gauge::new();

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn counters_and_gauges_have_help_type_and_value() {
    let counter = Counter::new();
    counter.inc();
    counter.add(41);
    let gauge = Gauge::new();
    gauge.inc();
    gauge.dec();
    gauge.dec();
    static C: Counter = Counter::new();
    C.add(3);
    LINKED.set(-2);
    let text = encode(&[
        Series { name: "x_total", help: "How many.", metric: &C },
        Series { name: "linked", help: "Links.", metric: &LINKED },
    ]);
    assert_eq!(
        lines(&text),
        [
            "# HELP x_total How many.",
            "# TYPE x_total counter",
            "x_total 3",
            "# HELP linked Links.",
            "# TYPE linked gauge",
            "linked -2"
        ]
    );
    assert_eq!((counter.get(), gauge.get()), (42, -1));
}

#[test]
fn label_values_are_escaped() {
    REQUESTS.get(&["a\\b\"c\nd", "200"]).inc();
    let text = encode(&[Series { name: "req_total", help: "back\\slash\nnewline", metric: &REQUESTS }]);
    assert!(text.contains("# HELP req_total back\\\\slash\\nnewline\n"), "{text}");
    assert!(text.contains("req_total{service=\"a\\\\b\\\"c\\nd\",status=\"200\"} 1\n"), "{text}");
}

#[test]
fn family_members_are_separate_and_sorted() {
    static F: Family<Counter> = Family::new(&["result"], Counter::new);
    F.get(&["denied"]).inc();
    F.get(&["allowed"]).add(2);
    F.get(&["denied"]).inc();
    let text = encode(&[Series { name: "opens_total", help: "h", metric: &F }]);
    assert_eq!(&lines(&text)[2..], ["opens_total{result=\"allowed\"} 2", "opens_total{result=\"denied\"} 2"]);
}

#[test]
fn histogram_buckets_are_cumulative_and_end_in_inf() {
    // 0.5 sits exactly on a bound: buckets are `le`, less than or equal.
    for v in [0.0625, 0.5, 0.25, 0.75, 4.0] {
        LATENCY.observe(v);
    }
    let text = encode(&[Series { name: "lat_seconds", help: "h", metric: &LATENCY }]);
    assert_eq!(
        &lines(&text)[2..],
        [
            "lat_seconds_bucket{le=\"0.1\"} 1",
            "lat_seconds_bucket{le=\"0.5\"} 3",
            "lat_seconds_bucket{le=\"1\"} 4",
            "lat_seconds_bucket{le=\"+Inf\"} 5",
            "lat_seconds_sum 5.5625",
            "lat_seconds_count 5",
        ]
    );
}

#[test]
fn labelled_histograms_put_le_after_their_labels() {
    BY_SERVICE.get(&["llm"]).observe_duration(Duration::from_millis(1500));
    let text = encode(&[Series { name: "connect_seconds", help: "h", metric: &BY_SERVICE }]);
    assert!(text.contains("connect_seconds_bucket{service=\"llm\",le=\"1\"} 0\n"), "{text}");
    assert!(text.contains("connect_seconds_bucket{service=\"llm\",le=\"2\"} 1\n"), "{text}");
    assert!(text.contains("connect_seconds_bucket{service=\"llm\",le=\"+Inf\"} 1\n"), "{text}");
    assert!(text.contains("connect_seconds_sum{service=\"llm\"} 1.5\n"), "{text}");
    assert!(text.contains("connect_seconds_count{service=\"llm\"} 1\n"), "{text}");
}

#[test]
fn a_family_with_no_members_writes_only_help_and_type() {
    static EMPTY: Family<Gauge> = Family::new(&["connector"], Gauge::new);
    let text = encode(&[Series { name: "links", help: "h", metric: &EMPTY }]);
    assert_eq!(lines(&text), ["# HELP links h", "# TYPE links gauge"]);
}
