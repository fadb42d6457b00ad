//! `palisade-broker run`: load everything, bind HTTPS (TCP) and QUIC (UDP) on
//! the same port, serve until shutdown.
//!
//! When every listener is bound, exactly one line goes to stdout:
//! `palisade-broker ready https=<addr> quic=<addr>`, followed by
//! ` metrics=<addr>` when `[metrics] listen` is set. Logs go to stderr.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::TlsIdentity;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::audit::Audit;
use crate::config::Config;
use crate::db::meta;
use crate::init::{SERVER_CERT_FILE, SERVER_KEY_FILE, replace_file};
use crate::issuance::ca::Ca;
use crate::issuance::keystore::{KEK_ENV, KekSource};
use crate::issuance::rotation;
use crate::policy::PolicyStore;
use crate::state::{Broker, BrokerParts};

const RENEW_SERVER_CERT_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long tasks may take to stop once the relay's drain is over.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the broker until `shutdown` is cancelled or a listener fails.
///
/// # Errors
/// Anything that keeps the broker from starting (no data directory, wrong KEK,
/// invalid policy, port in use), or a listener that fails while running.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_ready(config, shutdown, None).await
}

/// Where a running broker listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// HTTPS (TCP).
    pub https: SocketAddr,
    /// QUIC (UDP).
    pub quic: SocketAddr,
    /// The metrics listener, if `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
}

/// [`run`], and sends the bound addresses on `ready` once everything listens.
///
/// # Errors
/// As [`run`]; `ready` is dropped unsent if startup fails.
pub async fn run_with_ready(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    let mut config = config;
    let (tcp, udp) = bind_pair(config.listen, config.relay.udp_buffer_bytes)
        .with_context(|| format!("cannot listen on {} (TCP and UDP)", config.listen))?;
    let https_addr = tcp.local_addr()?;
    let quic_addr = udp.local_addr()?;
    if config.public_addr.is_none() && config.listen.port() == 0 {
        config.public_addr = Some(quic_addr.to_string());
    }
    let broker = assemble(config).await?;
    // Before the relay accepts: links this address held in an earlier run are down.
    match crate::db::connector_links::close_left_open(broker.db(), &broker.config().quic_public_addr()).await {
        Ok(0) => {}
        Ok(closed) => tracing::info!(closed, "connector links of the previous run are recorded as down"),
        Err(e) => tracing::warn!(error = %e, "cannot close the connector links left open by a previous run"),
    }
    let metrics = bind_metrics(broker.config()).await?;
    let metrics_addr = metrics.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;
    let admin = crate::admin::bind(&broker.config().data_dir).await?;
    let tcp = tokio::net::TcpListener::from_std(tcp)?;

    let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move { crate::web::serve(b, tcp, s).await.map(|()| "https").context("HTTPS server") });
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move { crate::relay::serve(b, udp, s).await.map(|()| "quic").context("QUIC relay") });
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::admin::serve(b, admin, s).await;
        Ok("admin")
    });
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move {
        reload_on_sighup(b, s).await;
        Ok("sighup")
    });

    tasks.spawn(crate::audit::sinks::serve_for(broker.clone(), shutdown.clone()));
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move {
        announce_replica(b, s).await;
        Ok("replica heartbeat")
    });
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::sync::listen::run(b, s).await;
        Ok("change notifications")
    });
    let (b, s) = (broker.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::sync::report(b, s).await;
        Ok("staleness report")
    });
    if let Some(listener) = metrics {
        let (b, s) = (broker.clone(), shutdown.clone());
        tasks.spawn(
            async move { crate::web::metrics::serve(b, listener, s).await.map(|()| "metrics").context("metrics") },
        );
    }
    tracing::info!(%https_addr, %quic_addr, trust_domain = %broker.ca().trust_domain(), "broker ready");
    let bound = Ready { https: https_addr, quic: quic_addr, metrics: metrics_addr };
    print_ready(bound)?;
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    let result = supervise(tasks, shutdown, broker.config().relay.drain_timeout + STOP_TIMEOUT).await;
    // Sign the chain head on the way out, so a truncation of the last events
    // before the next start is detectable.
    if let Err(e) = broker.audit().checkpoint().await {
        tracing::error!(error = %e, "could not write the shutdown audit checkpoint");
    }
    result
}

fn print_ready(ready: Ready) -> std::io::Result<()> {
    let Ready { https, quic, metrics } = ready;
    let metrics = metrics.map(|addr| format!(" metrics={addr}")).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "palisade-broker ready https={https} quic={quic}{metrics}")?;
    stdout.flush()
}

