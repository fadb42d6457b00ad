//! `palisade connect` through the tunnel: bytes, half-close, refusals, reconnects.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_client::{Profile, Tunnel, TunnelError, bind_local, forward};
use palisade_proto::reject::RejectCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Action, FakeBroker, Pki, within, write_home};

fn routing(service: &str) -> Action {
    match service {
        "secret" => Action::Reject(RejectCode::Forbidden),
        "llm-prod" => Action::Reject(RejectCode::NoConnector),
        "evicted" => Action::CloseConnection(0x17),
        "revoked" => Action::CloseConnection(palisade_proto::reject::close::REVOKED),
        "greeter" => Action::GreetThenCollect,
        _ => Action::Echo,
    }
}

struct Env {
    pki: Pki,
    broker: FakeBroker,
    home: tempfile::TempDir,
    tunnel: Tunnel,
}

async fn env() -> Env {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, routing).await;
    let home = tempfile::tempdir().unwrap();
    write_home(home.path(), &pki.valid_machine_cert(), &pki.ca_pem(), broker.addr);
    let tunnel = Tunnel::new(Profile::load(home.path()).unwrap()).unwrap();
    Env { pki, broker, home, tunnel }
}

/// Starts `palisade connect SERVICE` in-process; returns the local address.
async fn listen(tunnel: &Tunnel, service: &str) -> std::net::SocketAddr {
    let listener = bind_local("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tunnel, service) = (tunnel.clone(), service.parse().unwrap());
    tokio::spawn(forward::serve(listener, tunnel, service, std::future::pending()));
    addr
}

/// A connected pair: the "application" end and the end the forwarder gets.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (app, accepted)
}

#[tokio::test]
async fn forward_carries_bytes_both_ways_and_keeps_half_close() {
    let env = env().await;
    let addr = listen(&env.tunnel, "echo-svc").await;
    let mut app = TcpStream::connect(addr).await.unwrap();

    app.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    within(app.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"ping", "bytes come back before either side closes");

    // Send a large payload, then close only our write side: the echo must still
    // arrive in full afterwards, followed by a clean EOF.
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = app.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
        payload
    });
    let mut echoed = Vec::new();
    within(read.read_to_end(&mut echoed)).await.unwrap();
    let payload = writer.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
    assert_eq!(*env.broker.services_asked.lock().unwrap(), vec!["echo-svc".to_owned(); 1]);
}

#[tokio::test]
async fn the_service_closing_first_is_seen_while_the_application_keeps_sending() {
    let env = env().await;
    let addr = listen(&env.tunnel, "greeter").await;
    let mut app = TcpStream::connect(addr).await.unwrap();
    let mut greeting = Vec::new();
    within(app.read_to_end(&mut greeting)).await.unwrap();
    assert_eq!(greeting, b"hello", "EOF from the service reaches the application");
    // Our side is still open: what we send now must still arrive.
    app.write_all(b"still talking").await.unwrap();
    app.shutdown().await.unwrap();
    let collected = env.broker.collected.clone();
    within(async {
        while collected.lock().unwrap().as_slice() != b"still talking" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn splice_reports_bytes_each_way() {
    let env = env().await;
    let (mut app, local) = tcp_pair().await;
    let task = tokio::spawn({
        let tunnel = env.tunnel.clone();
        async move { forward::forward(local, &tunnel, &"echo-svc".parse().unwrap()).await }
    });
    app.write_all(&[7u8; 1000]).await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(app.read_to_end(&mut back)).await.unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.bytes_up, stats.bytes_down), (1000, 1000));
}

#[tokio::test]
async fn a_refusal_maps_to_its_reason_and_closes_the_local_connection() {
    let env = env().await;
    for (service, code, message) in [
        ("secret", RejectCode::Forbidden, "denied by policy"),
        ("llm-prod", RejectCode::NoConnector, "no connector is serving llm-prod right now"),
    ] {
        let (mut app, local) = tcp_pair().await;
        let err = forward::forward(local, &env.tunnel, &service.parse().unwrap()).await.unwrap_err();
        assert_eq!(err.reject_code(), Some(code), "{err}");
        assert!(err.to_string().starts_with(message), "{err}");
        let mut buf = [0u8; 16];
        let closed = matches!(within(app.read(&mut buf)).await, Ok(0) | Err(_));
        assert!(closed, "the local connection stays open after a refusal");
    }
}

#[tokio::test]
async fn the_listener_keeps_serving_after_a_refusal() {
    let env = env().await;
    let addr = listen(&env.tunnel, "secret").await;
    for _ in 0..3 {
        let mut app = TcpStream::connect(addr).await.unwrap();
        let _ = app.write_all(b"hello").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), app.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "refused connection was not closed: {read:?}");
    }
    assert_eq!(env.broker.services_asked.lock().unwrap().len(), 3);
    assert_eq!(env.broker.connections.load(Ordering::SeqCst), 1, "all streams share one connection");
}

