//! The one QUIC connection from this process to the broker.
//!
//! A [`Tunnel`] is cheap to clone; all clones share one endpoint and one
//! connection. The connection is made on first use and made again on the next
//! use after it closed (broker restart, idle timeout, network change), with a
//! jittered backoff after repeated failures. Each proxied TCP connection is one
//! bidirectional stream that starts with a [`StreamHeader::Open`]; the broker
//! answers a refusal by resetting the stream with a
//! [`RejectCode`](palisade_proto::reject::RejectCode). With
//! several broker replicas the tunnel fails over between them ([`failover`]).

mod error;
mod failover;

pub use error::TunnelError;
use error::{handshake_error, read_exact_error};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_proto::id::ServiceName;
use palisade_proto::reject::close;
use palisade_proto::wire::{self, LogoutDone, OpenStream, Query, ServiceListing, StreamHeader, WhoAmI};
use quinn::VarInt;
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng as _;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::Profile;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const UDP_BUFFER: usize = 4 * 1024 * 1024;
/// The shared, lazily (re)connected QUIC connection to the broker.
#[derive(Clone)]
pub struct Tunnel {
    inner: Arc<Mutex<State>>,
    transport: Arc<quinn::TransportConfig>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

struct State {
    profile: Profile,
    endpoint: Option<quinn::Endpoint>,
    conn: Option<quinn::Connection>,
    /// How to tell that `conn` went quiet.
    liveness: Option<failover::Liveness>,
    /// The replica (index into [`Profile::broker_addrs`]) in use.
    current: usize,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Tunnel {
    /// A tunnel for this enrollment. Nothing is sent until the first stream.
    ///
    /// # Errors
    /// The stored certificate or key cannot be used for TLS.
    pub fn new(profile: Profile) -> Result<Tunnel, TunnelError> {
        let transport = Arc::new(transport_config());
        client_config(&profile, transport.clone())?;
        let state =
            State { profile, endpoint: None, conn: None, liveness: None, current: 0, failures: 0, retry_at: None };
        Ok(Tunnel { inner: Arc::new(Mutex::new(state)), transport })
    }

    /// Opens a stream to `service` and writes its header. The caller writes the
    /// TCP bytes right after, without waiting: a refusal arrives as a reset.
    ///
    /// # Errors
    /// No connection to the broker, or it closed while opening.
    pub async fn open(&self, service: &ServiceName) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        let header = StreamHeader::Open(OpenStream { service: service.clone() })
            .encode()
            .map_err(|e| TunnelError::Protocol(e.to_string()))?;
        self.open_with_header(&header, service.as_str()).await
    }

    async fn open_with_header(
        &self,
        header: &[u8],
        service: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let error = match open_stream(&conn, header, service).await {
                Ok(streams) => return Ok(streams),
                Err(e) => e,
            };
            // Nothing of the caller's has been sent yet, so a connection that turns
            // out to be dead is replaced once, transparently.
            if retried || conn.close_reason().is_none() {
                return Err(error);
            }
            tracing::debug!(%error, "the connection to the broker was dead; reconnecting");
            retried = true;
        }
    }

    /// The services this identity may reach.
    ///
    /// # Errors
    /// No connection, a refusal, or an answer that does not parse.
    pub async fn services(&self) -> Result<ServiceListing, TunnelError> {
        self.query(Query::Services).await
    }

    /// Who the broker says we are.
    ///
    /// # Errors
    /// No connection, a refusal, or an answer that does not parse.
    pub async fn whoami(&self) -> Result<WhoAmI, TunnelError> {
        self.query(Query::WhoAmI).await
    }

    /// Ends this identity's sign-in session on the broker. The broker may close
    /// the connection (code `0x1b`) right after answering; that arrives as
    /// [`TunnelError::Revoked`] if it wins the race with the answer.
    ///
    /// # Errors
    /// No connection, a refusal, or an answer that does not parse.
    pub async fn logout(&self) -> Result<LogoutDone, TunnelError> {
        self.query(Query::Logout).await
    }

    async fn query<T: serde::de::DeserializeOwned>(&self, query: Query) -> Result<T, TunnelError> {
        let header = StreamHeader::Query(query).encode().map_err(|e| TunnelError::Protocol(e.to_string()))?;
        let what = "this query";
        let (mut send, mut recv) = self.open_with_header(&header, what).await?;
        let _ = send.finish();
        let answer = tokio::time::timeout(QUERY_TIMEOUT, read_frame(&mut recv, what)).await;
        let body = answer.map_err(|_| TunnelError::ConnectionLost("the broker did not answer in time".into()))??;
        wire::decode_frame(&body).map_err(|e| TunnelError::Protocol(e.to_string()))
    }

