//! `palisade-broker ca …`: the CA's state and its rotation (prepare, activate,
//! retire, cancel). The work is in `palisade_broker::issuance::rotation`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use palisade_broker::config::Config;
use palisade_broker::db::Db;
use palisade_broker::issuance::ca::{self, CA_CERT_FILE};
use palisade_broker::issuance::keystore::{KEK_ENV, Kek, KekSource};
use palisade_broker::issuance::rotation::{self, CA_NEXT_CERT_FILE, CA_PREVIOUS_CERT_FILE, Roles, RotationError};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::load_config;

const RESTART: &str = "restart every broker (one at a time with replicas) for this to take effect";

/// `palisade-broker ca …`.
#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Which CA issues, which others are trusted, and the next rotation step.
    #[command(after_help = "Examples:\n  palisade-broker ca status --data-dir /var/lib/palisade")]
    Status {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Make a successor CA, trusted beside the active one but not issuing yet.
    #[command(after_help = "Examples:\n  palisade-broker ca prepare --data-dir /var/lib/palisade")]
    Prepare {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Make the prepared successor the issuing CA; the old one stays trusted until retired.
    #[command(
        after_help = "Examples:\n  palisade-broker ca activate --data-dir /var/lib/palisade\n  palisade-broker ca activate --data-dir /var/lib/palisade --force   # before every client has the new bundle"
    )]
    Activate {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Activate before the longest certificate lifetime has passed since `prepare`.
        #[arg(long)]
        force: bool,
    },
    /// Stop trusting the previous CA once the certificates it issued have expired.
    #[command(
        after_help = "Examples:\n  palisade-broker ca retire --data-dir /var/lib/palisade\n  palisade-broker ca retire --data-dir /var/lib/palisade --force   # cut off its certificates now"
    )]
    Retire {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Retire even though certificates it issued are still valid.
        #[arg(long)]
        force: bool,
    },
    /// Discard a prepared successor that was not activated.
    #[command(after_help = "Examples:\n  palisade-broker ca cancel --data-dir /var/lib/palisade")]
    Cancel {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub(super) async fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    match command {
        CaCommand::Status { data_dir } => {
            let (_, db) = open(&data_dir).await?;
            let roles = rotation::roles(&db).await;
            db.close().await;
            print_status(&data_dir, &roles?)?;
        }
        CaCommand::Prepare { data_dir } => {
            let (config, db) = open(&data_dir).await?;
            let done = rotation::prepare(&data_dir, &db, &kek(&config)?, now).await;
            db.close().await;
            let Some(done) = refused_or(done)? else { return Ok(ExitCode::FAILURE) };
            println!("prepared a successor CA, sha256 {}", done.sha256);
            eprintln!(
                "next: {RESTART}; then, after {}, `palisade-broker ca activate`",
                human(longest_lifetime(&config))
            );
        }
        CaCommand::Activate { data_dir, force } => {
            let (config, db) = open(&data_dir).await?;
            let done = rotation::activate(&data_dir, &db, &kek(&config)?, now, longest_lifetime(&config), force).await;
            db.close().await;
            let Some(done) = refused_or(done)? else { return Ok(ExitCode::FAILURE) };
            println!("the CA with sha256 {} issues now; {} stays trusted until retired", done.active, done.previous);
            eprintln!("next: {RESTART}; then, after {}, `palisade-broker ca retire`", human(longest_lifetime(&config)));
        }
        CaCommand::Retire { data_dir, force } => {
            let (_, db) = open(&data_dir).await?;
            let done = rotation::retire(&data_dir, &db, now, force).await;
            db.close().await;
            let Some(done) = refused_or(done)? else { return Ok(ExitCode::FAILURE) };
            println!("retired the CA with sha256 {} ({} certificate(s) cut off)", done.sha256, done.still_valid);
            eprintln!("next: {RESTART}");
        }
        CaCommand::Cancel { data_dir } => {
            let (_, db) = open(&data_dir).await?;
            let done = rotation::cancel(&data_dir, &db).await;
            db.close().await;
            let Some(sha256) = refused_or(done)? else { return Ok(ExitCode::FAILURE) };
            println!("discarded the prepared CA with sha256 {sha256}");
            eprintln!("next: {RESTART}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn open(data_dir: &Path) -> anyhow::Result<(Config, Db)> {
    let config = load_config(data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    Ok((config, db))
}

fn kek(config: &Config) -> anyhow::Result<Kek> {
    let env = std::env::var(KEK_ENV).ok();
    let source = KekSource::choose(config.ca.kek_file.as_deref(), env.as_deref(), &config.data_dir);
    source.read(env.as_deref()).with_context(|| format!("cannot read the CA key-encryption key ({source:?})"))
}

/// A refusal is the operator's to act on: said on stderr, exit 1, not an error trace.
fn refused_or<T>(result: Result<T, RotationError>) -> anyhow::Result<Option<T>> {
    match result {
        Ok(done) => Ok(Some(done)),
        Err(RotationError::Refused(why)) => {
            eprintln!("refused: {why}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Every client and connector has had a certificate within this time.
fn longest_lifetime(config: &Config) -> Duration {
    config.certificates.machine_ttl.max(config.certificates.connector_ttl).max(config.login.user_ttl)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn print_status(data_dir: &Path, roles: &Roles) -> anyhow::Result<()> {
    let (active, _) = ca::read_ca_cert(data_dir)?;
    println!("active    {}", describe(&active)?);
    let when = |t: Option<i64>| {
        let secs = u64::try_from(t.unwrap_or(0)).unwrap_or(0);
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
    };
    let next = data_dir.join(CA_NEXT_CERT_FILE);
    if next.exists() {
        let (der, _) = ca::read_ca_cert_at(&next)?;
        println!("next      {}  prepared {}", describe(&der)?, when(roles.prepared_at));
    }
    let previous = data_dir.join(CA_PREVIOUS_CERT_FILE);
    if previous.exists() {
        let (der, _) = ca::read_ca_cert_at(&previous)?;
        println!("previous  {}  replaced {}", describe(&der)?, when(roles.activated_at));
    }
    let step = match (next.exists(), previous.exists()) {
        (_, true) => "retire the previous CA once its certificates have expired (`ca retire`)",
        (true, false) => "activate the successor once clients and connectors have renewed (`ca activate`)",
        (false, false) => "none: start a rotation with `ca prepare`",
    };
    println!("next step {step}");
    if roles.active.as_deref() != Some(rotation::fingerprint(&active).as_str()) {
        println!("warning   {CA_CERT_FILE} is not the CA the database records as active: run `ca activate` to finish");
    }
    Ok(())
}

fn describe(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = X509Certificate::from_der(der).context("unreadable CA certificate")?;
    let not_after = cert.validity().not_after.to_datetime();
    Ok(format!("sha256 {}  {}  until {}", rotation::fingerprint(der), cert.subject(), not_after.date()))
}