#[tokio::test]
async fn an_identity_refused_by_the_broker_says_so() {
    let env = env().await;
    let (_app, local) = tcp_pair().await;
    let err = forward::forward(local, &env.tunnel, &"evicted".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, TunnelError::IdentityRefused), "{err:?}");
    assert_eq!(err.to_string(), "the broker refused this identity: enroll or log in again");
}

#[tokio::test]
async fn a_revoked_session_tells_the_person_to_log_in_again() {
    let env = env().await;
    let (_app, local) = tcp_pair().await;
    let err = forward::forward(local, &env.tunnel, &"revoked".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, TunnelError::Revoked), "{err:?}");
    assert_eq!(err.reject_code(), Some(palisade_proto::reject::RejectCode::Revoked));
    assert_eq!(
        err.to_string(),
        "session revoked or identity disabled: run `palisade login` to sign in again (a machine needs a new enrollment token from an admin)"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let env = env().await;
    let stranger = Pki::new();
    let home = tempfile::tempdir().unwrap();
    // Trusts the broker's CA, but holds a certificate the broker's CA never issued.
    write_home(home.path(), &stranger.valid_machine_cert(), &env.pki.ca_pem(), env.broker.addr);
    let tunnel = Tunnel::new(Profile::load(home.path()).unwrap()).unwrap();
    let err = tunnel.services().await.unwrap_err();
    assert!(matches!(err, TunnelError::IdentityRefused), "{err:?}");
}

#[tokio::test]
async fn an_expired_certificate_is_caught_before_connecting() {
    let env = env().await;
    let home = tempfile::tempdir().unwrap();
    let expired = env.pki.machine_cert(time::OffsetDateTime::now_utc() - time::Duration::minutes(5));
    write_home(home.path(), &expired, &env.pki.ca_pem(), env.broker.addr);
    let profile = Profile::load(home.path()).unwrap();
    assert!(profile.is_expired(std::time::SystemTime::now()));
    let tunnel = Tunnel::new(profile).unwrap();
    let err = tunnel.open(&"echo-svc".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, TunnelError::CertificateExpired), "{err:?}");
    assert_eq!(err.to_string(), "certificate expired: run `palisade login` (or enroll again)");
    assert_eq!(env.broker.connections.load(Ordering::SeqCst), 0, "an expired certificate was sent to the broker");
}

#[tokio::test]
async fn new_connections_work_again_after_the_broker_restarts() {
    let env = env().await;
    let service = "echo-svc".parse().unwrap();
    round_trip(&env.tunnel, &service).await;

    let addr = env.broker.addr;
    env.broker.shutdown().await;
    let restarted = FakeBroker::spawn_on(&env.pki, addr, Arc::new(routing)).await;
    round_trip(&env.tunnel, &service).await;
    assert_eq!(restarted.connections.load(Ordering::SeqCst), 1);
    drop(env.home);
}

async fn round_trip(tunnel: &Tunnel, service: &palisade_proto::id::ServiceName) {
    let (mut app, local) = tcp_pair().await;
    let tunnel = tunnel.clone();
    let service = service.clone();
    let task = tokio::spawn(async move { forward::forward(local, &tunnel, &service).await });
    app.write_all(b"again").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(app.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"again");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn queries_return_the_brokers_answers() {
    let env = env().await;
    let listing = env.tunnel.services().await.unwrap();
    assert_eq!(listing.services[0].name, "echo-svc");
    let who = env.tunnel.whoami().await.unwrap();
    assert_eq!(who.identity, Profile::load(env.home.path()).unwrap().identity());
    assert_eq!(who.name, "ci-runner");
}
