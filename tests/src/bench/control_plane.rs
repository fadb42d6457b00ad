//! The control plane's throughput: certificate issuances and sign-ins per
//! second, and the broker's CPU per operation (the server-side cost, which is
//! what sizes a broker; wall-clock rates on a shared 2-core machine also pay
//! for the load generator and, for sign-ins, the identity provider).
//!
//! Issuance: one-time machine tokens are created before the clock starts
//! (through the broker's CLI, as an admin would); then `concurrency` tasks
//! redeem them at `POST /api/v1/enroll` with fresh P-256 CSRs. Every
//! issuance is a new identity, a CA signature, a self-check of the issued
//! certificate and a durable audit event.
//!
//! Sign-in: people sign in once first (registering their passkey, not
//! measured); then `concurrency` headless browsers sign in again and again
//! through the real OpenID provider and the broker's WebAuthn
//! authentication, each ending with a portal session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use serde::Serialize;

use super::procfs;
use crate::browser::{Browser, Passkey};
use crate::env::TestEnv;
use crate::{Broker, OidcProvider, csr_pem};

/// Sizes of the control-plane run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ControlParams {
    /// Certificates issued.
    pub issuances: usize,
    /// Sign-ins measured.
    pub sign_ins: usize,
    /// Operations in flight at once.
    pub concurrency: usize,
}

/// What one operation kind measured.
#[derive(Clone, Debug, Serialize)]
pub struct ControlResult {
    /// `issuance` or `sign-in`.
    pub operation: &'static str,
    /// Operations completed.
    pub count: usize,
    /// Completed per wall-clock second.
    pub per_second: f64,
    /// Broker CPU per operation, milliseconds.
    pub broker_cpu_ms: f64,
    /// What one broker core could sustain: 1000 / `broker_cpu_ms`.
    pub per_broker_core_second: f64,
    /// Latency of one operation, p50 and p99, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
}

/// Runs both measurements and returns them with a markdown table.
///
/// # Errors
/// The broker or the provider did not start, or an operation failed.
pub async fn run(params: ControlParams) -> anyhow::Result<(Vec<ControlResult>, String)> {
    let env = TestEnv::new();
    let provider = OidcProvider::shared().await;
    let broker = env.broker().oidc(&provider).spawn().await;
    let pid = broker.process().pid().ok_or_else(|| anyhow::anyhow!("the broker exited at start"))?;
    let broker = Arc::new(broker);
    let issuance = issuances(&broker, pid, params).await?;
    let sign_in = sign_ins(&broker, &provider, pid, params).await?;
    let results = vec![issuance, sign_in];
    let table = markdown(&results, params);
    Ok((results, table))
}

async fn issuances(broker: &Arc<Broker>, pid: u32, params: ControlParams) -> anyhow::Result<ControlResult> {
    eprintln!("control plane: creating {} enrollment tokens", params.issuances);
    let mut work = Vec::with_capacity(params.issuances);
    for i in 0..params.issuances {
        let token = broker.machine_token(&format!("bench-agent-{i}"), &["bench"], None).await;
        work.push((token, csr_pem(&CertificateParams::default(), &KeyPair::generate()?)));
    }
    let api = broker.enroll_api(&work[0].0);
    let queue = Arc::new(std::sync::Mutex::new(work));
    eprintln!("control plane: issuing {} certificates, {} at a time", params.issuances, params.concurrency);
    let measured = measure(pid, params.concurrency, |_| {
        let (api, queue) = (api.clone(), queue.clone());
        async move {
            let mut latencies = Vec::new();
            while let Some((token, csr)) = pop(&queue) {
                let started = Instant::now();
                let answer = api.enroll(&token, &csr).await;
                anyhow::ensure!(answer.status == 200, "enrollment refused: {answer:?}");
                latencies.push(started.elapsed());
            }
            Ok(latencies)
        }
    })
    .await?;
    Ok(measured.into_result("issuance"))
}

