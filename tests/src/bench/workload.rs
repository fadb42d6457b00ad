//! The five workloads. Each takes one setup through one measurement and
//! returns a [`Sample`]: named values, and every raw observation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::setup::{Network, Role, Setup, SetupId, connect};
use super::stats::percentile;
use super::upstream::{ECHO, EVENTS, SINK, SOURCE, parse_event};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;
const CHUNK: usize = 256 * 1024;
/// How many idle connections are being opened at any moment.
const IDLE_OPEN_PARALLEL: usize = 128;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Bulk, application → upstream.
    BulkUpload,
    /// Bulk, upstream → application.
    BulkDownload,
    /// 1 KiB request/response on one connection.
    Echo,
    /// New connection to the first echoed byte.
    Connect,
    /// A paced server-sent-event stream.
    Sse,
    /// Many idle connections at once.
    Idle,
}

impl Workload {
    /// Every workload, in the order a run measures them.
    pub const ALL: [Workload; 6] = [
        Workload::BulkUpload,
        Workload::BulkDownload,
        Workload::Echo,
        Workload::Connect,
        Workload::Sse,
        Workload::Idle,
    ];

    /// Name used in JSON and progress lines.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::BulkUpload => "bulk_upload",
            Workload::BulkDownload => "bulk_download",
            Workload::Echo => "echo",
            Workload::Connect => "connect",
            Workload::Sse => "sse",
            Workload::Idle => "idle",
        }
    }
}

/// Sizes of the workloads.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    /// Bytes per bulk transfer, each direction.
    pub bulk_bytes: u64,
    /// Request/response round trips.
    pub echo_rounds: usize,
    /// Bytes per echo request.
    pub echo_size: usize,
    /// New connections.
    pub connect_rounds: usize,
    /// Events per SSE stream.
    pub sse_events: u32,
    /// Pause between events, µs (0: as fast as the upstream can write).
    pub sse_interval_us: u32,
    /// Bytes per event.
    pub sse_event_size: u32,
    /// Concurrent idle connections.
    pub idle: usize,
}

/// One measurement of one workload on one setup.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Run number, from 1.
    pub run: usize,
    /// The path.
    pub setup: SetupId,
    /// Over what.
    pub network: Network,
    /// The workload.
    pub workload: Workload,
    /// Named results (`mb_per_s`, `p50_us`, `cpu_s_per_gib.broker`…).
    pub values: BTreeMap<String, f64>,
    /// Every raw observation (`latency_us`, `gap_us`, `delay_us`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub series: BTreeMap<String, Vec<f64>>,
}

impl Sample {
    fn new(run: usize, setup: &Setup, workload: Workload) -> Self {
        Self {
            run,
            setup: setup.id,
            network: setup.network,
            workload,
            values: BTreeMap::new(),
            series: BTreeMap::new(),
        }
    }

    fn value(&mut self, key: impl Into<String>, v: f64) {
        self.values.insert(key.into(), v);
    }

    /// Records p50/p99/max of `samples` (µs) as `{prefix}p50_us`…, and keeps
    /// every sample as series `series`.
    fn distribution(&mut self, prefix: &str, series: &str, samples: Vec<f64>) {
        for (p, label) in [(50.0, "p50"), (99.0, "p99"), (100.0, "max")] {
            if let Some(v) = percentile(&samples, p) {
                self.value(format!("{prefix}{label}_us"), v);
            }
        }
        self.series.insert(series.to_owned(), samples.iter().map(|v| round(*v)).collect());
    }

