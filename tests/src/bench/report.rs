//! From samples to the published numbers: the medians of runs, ratios, the
//! issue's targets with pass/fail marks, a markdown table and a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::setup::{Network, SetupId};
use super::stats::Summary;
use super::workload::{Params, Sample, Workload};

/// A naive quinn relay moved about 140 MB/s on this machine class (issue #3).
const NAIVE_RELAY_MB_S: f64 = 140.0;

/// Where and when the numbers were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    /// `nproc`.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// `/proc/loadavg` (1, 5, 15 min) when the benchmark started.
    pub load_average: String,
    /// UTC, RFC 3339.
    pub date: String,
    /// `git describe`-like: the commit, and whether the tree had changes.
    pub commit: String,
    /// The command line.
    pub command: Vec<String>,
    /// Workload sizes.
    pub params: Params,
    /// Interleaved runs.
    pub runs: usize,
}

/// A setup as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SetupInfo {
    /// Which one.
    pub id: SetupId,
    /// Over what.
    pub network: Network,
    /// Column heading.
    pub label: String,
    /// Whether it could be started.
    pub available: bool,
    /// Why not, or anything worth knowing.
    pub note: Option<String>,
}

/// A measurement that failed.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// Run number.
    pub run: usize,
    /// The path.
    pub setup: SetupId,
    /// Over what.
    pub network: Network,
    /// The workload.
    pub workload: Workload,
    /// What went wrong.
    pub error: String,
}

/// Everything one benchmark invocation produced.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Where and when.
    pub header: Header,
    /// The setups, available or not.
    pub setups: Vec<SetupInfo>,
    /// Every measurement.
    pub samples: Vec<Sample>,
    /// Every failed measurement.
    pub failures: Vec<Failure>,
    /// Remarks for the reader (limits lowered, columns left out…).
    pub notes: Vec<String>,
}

/// What a target compares Palisade's median with.
#[derive(Clone, Copy, Debug)]
enum Target {
    None,
    AtMost(f64),
    /// Palisade ≤ factor × ssh.
    AtMostSsh(f64),
    /// Bulk: ≥ 1.5× the naive relay and ≥ 0.3× ssh.
    Bulk,
    /// Broker memory at 10,000 idle tunnels below 1 GiB (extrapolated from fewer).
    BrokerMemory,
}

/// One row of the table.
struct Row {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    workload: Workload,
    key: &'static str,
    /// Whether Palisade / direct means anything (not for CPU or memory: direct has no process).
    vs_direct: bool,
    target: Target,
}

impl Row {
    const fn new(
        id: &'static str,
        workload: Workload,
        key: &'static str,
        unit: &'static str,
        label: &'static str,
    ) -> Row {
        Row { id, label, unit, workload, key, vs_direct: true, target: Target::None }
    }

    /// A row about tunnel processes: direct TCP has none, so no Palisade / direct ratio.
    const fn tunnel(mut self) -> Row {
        self.vs_direct = false;
        self
    }

    const fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }
}

const CPU_GIB: &str = "CPU-s/GiB";
const CPU_CONN: &str = "CPU-µs/conn";
const CPU_ROUND: &str = "CPU-µs/round trip";
const CPU_EVENT: &str = "CPU-µs/event";
const CLIENT: &str = "… client (`palisade connect` / `ssh`)";
const SERVER: &str = "… connector / sshd";

