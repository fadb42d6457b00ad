//! The link against a tiny fake broker: a quinn server with the broker's TLS
//! profile that speaks the control protocol by hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use palisade_proto::control::StreamOutcome;
use palisade_proto::id::DecisionId;
use palisade_proto::reject::RejectCode;
use palisade_proto::tls::quic_server_config;
use palisade_proto::wire::{Dispatch, PREFIX_LEN, StreamKind};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{ReadError, ReadToEndError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::config::ConnectorConfig;
use crate::store::IdentityRecord;
use crate::testing::{TRUST_DOMAIN, TestCa, first_cert};

const CONNECTOR_ID: &str = "0f8e4a9c-1d2b-4c3d-8e9f-a0b1c2d3e4f5";
const AGENT_ID: &str = "5b0c33f4-5f0b-4a8e-9a53-0d7e0c4c2f11";
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// An upstream on a free port that runs `serve` on every connection it
/// accepts, and counts them.
async fn upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (addr, accepts)
}

/// An upstream that reads until the caller half-closes, then answers with
/// the bytes upper-cased and closes: it only answers if the FIN got through.
async fn upper_after_eof_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    upstream(|mut tcp| async move {
        let mut data = Vec::new();
        tcp.read_to_end(&mut data).await.expect("read");
        data.make_ascii_uppercase();
        tcp.write_all(&data).await.expect("write");
        tcp.shutdown().await.expect("shutdown");
    })
    .await
}

/// An upstream that writes `chunks` chunks of 16 bytes, `gap` apart, then closes.
async fn trickling_upstream(chunks: usize, gap: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    upstream(move |mut tcp| async move {
        tcp.set_nodelay(true).expect("nodelay");
        for _ in 0..chunks {
            tcp.write_all(&[b't'; 16]).await.expect("write");
            tokio::time::sleep(gap).await;
        }
        tcp.shutdown().await.expect("shutdown");
    })
    .await
}

fn fake_broker(ca: &TestCa) -> Endpoint {
    let tls = quic_server_config(&ca.server(), &ca.trust()).expect("server TLS");
    let crypto = QuicServerConfig::try_from(Arc::new(tls)).expect("QUIC TLS");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(endpoint::transport_config()));
    Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint")
}

struct Harness {
    ca: TestCa,
    dir: tempfile::TempDir,
    broker: Endpoint,
    conn: Connection,
    control_send: SendStream,
    control_recv: RecvStream,
    upstream_accepts: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), crate::ConnectorError>>,
}

impl Harness {
    /// Enrolls a connector (certificate valid over `validity`), starts it, accepts its
    /// connection, checks the Hello, sends a Welcome and waits for `ready`.
    async fn start(validity: (SystemTime, SystemTime)) -> Self {
        let (upstream, upstream_accepts) = upper_after_eof_upstream().await;
        Self::start_with(validity, upstream, upstream_accepts).await
    }

    async fn start_with(
        validity: (SystemTime, SystemTime),
        upstream: SocketAddr,
        upstream_accepts: Arc<AtomicUsize>,
    ) -> Self {
        let ca = TestCa::new();
        let broker = fake_broker(&ca);
        let broker_addr = broker.local_addr().expect("addr");
        let dir = tempfile::tempdir().expect("tempdir");
        enroll_in(&ca, dir.path(), broker_addr, validity);
        let config = ConnectorConfig {
            state_dir: dir.path().to_owned(),
            broker: None,
            brokers: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            services: vec![ServiceConfig { name: "llm-prod".parse().expect("name"), upstream: upstream.to_string() }],
            policy_dir: None,
            bundle_max_age: crate::DEFAULT_BUNDLE_MAX_AGE,
            metrics_listen: None,
            log_format: palisade_telemetry::LogFormat::Text,
            worker_threads: None,
        };
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(crate::run_with_ready(config, shutdown.clone(), Some(ready_tx)));
        let (conn, mut control_send, control_recv) = accept_connector(&broker).await;
        let welcome =
            BrokerToConnector::Welcome { connector_id: CONNECTOR_ID.into(), policy: ca.signed(1, "ml-agents") };
        send_frame(&mut control_send, &welcome).await;
        within("ready", ready_rx).await.expect("ready signalled");
        Self { ca, dir, broker, conn, control_send, control_recv, upstream_accepts, shutdown, task }
    }

