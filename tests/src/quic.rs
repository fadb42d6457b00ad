//! Dialling the broker's QUIC port ourselves with any certificate, to see
//! whether the broker serves it.
//!
//! In TLS 1.3 the client's handshake completes before the server has
//! checked the client certificate, so a refusal only shows on the first
//! stream round-trip: a probe always sends a request and waits for an answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_proto::control::{BrokerToConnector, ConnectorToBroker};
use palisade_proto::id::ServiceName;
use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::TlsIdentity;
use palisade_proto::wire::{ALPN_CLIENT, ALPN_CONNECTOR, OpenStream, StreamHeader, encode_frame, frame_len};
use rustls_pki_types::ServerName;

const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the broker did with a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The request was served; these are the bytes that came back.
    Served(Vec<u8>),
    /// The stream was reset (or stopped) with this application code.
    Reset(u64),
    /// The connection was refused or closed; the error as quinn reports it.
    Refused(String),
    /// No answer, and no refusal, within the probe's timeout.
    TimedOut,
}

impl Probe {
    /// Whether the broker explicitly refused, by closing or resetting.
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Reset(_))
    }
}

/// Why a round trip did not come back.
enum Failure {
    Reset(u64),
    Other(String),
}

impl Failure {
    fn read(what: &str, e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) => Self::Reset(code.into_inner()),
            other => Self::Other(format!("{what}: {other}")),
        }
    }

    fn write(what: &str, e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => Self::Reset(code.into_inner()),
            other => Self::Other(format!("{what}: {other}")),
        }
    }
}

/// Dials one broker's QUIC port, verifying it against our CA.
pub struct QuicProbe {
    addr: SocketAddr,
    trust: TrustAnchors,
}

impl QuicProbe {
    /// A prober for the broker at `addr` whose server certificate chains to `trust`.
    #[must_use]
    pub fn new(addr: SocketAddr, trust: TrustAnchors) -> Self {
        Self { addr, trust }
    }

    /// As a client: opens a stream to `service` and expects `ping` echoed back.
    pub async fn open_service(&self, identity: &TlsIdentity, service: &str) -> Probe {
        self.exchange(identity, ALPN_CLIENT, open_header(service), b"ping".to_vec(), Expect::Bytes(4)).await
    }

    /// As a connector: opens the control stream, says hello, and waits for the first frame.
    pub async fn connector_hello(&self, identity: &TlsIdentity, services: &[&str]) -> Probe {
        let header = StreamHeader::ConnectorControl.encode().expect("encode the header");
        let hello = ConnectorToBroker::Hello {
            version: "0.0.0-probe".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.exchange(identity, ALPN_CONNECTOR, header, encode_frame(&hello).expect("encode hello"), Expect::Frame)
            .await
    }

    /// As a client: sends `bytes` as they are (a header of our own making),
    /// finishes the stream and reads everything that comes back.
    pub async fn raw_stream(&self, identity: &TlsIdentity, bytes: &[u8]) -> Probe {
        self.exchange(identity, ALPN_CLIENT, bytes.to_vec(), Vec::new(), Expect::ToEnd).await
    }

    async fn exchange(
        &self,
        identity: &TlsIdentity,
        alpn: &[u8],
        header: Vec<u8>,
        body: Vec<u8>,
        expect: Expect,
    ) -> Probe {
        let tls = palisade_proto::tls::quic_client_config(identity, &self.trust, alpn).expect("client TLS config");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
        let attempt = async {
            let conn = endpoint
                .connect_with(config, self.addr, &self.addr.ip().to_string())
                .map_err(|e| Failure::Other(e.to_string()))?
                .await
                .map_err(|e| Failure::Other(format!("handshake: {e}")))?;
            let result = round_trip(&conn, &header, &body, expect).await;
            let close = conn.close_reason().map(|r| format!(" (connection: {r})")).unwrap_or_default();
            conn.close(0u32.into(), b"probe done");
            result.map_err(|e| match e {
                Failure::Reset(code) => Failure::Reset(code),
                Failure::Other(e) => Failure::Other(format!("{e}{close}")),
            })
        };
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(bytes)) => Probe::Served(bytes),
            Ok(Err(Failure::Reset(code))) => Probe::Reset(code),
            Ok(Err(Failure::Other(e))) => Probe::Refused(e),
            Err(_) => Probe::TimedOut,
        };
        endpoint.close(0u32.into(), b"");
        probe
    }
}

