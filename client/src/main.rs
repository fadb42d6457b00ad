//! `palisade`: the command-line client.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use palisade_client::listen::parse_listen_addr;
use palisade_client::login::{CALLBACK_TIMEOUT, parse_ca_pin};
use palisade_client::{
    CaSource, DeviceCode, LoggedIn, LoginOptions, Profile, RemoteLogout, Status, Tunnel, bind_local, forward, proxy,
    services, store,
};
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
    /// Sign in as a person: in the browser, or with a code on another device.
    #[command(
        after_help = "Examples:\n  palisade login --broker https://palisade.example.com:8443 --ca-pin 3f1c…e9\n  palisade login --device\n  palisade login --mfa"
    )]
    Login(LoginArgs),
    /// Show who you are signed in as, from the local certificate.
    #[command(after_help = "Examples:\n  palisade status\n  palisade status --online --json")]
    Status {
        /// Also ask the broker who it sees.
        #[arg(long)]
        online: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End your session on the broker and delete the local certificate (the key stays).
    #[command(after_help = "Examples:\n  palisade logout")]
    Logout,
    /// Enroll this machine with a one-time token from an admin.
    #[command(
        after_help = "Examples:\n  palisade enroll --broker https://palisade.example.com:8443 --token pal1.…\n  PALISADE_ENROLL_TOKEN=pal1.… palisade enroll --broker https://palisade.example.com:8443"
    )]
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
    #[command(
        after_help = "Examples:\n  palisade connect llm-prod --listen 127.0.0.1:8000\n  curl http://127.0.0.1:8000/v1/models"
    )]
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
    #[command(
        after_help = "Examples:\n  palisade proxy --socks5 127.0.0.1:1080\n  curl --proxy socks5h://127.0.0.1:1080 http://llm-prod.palisade/v1/models"
    )]
    Proxy {
        /// Local address to listen on, e.g. 127.0.0.1:1080.
        #[arg(long, value_name = "ADDR")]
        socks5: String,
        /// Allow a non-loopback listen address (shares your identity with the network).
        #[arg(long)]
        allow_remote: bool,
    },
    /// List the services you may reach.
    #[command(after_help = "Examples:\n  palisade services\n  palisade services --json")]
    Services {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check what usually goes wrong (certificate, trust bundle, HTTPS, clock, UDP, services) and say what to do.
    ///
    /// Exits non-zero when a check fails. Example: `palisade doctor`, or `palisade doctor --json`.
    #[command(after_help = "Examples:\n  palisade doctor\n  palisade doctor --json")]
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show who the broker sees.
    #[command(after_help = "Examples:\n  palisade whoami\n  palisade whoami --json")]
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The broker's HTTPS address, e.g. https://palisade.example.com:8443 (default: the one stored).
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// The broker's CA certificate (PEM), needed the first time.
    #[arg(long, value_name = "FILE", conflicts_with = "ca_pin")]
    ca_file: Option<PathBuf>,
    /// The SHA-256 (hex) of the broker's CA certificate, needed the first time.
    #[arg(long, value_name = "SHA256HEX")]
    ca_pin: Option<String>,
    /// Print the sign-in URL but do not start a browser.
    #[arg(long)]
    no_browser: bool,
    /// Sign in on another device with a short code (for machines without a browser).
    #[arg(long, conflicts_with_all = ["mfa", "no_browser"])]
    device: bool,
    /// Refresh only the second factor of the current sign-in (step-up MFA).
    #[arg(long, conflicts_with = "force")]
    mfa: bool,
    /// Replace a machine enrollment or another broker's profile in this home (with a new key).
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // One thread, like ssh: a person's tunnels are light, and every hand-off
    // between worker threads is a wake-up a new connection would wait for.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
        Command::Login(args) => login(&home, args).await,
        Command::Status { online, json } => show_status(&home, online, json).await,
        Command::Logout => logout(&home).await,
        Command::Enroll { broker, token, force } => enroll(&broker, &token, &home, force).await,
        Command::Connect { service, listen, allow_remote } => connect(&home, &service, &listen, allow_remote).await,
        Command::Proxy { socks5, allow_remote } => run_proxy(&home, &socks5, allow_remote).await,
        Command::Services { json } => list_services(&home, json).await,
        Command::Whoami { json } => whoami(&home, json).await,
        Command::Doctor { json } => doctor(&home, json).await,
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

async fn login(home: &Path, args: LoginArgs) -> anyhow::Result<()> {
    let mut opts = LoginOptions::new(home);
    opts.broker = args.broker;
    opts.mfa_only = args.mfa;
    opts.force = args.force;
    opts.ca = match (args.ca_file, args.ca_pin) {
        (Some(file), _) => Some(CaSource::File(file)),
        (None, Some(pin)) => Some(CaSource::Pin(parse_ca_pin(&pin)?)),
        (None, None) => None,
    };
    let done = if args.device {
        palisade_client::login_device(opts, show_device_code).await?
    } else {
        let open = !args.no_browser && can_open_browser();
        palisade_client::login_browser(opts, |url| show_url(url, open)).await?
    };
    print_logged_in(&done, args.mfa);
    Ok(())
}

/// The one stdout line a person (or a test) opens; a browser too, where there is one.
fn show_url(url: &str, open: bool) {
    if let Err(error) = announce(&format!("open this URL to sign in: {url}")) {
        eprintln!("{error:#}");
    }
    if open {
        open_browser(url);
    }
    let wait = humantime::format_duration(CALLBACK_TIMEOUT);
    eprintln!("Waiting for the sign-in to finish in the browser (up to {wait})…");
}

fn show_device_code(code: &DeviceCode) {
    let mut text = format!("To sign in, open {} and enter the code {}", code.verification_uri, code.user_code);
    if let Some(complete) = &code.verification_uri_complete {
        text.push_str(&format!("\n(or open {complete})"));
    }
    if let Err(error) = announce(&text) {
        eprintln!("{error:#}");
    }
    let minutes = code.expires_in.as_secs() / 60;
    eprintln!("Waiting for the code to be approved (it expires in {minutes} minutes)…");
}

fn can_open_browser() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("CI") {
        return false;
    }
    cfg!(target_os = "macos") || (cfg!(unix) && (set("DISPLAY") || set("WAYLAND_DISPLAY")))
}

