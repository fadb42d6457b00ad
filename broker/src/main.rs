//! `palisade-broker`: init, run, tokens, identities, quickstart; policies, the
//! inventory, people and the audit trail have modules of their own in `main/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use palisade_broker::admin;
use palisade_broker::config::Config;
use palisade_broker::init::{self, CONFIG_FILE, InitOptions};
use palisade_broker::issuance::enroll::{MAX_TOKEN_TTL, TokenRequest, create_token};
use palisade_broker::issuance::keystore::KEK_ENV;
use palisade_broker::{issuance, quickstart};
use palisade_proto::identity::PeerRole;
use palisade_telemetry::LogFormat;
use palisade_telemetry::runtime::Workers;
use tokio_util::sync::CancellationToken;

#[path = "main/alerts_cmd.rs"]
mod alerts_cmd;
#[path = "main/audit_cmd.rs"]
mod audit_cmd;
#[path = "main/audit_query.rs"]
mod audit_query;
#[path = "main/ca_cmd.rs"]
mod ca_cmd;
#[path = "main/connector_cmd.rs"]
mod connector_cmd;
#[path = "main/groups_cmd.rs"]
mod groups_cmd;
#[path = "main/inventory_cmd.rs"]
mod inventory_cmd;
#[path = "main/people.rs"]
mod people;
#[path = "main/policy_cmd.rs"]
mod policy_cmd;

use policy_cmd::PolicyCommand;

/// The Palisade broker: issuing CA, policy decision point and QUIC relay.
#[derive(Debug, Parser)]
#[command(name = "palisade-broker", version, about)]
struct Cli {
    /// Log format on stderr: text or json (default: `[log] format` for `run`, else text).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: CA, server certificate, database, config, default policy.
    #[command(
        after_help = "Examples:\n  palisade-broker init --data-dir /var/lib/palisade --trust-domain palisade.example.com --server-name broker.example.com\n  palisade-broker init --data-dir /var/lib/palisade --database-url postgres://palisade@db.internal/palisade"
    )]
    Init(InitArgs),
    /// Run the broker.
    #[command(
        after_help = "Examples:\n  palisade-broker run --data-dir /var/lib/palisade\n  palisade-broker run --config /etc/palisade/broker.toml --log-format json"
    )]
    Run(RunArgs),
    /// Enrollment tokens.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker token create --data-dir /var/lib/palisade --machine eval-agent --group ml-agents --ttl 15m\n  palisade-broker token create --data-dir /var/lib/palisade --connector gpu-rack-1"
    )]
    Token(TokenCommand),
    /// Policies.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker policy validate --data-dir /var/lib/palisade policies/\n  palisade-broker policy apply --data-dir /var/lib/palisade --comment \"eval team gets llm-prod\" policies/\n  palisade-broker policy explain --data-dir /var/lib/palisade --principal machine:eval-agent --service llm-prod\n  palisade-broker policy rollback --data-dir /var/lib/palisade 4"
    )]
    Policy(PolicyCommand),
    /// Services: the inventory, segment assignment, labels.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker service list --data-dir /var/lib/palisade\n  palisade-broker service assign --data-dir /var/lib/palisade llm-prod inference"
    )]
    Service(inventory_cmd::ServiceCommand),
    /// Segments: sets of services that policies grant together.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker segment list --data-dir /var/lib/palisade\n  palisade-broker segment create --data-dir /var/lib/palisade --description \"model weights\" model-admin"
    )]
    Segment(inventory_cmd::SegmentCommand),
    /// The audit trail.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker audit verify --data-dir /var/lib/palisade\n  palisade-broker audit query --data-dir /var/lib/palisade --service llm-prod --kind stream.denied --since 1h\n  palisade-broker audit export --data-dir /var/lib/palisade --format csv --output audit.csv"
    )]
    Audit(audit_cmd::AuditCommand),
    /// Throttles set after extraction alerts: list and clear them.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker alerts throttles --data-dir /var/lib/palisade\n  palisade-broker alerts clear --data-dir /var/lib/palisade spiffe://corp.example/machine/5c1d… --service llm-prod"
    )]
    Alerts(alerts_cmd::AlertsCommand),
    /// The CA: status and rotation (prepare, activate, retire).
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker ca status --data-dir /var/lib/palisade\n  palisade-broker ca prepare --data-dir /var/lib/palisade"
    )]
    Ca(ca_cmd::CaCommand),
    /// Machines and connectors.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker identity disable --data-dir /var/lib/palisade --id 5c1d3e2a-9f7b-4c61-8e0a-0d4b7a6f2c10"
    )]
    Identity(IdentityCommand),
    /// Connectors: state, links to the broker replicas, version, last seen.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  palisade-broker connector list --data-dir /var/lib/palisade")]
    Connector(connector_cmd::ConnectorCommand),
    /// Machines: their groups.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker machine groups --data-dir /var/lib/palisade eval-agent --remove ml-agents --add quarantine"
    )]
    Machine(groups_cmd::MachineCommand),
    /// People: invites for local accounts, listing, groups, disabling, credential resets.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker user invite --data-dir /var/lib/palisade --group ml-team alice@example.com\n  palisade-broker user list --data-dir /var/lib/palisade\n  palisade-broker user groups --data-dir /var/lib/palisade alice@example.com --remove ml-team\n  palisade-broker user disable --data-dir /var/lib/palisade alice@example.com"
    )]
    User(UserCommand),
    /// Sign-in sessions of people.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  palisade-broker session list --data-dir /var/lib/palisade --user alice@example.com\n  palisade-broker session revoke --data-dir /var/lib/palisade 8b0f…"
    )]
    Session(SessionCommand),
    /// Everything on this machine: broker, demo model server, connector, and a machine token.
    #[command(
        after_help = "Examples:\n  palisade-broker quickstart\n  palisade-broker quickstart --data-dir /tmp/palisade-demo --listen 127.0.0.1:9443"
    )]
    Quickstart {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./palisade-data")]
        data_dir: PathBuf,
        /// HTTPS and QUIC address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Data directory (created 0700 if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Database instead of DATA_DIR/palisade.db: postgres://USER@HOST/DB for brokers that share one.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// SPIFFE trust domain for a new CA (default palisade.local); fixed forever once chosen.
    #[arg(long)]
    trust_domain: Option<String>,
    /// DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// File holding the CA key-encryption key (created if missing).
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// Copy the *.cedar files of this directory instead of the default policy.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// Config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (reads DATA_DIR/broker.toml).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time enrollment token; prints only the token on stdout.
    Create(TokenArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["machine", "connector"]))]