fn rows() -> Vec<Row> {
    use Target::{AtMost, AtMostSsh, BrokerMemory, Bulk};
    use Workload::{BulkDownload as Down, BulkUpload as Up, Connect, Echo, Idle, Sse};
    vec![
        Row::new("bulk_upload_mb_s", Up, "mb_per_s", "MB/s", "bulk upload").target(Bulk),
        Row::new("bulk_download_mb_s", Down, "mb_per_s", "MB/s", "bulk download").target(Bulk),
        Row::new("upload_cpu_total", Up, "cpu_s_per_gib.total", CPU_GIB, "upload: CPU, all tunnel processes")
            .tunnel()
            .target(AtMost(8.0)),
        Row::new("upload_cpu_client", Up, "cpu_s_per_gib.client", CPU_GIB, CLIENT).tunnel(),
        Row::new("upload_cpu_broker", Up, "cpu_s_per_gib.broker", CPU_GIB, "… broker").tunnel().target(AtMost(4.0)),
        Row::new("upload_cpu_server", Up, "cpu_s_per_gib.server", CPU_GIB, SERVER).tunnel(),
        Row::new("download_cpu_total", Down, "cpu_s_per_gib.total", CPU_GIB, "download: CPU, all tunnel processes")
            .tunnel()
            .target(AtMost(8.0)),
        Row::new("download_cpu_client", Down, "cpu_s_per_gib.client", CPU_GIB, CLIENT).tunnel(),
        Row::new("download_cpu_broker", Down, "cpu_s_per_gib.broker", CPU_GIB, "… broker").tunnel().target(AtMost(4.0)),
        Row::new("download_cpu_server", Down, "cpu_s_per_gib.server", CPU_GIB, SERVER).tunnel(),
        Row::new("echo_p50_us", Echo, "p50_us", "µs", "1 KiB echo p50").target(AtMostSsh(1.5)),
        Row::new("echo_p99_us", Echo, "p99_us", "µs", "1 KiB echo p99").target(AtMostSsh(0.1)),
        Row::new("echo_cpu_total", Echo, "cpu_us_per_round.total", CPU_ROUND, "1 KiB echo: CPU, all tunnel processes")
            .tunnel(),
        Row::new("echo_cpu_broker", Echo, "cpu_us_per_round.broker", CPU_ROUND, "… broker").tunnel(),
        Row::new("connect_p50_us", Connect, "p50_us", "µs", "new connection → first echoed byte, p50")
            .target(AtMostSsh(2.0)),
        Row::new("connect_p99_us", Connect, "p99_us", "µs", "new connection → first echoed byte, p99"),
        Row::new(
            "connect_cpu_total",
            Connect,
            "cpu_us_per_conn.total",
            CPU_CONN,
            "new connection: CPU, all tunnel processes",
        )
        .tunnel(),
        Row::new("connect_cpu_broker", Connect, "cpu_us_per_conn.broker", CPU_CONN, "… broker").tunnel(),
        Row::new("sse_first_event_ms", Sse, "first_event_ms", "ms", "SSE: connect → first event"),
        Row::new("sse_gap_p50_us", Sse, "gap_p50_us", "µs", "SSE: inter-event gap p50"),
        Row::new("sse_gap_p99_us", Sse, "gap_p99_us", "µs", "SSE: inter-event gap p99"),
        Row::new("sse_delay_p50_us", Sse, "delay_p50_us", "µs", "SSE: event delay (upstream write → arrival) p50"),
        Row::new("sse_delay_p99_us", Sse, "delay_p99_us", "µs", "SSE: event delay p99"),
        Row::new("sse_cpu_total", Sse, "cpu_us_per_event.total", CPU_EVENT, "SSE: CPU, all tunnel processes").tunnel(),
        Row::new("sse_cpu_broker", Sse, "cpu_us_per_event.broker", CPU_EVENT, "… broker").tunnel(),
        Row::new("idle_open_s", Idle, "open_all_s", "s", "idle: open all connections"),
        Row::new(
            "idle_rss_client_mib",
            Idle,
            "peak_rss_mib.client",
            "MiB",
            "idle: peak RSS, client (`palisade connect` / `ssh`)",
        )
        .tunnel(),
        Row::new("idle_rss_broker_mib", Idle, "peak_rss_mib.broker", "MiB", "idle: peak RSS, broker")
            .tunnel()
            .target(BrokerMemory),
        Row::new(
            "idle_rss_server_mib",
            Idle,
            "peak_rss_mib.server",
            "MiB",
            "idle: peak RSS, connector / sshd (all processes)",
        )
        .tunnel(),
    ]
}

/// The rows measured over the veth pair.
fn veth_row(r: &Row) -> bool {
    matches!(r.workload, Workload::BulkUpload | Workload::BulkDownload | Workload::Echo)
}