/// Binds `[metrics] listen`, if set.
async fn bind_metrics(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(listen) = config.metrics.listen else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for metrics ([metrics] listen)"))?;
    Ok(Some(listener))
}

async fn supervise(
    mut tasks: JoinSet<anyhow::Result<&'static str>>,
    shutdown: CancellationToken,
    stop_within: Duration,
) -> anyhow::Result<()> {
    let mut failure = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        Some(ended) = tasks.join_next(), if !shutdown.is_cancelled() => {
            failure = Some(match ended {
                Ok(Ok(name)) => anyhow::anyhow!("{name} stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a broker task panicked: {e}"),
            });
            shutdown.cancel();
        }
    }
    let drained = tokio::time::timeout(stop_within, async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::warn!(error = %format!("{e:#}"), "error while stopping");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within {stop_within:?}; aborting them");
        tasks.abort_all();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn assemble(config: Config) -> anyhow::Result<Broker> {
    let db = config
        .open_db()
        .await
        .with_context(|| format!("cannot open the database {}", crate::db::redacted(&config.database_url())))?;
    let data_dir = config.data_dir.display().to_string();
    let Some(trust_domain) = meta::get(&db, meta::TRUST_DOMAIN).await? else {
        bail!("the database has no trust domain: run `palisade-broker init --data-dir {data_dir}` first");
    };
    let ca = load_ca(&config).await?;
    if ca.trust_domain().as_str() != trust_domain {
        bail!("ca.pem is for trust domain {} but the database says {trust_domain}", ca.trust_domain());
    }
    rotation::check_active(&config.data_dir, &db, ca.cert_der()).await?;
    let mut anchors = vec![ca.cert_der().clone()];
    anchors.extend(rotation::also_trusted(&config.data_dir, &db, ca.trust_domain()).await?);
    let trust = TrustAnchors::new(ca.trust_domain().clone(), anchors).context("trust bundle")?;
    let server_identity = server_identity(&config, &ca).context("server certificate")?;
    let policy = PolicyStore::load(&config, &db)
        .await
        .map_err(|e| anyhow::anyhow!("policy in {}: {e}", config.policy_dir.display()))?;
    let audit = Audit::configured(db.clone(), &config.audit.trail);
    Ok(Broker::new(BrokerParts { config, db, audit, ca, trust, server_identity, policy }))
}

async fn load_ca(config: &Config) -> anyhow::Result<Ca> {
    let env = std::env::var(KEK_ENV).ok();
    let source = KekSource::choose(config.ca.kek_file.as_deref(), env.as_deref(), &config.data_dir);
    let kek =
        source.read(env.as_deref()).with_context(|| format!("cannot read the CA key-encryption key ({source:?})"))?;
    let data_dir = config.data_dir.clone();
    let loaded = tokio::task::spawn_blocking(move || Ca::load(&data_dir, &kek)).await?;
    let interrupted = config.data_dir.join(rotation::CA_NEXT_CERT_FILE).exists()
        && !config.data_dir.join(rotation::CA_NEXT_KEY_FILE).exists();
    loaded.with_context(|| {
        if interrupted {
            format!(
                "cannot load the CA; a `ca activate` looks interrupted: run `palisade-broker ca activate --data-dir {}` again",
                config.data_dir.display()
            )
        } else {
            "cannot load the CA".to_owned()
        }
    })
}

/// The server chain `[leaf, CA]` and key from `server.pem`/`server.key`, renewed
/// first if the leaf expires within 30 days, lacks a configured server name, or
/// does not match its key.
fn server_identity(config: &Config, ca: &Ca) -> anyhow::Result<TlsIdentity> {
    let cert_path = config.data_dir.join(SERVER_CERT_FILE);
    let key_path = config.data_dir.join(SERVER_KEY_FILE);
    let cert_pem =
        std::fs::read_to_string(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    let key_pem = std::fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    let leaf = palisade_proto::pem::certs(&cert_pem)?.into_iter().next().context("server.pem holds no certificate")?;
    let key = palisade_proto::pem::private_key(&key_pem)?;
    let reason = issued_by_other_ca(&leaf, ca)
        .or_else(|| needs_renewal(&leaf, &key_pem, &config.server_names, SystemTime::now()));
    if let Some(reason) = reason {
        tracing::info!(reason, "issuing a new server certificate");
        let fresh = ca.issue_server(&config.server_names, &uuid::Uuid::new_v4().to_string(), SystemTime::now())?;
        replace_file(&key_path, fresh.key_pem.as_bytes(), 0o600)?;
        replace_file(&cert_path, format!("{}{}", fresh.cert_pem, ca.cert_pem()).as_bytes(), 0o644)?;
        let leaf = palisade_proto::pem::certs(&fresh.cert_pem)?.into_iter().next().context("fresh certificate")?;
        let key = palisade_proto::pem::private_key(&fresh.key_pem)?;
        return Ok(TlsIdentity { chain: vec![leaf, ca.cert_der().clone()], key });
    }
    Ok(TlsIdentity { chain: vec![leaf, ca.cert_der().clone()], key })
}

/// After a CA rotation the server certificate must come from the active CA:
/// clients and tokens pin the active CA.
fn issued_by_other_ca(leaf: &[u8], ca: &Ca) -> Option<&'static str> {
    let (Ok((_, cert)), Ok((_, issuer))) = (X509Certificate::from_der(leaf), X509Certificate::from_der(ca.cert_der()))
    else {
        return Some("server.pem is unreadable");
    };
    (cert.issuer().as_raw() != issuer.subject().as_raw()).then_some("the server certificate is not from the active CA")
}

fn needs_renewal(leaf: &[u8], key_pem: &str, names: &[String], now: SystemTime) -> Option<&'static str> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else { return Some("server.pem is unreadable") };
    let key_matches = rcgen::KeyPair::from_pem(key_pem)
        .is_ok_and(|k| k.public_key_raw() == cert.public_key().subject_public_key.data.as_ref());
    if !key_matches {
        return Some("server.key does not match server.pem");
    }
    let expires =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
    if expires < now + RENEW_SERVER_CERT_BEFORE {
        return Some("the server certificate expires within 30 days");
    }
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(ip) => ip_from_bytes(ip).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covered = names.iter().all(|n| {
        let n = n.parse::<std::net::IpAddr>().map_or_else(|_| n.to_ascii_lowercase(), |ip| ip.to_string());
        sans.contains(&n)
    });
    (!covered).then_some("server_names changed")
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Binds TCP on `listen`, then UDP on the same address and port. With port 0 the
/// kernel picks the TCP port; if UDP is taken on it, another port is tried.
fn bind_pair(listen: SocketAddr, udp_buffer: usize) -> std::io::Result<(TcpListener, UdpSocket)> {
    let mut attempt = 0;
    loop {
        let tcp = TcpListener::bind(listen)?;
        tcp.set_nonblocking(true)?;
        match bind_udp(tcp.local_addr()?, udp_buffer) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if listen.port() == 0 && attempt < 8 => {
                tracing::debug!(error = %e, "UDP port taken; trying another");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(buffer).and_then(|()| socket.set_send_buffer_size(buffer)) {
        tracing::warn!(error = %e, buffer, "could not set the UDP socket buffers");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < buffer {
        tracing::info!(
            requested = buffer,
            granted,
            "the kernel capped the UDP receive buffer; raise net.core.rmem_max for more throughput"
        );
    }
    Ok(socket.into())
}

/// How often a broker refreshes its row in `broker_replicas` (and prunes old quota counts).
const REPLICA_HEARTBEAT: Duration = Duration::from_secs(5);
/// Quota counts are kept this long after their window ended (seconds).
const QUOTA_KEPT_SECS: i64 = 600;

/// Keeps this broker listed among the replicas that share its database (for
/// clients to fail over to) while it runs, and takes it off when it stops.
async fn announce_replica(broker: Broker, shutdown: CancellationToken) {
    let addr = broker.config().quic_public_addr();
    let mut tick = tokio::time::interval(REPLICA_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = crate::db::unix_seconds(std::time::SystemTime::now());
        if let Err(e) = crate::db::replicas::heartbeat(broker.db(), &addr, now).await {
            tracing::warn!(error = %e, "cannot record this broker among the replicas");
        }
        if let Err(e) = crate::db::connector_links::heartbeat(broker.db(), &addr, now).await {
            tracing::warn!(error = %e, "cannot refresh this broker's connector links");
        }
        if let Err(e) = crate::db::quota_usage::prune(broker.db(), now.saturating_sub(QUOTA_KEPT_SECS) * 1_000).await {
            tracing::warn!(error = %e, "cannot prune the quota counts of ended windows");
        }
    }
    if let Err(e) = crate::db::replicas::forget(broker.db(), &addr).await {
        tracing::warn!(error = %e, "cannot remove this broker from the replicas");
    }
}

async fn reload_on_sighup(broker: Broker, shutdown: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot listen for SIGHUP; use `palisade-broker policy reload`"),
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangups.recv() => {
                if got.is_none() {
                    return;
                }
                match broker.policy().reload(&broker).await {
                    Ok(version) => tracing::info!(version, "policy reloaded (SIGHUP)"),
                    Err(e) => tracing::warn!(error = %e, "policy reload refused (SIGHUP); the running policy stays"),
                }
            }
        }
    }
}