fn open_header(service: &str) -> Vec<u8> {
    let service: ServiceName = service.parse().expect("a service name");
    StreamHeader::Open(OpenStream { service }).encode().expect("encode the header")
}

#[derive(Clone, Copy)]
enum Expect {
    Bytes(usize),
    Frame,
    ToEnd,
}

async fn round_trip(conn: &quinn::Connection, header: &[u8], body: &[u8], expect: Expect) -> Result<Vec<u8>, Failure> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| Failure::Other(format!("open stream: {e}")))?;
    send.write_all(header).await.map_err(|e| Failure::write("write header", e))?;
    send.write_all(body).await.map_err(|e| Failure::write("write", e))?;
    match expect {
        Expect::Bytes(n) => read_exact(&mut recv, n, "read").await,
        Expect::Frame => {
            let prefix = read_exact(&mut recv, 4, "read frame length").await?;
            let len = frame_len(prefix.try_into().expect("four bytes")).map_err(|e| Failure::Other(e.to_string()))?;
            read_exact(&mut recv, len, "read frame").await
        }
        Expect::ToEnd => {
            let _ = send.finish();
            match recv.read_to_end(64 * 1024).await {
                Ok(bytes) => Ok(bytes),
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                    Err(Failure::Reset(code.into_inner()))
                }
                Err(e) => Err(Failure::Other(format!("read: {e}"))),
            }
        }
    }
}

async fn read_exact(recv: &mut quinn::RecvStream, n: usize, what: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf).await.map_err(|e| Failure::read(what, e))?;
    Ok(buf)
}

/// A connector's control stream held open by the test: frames sent and read
/// one at a time, to act as a connector would never act.
pub struct ControlLink {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicProbe {
    /// As a connector: opens the control stream and says hello. Panics if the
    /// broker does not answer with its first frame.
    pub async fn connector_link(&self, identity: &TlsIdentity, services: &[&str]) -> (ControlLink, BrokerToConnector) {
        let tls = palisade_proto::tls::quic_client_config(identity, &self.trust, ALPN_CONNECTOR).expect("TLS config");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
        let conn = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), self.addr, &self.addr.ip().to_string())
            .expect("start the handshake")
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("open the control stream");
        send.write_all(&StreamHeader::ConnectorControl.encode().expect("header")).await.expect("write header");
        let mut link = ControlLink { _endpoint: endpoint, conn, send, recv };
        let hello = ConnectorToBroker::Hello {
            version: "0.0.0-probe".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        };
        link.send(&hello).await;
        let first = link.next().await;
        (link, first)
    }
}

impl ControlLink {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &ConnectorToBroker) {
        self.send.write_all(&encode_frame(frame).expect("encode")).await.expect("write a control frame");
    }

    /// The next frame from the broker (panics after [`PROBE_TIMEOUT`]).
    pub async fn next(&mut self) -> BrokerToConnector {
        let read = async {
            let prefix = read_exact(&mut self.recv, 4, "read frame length").await.ok()?;
            let len = frame_len(prefix.try_into().ok()?).ok()?;
            let body = read_exact(&mut self.recv, len, "read frame").await.ok()?;
            palisade_proto::wire::decode_frame(&body).ok()
        };
        match tokio::time::timeout(PROBE_TIMEOUT, read).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("the control stream ended or sent garbage ({:?})", self.conn.close_reason()),
            Err(_) => panic!("no control frame within {PROBE_TIMEOUT:?}"),
        }
    }
}

// ---------------------------------------------------------------- 0-RTT

/// What a client holding the broker's resumption tickets got when it asked for 0-RTT.
#[derive(Debug)]
pub struct ZeroRttAttempt {
    /// The `max_early_data_size` of each ticket the broker sent on the first connection.
    pub tickets: Vec<u32>,
    /// Whether quinn could start the second connection in 0-RTT.
    pub zero_rtt: bool,
    /// Whether the broker accepted the early data (asked only if `zero_rtt`).
    pub accepted: Option<bool>,
    /// The echo over the second connection once its handshake completed.
    pub then: Probe,
}

/// A client session store that also notes what each TLS 1.3 ticket allows.
#[derive(Debug)]
struct TicketLog {
    inner: rustls::client::ClientSessionMemoryCache,
    early_data: Mutex<Vec<u32>>,
}

