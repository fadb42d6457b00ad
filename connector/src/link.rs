//! The connector's QUIC link to the broker: dial out, keep the control
//! stream, accept dispatched tunnels, renew the certificate, reconnect.
//!
//! One link per broker replica ([`replicas`]); each holds one connection at
//! a time: load key, certificate and CA from the store (so a renewal or a
//! new enrollment is picked up), connect, open the control stream with
//! `Hello`, wait for `Welcome`, then serve until the connection or the
//! control stream ends, and reconnect with jittered exponential backoff.

mod backoff;
pub(crate) mod bundle;
mod endpoint;
mod renew;
pub(crate) mod replicas;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use palisade_proto::bundle::SignedBundle;
use palisade_proto::control::{BrokerToConnector, ConnectorToBroker};
use palisade_proto::identity::{PeerRole, VerifyPeerError, verify_peer};
use palisade_proto::reject::close;
use palisade_proto::wire::{self, StreamHeader};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::authorize::{Callers, PolicyState};
use crate::config::{ServiceConfig, split_host_port};
use crate::dispatch::{self, StreamContext};
use crate::store::{Store, StoredIdentity};
use backoff::Backoff;
use renew::Renewal;

/// A connection that lived this long was healthy: start the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
const RENEW_CHECK: Duration = Duration::from_secs(5);
/// Stream reports queue here while the control stream is busy; senders wait when it is full.
const CONTROL_QUEUE: usize = 1024;

/// Fires once, when the first link to any replica is welcomed.
pub(crate) type Ready = Arc<Mutex<Option<oneshot::Sender<()>>>>;

/// What the link needs for its whole life.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) store: Store,
    /// The configured `host:port` (the TLS server name comes from it).
    pub(crate) broker: String,
    /// The replica's address this link dials.
    pub(crate) addr: SocketAddr,
    pub(crate) services: Arc<[ServiceConfig]>,
    pub(crate) connect_timeout: Duration,
    pub(crate) policy: Arc<PolicyState>,
}

/// How one connection attempt ended.
enum AttemptEnd {
    Shutdown,
    Ended { welcomed: bool },
}

/// Connects, serves and reconnects until `shutdown`.
pub(crate) async fn run(link: Link, shutdown: CancellationToken, ready: Ready) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match attempt(&link, &shutdown, &ready).await {
            AttemptEnd::Shutdown => return,
            AttemptEnd::Ended { welcomed } if welcomed || started.elapsed() > STABLE_AFTER => backoff.reset(),
            AttemptEnd::Ended { .. } => {}
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis(), broker = %link.broker, addr = %link.addr, "reconnecting to the broker");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn attempt(link: &Link, shutdown: &CancellationToken, ready: &Ready) -> AttemptEnd {
    let failed = AttemptEnd::Ended { welcomed: false };
    let store = link.store.clone();
    let identity = match tokio::task::spawn_blocking(move || store.load()).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot load the connector's identity");
            return failed;
        }
        Err(e) => {
            tracing::error!(error = %e, "loading the connector's identity failed");
            return failed;
        }
    };
    if !own_certificate_usable(&identity) {
        return failed;
    }
    let connected = tokio::select! {
        () = shutdown.cancelled() => return AttemptEnd::Shutdown,
        connected = connect(&link.broker, link.addr, &identity) => connected,
    };
    let (endpoint, conn) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(broker = %link.broker, addr = %link.addr, error = %e, "cannot connect to the broker");
            return failed;
        }
    };
    tracing::info!(broker = %link.broker, remote = %conn.remote_address(), "connected to the broker");
    let end = serve(link, identity, &conn, shutdown, ready).await;
    close_connection(&endpoint, &conn, matches!(end, AttemptEnd::Shutdown)).await;
    end
}