    /// Records the CPU each tunnel process used, in µs per unit of work, as
    /// `{key}.{role}` and `{key}.total`; nothing for a setup without tunnel
    /// processes (direct TCP).
    fn cpu_per(&mut self, key: &str, used: BTreeMap<Role, f64>, units: usize) {
        if used.is_empty() {
            return;
        }
        let per_unit = |seconds: f64| seconds * 1e6 / units.max(1) as f64;
        let total = used.values().sum();
        for (role, seconds) in used {
            self.value(format!("{key}.{}", role.as_str()), per_unit(seconds));
        }
        self.value(format!("{key}.total"), per_unit(total));
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A workload failed; the message says where.
pub type WorkloadResult = Result<Sample, String>;

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs `workload` once on `setup`, bounded by a deadline that grows with its size.
pub async fn measure(workload: Workload, setup: &Setup, params: &Params, run: usize) -> WorkloadResult {
    let budget = budget(workload, params);
    let work = async {
        match workload {
            Workload::BulkUpload => bulk(setup, params.bulk_bytes, true, run).await,
            Workload::BulkDownload => bulk(setup, params.bulk_bytes, false, run).await,
            Workload::Echo => echo(setup, params, run).await,
            Workload::Connect => connections(setup, params.connect_rounds, run).await,
            Workload::Sse => events(setup, params, run).await,
            Workload::Idle => idle(setup, params.idle, run).await,
        }
    };
    match tokio::time::timeout(budget, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("did not finish within {budget:?}")),
    }
}

fn budget(workload: Workload, p: &Params) -> Duration {
    let base = Duration::from_secs(60);
    base + match workload {
        // At least 5 MB/s, 5 ms per round trip, 50 ms per connection, twice the event schedule.
        Workload::BulkUpload | Workload::BulkDownload => Duration::from_secs(p.bulk_bytes / 5_000_000),
        Workload::Echo => Duration::from_millis(5 * p.echo_rounds as u64),
        Workload::Connect => Duration::from_millis(50 * p.connect_rounds as u64),
        Workload::Sse => Duration::from_micros(2 * u64::from(p.sse_interval_us) * u64::from(p.sse_events)),
        Workload::Idle => Duration::from_millis(10 * p.idle as u64),
    }
}

/// Bulk transfer in one direction; MB/s (10^6 bytes) and CPU-seconds per GiB per tunnel process.
async fn bulk(setup: &Setup, bytes: u64, upload: bool, run: usize) -> WorkloadResult {
    let workload = if upload { Workload::BulkUpload } else { Workload::BulkDownload };
    let payload = crate::random_bytes(CHUNK);
    let cpu_before = setup.cpu();
    let started = Instant::now();
    let mut stream = connect(setup.addr).await.map_err(io("connect"))?;
    let moved = if upload {
        stream.write_all(&[SINK]).await.map_err(io("write the mode"))?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.write_all(&payload[..n]).await.map_err(io("upload"))?;
            left -= n as u64;
        }
        stream.shutdown().await.map_err(io("half-close"))?;
        stream.read_u64().await.map_err(io("read the upstream's count"))?
    } else {
        let mut request = vec![SOURCE];
        request.extend_from_slice(&bytes.to_be_bytes());
        stream.write_all(&request).await.map_err(io("write the request"))?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf).await.map_err(io("download"))? {
                0 => break total,
                n => total += n as u64,
            }
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = setup.cpu();
    if moved != bytes {
        return Err(format!("{moved} bytes arrived instead of {bytes}"));
    }
    let mut sample = Sample::new(run, setup, workload);
    sample.value("seconds", elapsed);
    sample.value("mb_per_s", bytes as f64 / elapsed / 1e6);
    if !setup.processes.is_empty() {
        let gib = bytes as f64 / GIB;
        let mut total = 0.0;
        for (role, used) in cpu_after.used_since(&cpu_before) {
            total += used;
            sample.value(format!("cpu_s_per_gib.{}", role.as_str()), used / gib);
        }
        sample.value("cpu_s_per_gib.total", total / gib);
        sample.value("cpu_s", total);
    }
    Ok(sample)
}

/// Request/response on one established connection.
async fn echo(setup: &Setup, params: &Params, run: usize) -> WorkloadResult {
    let mut stream = connect(setup.addr).await.map_err(io("connect"))?;
    // Warm up: the mode byte and one byte back, so the tunnel is fully open before timing.
    stream.write_all(&[ECHO, b'w']).await.map_err(io("write"))?;
    stream.read_exact(&mut [0u8; 1]).await.map_err(io("read the warm-up byte"))?;
    let request = crate::random_bytes(params.echo_size);
    let mut reply = vec![0u8; params.echo_size];
    let mut latencies = Vec::with_capacity(params.echo_rounds);
    let cpu_before = setup.cpu();
    for _ in 0..params.echo_rounds {
        let sent = Instant::now();
        stream.write_all(&request).await.map_err(io("write a request"))?;
        stream.read_exact(&mut reply).await.map_err(io("read a reply"))?;
        latencies.push(micros(sent.elapsed()));
    }
    if reply != request {
        return Err("the echo came back different".into());
    }
    let cpu_used = setup.cpu().used_since(&cpu_before);
    let mut sample = Sample::new(run, setup, Workload::Echo);
    sample.value("mean_us", latencies.iter().sum::<f64>() / latencies.len().max(1) as f64);
    sample.distribution("", "latency_us", latencies);
    sample.cpu_per("cpu_us_per_round", cpu_used, params.echo_rounds);
    Ok(sample)
}

/// New connections, one after the other: `connect()` to the first echoed byte.
async fn connections(setup: &Setup, rounds: usize, run: usize) -> WorkloadResult {
    let cpu_before = setup.cpu();
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut stream = connect(setup.addr).await.map_err(io("connect"))?;
        stream.write_all(&[ECHO, b'c']).await.map_err(io("write"))?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map_err(io("read the first echoed byte"))?;
        latencies.push(micros(started.elapsed()));
    }
    let cpu_used = setup.cpu().used_since(&cpu_before);
    let mut sample = Sample::new(run, setup, Workload::Connect);
    sample.distribution("", "latency_us", latencies);
    // Includes tearing down the previous connections that overlapped with the next ones.
    sample.cpu_per("cpu_us_per_conn", cpu_used, rounds);
    Ok(sample)
}