struct TokenArgs {
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Enroll a machine with this name.
    #[arg(long)]
    machine: Option<String>,
    /// Enroll a connector with this name.
    #[arg(long)]
    connector: Option<String>,
    /// Group of the machine (repeatable).
    #[arg(long = "group", requires = "machine")]
    groups: Vec<String>,
    /// How long the token stays valid (at most 7d).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Disable a machine or connector: no new certificates, no new tunnels.
    Disable {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The identity's id (the last segment of its SPIFFE id).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a local (passkey-only) account; prints its one-time invite link (valid 7 days).
    Invite {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The person's email.
        email: String,
        /// Group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Identity name (default: from the email).
        #[arg(long)]
        name: Option<String>,
    },
    /// List people.
    List {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Add or remove a person's groups (the IdP sets them again at the next sign-in).
    #[command(
        after_help = "Examples:\n  palisade-broker user groups --data-dir /var/lib/palisade alice@example.com --remove ml-team\n  palisade-broker user groups --data-dir /var/lib/palisade alice --add model-admins"
    )]
    Groups {
        /// Name, email or id.
        who: String,
        #[command(flatten)]
        edit: groups_cmd::GroupArgs,
    },
    /// Disable a person: their sessions and certificates stop working, live tunnels close.
    Disable {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Name, email or id.
        who: String,
    },
    /// Delete a person's WebAuthn credentials and revoke their sessions; they register anew.
    ResetCredentials {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Name, email or id.
        who: String,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// List active sessions.
    List {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this person's (name, email or id).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a session: its certificates stop working and its live tunnels close.
    Revoke {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The session id.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Command::Run(_) | Command::Quickstart { .. });
    let config = run_config(&cli.command);
    let format = cli.log_format.or_else(|| config.as_ref().map(|c| c.log.format)).unwrap_or_default();
    palisade_telemetry::logging::init(format, if verbose { "info" } else { "warn" });
    let runtime = match runtime(config.and_then(|c| c.relay.worker_threads), verbose) {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    };
    drop(runtime);
    palisade_telemetry::logging::flush();
    code
}

fn fail(e: &anyhow::Error) -> ExitCode {
    palisade_telemetry::logging::flush();
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// The config `run` will use, for its log format and worker threads; a
/// config that does not load gives `None` here and its error from `run` itself.
fn run_config(command: &Command) -> Option<Config> {
    let Command::Run(args) = command else { return None };
    let path = match (&args.source.config, &args.source.data_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.join(CONFIG_FILE),
        (None, None) => return None,
    };
    Config::load(&path).ok()
}

/// The async runtime, sized by `[relay] worker_threads`, `TOKIO_WORKER_THREADS` or the host.
fn runtime(configured: Option<std::num::NonZeroUsize>, verbose: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = Workers::for_this_process(configured)?;
    if verbose {
        tracing::info!("async runtime: {workers}");
    }
    workers.runtime().context("cannot start the async runtime")
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) => init_cmd(args).await,
        Command::Run(args) => run_cmd(args).await,
        Command::Token(TokenCommand::Create(args)) => token_create(args).await,
        Command::Policy(command) => policy_cmd::policy(command).await,
        Command::Service(command) => inventory_cmd::service(command).await,
        Command::Segment(command) => inventory_cmd::segment(command).await,
        Command::Audit(command) => audit_cmd::audit(command).await,
        Command::Alerts(command) => alerts_cmd::alerts(command).await,
        Command::Ca(command) => ca_cmd::ca(command).await,
        Command::Identity(IdentityCommand::Disable { data_dir, id }) => identity_disable(&data_dir, &id).await,
        Command::Machine(command) => groups_cmd::machine(command).await,
        Command::Connector(command) => connector_cmd::connector(command).await,
        Command::User(command) => people::user(command).await,
        Command::Session(command) => people::session(command).await,
        Command::Quickstart { data_dir, listen } => {
            quickstart::quickstart(quickstart::Options { data_dir, listen }, ctrl_c_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ctrl_c_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

fn load_config(data_dir: &Path) -> anyhow::Result<Config> {
    let path = data_dir.join(CONFIG_FILE);
    if !path.exists() {
        bail!("{} not found: run `palisade-broker init --data-dir {}` first", path.display(), data_dir.display());
    }
    Ok(Config::load(&path)?)
}

async fn init_cmd(args: InitArgs) -> anyhow::Result<ExitCode> {
    let opts = InitOptions {
        data_dir: args.data_dir.clone(),
        trust_domain: args.trust_domain.map(|td| td.parse()).transpose().context("--trust-domain")?,
        server_names: args.server_names,
        kek_file: args.kek_file,
        kek_env: std::env::var(KEK_ENV).ok(),
        policy_src: args.policy_dir,
        database_url: args.database_url,
        ..InitOptions::default()
    };
    let report = init::init(&opts).await?;
    if report.kek_beside_key {
        eprintln!(
            "warning: the CA key-encryption key was written to {}, beside the encrypted CA key.\n\
             For production, move it to a secret store and point [ca] kek_file or {KEK_ENV} at it.",
            args.data_dir.join("kek").display()
        );
    }
    if report.created.is_empty() {
        println!(
            "{} is already initialized (trust domain {}); nothing to do",
            args.data_dir.display(),
            report.trust_domain
        );
    } else {
        println!("initialized {} (trust domain {})", args.data_dir.display(), report.trust_domain);
        for item in &report.created {
            println!("  created {item}");
        }
        println!("next: palisade-broker run --data-dir {}", args.data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = match (args.source.config, args.source.data_dir) {
        (Some(path), _) => path,
        (None, Some(dir)) => {
            let path = dir.join(CONFIG_FILE);
            if !path.exists() {
                bail!("{} not found: run `palisade-broker init --data-dir {}` first", path.display(), dir.display());
            }
            path
        }
        (None, None) => bail!("give --config FILE or --data-dir DIR"),
    };
    let config = Config::load(&path)?;
    palisade_broker::run(config, ctrl_c_token()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn token_create(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if args.ttl > MAX_TOKEN_TTL || args.ttl.is_zero() {
        bail!("--ttl must be more than 0 and at most 7d");
    }
    let config = load_config(&args.data_dir)?;
    let (role, name) = match (args.machine, args.connector) {
        (Some(name), None) => (PeerRole::Machine, name),
        (None, Some(name)) => (PeerRole::Connector, name),
        _ => bail!("give exactly one of --machine NAME or --connector NAME"),
    };
    let db = config.open_db().await.context("cannot open the database")?;
    let (ca_der, _) = issuance::ca::read_ca_cert(&config.data_dir)?;
    let request =
        TokenRequest { role, name: name.clone(), groups: args.groups, ttl: args.ttl, created_by: "cli".into() };
    let token = create_token(&db, &ca_der, &request, SystemTime::now()).await?;
    db.close().await;
    println!("{}", token.expose());
    let broker = format!("https://{}", config.public_addr.clone().unwrap_or_else(|| config.listen.to_string()));
    let how = match role {
        PeerRole::Connector => format!("palisade-connector enroll --broker {broker} --token <TOKEN>"),
        _ => format!("palisade enroll --broker {broker} --token <TOKEN>"),
    };
    eprintln!(
        "one-time token for {role} {name:?}, valid {}; on that machine run:\n  {how}",
        humantime::format_duration(args.ttl)
    );
    Ok(ExitCode::SUCCESS)
}

async fn identity_disable(data_dir: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let config = load_config(data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let disabled = admin::disable_identity(&db, id, "cli").await?;
    db.close().await;
    match disabled {
        Some(record) => {
            println!("{} {:?} ({id}) disabled", record.role, record.name);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no identity with id {id}");
            Ok(ExitCode::FAILURE)
        }
    }
}