async fn sign_ins(
    broker: &Arc<Broker>,
    provider: &OidcProvider,
    pid: u32,
    params: ControlParams,
) -> anyhow::Result<ControlResult> {
    let people = params.concurrency.clamp(1, 26);
    let per_person = params.sign_ins.div_ceil(people);
    eprintln!("control plane: {people} people register a passkey (not measured)");
    let mut browsers = Vec::with_capacity(people);
    for i in 0..people {
        let (browser, mut passkey) = (Browser::new(&broker.ca_der()), Passkey::new());
        let user = format!("benchperson{}", char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)));
        provider.set_user(&user, &["bench"]).await;
        sign_in_once(broker, &browser, &mut passkey, &user).await?;
        browsers.push(std::sync::Mutex::new(Some((browser, passkey, user))));
    }
    let browsers = Arc::new(browsers);
    eprintln!("control plane: {} sign-ins, {people} at a time", per_person * people);
    let measured = measure(pid, people, |i| {
        let (broker, browsers) = (broker.clone(), browsers.clone());
        async move {
            let taken = browsers[i].lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take();
            let (browser, mut passkey, user) = taken.ok_or_else(|| anyhow::anyhow!("browser {i} taken twice"))?;
            let mut latencies = Vec::with_capacity(per_person);
            for _ in 0..per_person {
                let started = Instant::now();
                sign_in_once(&broker, &browser, &mut passkey, &user).await?;
                latencies.push(started.elapsed());
            }
            Ok(latencies)
        }
    })
    .await?;
    Ok(measured.into_result("sign-in"))
}

/// A portal sign-in: provider login form, then the passkey; ends with a session.
async fn sign_in_once(broker: &Broker, browser: &Browser, passkey: &mut Passkey, user: &str) -> anyhow::Result<()> {
    let start = format!("{}/login?return_to=/", broker.public_url());
    let mfa = browser.sign_in(&start, user).await;
    anyhow::ensure!(mfa.status == 200, "the sign-in stopped at {} with {}: {}", mfa.url, mfa.status, mfa.body);
    let landed = browser.second_factor(&mfa, passkey).await;
    anyhow::ensure!(landed.path() == "/", "the portal sign-in sent the browser to {landed}");
    Ok(())
}

fn pop<T>(queue: &std::sync::Mutex<Vec<T>>) -> Option<T> {
    queue.lock().ok()?.pop()
}

struct Measured {
    latencies: Vec<Duration>,
    wall: Duration,
    broker_cpu: f64,
}

/// Runs `tasks` copies of `task` at once; wall time, broker CPU and every latency.
async fn measure<F, Fut>(pid: u32, tasks: usize, task: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<Duration>>> + Send + 'static,
{
    let cpu_before = procfs::cpu_seconds(pid).ok_or_else(|| anyhow::anyhow!("cannot read the broker's CPU time"))?;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks.max(1)).map(|i| tokio::spawn(task(i))).collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let wall = started.elapsed();
    let cpu_after = procfs::cpu_seconds(pid).ok_or_else(|| anyhow::anyhow!("cannot read the broker's CPU time"))?;
    Ok(Measured { latencies, wall, broker_cpu: cpu_after - cpu_before })
}

impl Measured {
    fn into_result(mut self, operation: &'static str) -> ControlResult {
        self.latencies.sort_unstable();
        let count = self.latencies.len();
        let at = |q: f64| {
            let i = ((count as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        let broker_cpu_ms = self.broker_cpu * 1e3 / count.max(1) as f64;
        ControlResult {
            operation,
            count,
            per_second: count as f64 / self.wall.as_secs_f64().max(1e-9),
            broker_cpu_ms,
            per_broker_core_second: if broker_cpu_ms > 0.0 { 1e3 / broker_cpu_ms } else { 0.0 },
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        }
    }
}

/// The results as a markdown table.
#[must_use]
pub fn markdown(results: &[ControlResult], params: ControlParams) -> String {
    let mut out = String::from("### Control plane\n\n");
    out.push_str(&format!(
        "{} issuances and {} sign-ins, {} in flight at once; broker CPU from `/proc/<pid>/stat`.\n\n",
        params.issuances, params.sign_ins, params.concurrency
    ));
    out.push_str(
        "| operation | count | per second (wall) | broker CPU-ms each | per broker core-second | p50 ms | p99 ms |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {:.1} |\n",
            r.operation, r.count, r.per_second, r.broker_cpu_ms, r.per_broker_core_second, r.p50_ms, r.p99_ms
        ));
    }
    out
}

/// `palisade-bench --control-plane`: runs, then writes `control-plane.md`
/// and `control-plane.json` under `out`. Returns the markdown.
///
/// # Errors
/// A measurement failed or the files cannot be written.
pub async fn run_and_write(params: ControlParams, out: &std::path::Path) -> anyhow::Result<String> {
    let (results, table) = run(params).await?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("control-plane.md"), &table)?;
    let json = serde_json::json!({ "params": params, "results": results });
    std::fs::write(out.join("control-plane.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(table)
}
