//! `palisade-broker audit …`: verify the chain, export it, prune it (the
//! query command is in `audit_query.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use palisade_broker::audit;

use super::{audit_query, ctrl_c_token, load_config};

#[path = "progress.rs"]
mod progress;

/// Runs one `audit` subcommand.
pub(super) async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { data_dir, public_key } => verify(&data_dir, public_key.as_deref()).await,
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Query(args) => audit_query::run(args).await,
        AuditCommand::Prune { data_dir, before, archive } => prune(&data_dir, before, archive.as_deref()).await,
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check the hash chain and the signed checkpoints of the audit trail.
    Verify {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Trust only checkpoints signed by this hex Ed25519 public key
        /// (default: the key in DATA_DIR/audit-signing.key, else those recorded in the database).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Write the audit trail as JSON lines or CSV (see docs/audit-events.md).
    Export(AuditExportArgs),
    /// Search the audit trail (person, machine, service, kind, outcome, time), or print a login trail.
    Query(audit_query::QueryArgs),
    /// Delete events older than a time, under a signed anchor that keeps the chain verifiable.
    Prune {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Delete events recorded before this time (RFC 3339 in UTC, or a duration ago such as `90d`).
        #[arg(long, value_parser = parse_when)]
        before: SystemTime,
        /// First write the deleted events to this file as JSON lines.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(super) struct AuditExportArgs {
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Only events at or after this time: RFC 3339 in UTC (`2026-11-01T00:00:00Z`) or a duration ago (`24h`).
    #[arg(long, value_parser = parse_when)]
    since: Option<SystemTime>,
    /// Only events before this time (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    until: Option<SystemTime>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Keep running and write new events as they are appended (jsonl to stdout only).
    #[arg(long, conflicts_with_all = ["output", "until"])]
    follow: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

pub(super) fn parse_when(s: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{s:?} is too long ago"));
    }
    let s = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_owned() };
    humantime::parse_rfc3339(&s)
        .map_err(|e| format!("{s:?}: {e} (give RFC 3339 in UTC, e.g. 2026-11-01T00:00:00Z, or a duration like 24h)"))
}

async fn verify(data_dir: &Path, public_key: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = load_config(data_dir)?;
    let trusted = match public_key {
        Some(hex) => Some(audit::checkpoint::unhex(hex).context("--public-key: not hex")?),
        None => audit::Signer::load(&config.data_dir.join(audit::checkpoint::KEY_FILE))
            .context("cannot read the audit signing key")?
            .map(|signer| signer.public_key().to_vec()),
    };
    let db = config.open_db().await.context("cannot open the database")?;
    let report = audit::verify_with(&db, trusted.as_deref()).await?;
    db.close().await;
    let code = match &report.broken {
        None => {
            println!("audit chain intact: {} events", report.events);
            ExitCode::SUCCESS
        }
        Some(broken) => {
            println!("audit chain broken at event #{}: {}: {}", broken.seq, broken.kind.as_str(), broken.reason);
            ExitCode::FAILURE
        }
    };
    if let Some(seq) = report.pruned_through {
        println!("pruned through event #{seq} (signed anchor)");
    }
    match &report.last_checkpoint {
        Some(cp) => println!(
            "checkpoints: {} confirmed; newest at event #{}, signed {} by key {}",
            report.checkpoints,
            cp.seq,
            audit::export::rfc3339_ms(cp.ts_ms),
            cp.key_id
        ),
        None => println!("checkpoints: none (a truncated tail cannot be detected until one is written)"),
    }
    for key in &report.keys {
        let source = if trusted.as_deref().map(audit::checkpoint::key_id_of).as_deref() == Some(key.key_id.as_str()) {
            "trusted"
        } else {
            "recorded"
        };
        println!("signing key {} ({source}): ed25519 {}", key.key_id, key.public_key);
    }
    Ok(code)
}

async fn export(args: AuditExportArgs) -> anyhow::Result<ExitCode> {
    use audit::export::{Filter, Format};
    let config = load_config(&args.data_dir)?;
    let ms = |t: SystemTime| i64::try_from(t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis());
    let filter = Filter {
        since_ms: args.since.map(ms).transpose()?,
        until_ms: args.until.map(ms).transpose()?,
        ..Filter::default()
    };
    let format = match args.format {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    let db = config.open_db().await.context("cannot open the database")?;
    if let Some(path) = &args.output {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = progress::Lines::new(std::io::BufWriter::new(file));
        audit::export::export(&db, filter, format, &mut out).await?;
        let events = out.lines().saturating_sub(u64::from(format == Format::Csv));
        eprintln!("exported {events} events to {}", path.display());
    } else {
        let mut out = std::io::stdout().lock();
        let last = audit::export::export(&db, filter, format, &mut out).await?;
        if args.follow {
            let filter = Filter { after_seq: last, ..filter };
            audit::export::follow(&db, filter, format, &mut out, Duration::from_millis(500), ctrl_c_token()).await?;
        }
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn prune(data_dir: &Path, before: SystemTime, archive: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(data_dir)?;
    let signer = audit::Signer::load_or_create(&config.data_dir.join(audit::checkpoint::KEY_FILE))?;
    let before_ms = i64::try_from(before.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis())?;
    let mut file = match archive {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => None,
    };
    let db = config.open_db().await.context("cannot open the database")?;
    let report = audit::retention::prune(&db, &signer, before_ms, file.as_mut()).await;
    db.close().await;
    let report = report?;
    match report.anchor {
        Some(anchor) => {
            println!("pruned {} events up to #{} (anchor signed by key {})", report.deleted, anchor.seq, anchor.key_id)
        }
        None => println!("nothing to prune"),
    }
    Ok(ExitCode::SUCCESS)
}
