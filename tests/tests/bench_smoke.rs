//! The benchmark program in a tiny configuration, so it cannot rot: it must
//! start everything, measure every workload on every setup it could start,
//! exit 0 and write a well-formed table and JSON. Nothing here is about speed.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does).

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

const RUNS: usize = 2;
/// Workloads per run: bulk upload, bulk download, echo, connect, sse, idle.
const WORKLOADS: usize = 6;

/// Rows that every available setup must fill with a finite, positive number.
const EVERY_SETUP: &[&str] = &[
    "bulk_upload_mb_s",
    "bulk_download_mb_s",
    "echo_p50_us",
    "echo_p99_us",
    "connect_p50_us",
    "connect_p99_us",
    "sse_first_event_ms",
    "sse_gap_p50_us",
    "sse_gap_p99_us",
    "sse_delay_p50_us",
    "sse_delay_p99_us",
    "idle_open_s",
];

/// Rows about tunnel processes: Palisade (and ssh) only.
const TUNNEL_ONLY: &[&str] = &[
    "upload_cpu_total",
    "download_cpu_total",
    "echo_cpu_total",
    "sse_cpu_total",
    "idle_rss_client_mib",
    "idle_rss_server_mib",
];

/// Rows only Palisade has.
const PALISADE_ONLY: &[&str] = &["idle_rss_broker_mib"];

