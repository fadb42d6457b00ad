//! `palisade-connector`: enroll once, then run beside the workloads.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_connector::config::STATE_DIR_ENV;
use palisade_connector::{ConnectorConfig, default_state_dir};
use palisade_telemetry::LogFormat;
use palisade_telemetry::runtime::Workers;
use tokio_util::sync::CancellationToken;

mod doctor;

#[derive(Parser)]
#[command(name = "palisade-connector", version, about = "Palisade connector: enforces policy beside the workloads")]
struct Cli {
    /// Log format on stderr: text or json (default: `[log] format` for `run`, else text).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this machine with a one-time token from the broker's admin.
    #[command(
        after_help = "Examples:\n  palisade-connector enroll --broker https://broker.example.com:8443 --token pal1.… --state-dir /var/lib/palisade-connector"
    )]
    Enroll {
        /// The broker's HTTPS URL, e.g. https://broker.example.com:443.
        #[arg(long)]
        broker: String,
        /// The enrollment token (pal1.…).
        #[arg(long, env = "PALISADE_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Where to keep the key and certificate.
        #[arg(long, env = STATE_DIR_ENV)]
        state_dir: Option<PathBuf>,
        /// Replace an existing enrollment.
        #[arg(long)]
        force: bool,
    },
    /// Check the config, the enrollment, the broker's HTTPS API, the policy bundle and every upstream.
    ///
    /// Exits non-zero when a check fails. Example: `palisade-connector doctor --config /etc/palisade/connector.toml`.
    #[command(after_help = "Examples:\n  palisade-connector doctor --config /etc/palisade/connector.toml")]
    Doctor {
        /// The connector's TOML configuration.
        #[arg(long, env = "PALISADE_CONNECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Connect to the broker and serve the configured services.
    #[command(after_help = "Examples:\n  palisade-connector run --config /etc/palisade/connector.toml")]
    Run {
        /// The connector's TOML configuration.
        #[arg(long, env = "PALISADE_CONNECTOR_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = run_config(&cli.command);
    let format = cli.log_format.or_else(|| config.as_ref().map(|c| c.log_format)).unwrap_or_default();
    palisade_telemetry::logging::init(format, "info");
    let executed = execute(cli, config.and_then(|c| c.worker_threads));
    palisade_telemetry::logging::flush();
    match executed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line, without a backtrace.
            eprintln!("palisade-connector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli, worker_threads: Option<NonZeroUsize>) -> anyhow::Result<()> {
    let workers = Workers::for_this_process(worker_threads)?;
    if matches!(cli.command, Command::Run { .. }) {
        tracing::info!("async runtime: {workers}");
    }
    let runtime = workers.runtime().context("cannot start the async runtime")?;
    match cli.command {
        Command::Enroll { broker, token, state_dir, force } => {
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            runtime.block_on(enroll(&broker, &token, state_dir, force))
        }
        Command::Doctor { config } => {
            let report = runtime.block_on(doctor::doctor(&config));
            print!("{}", report.text());
            if report.failed() {
                anyhow::bail!("some checks failed: see the `fix:` lines above");
            }
            Ok(())
        }
        Command::Run { config } => {
            let config = ConnectorConfig::load(&config)?;
            runtime.block_on(run(config))
        }
    }
}

/// The config `run` will use, for its log format and worker threads; a
/// config that does not load gives `None` here and its error from `run` itself.
fn run_config(command: &Command) -> Option<ConnectorConfig> {
    let Command::Run { config } = command else { return None };
    ConnectorConfig::load(config).ok()
}

async fn enroll(broker: &str, token: &str, state_dir: PathBuf, force: bool) -> anyhow::Result<()> {
    let enrolled = palisade_connector::enroll(broker, token, &state_dir, force).await?;
    println!("enrolled as {}", enrolled.identity);
    println!("state directory: {}", enrolled.state_dir.display());
    println!("broker QUIC address: {}", enrolled.quic_addr);
    println!("next: list your services in a config file and run `palisade-connector run --config FILE`");
    Ok(())
}

async fn run(config: ConnectorConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let connector = tokio::spawn(palisade_connector::run_with_ready(config, shutdown.clone(), Some(ready_tx)));
    tokio::spawn(async move {
        if ready_rx.await.is_ok() {
            // Tests and supervisors wait for this exact line.
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "palisade-connector ready");
            let _ = stdout.flush();
        }
    });
    connector.await.context("the connector task failed")??;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