    async fn open_dispatch(&self, groups: &[&str]) -> (DecisionId, SendStream, RecvStream) {
        let caller = self.ca.issue(PeerRole::Machine, AGENT_ID, "summariser", groups);
        let decision_id = DecisionId::random();
        let header = StreamHeader::Dispatch(Dispatch {
            decision_id,
            service: "llm-prod".parse().expect("service"),
            policy_version: 1,
            caller_chain: vec![caller.der.to_vec()],
            source_addr: "203.0.113.7:50000".into(),
        });
        let (mut send, recv) = self.conn.open_bi().await.expect("open");
        send.write_all(&header.encode().expect("header")).await.expect("write header");
        (decision_id, send, recv)
    }

    /// One short tunnel: "ping" up, half-close, read the answer; consumes
    /// the stream report of a refusal (a tunnel that ran has none).
    async fn tunnel(&mut self, groups: &[&str]) -> Result<Vec<u8>, ReadToEndError> {
        let (decision_id, mut send, mut recv) = self.open_dispatch(groups).await;
        // A denied stream may already be reset when the payload goes out.
        let _ = send.write_all(b"ping").await;
        let _ = send.finish();
        let answer = within("answer", recv.read_to_end(1024)).await;
        if answer.is_err() {
            let (reported, outcome) = self.next_report().await;
            assert_eq!(reported, decision_id);
            assert!(matches!(outcome, StreamOutcome::Denied { .. }), "{outcome:?}");
        }
        answer
    }

    async fn next_report(&mut self) -> (DecisionId, StreamOutcome) {
        match within("stream report", read_frame(&mut self.control_recv)).await {
            ConnectorToBroker::StreamReport { decision_id, outcome } => (decision_id, outcome),
            other => panic!("expected a stream report, got {other:?}"),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("shutdown", self.task).await.expect("join").expect("run");
    }
}

fn enroll_in(ca: &TestCa, dir: &std::path::Path, broker: SocketAddr, validity: (SystemTime, SystemTime)) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let issued = ca.issue_for(key, PeerRole::Connector, CONNECTOR_ID, "gpu-rack-1", &[], validity.0, validity.1);
    let record = IdentityRecord {
        identity: format!("spiffe://{TRUST_DOMAIN}/connector/{CONNECTOR_ID}"),
        broker_url: format!("https://{broker}"),
        quic_addr: broker.to_string(),
    };
    Store::new(dir.to_owned())
        .save_enrollment(&issued.key.serialize_pem(), &issued.pem, &ca.pem, &record)
        .expect("save");
}

fn valid_for_hours() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now - Duration::from_secs(60), now + Duration::from_secs(8 * 3_600))
}

/// Accepts the connector's connection and control stream, and checks its Hello.
async fn accept_connector(broker: &Endpoint) -> (Connection, SendStream, RecvStream) {
    let incoming = within("connection", broker.accept()).await.expect("incoming");
    let conn = within("handshake", incoming.accept().expect("accept")).await.expect("handshake");
    assert_eq!(
        conn.handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol),
        Some(wire::ALPN_CONNECTOR.to_vec())
    );
    let (send, mut recv) = within("control stream", conn.accept_bi()).await.expect("control stream");
    let mut prefix = [0u8; PREFIX_LEN];
    recv.read_exact(&mut prefix).await.expect("prefix");
    assert_eq!(wire::parse_prefix(&prefix).expect("prefix"), (StreamKind::ConnectorControl, 0));
    match within("hello", read_frame(&mut recv)).await {
        ConnectorToBroker::Hello { services, .. } => assert_eq!(services, ["llm-prod"]),
        other => panic!("expected hello, got {other:?}"),
    }
    (conn, send, recv)
}

async fn send_frame(send: &mut SendStream, frame: &BrokerToConnector) {
    send.write_all(&wire::encode_frame(frame).expect("encode")).await.expect("write frame");
}

/// The next control frame, past quota usage reports (they run beside every flow; `http::limits` tests them).
async fn read_frame(recv: &mut RecvStream) -> ConnectorToBroker {
    loop {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.expect("frame length");
        let mut body = vec![0u8; wire::frame_len(len).expect("length")];
        recv.read_exact(&mut body).await.expect("frame body");
        match wire::decode_frame(&body).expect("frame") {
            ConnectorToBroker::Usage { .. } => {}
            frame => return frame,
        }
    }
}