/// Per-process CPU rows: a tiny transfer may cost a process less than one clock tick.
const MAY_BE_ZERO: &[&str] = &[
    "upload_cpu_client",
    "upload_cpu_broker",
    "upload_cpu_server",
    "download_cpu_client",
    "download_cpu_broker",
    "download_cpu_server",
    "connect_cpu_total",
    "connect_cpu_broker",
    "echo_cpu_broker",
    "sse_cpu_broker",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_benchmark_writes_a_well_formed_table_and_json() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-bench"));
    cmd.args(["--bulk-mib", "4", "--echo-rounds", "300", "--connect-rounds", "50", "--sse-events", "100"])
        .args(["--idle", "20", "--runs", &RUNS.to_string(), "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(600), cmd.output()).await;
    let output = run.expect("the tiny benchmark finishes within 10 minutes").expect("palisade-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "palisade-bench failed ({}):\n{stdout}\n{stderr}", output.status);

    let markdown = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(stdout.contains(markdown.trim()), "the table is printed on stdout too");
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).expect("results.json is JSON");

    let available: Vec<String> = json["setups"]
        .as_array()
        .expect("setups")
        .iter()
        .filter(|s| s["available"] == true && s["network"] == "loopback")
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(available.contains(&"direct".to_owned()) && available.contains(&"palisade".to_owned()), "{available:?}");
    assert_table_is_well_formed(&markdown, &json, &available);
    assert_metrics(&json, &available);

    assert_eq!(json["failures"].as_array().map(Vec::len), Some(0), "{}", json["failures"]);
    let samples = json["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), RUNS * WORKLOADS * available.len(), "one sample per run, workload and setup");
    let echo = samples.iter().find(|s| s["workload"] == "echo" && s["setup"] == "palisade").expect("an echo sample");
    assert_eq!(echo["series"]["latency_us"].as_array().map(Vec::len), Some(300), "every round trip is kept");
    let header = &json["header"];
    assert!(header["nproc"].as_u64().is_some_and(|n| n > 0), "{header}");
    assert!(header["cpu_model"].as_str().is_some_and(|m| !m.is_empty()), "{header}");
}

fn assert_table_is_well_formed(markdown: &str, json: &Value, available: &[String]) {
    let labels: Vec<&str> = json["setups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["available"] == true && s["network"] == "loopback")
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    let table: Vec<&str> =
        markdown.lines().skip_while(|l| !l.starts_with("| metric |")).take_while(|l| l.starts_with('|')).collect();
    assert!(table.len() > 2, "a table with a header, a separator and rows:\n{markdown}");
    let header = table[0];
    for label in &labels {
        assert!(header.contains(label), "the header names {label}: {header}");
    }
    assert!(header.contains("Palisade / direct") && header.contains("target"), "{header}");
    let columns = header.matches('|').count();
    for line in &table {
        assert_eq!(line.matches('|').count(), columns, "every row has {columns} separators: {line}");
    }
    for needle in ["bulk upload", "bulk download", "1 KiB echo p50", "1 KiB echo p99", "new connection", "SSE", "idle"]
    {
        assert!(table.iter().any(|l| l.contains(needle)), "a row for {needle}:\n{markdown}");
    }
    assert!(markdown.contains("nproc") && markdown.contains("commit"), "the header names machine and commit");
    assert!(available.len() == labels.len());
}

fn assert_metrics(json: &Value, available: &[String]) {
    let metrics = json["metrics"].as_array().expect("metrics");
    let metric = |id: &str| {
        metrics.iter().find(|m| m["id"] == id && m["network"] == "loopback").unwrap_or_else(|| panic!("no metric {id}"))
    };
    let median = |id: &str, setup: &str| -> f64 {
        let m = metric(id);
        let v = &m["values"][setup];
        let median = v["median"].as_f64().unwrap_or_else(|| panic!("{id} has no median for {setup}: {m}"));
        assert!(median.is_finite(), "{id}/{setup}: {median}");
        for key in ["min", "max"] {
            assert!(v[key].as_f64().is_some_and(f64::is_finite), "{id}/{setup} {key}: {v}");
        }
        median
    };
    for setup in available {
        for id in EVERY_SETUP {
            assert!(median(id, setup) > 0.0, "{id} for {setup} must be positive");
        }
        if setup != "direct" {
            for id in TUNNEL_ONLY {
                assert!(median(id, setup) > 0.0, "{id} for {setup} must be positive");
            }
        }
    }
    for id in PALISADE_ONLY {
        assert!(median(id, "palisade") > 0.0, "{id} must be positive");
    }
    for id in MAY_BE_ZERO {
        assert!(median(id, "palisade") >= 0.0, "{id} must not be negative");
    }
    let bulk = metric("bulk_upload_mb_s");
    assert!(bulk["target"]["text"].as_str().is_some_and(|t| !t.is_empty()), "targets are stated: {bulk}");
    assert!(bulk["ratios"]["palisade_over_direct"].as_f64().is_some_and(|r| r.is_finite() && r > 0.0), "{bulk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_control_plane_benchmark_writes_a_well_formed_table_and_json() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-bench"));
    cmd.args(["--control-plane", "--issuances", "6", "--sign-ins", "4", "--concurrency", "2", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(300), cmd.output()).await;
    let output =
        run.expect("the tiny control-plane benchmark finishes within 5 minutes").expect("palisade-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "palisade-bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let markdown = std::fs::read_to_string(out.path().join("control-plane.md")).expect("control-plane.md");
    assert!(stdout.contains(markdown.trim()), "the table is printed on stdout too");
    for operation in ["| issuance | 6 |", "| sign-in | 4 |"] {
        assert!(markdown.contains(operation), "no row starting {operation:?}:\n{markdown}");
    }
    let json: Value = serde_json::from_slice(&std::fs::read(out.path().join("control-plane.json")).unwrap()).unwrap();
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{json}");
    for r in results {
        for key in ["per_second", "p50_ms", "p99_ms"] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{key} of {} is {v}", r["operation"]);
        }
        // A few operations may cost the broker less than one 10 ms clock tick.
        let cpu = r["broker_cpu_ms"].as_f64().unwrap_or(f64::NAN);
        assert!(cpu.is_finite() && cpu >= 0.0, "broker_cpu_ms of {} is {cpu}", r["operation"]);
        assert!(r["p99_ms"].as_f64() >= r["p50_ms"].as_f64(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_llm_benchmark_streams_through_every_setup_and_writes_a_table() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-bench"));
    cmd.args(["--llm", "--llm-requests", "4", "--llm-tokens", "20", "--token-interval-us", "200", "--runs", "1"])
        .arg("--out")
        .arg(out.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(300), cmd.output()).await;
    let output = run.expect("the tiny LLM benchmark finishes within 5 minutes").expect("palisade-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "palisade-bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let markdown = std::fs::read_to_string(out.path().join("llm.md")).expect("llm.md");
    assert!(stdout.contains(markdown.trim()), "the table is printed on stdout too");
    let table: Vec<&str> = markdown.lines().filter(|l| l.starts_with('|')).collect();
    let columns = table[0].matches('|').count();
    assert!(table.iter().all(|l| l.matches('|').count() == columns), "{markdown}");
    for label in ["direct", "Palisade, TCP service", "Palisade, HTTP-aware service", "HTTP-aware − TCP"] {
        assert!(table[0].contains(label), "the header names {label}:\n{markdown}");
    }
    let json: Value = serde_json::from_slice(&std::fs::read(out.path().join("llm.json")).unwrap()).unwrap();
    let samples = json["samples"].as_array().expect("samples");
    for path in ["direct", "palisade_tcp", "palisade_http"] {
        let sample = samples.iter().find(|s| s["path"] == path).unwrap_or_else(|| panic!("no sample for {path}"));
        for key in ["first_token_p50_ms", "delay_p99_us", "whole_p50_ms"] {
            let v = sample["values"][key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{key} of {path} is {v}");
        }
        // Tokens that arrive in one read have no gap between them.
        assert!(sample["values"]["gap_p99_us"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{sample}");
        // 20 tokens 200 µs apart: the whole answer cannot come faster than the upstream paces it.
        assert!(sample["values"]["whole_p50_ms"].as_f64().unwrap() >= 3.8, "{sample}");
    }
    let http = samples.iter().find(|s| s["path"] == "palisade_http").unwrap();
    assert!(http["values"]["cpu_us_per_request.server"].as_f64().is_some_and(|v| v >= 0.0), "{http}");
}