fn open_browser(url: &str) {
    let program = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    // tokio reaps the child when it exits; the browser outlives this process.
    let spawned = tokio::process::Command::new(program)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = spawned {
        eprintln!("Could not start a browser ({program}: {error}); open the URL yourself.");
    }
}

fn print_logged_in(done: &LoggedIn, mfa_only: bool) {
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if mfa_only {
        let mfa = done.mfa_at.map_or_else(|| "now".to_owned(), at);
        println!("Second factor refreshed at {mfa} for session {}.", done.session_id);
    } else {
        println!("Signed in as {} ({}).", done.name, done.identity);
        if !done.groups.is_empty() {
            println!("Groups: {}.", done.groups.join(", "));
        }
        println!("Session {} ends {}.", done.session_id, at(done.session_expires));
    }
    println!("Certificate valid until {}; files in {}.", at(done.not_after), done.home.display());
}

async fn show_status(home: &Path, online: bool, json: bool) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let status = palisade_client::status(home, now)?;
    let who = if online && status.is_usable() { Some(tunnel(home)?.whoami().await?) } else { None };
    if json {
        let mut value = services::status_json(&status, now);
        value["broker_sees"] = serde_json::to_value(&who)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", services::status_text(&status, now));
        if let Some(who) = &who {
            print!("\nThe broker sees:\n{}", services::whoami_text(who, now));
        }
    }
    not_usable(&status).map_or(Ok(()), |reason| Err(anyhow::anyhow!(reason)))
}

fn not_usable(status: &Status) -> Option<String> {
    let who = if status.is_person() { "run `palisade login`" } else { "enroll again" };
    match &status.certificate {
        None => Some(format!("logged out: {who}")),
        Some(c) if c.expired => Some(format!("the certificate has expired: {who}")),
        Some(c) => c.problem.as_ref().map(|p| format!("the certificate is not usable ({p}): {who}")),
    }
}

async fn logout(home: &Path) -> anyhow::Result<()> {
    let done = palisade_client::logout(home).await?;
    let session = done.session_id.as_deref().unwrap_or("the session");
    match &done.remote {
        RemoteLogout::Revoked => println!("Revoked {session} on the broker."),
        RemoteLogout::AlreadyEnded => println!("The broker had already ended {session}."),
        RemoteLogout::NothingToRevoke => println!("Already logged out."),
        RemoteLogout::NotRevoked { reason } => eprintln!(
            "warning: could not revoke {session} on the broker ({reason}); it stays valid there until it ends or an admin revokes it"
        ),
    }
    if done.deleted_certificate {
        println!("Deleted the local certificate of {}; the key stays for the next `palisade login`.", done.identity);
    }
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

async fn doctor(home: &Path, json: bool) -> anyhow::Result<()> {
    let report = palisade_client::doctor(home, &palisade_client::DoctorOptions::default()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.failed() {
        anyhow::bail!("some checks failed: see the `fix:` lines above");
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