#[tokio::test]
async fn bytes_flow_both_ways_with_half_close() {
    let mut h = Harness::start(valid_for_hours()).await;
    let (decision_id, mut send, mut recv) = h.open_dispatch(&["ml-agents"]).await;
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| b"abcdefghij"[i % 10]).collect();
    send.write_all(&payload).await.expect("write payload");
    // Half-close: the upstream answers only after it sees EOF, so the answer proves the FIN arrived.
    send.finish().expect("finish");
    let answer = within("answer", recv.read_to_end(usize::MAX)).await.expect("read to end");
    assert_eq!(answer, payload.to_ascii_uppercase());
    assert_eq!(h.upstream_accepts.load(Ordering::SeqCst), 1);
    // A tunnel that ran is not reported (the broker audits its end itself):
    // the next report on the control stream is the later refusal's.
    let (denied_id, _send, mut denied) = h.open_dispatch(&["interns"]).await;
    let _ = within("reset", denied.read_to_end(1024)).await;
    let (reported, outcome) = h.next_report().await;
    assert_ne!(reported, decision_id, "a completed tunnel was reported: {outcome:?}");
    assert_eq!(reported, denied_id);
    assert!(matches!(outcome, StreamOutcome::Denied { .. }), "{outcome:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_denied_dispatch_never_dials_the_upstream() {
    let mut h = Harness::start(valid_for_hours()).await;
    let (decision_id, _send, mut recv) = h.open_dispatch(&["interns"]).await;
    let err = within("reset", recv.read_to_end(1024)).await.expect_err("reset");
    let code = VarInt::from_u32(RejectCode::ForbiddenByConnector.as_u32());
    assert!(matches!(err, ReadToEndError::Read(ReadError::Reset(c)) if c == code), "{err:?}");
    let (reported, outcome) = h.next_report().await;
    assert_eq!(reported, decision_id);
    assert!(matches!(&outcome, StreamOutcome::Denied { reason, .. } if reason == "no_policy"), "{outcome:?}");
    assert_eq!(h.upstream_accepts.load(Ordering::SeqCst), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_policy_update_takes_effect_and_a_rollback_does_not() {
    let mut h = Harness::start(valid_for_hours()).await;
    assert!(h.tunnel(&["interns"]).await.is_err(), "v1 does not permit interns");
    send_frame(&mut h.control_send, &BrokerToConnector::PolicyUpdate { policy: h.ca.signed(3, "interns") }).await;
    send_frame(&mut h.control_send, &BrokerToConnector::PolicyUpdate { policy: h.ca.signed(2, "ml-agents") }).await;
    // Updates are applied in order but off the stream path: poll until v3 is in force.
    within("v3 in force", async {
        while h.tunnel(&["interns"]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The v2 rollback came right after v3 on the same stream; give it time to be (not) applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.tunnel(&["interns"]).await.expect("v3 still in force"), b"PING");
    assert!(h.tunnel(&["ml-agents"]).await.is_err(), "the v2 rollback was applied");
    h.stop().await;
}

#[tokio::test]
async fn the_certificate_is_renewed_over_the_link() {
    let now = SystemTime::now();
    // 80% of the lifetime has passed: renewal is due right after connecting.
    let mut h = Harness::start((now - Duration::from_secs(4 * 3_600), now + Duration::from_secs(3_600))).await;
    let old_cert = std::fs::read_to_string(h.dir.path().join("cert.pem")).expect("cert");
    let csr_pem = match within("renew", read_frame(&mut h.control_recv)).await {
        ConnectorToBroker::Renew { csr_pem } => csr_pem,
        other => panic!("expected renew, got {other:?}"),
    };
    let certificate_pem = h.ca.sign_csr(&csr_pem, PeerRole::Connector, CONNECTOR_ID, Duration::from_secs(8 * 3_600));
    let renewed = BrokerToConnector::Renewed { certificate_pem: certificate_pem.clone(), ca_pem: h.ca.pem.clone() };
    send_frame(&mut h.control_send, &renewed).await;
    let store = Store::new(h.dir.path().to_owned());
    within("stored", async {
        while std::fs::read_to_string(h.dir.path().join("cert.pem")).expect("cert") == old_cert {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let loaded = store.load().expect("key and certificate match");
    assert_eq!(loaded.tls.chain[0], first_cert(&certificate_pem));
    assert!(!loaded.validity.renewal_due(SystemTime::now()));
    h.stop().await;
}

#[tokio::test]
async fn the_connector_reconnects_after_the_broker_closes() {
    let h = Harness::start(valid_for_hours()).await;
    h.conn.close(VarInt::from_u32(close::SHUTTING_DOWN), b"restart");
    let (_conn, _send, _recv) = accept_connector(&h.broker).await;
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_stream_and_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let mut h = Harness::start_with(valid_for_hours(), closed, Arc::default()).await;
    let (decision_id, _send, mut recv) = h.open_dispatch(&["ml-agents"]).await;
    let err = within("reset", recv.read_to_end(1024)).await.expect_err("reset");
    let code = VarInt::from_u32(RejectCode::UpstreamUnreachable.as_u32());
    assert!(matches!(err, ReadToEndError::Read(ReadError::Reset(c)) if c == code), "{err:?}");
    let (reported, outcome) = h.next_report().await;
    assert_eq!(reported, decision_id);
    assert!(matches!(outcome, StreamOutcome::UpstreamFailed { .. }), "{outcome:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_reset_from_the_caller_aborts_the_upstream_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (got_tx, got_rx) = oneshot::channel();
    let (ended_tx, ended_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 15];
        tcp.read_exact(&mut request).await.expect("request");
        let _ = got_tx.send(request);
        let mut rest = Vec::new();
        let _ = ended_tx.send(tcp.read_to_end(&mut rest).await.map_err(|e| e.kind()));
    });
    let h = Harness::start_with(valid_for_hours(), upstream, Arc::default()).await;
    let (_, mut send, _recv) = h.open_dispatch(&["ml-agents"]).await;
    send.write_all(b"partial request").await.expect("write");
    assert_eq!(&within("request", got_rx).await.expect("upstream task"), b"partial request");
    send.reset(VarInt::from_u32(7)).expect("reset");
    let ended = within("upstream end", ended_rx).await.expect("upstream task");
    assert_eq!(ended, Err(std::io::ErrorKind::ConnectionReset), "the upstream saw an orderly close");
    h.stop().await;
}

#[tokio::test]
async fn a_policy_update_with_a_bad_signature_is_refused_over_the_link() {
    let mut h = Harness::start(valid_for_hours()).await;
    assert!(h.dir.path().join("policy-bundle.json").exists(), "the welcome's bundle was saved");
    let mut tampered = h.ca.signed(2, "interns");
    tampered.bundle_json = tampered.bundle_json.replacen("\"version\":2", "\"version\":3", 1);
    send_frame(&mut h.control_send, &BrokerToConnector::PolicyUpdate { policy: tampered }).await;
    let foreign = TestCa::new().signed(4, "interns");
    send_frame(&mut h.control_send, &BrokerToConnector::PolicyUpdate { policy: foreign }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.tunnel(&["interns"]).await.is_err(), "a refused bundle was applied");
    assert_eq!(h.tunnel(&["ml-agents"]).await.expect("v1 still in force"), b"PING");
    h.stop().await;
}

/// One renewal per connector, not one per broker replica: a link whose
/// renewal is due first looks at the store, where another link's renewed
/// certificate already is.
#[tokio::test]
async fn a_link_does_not_renew_what_another_link_renewed() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let now = SystemTime::now();
    let old = (now - Duration::from_secs(4 * 3_600), now + Duration::from_secs(3_600));
    enroll_in(&ca, dir.path(), "127.0.0.1:1".parse().expect("addr"), old);
    let store = Store::new(dir.path().to_owned());
    let stored = store.load().expect("enrolled");
    let mut first = Renewal::new(store.clone(), stored.spiffe.clone(), stored.validity);
    let mut second = Renewal::new(store.clone(), stored.spiffe.clone(), stored.validity);
    assert!(first.due(now) && second.due(now), "both links see the old certificate as due");

    let csr_pem = first.start().expect("csr");
    let certificate_pem = ca.sign_csr(&csr_pem, PeerRole::Connector, CONNECTOR_ID, Duration::from_secs(8 * 3_600));
    first.finish(&certificate_pem, &ca.pem).await.expect("renewed");
    second.adopt_stored().await;
    assert!(!second.due(SystemTime::now()), "the second link takes the renewed certificate instead of renewing again");
}

/// A stream of small writes (tokens, events) asks the broker for about one
/// ACK per ten packets (`ACK_ELICITING_THRESHOLD`), not QUIC's one per two.
#[tokio::test]
async fn a_trickle_of_small_writes_is_acknowledged_about_every_tenth_packet() {
    let (upstream, accepts) = trickling_upstream(200, Duration::from_millis(1)).await;
    let h = Harness::start_with(valid_for_hours(), upstream, accepts).await;
    let (_, mut send, mut recv) = h.open_dispatch(&["ml-agents"]).await;
    send.finish().expect("finish");
    let before = h.conn.stats();
    let answer = within("the trickle", recv.read_to_end(1 << 20)).await.expect("read to end");
    let after = h.conn.stats();
    assert_eq!(answer.len(), 200 * 16);
    let packets = after.udp_rx.datagrams - before.udp_rx.datagrams;
    let acks = after.frame_tx.acks - before.frame_tx.acks;
    assert!(packets >= 40, "the trickle came in {packets} packets, too few to judge");
    // QUIC's default, an ACK for every second packet, gives acks ≈ packets / 2.
    assert!(acks * 3 <= packets, "{acks} ACKs sent for {packets} packets received");
    h.stop().await;
}
