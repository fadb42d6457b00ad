//! Slow and greedy HTTPS clients (issue #10's HTTP limits): a client that
//! trickles its headers or its body, or idles on a keep-alive connection,
//! loses the connection within the listener's timeouts, and one address
//! cannot take every connection slot. Raw TLS over blocking sockets, so the
//! test controls every byte and its timing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_tests::TestEnv;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// hyper's header timeout in the broker (`HEADER_TIMEOUT`, `broker/src/web/mod.rs`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `REQUEST_TIMEOUT` in `broker/src/web/limits.rs`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// `PER_ADDRESS` in `broker/src/web/limits.rs`.
const PER_ADDRESS: usize = 256;
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(6);

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the broker's HTTPS port from `source` (any port).
fn connect(config: &Arc<rustls::ClientConfig>, broker: SocketAddr, source: &str) -> std::io::Result<Tls> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&format!("{source}:0").parse::<SocketAddr>().expect("an address").into())?;
    socket.connect(&broker.into())?;
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(HEADER_TIMEOUT + REQUEST_TIMEOUT + SLACK))?;
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").expect("a name"))
        .map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads until the server closes; returns what it sent and when it closed.
fn read_until_closed(tls: &mut Tls) -> (String, Instant) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), Instant::now()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn client_config(broker: &palisade_tests::Broker) -> Arc<rustls::ClientConfig> {
    let trust = broker.trust_anchors("palisade.test");
    Arc::new(palisade_proto::tls::https_client_config(&trust).expect("an HTTPS client config"))
}

fn https_addr(broker: &palisade_tests::Broker) -> SocketAddr {
    broker.https_url().trim_start_matches("https://").parse().expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_connections_are_cut() {
    let env = TestEnv::new();
    let broker = env.broker().spawn().await;
    let (config, addr) = (client_config(&broker), https_addr(&broker));

    let slow_headers = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut tls = connect(&config, addr, "127.0.0.1").expect("connect");
            let started = Instant::now();
            tls.write_all(b"POST /api/v1/enroll HTTP/1.1\r\nHost: localhost\r\n").expect("half the headers");
            let (answer, closed) = read_until_closed(&mut tls);
            (answer, closed - started)
        })
    };
    let idle = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut tls = connect(&config, addr, "127.0.0.1").expect("connect");
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("a request");
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).expect("an answer");
            let started = Instant::now();
            let status = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
            let (_, closed) = read_until_closed(&mut tls);
            (status, closed - started)
        })
    };
    let slow_body = std::thread::spawn(move || {
        let mut tls = connect(&config, addr, "127.0.0.1").expect("connect");
        let head = "POST /api/v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Content-Length: 100000\r\n\r\n{";
        tls.write_all(head.as_bytes()).expect("the headers");
        let started = Instant::now();
        // One byte a second, forever: each arrives well within any per-read timeout.
        let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(1)));
        let mut seen = Vec::new();
        while started.elapsed() < REQUEST_TIMEOUT + SLACK * 2 {
            if tls.write_all(b" ").is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        (String::from_utf8_lossy(&seen).into_owned(), started.elapsed())
    });

    let (answer, after) = tokio::task::spawn_blocking(move || slow_headers.join().expect("thread")).await.unwrap();
    eprintln!("slow headers: closed after {after:?}, answer {answer:?}");
    assert!(after <= HEADER_TIMEOUT + SLACK, "half-sent headers held the connection for {after:?}");
    let (status, after) = tokio::task::spawn_blocking(move || idle.join().expect("thread")).await.unwrap();
    eprintln!("idle keep-alive: {status}, closed after {after:?}");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(after <= HEADER_TIMEOUT + SLACK, "an idle keep-alive connection was held for {after:?}");
    let (answer, after) = tokio::task::spawn_blocking(move || slow_body.join().expect("thread")).await.unwrap();
    eprintln!("slow body: {after:?}, answer {:?}", answer.lines().next());
    assert!(answer.starts_with("HTTP/1.1 408"), "a trickled body is answered 408: {answer:?}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(after <= REQUEST_TIMEOUT + SLACK, "a trickled body held the connection for {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let env = TestEnv::new();
    let broker = env.broker().spawn().await;
    let (config, addr) = (client_config(&broker), https_addr(&broker));
    let result = tokio::task::spawn_blocking(move || {
        let held: Vec<Tls> = (0..PER_ADDRESS)
            .map(|i| connect(&config, addr, "127.0.0.1").unwrap_or_else(|e| panic!("connection {i}: {e}")))
            .collect();
        let over = connect(&config, addr, "127.0.0.1").map(|mut tls| {
            let _ = tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
            read_until_closed(&mut tls).0
        });
        let mut other = connect(&config, addr, "127.0.0.2").expect("another address connects");
        other.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("a request");
        let other_answer = read_until_closed(&mut other).0;
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
        let mut again = connect(&config, addr, "127.0.0.1").expect("the address connects once it holds fewer");
        again.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("a request");
        (over, other_answer, read_until_closed(&mut again).0)
    })
    .await
    .expect("the blocking part");
    let (over, other, again) = result;
    assert!(
        over.as_ref().map_or(true, |answer| answer.is_empty()),
        "connection {} from the same address was served: {over:?}",
        PER_ADDRESS + 1
    );
    assert!(other.starts_with("HTTP/1.1 200"), "another address is served meanwhile: {other:?}");
    assert!(again.starts_with("HTTP/1.1 200"), "the address is served again once it holds fewer: {again:?}");
}