/// A row's numbers for one network.
#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    /// Stable id.
    pub id: &'static str,
    /// Over what.
    pub network: Network,
    /// What the row says.
    pub label: &'static str,
    /// Unit of every value.
    pub unit: &'static str,
    /// The workload it comes from, and the key of the sample value.
    pub workload: Workload,
    /// Key in each sample's values.
    pub key: &'static str,
    /// Per setup: median of the runs, min, max and each run.
    pub values: BTreeMap<SetupId, Summary>,
    /// `palisade_over_ssh`, `palisade_over_direct` (of the medians).
    pub ratios: BTreeMap<&'static str, f64>,
    /// The target for Palisade, and whether this run meets it.
    pub target: Option<TargetResult>,
}

/// A target and its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    /// The target in words.
    pub text: String,
    /// `None` when it cannot be judged (ssh missing).
    pub pass: Option<bool>,
}

impl Results {
    /// Every row with its summaries, for each network measured.
    #[must_use]
    pub fn metrics(&self) -> Vec<Metric> {
        let networks: Vec<Network> = {
            let mut n: Vec<Network> = self.samples.iter().map(|s| s.network).collect();
            n.sort();
            n.dedup();
            n
        };
        let mut out = Vec::new();
        for network in networks {
            for r in rows().iter().filter(|r| network == Network::Loopback || veth_row(r)) {
                let metric = self.metric(r, network);
                // A workload left out (--workloads) or a setup missing leaves rows with nothing to show.
                if !metric.values.is_empty() {
                    out.push(metric);
                }
            }
        }
        out
    }

    fn metric(&self, r: &Row, network: Network) -> Metric {
        let mut values = BTreeMap::new();
        for setup in [SetupId::Direct, SetupId::Palisade, SetupId::Ssh] {
            let runs: Vec<f64> = self
                .samples
                .iter()
                .filter(|s| s.setup == setup && s.network == network && s.workload == r.workload)
                .filter_map(|s| s.values.get(r.key).copied())
                .collect();
            if let Some(summary) = Summary::of(runs) {
                values.insert(setup, summary);
            }
        }
        let median = |s: SetupId| values.get(&s).map(|v: &Summary| v.median);
        let mut ratios = BTreeMap::new();
        if let (Some(p), Some(s)) = (median(SetupId::Palisade), median(SetupId::Ssh))
            && s > 0.0
        {
            ratios.insert("palisade_over_ssh", p / s);
        }
        if let (true, Some(p), Some(d)) = (r.vs_direct, median(SetupId::Palisade), median(SetupId::Direct))
            && d > 0.0
        {
            ratios.insert("palisade_over_direct", p / d);
        }
        let target = self.judge(r, network, median(SetupId::Palisade), median(SetupId::Ssh));
        Metric {
            id: r.id,
            network,
            label: r.label,
            unit: r.unit,
            workload: r.workload,
            key: r.key,
            values,
            ratios,
            target,
        }
    }

    fn judge(&self, r: &Row, network: Network, palisade: Option<f64>, ssh: Option<f64>) -> Option<TargetResult> {
        let (text, pass) = match r.target {
            Target::None => return None,
            Target::AtMost(limit) => (format!("≤ {limit}"), palisade.map(|p| p <= limit)),
            Target::AtMostSsh(factor) => match ssh {
                Some(s) => {
                    (format!("≤ {factor}× ssh (≤ {} {})", num(s * factor), r.unit), palisade.map(|p| p <= s * factor))
                }
                None => (format!("≤ {factor}× ssh"), None),
            },
            Target::Bulk => {
                let floor = 1.5 * NAIVE_RELAY_MB_S;
                match ssh {
                    Some(s) => {
                        let need = floor.max(0.3 * s);
                        (
                            format!("≥ 1.5× naive relay ({}) and ≥ 0.3× ssh ({})", num(floor), num(0.3 * s)),
                            palisade.map(|p| p >= need),
                        )
                    }
                    None => (format!("≥ 1.5× naive relay ({}); ≥ 0.3× ssh", num(floor)), palisade.map(|p| p >= floor)),
                }
            }
            Target::BrokerMemory => {
                let at_10k =
                    self.median_value(SetupId::Palisade, network, Workload::Idle, "peak_rss_mib_at_10k.broker");
                let measured_10k = self.header.params.idle >= 10_000;
                let text = if measured_10k {
                    "< 1024 MiB at 10,000".to_owned()
                } else {
                    format!("< 1024 MiB at 10,000 (extrapolated: {} MiB)", at_10k.map_or("?".into(), num))
                };
                (text, at_10k.map(|m| m < 1024.0))
            }
        };
        Some(TargetResult { text, pass })
    }