    /// The live connection, made now if there is none.
    async fn connection(&self) -> Result<quinn::Connection, TunnelError> {
        let mut state = self.inner.lock().await;
        let now = SystemTime::now();
        if let Some(conn) = state.conn.clone() {
            match conn.close_reason() {
                // Once the certificate has expired, new streams wait for a renewed one
                // (re-read from disk below); streams in flight keep the old connection.
                None if state.profile.is_expired(now) => {
                    tracing::info!("the certificate expired; looking for a renewed one");
                }
                None if state.moving() => state.current += 1,
                None if !state.went_quiet() => return Ok(conn),
                None => {
                    tracing::warn!("the broker replica stopped answering; trying the next one");
                    state.current += 1;
                }
                Some(reason) => tracing::info!(%reason, "the connection to the broker closed; reconnecting"),
            }
            state.conn = None;
        }
        state.reload_profile();
        if state.profile.is_expired(now) {
            return Err(TunnelError::CertificateExpired);
        }
        if let Some(at) = state.retry_at {
            tokio::time::sleep_until(at).await;
        }
        match state.connect(self.transport.clone()).await {
            Ok(conn) => {
                state.failures = 0;
                state.retry_at = None;
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(Instant::now() + backoff(state.failures));
                Err(e.explained_by_clock(state.profile.not_before(), SystemTime::now()))
            }
        }
    }

    /// Closes the connection (if any) politely; in-flight streams end.
    pub async fn close(&self) {
        let mut state = self.inner.lock().await;
        if let Some(conn) = state.conn.take() {
            conn.close(VarInt::from_u32(close::NORMAL), b"client closing");
        }
        if let Some(endpoint) = state.endpoint.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

impl State {
    /// Picks up a certificate renewed on disk (`palisade enroll --force`, a new login).
    fn reload_profile(&mut self) {
        match Profile::load(self.profile.home()) {
            Ok(profile) => self.profile = profile,
            Err(error) => tracing::debug!(%error, "keeping the enrollment loaded at start"),
        }
    }

    /// Whether the broker of the connection asked its clients to move and
    /// there is another replica (alone, a draining broker still takes new
    /// streams on the connections it has).
    fn moving(&self) -> bool {
        self.liveness.as_ref().is_some_and(failover::Liveness::moving) && self.profile.broker_addrs().len() > 1
    }

    /// Whether the connection received nothing for a while although another
    /// replica could take new streams (with one broker, it is kept).
    fn went_quiet(&mut self) -> bool {
        let (Some(conn), Some(liveness)) = (&self.conn, &mut self.liveness) else { return false };
        self.profile.broker_addrs().len() > 1 && liveness.quiet(conn, Instant::now())
    }

    /// Connects to the broker. With several replicas: to the one in use,
    /// or, if it has not answered within [`failover::STAGGER`], to whichever
    /// answers first as handshakes to the next ones start one by one.
    async fn connect(&mut self, transport: Arc<quinn::TransportConfig>) -> Result<quinn::Connection, TunnelError> {
        use futures::stream::{FuturesUnordered, StreamExt as _};
        let addrs = self.profile.broker_addrs();
        let wait = if addrs.len() > 1 { failover::REPLICA_HANDSHAKE } else { HANDSHAKE_TIMEOUT };
        let mut failures = Vec::new();
        let mut racing = FuturesUnordered::new();
        for (rank, i) in failover::order(addrs.len(), self.current).enumerate() {
            match self.dial(&addrs[i], transport.clone()).await {
                Ok(dial) => racing.push(async move {
                    tokio::time::sleep(failover::STAGGER * u32::try_from(rank).unwrap_or(u32::MAX)).await;
                    (i, dial.handshake(wait).await)
                }),
                Err(e) => failures.push(e),
            }
        }
        while let Some((i, answer)) = racing.next().await {
            match answer {
                Ok(conn) => {
                    self.current = i;
                    self.liveness = Some(failover::Liveness::new(&conn));
                    return Ok(conn);
                }
                Err(e) => failures.push(e),
            }
        }
        // The most telling failure: one that is not just "no answer".
        let telling = failures.iter().position(|e| !matches!(e, TunnelError::Unreachable { .. }));
        Err(match telling {
            Some(i) => failures.swap_remove(i),
            None => failures.pop().unwrap_or_else(|| TunnelError::Unreachable {
                addr: String::new(),
                reason: "no broker address".into(),
            }),
        })
    }

    /// Resolves `addr_text` and prepares a handshake with it.
    async fn dial(&mut self, addr_text: &str, transport: Arc<quinn::TransportConfig>) -> Result<Dial, TunnelError> {
        let unreachable = |reason: String| TunnelError::Unreachable { addr: addr_text.to_owned(), reason };
        let (host, addr) = resolve(addr_text).await.map_err(unreachable)?;
        let endpoint = self.endpoint_for(addr).map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?;
        let config = client_config(&self.profile, transport)?;
        Ok(Dial { addr_text: addr_text.to_owned(), host, addr, endpoint, config })
    }

    fn endpoint_for(&mut self, remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        if let Some(endpoint) = &self.endpoint
            && endpoint.local_addr()?.is_ipv4() == remote.is_ipv4()
        {
            return Ok(endpoint.clone());
        }
        let endpoint = new_endpoint(remote)?;
        self.endpoint = Some(endpoint.clone());
        Ok(endpoint)
    }
}

/// A handshake ready to start ([`State::dial`]).
struct Dial {
    addr_text: String,
    host: String,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Dial {
    /// Runs the handshake, for at most `wait`.
    async fn handshake(self, wait: Duration) -> Result<quinn::Connection, TunnelError> {
        let Dial { addr_text, host, addr, endpoint, config } = self;
        let connecting = endpoint
            .connect_with(config, addr, &host)
            .map_err(|e| TunnelError::Unreachable { addr: addr_text.clone(), reason: e.to_string() })?;
        let conn = match tokio::time::timeout(wait, connecting).await {
            Err(_) => {
                return Err(TunnelError::Unreachable {
                    addr: addr_text,
                    reason: format!(
                        "no answer within {}s (is UDP to that port allowed through the firewalls on the way?)",
                        wait.as_secs()
                    ),
                });
            }
            Ok(Err(e)) => return Err(handshake_error(&e, &addr_text)),
            Ok(Ok(conn)) => conn,
        };
        tracing::info!(broker = %addr_text, remote = %addr, "connected to the broker");
        Ok(conn)
    }
}

async fn open_stream(
    conn: &quinn::Connection,
    header: &[u8],
    service: &str,
) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| TunnelError::from_connection(&e, service))?;
    send.write_all(header).await.map_err(|e| crate::splice::write_error(e, service))?;
    Ok((send, recv))
}

async fn read_frame(recv: &mut quinn::RecvStream, what: &str) -> Result<Vec<u8>, TunnelError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| read_exact_error(e, what))?;
    let len = wire::frame_len(len).map_err(|e| TunnelError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| read_exact_error(e, what))?;
    Ok(body)
}