impl TicketLog {
    fn seen(&self) -> Vec<u32> {
        self.early_data.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl rustls::client::ClientSessionStore for TicketLog {
    fn set_kx_hint(&self, server: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server, group);
    }
    fn kx_hint(&self, server: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server)
    }
    fn set_tls12_session(&self, server: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server, value);
    }
    fn tls12_session(&self, server: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server)
    }
    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.inner.remove_tls12_session(server);
    }
    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.early_data.lock().unwrap_or_else(PoisonError::into_inner).push(value.max_early_data_size());
        self.inner.insert_tls13_ticket(server, value);
    }
    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server)
    }
}

/// A client configuration with early data enabled whose tickets go to a [`TicketLog`].
fn early_data_config(identity: &TlsIdentity, trust: &TrustAnchors) -> (quinn::ClientConfig, Arc<TicketLog>) {
    let log =
        Arc::new(TicketLog { inner: rustls::client::ClientSessionMemoryCache::new(16), early_data: Mutex::default() });
    let mut tls = palisade_proto::tls::quic_client_config(identity, trust, ALPN_CLIENT).expect("TLS config");
    tls.enable_early_data = true;
    tls.resumption = rustls::client::Resumption::store(log.clone());
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
    (quinn::ClientConfig::new(Arc::new(crypto)), log)
}

impl QuicProbe {
    /// As a client with early data enabled: connects once (1-RTT, one echo
    /// of `service`) to collect the broker's resumption tickets, then
    /// connects again with the same configuration and asks quinn for 0-RTT
    /// (`Connecting::into_0rtt`).
    pub async fn try_zero_rtt(&self, identity: &TlsIdentity, service: &str) -> ZeroRttAttempt {
        let (config, log) = early_data_config(identity, &self.trust);
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
        let host = self.addr.ip().to_string();
        let header = open_header(service);

        let first = endpoint.connect_with(config.clone(), self.addr, &host).expect("dial").await.expect("handshake");
        let echo = round_trip(&first, &header, b"ping", Expect::Bytes(4)).await;
        assert!(echo.is_ok(), "the first connection is served");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while log.seen().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.close(0u32.into(), b"done");

        let connecting = endpoint.connect_with(config, self.addr, &host).expect("dial again");
        let (zero_rtt, accepted, conn) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => (true, Some(accepted.await), conn),
            Err(connecting) => (false, None, connecting.await.expect("the second handshake")),
        };
        let then = outcome(round_trip(&conn, &header, b"ping", Expect::Bytes(4)).await);
        conn.close(0u32.into(), b"done");
        endpoint.close(0u32.into(), b"");
        ZeroRttAttempt { tickets: log.seen(), zero_rtt, accepted, then }
    }
}

fn outcome(result: Result<Vec<u8>, Failure>) -> Probe {
    match result {
        Ok(bytes) => Probe::Served(bytes),
        Err(Failure::Reset(code)) => Probe::Reset(code),
        Err(Failure::Other(e)) => Probe::Refused(e),
    }
}

// ------------------------------------------------------- NAT rebinding

impl QuicProbe {
    /// As a client: echoes once over a connection, then moves the client to
    /// a new UDP socket (a NAT rebinding: new source port, same connection)
    /// and echoes again on the same connection. Returns both outcomes and
    /// the client's address before and after.
    pub async fn echo_across_rebind(&self, identity: &TlsIdentity, service: &str) -> [(SocketAddr, Probe); 2] {
        let tls = palisade_proto::tls::quic_client_config(identity, &self.trust, ALPN_CLIENT).expect("TLS config");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS config");
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind UDP");
        let conn = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), self.addr, &self.addr.ip().to_string())
            .expect("dial")
            .await
            .expect("handshake");
        let header = open_header(service);
        let echo = || async {
            match tokio::time::timeout(PROBE_TIMEOUT, round_trip(&conn, &header, b"ping", Expect::Bytes(4))).await {
                Ok(result) => outcome(result),
                Err(_) => Probe::TimedOut,
            }
        };
        let before = (endpoint.local_addr().expect("local address"), echo().await);
        endpoint.rebind(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a new socket")).expect("rebind");
        let after = (endpoint.local_addr().expect("local address"), echo().await);
        conn.close(0u32.into(), b"done");
        endpoint.close(0u32.into(), b"");
        [before, after]
    }
}
