//! `palisade-broker policy …`: validate, test, apply, diff, history,
//! rollback, explain, compare, reload.
//!
//! `apply` and `rollback` write a new version to the policy store in the
//! database, which is what the running broker decides with (it follows the
//! store within a fraction of a second). They also mirror the set into
//! `policy_dir`, so that directory always shows the active version and a
//! later `reload` imports only what an admin edited there, and ask a
//! running broker to load it at once over the admin socket.
//!
//! Sets are validated against the service catalog in the database
//! (`palisade-broker service list`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use palisade_broker::admin::{self, AdminError, AdminRequest};
use palisade_broker::audit;
use palisade_broker::config::Config;
use palisade_broker::db::Db;
use palisade_broker::inventory;
use palisade_broker::policy_store::{self, PolicyStoreError, Proposal, VersionInfo};
use palisade_policies::{
    AccessRequest, Action, Engine, PolicyBundle, PolicyFile, RequestContext, ServiceEntry, compare, read_policy_dir,
    run_case_dir,
};

use super::load_config;

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Validate the policy directory, then make the running broker load it.
    Reload {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Check a policy directory against the schema (and the configured services, with --data-dir).
    Validate {
        /// Policy directory (default: the configured policy_dir).
        dir: Option<PathBuf>,
        /// Data directory, for the service catalog.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the policy test cases (`*.toml`) against a policy directory.
    Test {
        /// Policy directory (default: the configured policy_dir).
        dir: Option<PathBuf>,
        /// Case directory (default: DIR/cases).
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Data directory, for the default policy directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Store DIR as a new policy version, make it active, and reload a running broker.
    Apply {
        /// Policy directory to apply.
        dir: PathBuf,
        /// Why (recorded in the history).
        #[arg(long)]
        comment: String,
        /// The version the set was edited on top of; refused with a conflict if another is active now
        /// (default: the version active when the command starts).
        #[arg(long)]
        parent: Option<u64>,
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Show what changed from version A to version B.
    Diff {
        /// Old version.
        a: u64,
        /// New version.
        b: u64,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// List the stored versions, newest first.
    History {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Apply the files of an old version again, as a new version.
    Rollback {
        /// The version to return to.
        version: u64,
        /// The active version this rollback replaces (default: the one active now).
        #[arg(long)]
        parent: Option<u64>,
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Decide one request and explain which policies decided and why.
    Explain {
        /// `machine:NAME` or `user:EMAIL`.
        #[arg(long)]
        principal: String,
        /// Service name.
        #[arg(long)]
        service: String,
        /// Explain with this policy directory instead of the active set.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        context: ContextArgs,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Which known identities would gain or lose which services if DIR replaced the active set.
    Compare {
        /// The proposed policy directory.
        dir: PathBuf,
        #[command(flatten)]
        context: ContextArgs,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(super) struct StoreArgs {
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Policy test cases that must pass (default: DIR/cases for apply, if it exists).
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Who applies (default: cli:$USER).
    #[arg(long)]
    author: Option<String>,
}

/// The circumstances of the requests `explain` and `compare` decide.
#[derive(Debug, Args)]
pub(super) struct ContextArgs {
    /// Seconds since the principal's last second factor (default: none).
    #[arg(long)]
    mfa_age: Option<u64>,
    /// How the principal authenticated, e.g. oidc, webauthn (repeatable).
    #[arg(long = "auth-method")]
    auth_methods: Vec<String>,
    /// The client's address.
    #[arg(long)]
    source_ip: Option<IpAddr>,
}

impl ContextArgs {
    fn to_context(&self) -> RequestContext {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        RequestContext {
            mfa_age_secs: self.mfa_age,
            auth_methods: self.auth_methods.clone(),
            source_ip: self.source_ip,
            now_unix_secs: now,
            client_version: None,
        }
    }
}

pub(super) async fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Reload { data_dir } => reload(&data_dir).await,
        PolicyCommand::Validate { dir, data_dir } => validate(dir, data_dir.as_deref()).await,
        PolicyCommand::Test { dir, cases, data_dir } => test(dir, cases, data_dir.as_deref()).await,
        PolicyCommand::Apply { dir, comment, parent, common } => apply(&dir, &comment, parent, &common).await,
        PolicyCommand::Diff { a, b, data_dir } => diff(&data_dir, a, b).await,
        PolicyCommand::History { data_dir } => history(&data_dir).await,
        PolicyCommand::Rollback { version, parent, common } => rollback(version, parent, &common).await,
        PolicyCommand::Explain { principal, service, dir, context, data_dir } => {
            explain(&data_dir, &principal, &service, dir.as_deref(), &context).await
        }
        PolicyCommand::Compare { dir, context, data_dir } => compare_cmd(&data_dir, &dir, &context).await,
    }
}

/// Opens the database with the catalog seeded from the config's
/// `[[services]]`, as the broker does at start (insert-if-missing).
async fn open(data_dir: &Path) -> anyhow::Result<(Config, Db)> {
    let config = load_config(data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    inventory::seed_from_config(&db, &config).await.context("cannot seed the service catalog")?;
    Ok((config, db))
}

/// The policy directory to read (the one given, else the configured one)
/// and, with a data directory, the service catalog from its database.
async fn policy_dir(dir: Option<PathBuf>, data_dir: Option<&Path>) -> anyhow::Result<(PathBuf, Vec<ServiceEntry>)> {
    let (config, services) = match data_dir {
        Some(data_dir) => {
            let (config, db) = open(data_dir).await?;
            let catalog = inventory::catalog(&db).await;
            db.close().await;
            (Some(config), catalog?.1)
        }
        None => (None, Vec::new()),
    };
    match (dir, config) {
        (Some(dir), _) => Ok((dir, services)),
        (None, Some(config)) => Ok((config.policy_dir, services)),
        (None, None) => bail!("give a policy directory or --data-dir"),
    }
}

async fn validate(dir: Option<PathBuf>, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (dir, services) = policy_dir(dir, data_dir).await?;
    let files = read_policy_dir(&dir)?;
    match policy_store::validate(&files, &services, None) {
        Ok(engine) => {
            let dry = engine.policies().iter().filter(|p| p.dry_run).count();
            println!(
                "{}: {} policies ({dry} dry-run) in {} files valid",
                dir.display(),
                engine.policies().len(),
                files.len()
            );
            if data_dir.is_none() {
                println!("(without --data-dir the service catalog was not checked)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn test(dir: Option<PathBuf>, cases: Option<PathBuf>, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (dir, _) = policy_dir(dir, data_dir).await?;
    let cases = cases.unwrap_or_else(|| dir.join("cases"));
    let files = read_policy_dir(&dir)?;
    let reports = run_case_dir(&files, &cases)?;
    for report in &reports {
        print!("{report}");
    }
    Ok(if reports.iter().all(|r| r.passed()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn author(common: &StoreArgs) -> String {
    common.author.clone().unwrap_or_else(|| match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("cli:{user}"),
        _ => "cli".to_owned(),
    })
}

async fn apply(dir: &Path, comment: &str, parent: Option<u64>, common: &StoreArgs) -> anyhow::Result<ExitCode> {
    let files = read_policy_dir(dir)?;
    let default_cases = dir.join("cases");
    let cases = common.cases.as_deref().or_else(|| default_cases.is_dir().then_some(default_cases.as_path()));
    let (config, db) = open(&common.data_dir).await?;
    let parent = match parent {
        Some(parent) => Some(parent),
        None => {
            let active = policy_store::active_version(&db).await?;
            if let Some(active) = active {
                eprintln!(
                    "note: applying on top of the active version {active} (pass --parent to detect concurrent edits)"
                );
            }
            active
        }
    };
    let services = inventory::catalog(&db).await?.1;
    let author = author(common);
    let proposal = Proposal { files: &files, parent, author: &author, comment, services: &services, cases_dir: cases };
    let result = policy_store::apply(&db, &proposal).await;
    db.close().await;
    if cases.is_none() {
        eprintln!("note: no test cases ran (give --cases DIR or put them in {})", default_cases.display());
    }
    activate(&config, result).await
}

async fn rollback(version: u64, parent: Option<u64>, common: &StoreArgs) -> anyhow::Result<ExitCode> {
    let (config, db) = open(&common.data_dir).await?;
    let parent = match parent {
        Some(parent) => Some(parent),
        None => policy_store::active_version(&db).await?,
    };
    let services = inventory::catalog(&db).await?.1;
    let result =
        policy_store::rollback(&db, version, parent, &author(common), &services, common.cases.as_deref()).await;
    db.close().await;
    activate(&config, result).await
}

/// After a store write: mirror the set into policy_dir and reload a running broker.
async fn activate(config: &Config, result: Result<VersionInfo, PolicyStoreError>) -> anyhow::Result<ExitCode> {
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("policy version {} stored and active (digest {})", info.version, short(&info.digest));
    let db = config.open_db().await.context("cannot open the database")?;
    let stored = policy_store::get(&db, info.version).await?;
    db.close().await;
    let files = stored.map(|v| v.files).context("the stored version vanished")?;
    policy_store::write_policy_dir(&config.policy_dir, &files).with_context(|| {
        format!("version {} is stored but {} could not be written", info.version, config.policy_dir.display())
    })?;
    match admin::request(&config.data_dir, &AdminRequest::PolicyReload).await {
        Ok(answer) if answer.ok => {
            println!("the running broker decides with it (policy version {})", answer.version.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Ok(answer) => {
            eprintln!(
                "the running broker refused the set: {}",
                answer.error.unwrap_or_else(|| "no reason given".into())
            );
            Ok(ExitCode::FAILURE)
        }
        Err(AdminError::NotRunning { .. }) => {
            println!("no broker is running; it loads this set when it starts");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("version {} is stored, but the running broker could not be asked to reload: {e}", info.version);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn when(unix: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

async fn diff(data_dir: &Path, a: u64, b: u64) -> anyhow::Result<ExitCode> {
    let (_, db) = open(data_dir).await?;
    let diffs = policy_store::diff(&db, a, b).await;
    db.close().await;
    let diffs = diffs?;
    if diffs.is_empty() {
        println!("versions {a} and {b} hold the same policies");
    }
    print!("{}", policy_store::render_diff(&diffs, &format!("version {a}"), &format!("version {b}")));
    Ok(ExitCode::SUCCESS)
}

async fn history(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let (_, db) = open(data_dir).await?;
    let (versions, active) = (policy_store::history(&db).await, policy_store::active_version(&db).await);
    db.close().await;
    let (versions, active) = (versions?, active?);
    if versions.is_empty() {
        println!("no policy version stored yet: `palisade-broker policy apply DIR --comment …`");
    }
    for v in versions {
        let mark = if Some(v.version) == active { '*' } else { ' ' };
        let parent = v.parent.map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "{mark} {:>4}  {}  parent {parent:>4}  {}  {}  {}",
            v.version,
            when(v.created_at),
            short(&v.digest),
            v.author,
            v.comment
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The set the broker decides with: the store's active version, else (before
/// the broker first started and seeded the store) policy_dir.
async fn active_files(config: &Config, db: &Db) -> anyhow::Result<(String, Vec<PolicyFile>)> {
    let on_disk = read_policy_dir(&config.policy_dir);
    match policy_store::active(db).await? {
        Some((version, files)) => {
            let digest = |files: &[PolicyFile]| {
                PolicyBundle { version: 0, files: files.to_vec(), services: Vec::new() }.digest()
            };
            if on_disk.as_ref().is_ok_and(|disk| digest(disk) != digest(&files)) {
                eprintln!(
                    "note: {} differs from store version {version}, which is what the broker decides with; \
                     `policy reload` would import the directory as a new version",
                    config.policy_dir.display()
                );
            }
            Ok((format!("store version {version}"), files))
        }
        None => Ok((config.policy_dir.display().to_string(), on_disk?)),
    }
}

fn engine(files: Vec<PolicyFile>, services: &[ServiceEntry]) -> anyhow::Result<Engine> {
    Ok(Engine::new(&PolicyBundle { version: 0, files, services: services.to_vec() })?)
}

async fn explain(
    data_dir: &Path,
    principal: &str,
    service: &str,
    dir: Option<&Path>,
    context: &ContextArgs,
) -> anyhow::Result<ExitCode> {
    let (config, db) = open(data_dir).await?;
    let found = policy_store::find_principal(&db, principal).await;
    let active = match dir {
        Some(dir) => read_policy_dir(dir).map(|files| (dir.display().to_string(), files)).map_err(Into::into),
        None => active_files(&config, &db).await,
    };
    let catalog = inventory::catalog(&db).await;
    db.close().await;
    let ((principal, disabled), (source, files), (_, services)) = (found?, active?, catalog?);
    let engine = engine(files, &services)?;
    let context = context.to_context();
    let request = AccessRequest { principal: &principal, action: Action::Connect, service, context: &context };
    println!("policies: {source}");
    println!("principal: {} {} groups [{}]", principal.name, principal.id, principal.groups.join(", "));
    if disabled {
        println!("note: this identity is disabled: it gets no tunnel whatever the policies say");
    }
    print!("{}", engine.explain(&request));
    Ok(ExitCode::SUCCESS)
}

async fn compare_cmd(data_dir: &Path, dir: &Path, context: &ContextArgs) -> anyhow::Result<ExitCode> {
    let (config, db) = open(data_dir).await?;
    let principals = policy_store::known_principals(&db).await;
    let active = active_files(&config, &db).await;
    let catalog = inventory::catalog(&db).await;
    db.close().await;
    let (principals, (source, files), (_, services)) = (principals?, active?, catalog?);
    let before = engine(files, &services)?;
    let after = match policy_store::validate(&read_policy_dir(dir)?, &services, None) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let result = compare(&before, &after, &principals, &names, &Action::Connect, &context.to_context());
    println!("{source} -> {}", dir.display());
    print!("{result}");
    Ok(ExitCode::SUCCESS)
}

/// Imports the policy directory as a new store version if it was edited,
/// through the running broker (which validates, stores, audits and loads it).
async fn reload(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(data_dir)?;
    let checked = match read_policy_dir(&config.policy_dir) {
        Ok(files) => {
            let (_, db) = open(data_dir).await?;
            let catalog = inventory::catalog(&db).await;
            db.close().await;
            policy_store::validate(&files, &catalog?.1, None).map(|_| ()).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = checked {
        eprintln!("policy error: {e}");
        // The running broker re-checks, refuses and audits the attempt; without a
        // running broker the refusal is audited here.
        if admin::request(&config.data_dir, &AdminRequest::PolicyReload).await.is_err() {
            audit_rejected_policy(&config, &e).await?;
        }
        return Ok(ExitCode::FAILURE);
    }
    let answer = admin::request(&config.data_dir, &AdminRequest::PolicyReload).await?;
    match (answer.ok, answer.version) {
        (true, Some(version)) => {
            println!("policy version {version} active");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("the broker refused the policy: {}", answer.error.unwrap_or_else(|| "no reason given".into()));
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn audit_rejected_policy(config: &Config, error: &str) -> anyhow::Result<()> {
    let db = config.open_db().await.context("cannot open the database")?;
    let event = audit::AuditEvent::new(audit::EventKind::PolicyRejected, audit::Outcome::Failure)
        .actor("cli")
        .detail(serde_json::json!({ "error": error, "dir": config.policy_dir.display().to_string() }));
    audit::Audit::new(db.clone()).record(event).await?;
    db.close().await;
    Ok(())
}
