//! `palisade-bench --cedar`: Cedar decisions per second at 10, 100, 1,000
//! and 10,000 policies, straight through the engine (uncached) and through
//! the relay's decision cache. In-process, no network.
//!
//! The generated sets look like a large organisation's: per-team permits
//! into segments, some with an MFA-age or office-hours condition, and a few
//! label forbids. 100 services in 10 segments; 1,000 principals with three
//! groups each. The uncached rate cycles through the principals and
//! services; the cached rate replays a working set of 1,000 distinct
//! requests already in the cache (a hot client's streams in one second).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use palisade_broker::policy::engine::{
    AccessRequest, Action, DecisionCache, Engine, PolicyBundle, PolicyFile, Principal, PrincipalKind, RequestContext,
    ServiceEntry,
};

/// The policy counts measured.
pub const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

const SERVICES: usize = 100;
const SEGMENTS: usize = 10;
const PRINCIPALS: usize = 1_000;
const GROUPS: usize = 500;

/// One row of the table.
#[derive(Clone, Debug)]
pub struct CedarRow {
    /// Policies in the set.
    pub policies: usize,
    /// Building (parsing and validating) the engine.
    pub build: Duration,
    /// Decisions per second without the cache.
    pub uncached_per_sec: f64,
    /// Decisions per second from the cache.
    pub cached_per_sec: f64,
    /// Share of requests the engine allowed (the set is not trivially all-deny).
    pub allowed_share: f64,
}

fn policy_text(i: usize) -> String {
    let group = i % GROUPS;
    let segment = i % SEGMENTS;
    let condition = match i % 4 {
        0 => " when { context has mfa_age_secs && context.mfa_age_secs < 43200 }",
        1 => " when { context.hour >= 6 && context.hour < 22 }",
        _ => "",
    };
    if i % 50 == 49 {
        return format!(
            "@id(\"p{i}\") forbid (principal in Group::\"team-{group}\", action, resource in Segment::\"seg-{segment}\") \
             when {{ resource.labels.contains(\"quarantined\") }};\n"
        );
    }
    format!(
        "@id(\"p{i}\") permit (principal in Group::\"team-{group}\", action == Action::\"connect\", \
         resource in Segment::\"seg-{segment}\"){condition};\n"
    )
}

fn bundle(policies: usize) -> PolicyBundle {
    let text: String = (0..policies).map(policy_text).collect();
    let services = (0..SERVICES)
        .map(|i| ServiceEntry {
            name: format!("svc-{i}"),
            segment: format!("seg-{}", i % SEGMENTS),
            protocol: "tcp".into(),
            labels: if i % 17 == 0 { vec!["quarantined".into()] } else { Vec::new() },
        })
        .collect();
    PolicyBundle { version: 1, files: vec![PolicyFile { name: "generated.cedar".into(), text }], services }
}

fn principals() -> Vec<Principal> {
    (0..PRINCIPALS)
        .map(|i| Principal {
            kind: if i % 3 == 0 { PrincipalKind::User } else { PrincipalKind::Machine },
            id: format!("id-{i}"),
            name: format!("name-{i}"),
            groups: (0..3).map(|g| format!("team-{}", (i * 7 + g * 13) % GROUPS)).collect(),
        })
        .collect()
}

fn context() -> RequestContext {
    RequestContext {
        mfa_age_secs: Some(600),
        auth_methods: vec!["oidc".into(), "webauthn".into()],
        source_ip: Some(std::net::IpAddr::from([10, 0, 0, 7])),
        now_unix_secs: 1_700_000_000,
        client_version: None,
    }
}

/// Runs `decide` over the request stream for at least `min_time` (and at
/// least `min_decisions`); returns decisions per second and allowed count.
fn rate(min_time: Duration, min_decisions: usize, mut decide: impl FnMut(usize) -> bool) -> (f64, usize, usize) {
    let start = Instant::now();
    let (mut done, mut allowed) = (0usize, 0usize);
    while done < min_decisions || start.elapsed() < min_time {
        for _ in 0..64 {
            allowed += usize::from(decide(done));
            done += 1;
        }
    }
    (done as f64 / start.elapsed().as_secs_f64(), done, allowed)
}

/// Measures one policy count.
///
/// # Errors
/// The generated set does not load (a bug in the generator).
pub fn measure(policies: usize, min_time: Duration) -> anyhow::Result<CedarRow> {
    let bundle = bundle(policies);
    let started = Instant::now();
    let engine = Engine::new(&bundle)?;
    let build = started.elapsed();
    let people = principals();
    let context = context();
    let request = |n: usize| {
        let principal = &people[n % PRINCIPALS];
        let service = format!("svc-{}", (n / PRINCIPALS + n * 31) % SERVICES);
        (principal, service)
    };
    let (uncached_per_sec, done, allowed) = rate(min_time, 200, |n| {
        let (principal, service) = request(n);
        let req = AccessRequest { principal, action: Action::Connect, service: &service, context: &context };
        engine.verdict(&req).decision.is_allow()
    });
    let cache = DecisionCache::new(10_000);
    let working_set = 1_000;
    for n in 0..working_set {
        let (principal, service) = request(n);
        let _ = cache.verdict(
            &engine,
            &AccessRequest { principal, action: Action::Connect, service: &service, context: &context },
        );
    }
    let (cached_per_sec, _, _) = rate(min_time, 10_000, |n| {
        let (principal, service) = request(n % working_set);
        let req = AccessRequest { principal, action: Action::Connect, service: &service, context: &context };
        cache.verdict(&engine, &req).decision.is_allow()
    });
    let (_, misses) = cache.stats();
    anyhow::ensure!(misses == working_set as u64, "the cached run missed the cache ({misses} misses)");
    Ok(CedarRow { policies, build, uncached_per_sec, cached_per_sec, allowed_share: allowed as f64 / done as f64 })
}

/// Measures every size and renders the markdown table.
///
/// # Errors
/// As [`measure`].
pub fn run(quick: bool) -> anyhow::Result<String> {
    let min_time = if quick { Duration::from_millis(300) } else { Duration::from_secs(2) };
    let mut rows = Vec::new();
    for policies in SIZES {
        eprintln!("cedar: {policies} policies…");
        rows.push(measure(policies, min_time)?);
    }
    Ok(render(&rows))
}

/// The markdown table.
#[must_use]
pub fn render(rows: &[CedarRow]) -> String {
    let mut out = String::from(
        "| policies | build (ms) | uncached decisions/s | cached decisions/s | allowed |\n|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.0} | {:.0} | {:.0}% |",
            row.policies,
            row.build.as_secs_f64() * 1e3,
            row.uncached_per_sec,
            row.cached_per_sec,
            row.allowed_share * 100.0
        );
    }
    out
}

/// Runs and writes `cedar.md` into `out`; returns the table.
///
/// # Errors
/// As [`run`], or the file cannot be written.
pub fn run_and_write(quick: bool, out: &std::path::Path) -> anyhow::Result<String> {
    let table = run(quick)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("cedar.md"), &table)?;
    Ok(table)
}