/// Splits `host:port` (or `[v6]:port`) and resolves it; returns the TLS server name too.
async fn resolve(addr: &str) -> Result<(String, SocketAddr), String> {
    let (host, _port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let first = addrs.next().ok_or_else(|| format!("{host} has no address"))?;
    Ok((host, first))
}

fn client_config(
    profile: &Profile,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TunnelError> {
    let tls = palisade_proto::tls::quic_client_config(profile.tls_identity(), profile.trust(), wire::ALPN_CLIENT)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let crypto = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| TunnelError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Windows sized for bulk transfer (quinn's defaults are small), set on purpose;
/// the client accepts no bidirectional streams from the broker, and one
/// unidirectional stream: the move notice of a broker that is stopping.
/// The broker is asked to acknowledge less often than QUIC's default
/// ([`palisade_proto::wire::ACK_ELICITING_THRESHOLD`]).
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    // One: the move notice of a broker that is stopping.
    t.max_concurrent_uni_streams(VarInt::from_u32(1));
    t.keep_alive_interval(Some(failover::KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(VarInt::from_u32(30_000))));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(palisade_proto::wire::ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    t
}

fn new_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind: SocketAddr = if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, result) in
        [("receive", socket.set_recv_buffer_size(UDP_BUFFER)), ("send", socket.set_send_buffer_size(UDP_BUFFER))]
    {
        if let Err(error) = result {
            tracing::debug!(%error, "cannot set the UDP {what} buffer size");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.into(), Arc::new(quinn::TokioRuntime))
}

/// 200 ms, 400 ms, … up to 5 s, each scaled by a random factor in [0.5, 1].
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(5));
    let capped = exp.min(BACKOFF_MAX);
    capped.mul_f64(rand::rng().random_range(0.5..=1.0)).max(BACKOFF_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        for failures in 1..20 {
            let d = backoff(failures);
            assert!(d >= BACKOFF_MIN && d <= BACKOFF_MAX, "{failures}: {d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(backoff(10) >= Duration::from_millis(2500));
    }

    #[test]
    fn the_broker_is_asked_to_acknowledge_less_often() {
        let config = format!("{:?}", transport_config());
        assert!(config.contains("ack_eliciting_threshold: 9"), "{config}");
    }
}