    fn median_value(&self, setup: SetupId, network: Network, workload: Workload, key: &str) -> Option<f64> {
        let runs = self
            .samples
            .iter()
            .filter(|s| s.setup == setup && s.network == network && s.workload == workload)
            .filter_map(|s| s.values.get(key).copied())
            .collect();
        Summary::of(runs).map(|s| s.median)
    }

    /// What each workload that was measured (or failed) did, for the header.
    fn workloads_line(&self) -> String {
        let p = &self.header.params;
        let ran =
            |w: Workload| self.samples.iter().any(|s| s.workload == w) || self.failures.iter().any(|f| f.workload == w);
        let interval = match p.sse_interval_us {
            0 => "as fast as the upstream writes".to_owned(),
            us => format!("one every {us} µs"),
        };
        let parts = [
            (ran(Workload::BulkUpload) || ran(Workload::BulkDownload))
                .then(|| format!("bulk {} MiB each way", p.bulk_bytes / (1024 * 1024))),
            ran(Workload::Echo).then(|| format!("{} × {} B echo on one connection", p.echo_rounds, p.echo_size)),
            ran(Workload::Connect).then(|| format!("{} new connections", p.connect_rounds)),
            ran(Workload::Sse).then(|| format!("{} SSE events of {} B, {interval}", p.sse_events, p.sse_event_size)),
            ran(Workload::Idle).then(|| format!("{} idle connections", p.idle)),
        ];
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        if parts.is_empty() { "none".to_owned() } else { parts.join("; ") }
    }

