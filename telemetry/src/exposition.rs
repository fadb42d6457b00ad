//! Metrics in atomics, written in the Prometheus text exposition format,
//! version 0.0.4 (`text/plain; version=0.0.4`).
//!
//! A program declares its metrics as `static`s and lists them once as
//! [`Series`] (name, help, metric); [`encode`] writes that list. Labelled
//! metrics are a [`Family`]: one metric per distinct tuple of label values.
//! Label values must come from a bounded set (configured service names,
//! reason codes), never from what a user typed.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric of one series: a counter, a gauge or a histogram.
pub trait Metric: Send + Sync {
    /// The `# TYPE` of the series.
    const KIND: &'static str;
    /// Writes this metric's sample lines with the given labels.
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String);
}

/// Something that writes all the sample lines of one series.
pub trait Collect: Sync {
    /// The `# TYPE` of the series.
    fn kind(&self) -> &'static str;
    /// Writes every sample line of the series.
    fn write_all(&self, name: &str, out: &mut String);
}

/// A named, documented series, as listed by a program.
pub struct Series {
    /// The metric name, e.g. `palisade_relay_bytes_total`.
    pub name: &'static str,
    /// One line saying what it measures.
    pub help: &'static str,
    /// The metric (or family) itself.
    pub metric: &'static dyn Collect,
}

/// Writes every series: `# HELP`, `# TYPE`, then its samples.
#[must_use]
pub fn encode(series: &[Series]) -> String {
    let mut out = String::with_capacity(4096);
    for s in series {
        let _ = writeln!(out, "# HELP {} {}", s.name, escape_help(s.help));
        let _ = writeln!(out, "# TYPE {} {}", s.name, s.metric.kind());
        s.metric.write_all(s.name, &mut out);
    }
    out
}

/// A value that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    #[must_use]
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metric for Counter {
    const KIND: &'static str = "counter";
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        sample(out, name, "", labels, None, self.get());
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    #[must_use]
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    #[must_use]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metric for Gauge {
    const KIND: &'static str = "gauge";
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        sample(out, name, "", labels, None, self.get());
    }
}

/// Observations counted into `N` fixed buckets (upper bounds, ascending) and `+Inf`.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Per bucket, not cumulative: observations in `(bounds[i-1], bounds[i]]`.
    buckets: [AtomicU64; N],
    count: AtomicU64,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// A histogram with these upper bounds.
    ///
    /// # Panics
    /// If the bounds do not strictly ascend (at compile time for a `static`).
    #[must_use]
    pub const fn new(bounds: [f64; N]) -> Self {
        let mut i = 1;
        while i < N {
            assert!(bounds[i - 1] < bounds[i], "histogram bounds must strictly ascend");
            i += 1;
        }
        Self { bounds, buckets: [const { AtomicU64::new(0) }; N], count: AtomicU64::new(0), sum: AtomicU64::new(0) }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// How many observations there were.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of all observations.
    #[must_use]
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

impl<const N: usize> Metric for Histogram<N> {
    const KIND: &'static str = "histogram";
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        let mut cumulative = 0u64;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            sample(out, name, "_bucket", labels, Some(("le", &bound.to_string())), cumulative);
        }
        // Read after the buckets: an observation in flight may show in a bucket
        // before the count; +Inf must never be below a finite bucket.
        let count = self.count().max(cumulative);
        sample(out, name, "_bucket", labels, Some(("le", "+Inf")), count);
        sample(out, name, "_sum", labels, None, self.sum());
        sample(out, name, "_count", labels, None, count);
    }
}

/// One metric per distinct tuple of label values, created on first use.
pub struct Family<M> {
    labels: &'static [&'static str],
    make: fn() -> M,
    series: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Metric> Family<M> {
    /// A family with these label names; `make` creates each new member.
    #[must_use]
    pub const fn new(labels: &'static [&'static str], make: fn() -> M) -> Self {
        Self { labels, make, series: Mutex::new(BTreeMap::new()) }
    }

    /// The metric for these label values (one per label name, in order),
    /// created at zero if it is new. Missing values are empty, extra ones ignored.
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.labels.len(), "label values for {:?}", self.labels);
        let key: Vec<String> =
            (0..self.labels.len()).map(|i| values.get(i).copied().unwrap_or_default().to_owned()).collect();
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.entry(key).or_insert_with(|| Arc::new((self.make)())).clone()
    }
}

impl<M: Metric> Collect for Family<M> {
    fn kind(&self) -> &'static str {
        M::KIND
    }
    fn write_all(&self, name: &str, out: &mut String) {
        let members: Vec<(Vec<String>, Arc<M>)> = {
            let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (values, metric) in members {
            let labels: Vec<(&str, &str)> =
                self.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            metric.write(name, &labels, out);
        }
    }
}

macro_rules! collect_single {
    ($($t:ty),*) => {$(
        impl Collect for $t {
            fn kind(&self) -> &'static str {
                <Self as Metric>::KIND
            }
            fn write_all(&self, name: &str, out: &mut String) {
                self.write(name, &[], out);
            }
        }
    )*};
}
collect_single!(Counter, Gauge);

impl<const N: usize> Collect for Histogram<N> {
    fn kind(&self) -> &'static str {
        <Self as Metric>::KIND
    }
    fn write_all(&self, name: &str, out: &mut String) {
        self.write(name, &[], out);
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: impl Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(extra);
    let mut first = true;
    for (label, v) in all {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{label}=\"{}\"", escape_label(v));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A `# HELP` text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests;