/// An expired certificate cannot work until it is renewed or the connector
/// enrolls again; say so clearly instead of letting the broker's refusal speak.
fn own_certificate_usable(identity: &StoredIdentity) -> bool {
    match verify_peer(&identity.tls.chain, &identity.trust, SystemTime::now(), &[PeerRole::Connector]) {
        Ok(_) => true,
        Err(VerifyPeerError::Expired) => {
            tracing::error!(
                identity = %identity.spiffe,
                "connector certificate expired: enroll again with a new token"
            );
            false
        }
        Err(VerifyPeerError::NotYetValid) => {
            tracing::warn!(
                identity = %identity.spiffe,
                "connector certificate not valid yet by this machine's clock, which is behind the broker's that issued it: set the clock right (e.g. enable NTP); trying anyway"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the connector's own certificate does not verify; trying anyway");
            true
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Address(String),
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Config(#[from] endpoint::ClientConfigError),
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake: {0}")]
    Handshake(#[from] ConnectionError),
    #[error("handshake timed out")]
    Timeout,
}

async fn connect(
    broker: &str,
    addr: SocketAddr,
    identity: &StoredIdentity,
) -> Result<(Endpoint, Connection), ConnectError> {
    let (host, _) = split_host_port(broker).map_err(ConnectError::Address)?;
    let config = endpoint::client_config(&identity.tls, &identity.trust)?;
    let endpoint = endpoint::client_endpoint(addr).map_err(ConnectError::Socket)?;
    let connecting = endpoint.connect_with(config, addr, host)?;
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await.map_err(|_| ConnectError::Timeout)??;
    Ok((endpoint, conn))
}

async fn close_connection(endpoint: &Endpoint, conn: &Connection, shutting_down: bool) {
    if shutting_down {
        conn.close(VarInt::from_u32(close::SHUTTING_DOWN), b"connector shutting down");
        // Give the CONNECTION_CLOSE a moment to leave, so the broker does not wait for its idle timeout.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    } else {
        conn.close(VarInt::from_u32(close::NORMAL), b"");
    }
}

/// Serves one connection until it, its control stream or the connector ends.
async fn serve(
    link: &Link,
    identity: StoredIdentity,
    conn: &Connection,
    shutdown: &CancellationToken,
    ready: &Ready,
) -> AttemptEnd {
    let (mut control_send, control_recv) = match open_control(conn, &link.services).await {
        Ok(streams) => streams,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the control stream");
            return AttemptEnd::Ended { welcomed: false };
        }
    };
    let (out_tx, out_rx) = mpsc::channel(CONTROL_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(16);
    let callers = Arc::new(Callers::new(identity.trust.clone()));
    let streams = Arc::new(StreamContext {
        policy: link.policy.clone(),
        callers: callers.clone(),
        services: link.services.clone(),
        connect_timeout: link.connect_timeout,
        control: out_tx.clone(),
        shares: Arc::default(),
    });
    let renewal = Renewal::new(link.store.clone(), identity.spiffe.clone(), identity.validity);
    let mut control = Control {
        policy: link.policy.clone(),
        store: link.store.clone(),
        callers,
        renewal,
        out: out_tx,
        welcomed: false,
        ready,
    };
    let reason = tokio::select! {
        reason = write_frames(&mut control_send, out_rx) => reason,
        reason = read_frames(control_recv, in_tx) => reason,
        reason = accept_streams(conn, streams) => reason,
        reason = control.run(in_rx) => reason,
        () = shutdown.cancelled() => {
            crate::metrics::LINKED.set(0);
            return AttemptEnd::Shutdown;
        }
    };
    crate::metrics::LINKED.set(0);
    tracing::warn!(%reason, "the link to the broker ended");
    AttemptEnd::Ended { welcomed: control.welcomed }
}

async fn open_control(conn: &Connection, services: &[ServiceConfig]) -> Result<(SendStream, RecvStream), String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = ConnectorToBroker::Hello {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        services: services.iter().map(|s| s.name.to_string()).collect(),
    };
    let mut bytes = StreamHeader::ConnectorControl.encode().map_err(|e| e.to_string())?;
    bytes.extend(wire::encode_frame(&hello).map_err(|e| e.to_string())?);
    send.write_all(&bytes).await.map_err(|e| e.to_string())?;
    Ok((send, recv))
}

async fn accept_streams(conn: &Connection, ctx: Arc<StreamContext>) -> String {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(dispatch::handle(ctx.clone(), send, recv));
            }
            Err(e) => return describe_close(&e),
        }
    }
}

fn describe_close(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close::IDENTITY_REJECTED) => {
            "the broker refused this connector's identity (disabled, revoked or wrong certificate)".to_owned()
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close::SHUTTING_DOWN) => {
            "the broker is shutting down".to_owned()
        }
        other => format!("connection lost: {other}"),
    }
}

async fn write_frames(send: &mut SendStream, mut frames: mpsc::Receiver<ConnectorToBroker>) -> String {
    while let Some(frame) = frames.recv().await {
        let bytes = match wire::encode_frame(&frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a control frame; dropped");
                continue;
            }
        };
        if let Err(e) = send.write_all(&bytes).await {
            return format!("control stream write failed: {e}");
        }
    }
    "control queue closed".to_owned()
}

async fn read_frames(mut recv: RecvStream, frames: mpsc::Sender<BrokerToConnector>) -> String {
    loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut prefix).await {
            return format!("control stream closed: {e}");
        }
        let len = match wire::frame_len(prefix) {
            Ok(len) => len,
            Err(e) => return format!("control stream: {e}"),
        };
        let mut body = vec![0u8; len];
        if let Err(e) = recv.read_exact(&mut body).await {
            return format!("control stream closed: {e}");
        }
        match wire::decode_frame::<BrokerToConnector>(&body) {
            Ok(frame) => {
                if frames.send(frame).await.is_err() {
                    return "control handler ended".to_owned();
                }
            }
            // A frame from a newer broker: ignoring it grants nothing, and the link stays up.
            Err(e) => tracing::error!(error = %e, "ignoring a control frame this connector does not understand"),
        }
    }
}