    /// The report as markdown: a header naming the machine, one table per network, notes.
    #[must_use]
    pub fn markdown(&self) -> String {
        let h = &self.header;
        let mut md = String::new();
        let _ = writeln!(md, "## Palisade benchmark\n");
        let _ = writeln!(
            md,
            "- machine: {} × {} (`nproc` {}), {} MiB RAM, Linux {}; load average at start {}",
            h.nproc, h.cpu_model, h.nproc, h.memory_mib, h.kernel, h.load_average
        );
        let _ = writeln!(md, "- date: {}; commit: {}", h.date, h.commit);
        let _ = writeln!(md, "- workloads: {}", self.workloads_line());
        let _ = writeln!(
            md,
            "- {} interleaved run(s); each cell is the median of the runs, (min–max) when they differ; MB/s = 10^6 bytes/s",
            h.runs
        );
        let _ = writeln!(md, "- command: `{}`", h.command.join(" "));
        let metrics = self.metrics();
        for network in [Network::Loopback, Network::Veth] {
            let rows: Vec<&Metric> = metrics.iter().filter(|m| m.network == network).collect();
            if rows.is_empty() {
                continue;
            }
            let title = match network {
                Network::Loopback => "Loopback (127.0.0.1)",
                Network::Veth => "Over a veth pair between two network namespaces, MTU 1500",
            };
            let _ = writeln!(md, "\n### {title}\n");
            md.push_str(&self.table(&rows, network));
        }
        if !self.notes.is_empty() || !self.failures.is_empty() {
            let _ = writeln!(md, "\n### Notes\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
            for f in &self.failures {
                let _ = writeln!(
                    md,
                    "- FAILED: run {} {} {} ({}): {}",
                    f.run,
                    f.workload.as_str(),
                    f.setup.as_str(),
                    f.network.as_str(),
                    f.error
                );
            }
        }
        md
    }

    fn table(&self, rows: &[&Metric], network: Network) -> String {
        let setups: Vec<&SetupInfo> = self.setups.iter().filter(|s| s.available && s.network == network).collect();
        let has = |id: SetupId| setups.iter().any(|s| s.id == id);
        let mut md = String::from("| metric | unit |");
        for s in &setups {
            let _ = write!(md, " {} |", s.label);
        }
        if has(SetupId::Ssh) {
            md.push_str(" Palisade / ssh |");
        }
        md.push_str(" Palisade / direct | target (Palisade) |\n|---|---|");
        for _ in 0..setups.len() + usize::from(has(SetupId::Ssh)) + 1 {
            md.push_str("---:|");
        }
        md.push_str("---|\n");
        for m in rows {
            let _ = write!(md, "| {} | {} |", m.label, m.unit);
            for s in &setups {
                let _ = write!(md, " {} |", m.values.get(&s.id).map_or("—".into(), cell));
            }
            let ratio = |k| m.ratios.get(k).map_or("—".into(), |r: &f64| format!("{:.2}×", r));
            if has(SetupId::Ssh) {
                let _ = write!(md, " {} |", ratio("palisade_over_ssh"));
            }
            let _ = write!(md, " {} |", ratio("palisade_over_direct"));
            let target = m.target.as_ref().map_or(String::new(), |t| {
                let mark = match t.pass {
                    Some(true) => "✅ ",
                    Some(false) => "❌ ",
                    None => "n/a ",
                };
                format!("{mark}{}", t.text)
            });
            let _ = writeln!(md, " {target} |");
        }
        md
    }
}

fn cell(s: &Summary) -> String {
    if s.runs.len() > 1 && num(s.min) != num(s.max) {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    } else {
        num(s.median)
    }
}

/// About three significant digits.
#[must_use]
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The JSON file: header, setups, every metric, every sample.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    /// Bumped when the layout changes.
    pub schema_version: u32,
    /// Where and when.
    pub header: &'a Header,
    /// The setups, available or not.
    pub setups: &'a [SetupInfo],
    /// Every row, summarised.
    pub metrics: Vec<Metric>,
    /// Every measurement, with every raw observation.
    pub samples: &'a [Sample],
    /// Failed measurements.
    pub failures: &'a [Failure],
    /// Remarks.
    pub notes: &'a [String],
}

impl Results {
    /// The JSON report.
    #[must_use]
    pub fn json(&self) -> JsonReport<'_> {
        JsonReport {
            schema_version: 1,
            header: &self.header,
            setups: &self.setups,
            metrics: self.metrics(),
            samples: &self.samples,
            failures: &self.failures,
            notes: &self.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(workloads: &[Workload]) -> Results {
        let params = Params {
            bulk_bytes: 1 << 30,
            echo_rounds: 10_000,
            echo_size: 1024,
            connect_rounds: 500,
            sse_events: 1000,
            sse_interval_us: 1000,
            sse_event_size: 100,
            idle: 10_000,
        };
        let header = Header {
            nproc: 2,
            cpu_model: "test".into(),
            kernel: "6".into(),
            memory_mib: 1,
            load_average: "0 0 0".into(),
            date: "now".into(),
            commit: "abc".into(),
            command: vec!["palisade-bench".into()],
            params,
            runs: 1,
        };
        let samples = workloads
            .iter()
            .map(|&workload| Sample {
                run: 1,
                setup: SetupId::Direct,
                network: Network::Loopback,
                workload,
                values: BTreeMap::new(),
                series: BTreeMap::new(),
            })
            .collect();
        Results { header, setups: Vec::new(), samples, failures: Vec::new(), notes: Vec::new() }
    }

    #[test]
    fn the_header_names_only_the_workloads_that_ran() {
        let md = results(&[Workload::BulkUpload, Workload::Echo]).markdown();
        assert!(md.contains("- workloads: bulk 1024 MiB each way; 10000 × 1024 B echo on one connection\n"), "{md}");
        let all = results(&Workload::ALL).markdown();
        assert!(
            all.contains("500 new connections; 1000 SSE events of 100 B, one every 1000 µs; 10000 idle connections\n")
        );
    }
}
