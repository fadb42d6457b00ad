//! `palisade-broker audit query`: the console's audit search from the shell.
//!
//! There is no admin authentication on the broker's HTTP API yet, so the
//! query API ([`palisade_broker::audit::query`]) is exposed here, to whoever
//! can read the data directory. Output: one JSON line per event (the export
//! schema of docs/audit-events.md) or per login attempt, newest first; when
//! more pages exist, the `--before` value for the next one goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;
use palisade_broker::audit::query::{self, Query};
use palisade_broker::audit::{EventKind, Outcome, export};
use palisade_broker::db::Db;

use super::audit_cmd::parse_when;
use super::load_config;

#[derive(Debug, Args)]
pub(super) struct QueryArgs {
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Print this person's login trail (identity id) instead of events.
    #[arg(long, conflicts_with_all = ["person", "machine", "service", "kind", "class", "outcome"])]
    login_trail: Option<String>,
    /// Events by or about this person (identity id).
    #[arg(long)]
    person: Option<String>,
    /// Events by or about this machine or connector (identity id).
    #[arg(long)]
    machine: Option<String>,
    /// Stream events for this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this event kind (repeatable), e.g. `stream.denied`.
    #[arg(long)]
    kind: Vec<String>,
    /// Only this OCSF class_uid, e.g. 3002 (Authentication).
    #[arg(long)]
    class: Option<u32>,
    /// Only this outcome: allow, deny, success or failure.
    #[arg(long)]
    outcome: Option<String>,
    /// Recorded at or after (RFC 3339 in UTC, or a duration ago such as `24h`).
    #[arg(long, value_parser = parse_when)]
    since: Option<SystemTime>,
    /// Recorded before (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    until: Option<SystemTime>,
    /// Next page: events older than this seq (printed after a full page).
    #[arg(long)]
    before: Option<i64>,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(super) async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let q = to_query(&args)?;
    let config = load_config(&args.data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let result = print(&db, args.login_trail.as_deref(), &q).await;
    db.close().await;
    if let Some(next) = result? {
        eprintln!("more events: add --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn print(db: &Db, login_trail: Option<&str>, q: &Query) -> anyhow::Result<Option<i64>> {
    if let Some(person) = login_trail {
        let page = query::login_trail(db, person, q).await?;
        for attempt in &page.items {
            println!("{}", export::escape_invisible_json(&serde_json::to_string(attempt)?));
        }
        return Ok(page.next_before);
    }
    let page = query::search(db, q).await?;
    for row in &page.items {
        println!("{}", export::json_line(row));
    }
    Ok(page.next_before)
}

fn to_query(args: &QueryArgs) -> anyhow::Result<Query> {
    let ms = |t: SystemTime| i64::try_from(t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis());
    let kinds = args
        .kind
        .iter()
        .map(|k| {
            EventKind::from_name(k)
                .with_context(|| format!("--kind {k:?}: no such event kind (see docs/audit-events.md)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outcome = match args.outcome.as_deref() {
        None => None,
        Some("allow") => Some(Outcome::Allow),
        Some("deny") => Some(Outcome::Deny),
        Some("success") => Some(Outcome::Success),
        Some("failure") => Some(Outcome::Failure),
        Some(other) => anyhow::bail!("--outcome {other:?}: expected allow, deny, success or failure"),
    };
    anyhow::ensure!((1..=query::MAX_PAGE).contains(&args.limit), "--limit must be between 1 and {}", query::MAX_PAGE);
    Ok(Query {
        person: args.person.clone(),
        machine: args.machine.clone(),
        service: args.service.clone(),
        kinds,
        class_uid: args.class,
        outcome,
        since_ms: args.since.map(ms).transpose()?,
        until_ms: args.until.map(ms).transpose()?,
        before_seq: args.before,
        limit: args.limit,
    })
}