/// The control stream's state machine: welcome, policy updates, renewal.
struct Control<'a> {
    policy: Arc<PolicyState>,
    store: Store,
    /// The CA bundle callers and policy bundle signatures are verified
    /// against: this connection's, until a renewal brings a new one.
    callers: Arc<Callers>,
    renewal: Renewal,
    out: mpsc::Sender<ConnectorToBroker>,
    welcomed: bool,
    ready: &'a Ready,
}

impl Control<'_> {
    async fn run(&mut self, mut frames: mpsc::Receiver<BrokerToConnector>) -> String {
        match tokio::time::timeout(WELCOME_TIMEOUT, frames.recv()).await {
            Ok(Some(BrokerToConnector::Welcome { connector_id, policy })) => self.welcome(&connector_id, policy).await,
            Ok(Some(_)) => return "the broker did not start with a welcome".to_owned(),
            Ok(None) => return "control stream closed before the welcome".to_owned(),
            Err(_) => return "no welcome from the broker in time".to_owned(),
        }
        let mut renew_check = tokio::time::interval(RENEW_CHECK);
        renew_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        crate::http::usage::announce(&self.out);
        let mut usage_report = tokio::time::interval(crate::http::usage::REPORT_EVERY);
        usage_report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => self.on_frame(frame).await,
                    None => return "control stream closed".to_owned(),
                },
                _ = renew_check.tick() => self.check_renewal().await,
                _ = usage_report.tick() => crate::http::usage::report(&self.out),
            }
        }
    }

    async fn welcome(&mut self, connector_id: &str, policy: SignedBundle) {
        tracing::info!(connector_id, "welcomed by the broker");
        self.welcomed = true;
        crate::metrics::LINKED.set(1);
        self.apply_policy(policy).await;
        let first = self.ready.lock().ok().and_then(|mut ready| ready.take());
        if let Some(ready) = first {
            let _ = ready.send(());
        }
    }

    async fn on_frame(&mut self, frame: BrokerToConnector) {
        match frame {
            BrokerToConnector::PolicyUpdate { policy } => self.apply_policy(policy).await,
            BrokerToConnector::Welcome { policy, .. } => {
                tracing::warn!("a second welcome on the same link; treating it as a policy update");
                self.apply_policy(policy).await;
            }
            BrokerToConnector::Renewed { certificate_pem, ca_pem } => {
                match self.renewal.finish(&certificate_pem, &ca_pem).await {
                    Ok(validity) => {
                        tracing::info!(
                            not_after = %humantime::format_rfc3339_seconds(validity.not_after),
                            "connector certificate renewed; the next connection uses it"
                        );
                        self.refresh_trust().await;
                    }
                    Err(e) => tracing::error!(error = %e, "certificate renewal refused; will retry"),
                }
            }
            BrokerToConnector::Revoked { sessions, identities } => {
                tracing::info!(sessions = sessions.len(), identities = identities.len(), "revocations received");
                self.policy.revoke(sessions, identities);
            }
            BrokerToConnector::UsageElsewhere { entries } => crate::http::usage::learn(entries),
            BrokerToConnector::Throttles { throttles } => crate::http::throttle::throttles().replace(throttles),
            BrokerToConnector::RenewFailed { message } => {
                tracing::warn!(%message, "the broker could not renew the certificate; will retry");
                self.renewal.failed();
            }
        }
    }

    async fn apply_policy(&self, policy: SignedBundle) {
        let (state, store, trust) = (self.policy.clone(), self.store.clone(), self.callers.trust());
        let accepted =
            tokio::task::spawn_blocking(move || bundle::accept(&state, &store, &trust, policy, SystemTime::now()));
        match accepted.await {
            Ok(result) => bundle::log_accepted(&result),
            Err(e) => tracing::error!(error = %e, "policy bundle check failed; the previous one stays in force"),
        }
    }

    /// Takes the stored CA bundle, which a renewal (on this link or another)
    /// may have changed during a CA rotation, for callers and bundle signatures.
    async fn refresh_trust(&self) {
        let (store, td) = (self.store.clone(), self.callers.trust().trust_domain().clone());
        match tokio::task::spawn_blocking(move || store.trust_anchors(&td)).await {
            Ok(Ok(trust)) if trust.ca_certs() != self.callers.trust().ca_certs() => {
                tracing::info!(cas = trust.ca_certs().len(), "the CA bundle changed; verifying callers against it");
                self.callers.set_trust(trust);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the stored CA bundle; keeping the current one"),
            Err(e) => tracing::warn!(error = %e, "cannot read the stored CA bundle; keeping the current one"),
        }
    }

    async fn check_renewal(&mut self) {
        if !self.renewal.due(SystemTime::now()) {
            return;
        }
        if self.renewal.adopt_stored().await {
            self.refresh_trust().await;
        }
        if !self.renewal.due(SystemTime::now()) {
            tracing::debug!("another link to a broker replica renewed the certificate already");
            return;
        }
        match self.renewal.start() {
            Ok(csr_pem) => {
                tracing::info!("requesting a renewed connector certificate");
                let _ = self.out.send(ConnectorToBroker::Renew { csr_pem }).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot start certificate renewal"),
        }
    }
}

#[cfg(test)]
mod tests;
