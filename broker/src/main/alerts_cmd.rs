//! `palisade-broker alerts throttles` and `alerts clear`: the throttles set
//! after extraction alerts (`[alerts] throttle_after_alert`), and lifting
//! them. Through the database: every running replica picks a clear up and
//! connectors stop applying it within about 2 s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use palisade_broker::admin::throttles;

use super::load_config;

/// `palisade-broker alerts …`.
#[derive(Debug, Subcommand)]
pub(super) enum AlertsCommand {
    /// Identities throttled after an extraction alert, per service.
    #[command(after_help = "Examples:\n  palisade-broker alerts throttles --data-dir /var/lib/palisade")]
    Throttles {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Lift an identity's throttles (on one service with --service); audited as `throttle.cleared`.
    #[command(
        after_help = "Examples:\n  palisade-broker alerts clear --data-dir /var/lib/palisade spiffe://corp.example/machine/5c1d…\n  palisade-broker alerts clear --data-dir /var/lib/palisade spiffe://corp.example/machine/5c1d… --service llm-prod"
    )]
    Clear {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The identity's SPIFFE id, as `alerts throttles` shows it.
        identity: String,
        /// Only the throttle on this service.
        #[arg(long)]
        service: Option<String>,
    },
}

pub(super) async fn alerts(command: AlertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertsCommand::Throttles { data_dir } => list(data_dir).await,
        AlertsCommand::Clear { data_dir, identity, service } => clear(data_dir, &identity, service.as_deref()).await,
    }
}

async fn list(data_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let config = load_config(&data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let listed = throttles::list(&db).await;
    db.close().await;
    let rows = listed.context("cannot read the throttles")?;
    if rows.is_empty() {
        println!("no identity is throttled");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16}  {:<22}  {:<8}  {:<20}  IDENTITY", "SERVICE", "RULE", "RATE/MIN", "SINCE");
    for row in rows {
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(row.created_ms).unwrap_or(0));
        let since = humantime::format_rfc3339_seconds(since);
        println!(
            "{:<16}  {:<22}  {:<8}  {since:<20}  {}",
            row.service, row.rule, row.requests_per_minute, row.identity
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn clear(data_dir: PathBuf, identity: &str, service: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = load_config(&data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let cleared = throttles::clear(&db, identity, service, &actor()).await;
    db.close().await;
    for row in cleared? {
        println!(
            "cleared the throttle on {} for {}: connectors stop applying it within about 2 s",
            row.service, row.identity
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Who cleared it, for the audit trail: `cli:` and the operating-system user.
fn actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