/// A paced SSE stream on a new connection: time to the first event, the
/// gaps between arrivals, and each event's delay since the upstream wrote it.
async fn events(setup: &Setup, params: &Params, run: usize) -> WorkloadResult {
    let started = Instant::now();
    let cpu_before = setup.cpu();
    let mut stream = connect(setup.addr).await.map_err(io("connect"))?;
    let mut request = vec![EVENTS];
    for word in [params.sse_events, params.sse_interval_us, params.sse_event_size] {
        request.extend_from_slice(&word.to_be_bytes());
    }
    stream.write_all(&request).await.map_err(io("write the request"))?;

    let mut arrivals: Vec<Instant> = Vec::with_capacity(params.sse_events as usize);
    let mut delays = Vec::with_capacity(params.sse_events as usize);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(io("read events"))?;
        let (now, wall) = (Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let (seq, sent) = parse_event(&pending[..end]).ok_or("an event that does not parse")?;
            if seq as usize != arrivals.len() {
                return Err(format!("event {seq} arrived as number {}", arrivals.len()));
            }
            arrivals.push(now);
            delays.push(wall.saturating_sub(sent) as f64 / 1e3);
            pending.drain(..end + 2);
        }
    }
    let cpu_used = setup.cpu().used_since(&cpu_before);
    if arrivals.len() != params.sse_events as usize {
        return Err(format!("{} of {} events arrived", arrivals.len(), params.sse_events));
    }
    let mut sample = Sample::new(run, setup, Workload::Sse);
    // Opening the connection included: one per stream, as a client would.
    sample.cpu_per("cpu_us_per_event", cpu_used, arrivals.len());
    if let Some(first) = arrivals.first() {
        sample.value("first_event_ms", first.duration_since(started).as_secs_f64() * 1e3);
    }
    let gaps = arrivals.windows(2).map(|w| micros(w[1].duration_since(w[0]))).collect();
    sample.distribution("gap_", "gap_us", gaps);
    sample.distribution("delay_", "delay_us", delays);
    Ok(sample)
}

/// `n` connections opened (each proven with one echoed byte) and held open
/// at once; the tunnel processes' peak RSS.
async fn idle(setup: &Setup, n: usize, run: usize) -> WorkloadResult {
    let reset = setup.reset_peak_rss();
    let rss_before = setup.rss();
    let started = Instant::now();
    let open: Vec<TcpStream> = futures::stream::iter(0..n)
        .map(|_| open_idle(setup))
        .buffer_unordered(IDLE_OPEN_PARALLEL)
        .try_collect()
        .await?;
    let opened = started.elapsed().as_secs_f64();
    let peak = setup.peak_rss();
    let rss_idle = setup.rss();
    drop(open);

    let mut sample = Sample::new(run, setup, Workload::Idle);
    sample.value("connections", n as f64);
    sample.value("open_all_s", opened);
    if reset.is_err() {
        // Without the reset, VmHWM may still hold an earlier workload's peak.
        sample.value("peak_rss_reset_failed", 1.0);
    }
    for (role, bytes) in &peak {
        let role_name = role.as_str();
        let before = rss_before.get(role).copied().unwrap_or(0.0);
        sample.value(format!("peak_rss_mib.{role_name}"), bytes / MIB);
        sample.value(format!("rss_before_mib.{role_name}"), before / MIB);
        sample.value(format!("rss_idle_mib.{role_name}"), rss_idle.get(role).copied().unwrap_or(0.0) / MIB);
        sample.value(format!("kib_per_connection.{role_name}"), (bytes - before).max(0.0) / 1024.0 / n.max(1) as f64);
        if *role == Role::Broker || (*role == Role::Server && setup.id == SetupId::Ssh) {
            // Linear extrapolation for runs with fewer connections than the 10,000.
            let at_10k = before + (bytes - before).max(0.0) * 10_000.0 / n.max(1) as f64;
            sample.value(format!("peak_rss_mib_at_10k.{role_name}"), at_10k / MIB);
        }
    }
    Ok(sample)
}

async fn open_idle(setup: &Setup) -> Result<TcpStream, String> {
    let mut last = String::new();
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        let try_once = async {
            let mut stream = connect(setup.addr).await?;
            stream.write_all(&[ECHO, b'i']).await?;
            stream.read_exact(&mut [0u8; 1]).await?;
            std::io::Result::Ok(stream)
        };
        match tokio::time::timeout(Duration::from_secs(30), try_once).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no echo within 30 s".into(),
        }
    }
    Err(format!("open an idle connection: {last}"))
}
