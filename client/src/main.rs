//! `palisade`: the command-line client.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_client::listen::parse_listen_addr;
use palisade_client::{Profile, Tunnel, bind_local, forward, proxy, services, store};
use palisade_proto::id::ServiceName;

/// Reach private services through the Palisade broker, as a verified identity.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
struct Cli {
    /// Where enrollment files live (default: $PALISADE_HOME, else ~/.config/palisade).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this machine with a one-time token from an admin.
    Enroll {
        /// The broker's HTTPS address, e.g. https://palisade.example.com:8443.
        #[arg(long, value_name = "URL")]
        broker: String,
        /// The enrollment token (pal1.…); PALISADE_ENROLL_TOKEN keeps it out of the process list.
        #[arg(long, env = "PALISADE_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Replace an existing enrollment.
        #[arg(long)]
        force: bool,
    },
    /// Forward a local port to a service.
    Connect {
        /// The service, as listed by `palisade services`.
        service: String,
        /// Local address to listen on, e.g. 127.0.0.1:8000.
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// Allow a non-loopback listen address (shares your identity with the network).
        #[arg(long)]
        allow_remote: bool,
    },
    /// Run a SOCKS5 and HTTP CONNECT proxy: ask for SERVICE or SERVICE.palisade.
    Proxy {
        /// Local address to listen on, e.g. 127.0.0.1:1080.
        #[arg(long, value_name = "ADDR")]
        socks5: String,
        /// Allow a non-loopback listen address (shares your identity with the network).
        #[arg(long)]
        allow_remote: bool,
    },
    /// List the services you may reach.
    Services {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show who the broker sees.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = match cli.home {
        Some(home) => home,
        None => store::default_home()?,
    };
    match cli.command {
        Command::Enroll { broker, token, force } => enroll(&broker, &token, &home, force).await,
        Command::Connect { service, listen, allow_remote } => connect(&home, &service, &listen, allow_remote).await,
        Command::Proxy { socks5, allow_remote } => run_proxy(&home, &socks5, allow_remote).await,
        Command::Services { json } => list_services(&home, json).await,
        Command::Whoami { json } => whoami(&home, json).await,
    }
}

async fn enroll(broker: &str, token: &str, home: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let enrolled = palisade_client::enroll(broker, token, home, force).await?;
    let expires = humantime::format_rfc3339_seconds(enrolled.not_after);
    println!("Enrolled as {} ({}).", enrolled.name, enrolled.identity);
    if !enrolled.groups.is_empty() {
        println!("Groups: {}.", enrolled.groups.join(", "));
    }
    println!("Certificate valid until {expires}; files in {}.", enrolled.home.display());
    println!("Tunnels go to {} over UDP.", enrolled.quic_addr);
    println!("Next: `palisade services` lists what you may reach; `palisade connect SERVICE --listen 127.0.0.1:PORT`.");
    Ok(())
}

fn tunnel(home: &std::path::Path) -> anyhow::Result<Tunnel> {
    let profile = Profile::load(home)?;
    if profile.is_expired(SystemTime::now()) {
        anyhow::bail!(palisade_client::TunnelError::CertificateExpired);
    }
    Ok(Tunnel::new(profile)?)
}

async fn connect(home: &std::path::Path, service: &str, listen: &str, allow_remote: bool) -> anyhow::Result<()> {
    let service: ServiceName = service.parse()?;
    let addr = parse_listen_addr(listen)?;
    let listener = bind_local(addr, allow_remote).await?;
    let tunnel = tunnel(home)?;
    let local = listener.local_addr().context("reading the bound address")?;
    announce(&format!("listening on {local} -> {service}"))?;
    forward::serve(listener, tunnel.clone(), service, shutdown_signal()).await;
    tunnel.close().await;
    Ok(())
}

async fn run_proxy(home: &std::path::Path, listen: &str, allow_remote: bool) -> anyhow::Result<()> {
    let addr = parse_listen_addr(listen)?;
    let listener = bind_local(addr, allow_remote).await?;
    let tunnel = tunnel(home)?;
    let local = listener.local_addr().context("reading the bound address")?;
    announce(&format!("proxy listening on {local}"))?;
    proxy::serve(listener, tunnel.clone(), shutdown_signal()).await;
    tunnel.close().await;
    Ok(())
}

/// The one stdout line scripts and tests wait for, flushed at once.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")
}

async fn list_services(home: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let tunnel = tunnel(home)?;
    let listing = tunnel.services().await?;
    tunnel.close().await;
    if json {
        println!("{}", services::services_json(&listing)?);
    } else {
        print!("{}", services::services_table(&listing));
    }
    Ok(())
}

async fn whoami(home: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let tunnel = tunnel(home)?;
    let who = tunnel.whoami().await?;
    tunnel.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&who)?);
    } else {
        print!("{}", services::whoami_text(&who, SystemTime::now()));
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
