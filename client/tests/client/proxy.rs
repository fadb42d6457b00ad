//! `palisade proxy`: SOCKS5 and HTTP CONNECT on one port.

use std::net::SocketAddr;
use std::time::Duration;

use palisade_client::{Profile, Tunnel, bind_local, proxy};
use palisade_proto::reject::RejectCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Action, FakeBroker, Pki, within, write_home};

struct Env {
    broker: FakeBroker,
    proxy: SocketAddr,
    _home: tempfile::TempDir,
}

async fn env() -> Env {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |service| match service {
        "secret" => Action::Reject(RejectCode::Forbidden),
        _ => Action::Echo,
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    write_home(home.path(), &pki.valid_machine_cert(), &pki.ca_pem(), broker.addr);
    let tunnel = Tunnel::new(Profile::load(home.path()).unwrap()).unwrap();
    let listener = bind_local("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(listener, tunnel, std::future::pending()));
    Env { broker, proxy, _home: home }
}

fn socks_connect_domain(host: &str, port: u16) -> Vec<u8> {
    let mut request = vec![5, 1, 0, 3, host.len() as u8];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    request
}

async fn socks_greet(proxy: SocketAddr, methods: &[u8]) -> (TcpStream, [u8; 2]) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut greeting = vec![5, methods.len() as u8];
    greeting.extend_from_slice(methods);
    tcp.write_all(&greeting).await.unwrap();
    let mut choice = [0u8; 2];
    within(tcp.read_exact(&mut choice)).await.unwrap();
    (tcp, choice)
}

async fn socks_reply(tcp: &mut TcpStream) -> [u8; 10] {
    let mut reply = [0u8; 10];
    within(tcp.read_exact(&mut reply)).await.unwrap();
    reply
}

async fn echo(tcp: &mut TcpStream, data: &[u8]) {
    tcp.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, data);
}

#[tokio::test]
async fn socks5_connect_by_service_name() {
    let env = env().await;
    let (mut tcp, choice) = socks_greet(env.proxy, &[0x02, 0x00]).await;
    assert_eq!(choice, [5, 0], "no-auth is chosen when offered");
    tcp.write_all(&socks_connect_domain("echo-svc.palisade", 443)).await.unwrap();
    let reply = socks_reply(&mut tcp).await;
    assert_eq!(reply[..2], [5, 0], "success");
    echo(&mut tcp, b"through socks").await;
    assert_eq!(*env.broker.services_asked.lock().unwrap(), ["echo-svc"]);
}

#[tokio::test]
async fn socks5_refuses_ip_addresses_unknown_methods_and_commands() {
    let env = env().await;

    let (_tcp, choice) = socks_greet(env.proxy, &[0x02]).await;
    assert_eq!(choice, [5, 0xff], "username/password only: no acceptable method");

    let (mut tcp, _) = socks_greet(env.proxy, &[0x00]).await;
    tcp.write_all(&[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]).await.unwrap();
    assert_eq!(socks_reply(&mut tcp).await[1], 0x08, "IPv4: address type not supported");

    let (mut tcp, _) = socks_greet(env.proxy, &[0x00]).await;
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&[0u8; 16]);
    v6.extend_from_slice(&[0, 80]);
    tcp.write_all(&v6).await.unwrap();
    assert_eq!(socks_reply(&mut tcp).await[1], 0x08, "IPv6: address type not supported");

    let (mut tcp, _) = socks_greet(env.proxy, &[0x00]).await;
    let mut bind = socks_connect_domain("echo-svc", 80);
    bind[1] = 0x02;
    tcp.write_all(&bind).await.unwrap();
    assert_eq!(socks_reply(&mut tcp).await[1], 0x07, "BIND: command not supported");

    let (mut tcp, _) = socks_greet(env.proxy, &[0x00]).await;
    tcp.write_all(&socks_connect_domain("not/a/service", 80)).await.unwrap();
    assert_eq!(socks_reply(&mut tcp).await[1], 0x04, "not a service name: host unreachable");

    assert!(env.broker.services_asked.lock().unwrap().is_empty(), "nothing reached the broker");
}

#[tokio::test]
async fn socks5_refusal_closes_the_connection_after_success() {
    let env = env().await;
    let (mut tcp, _) = socks_greet(env.proxy, &[0x00]).await;
    tcp.write_all(&socks_connect_domain("secret", 22)).await.unwrap();
    assert_eq!(socks_reply(&mut tcp).await[1], 0x00, "success is sent before the broker decides");
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tcp.read_u8().await.unwrap();
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn http_connect_on_the_same_port() {
    let env = env().await;
    let mut tcp = TcpStream::connect(env.proxy).await.unwrap();
    // Bytes right after the head are carried too (some clients send them early).
    tcp.write_all(b"CONNECT echo-svc.palisade:8443 HTTP/1.1\r\nHost: echo-svc.palisade:8443\r\n\r\nearly")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut early = [0u8; 5];
    within(tcp.read_exact(&mut early)).await.unwrap();
    assert_eq!(&early, b"early");
    echo(&mut tcp, b"through http connect").await;
    assert_eq!(*env.broker.services_asked.lock().unwrap(), ["echo-svc"]);
}

#[tokio::test]
async fn http_other_methods_and_ip_hosts_are_refused() {
    let env = env().await;
    for (request, status) in [
        ("GET http://echo-svc/ HTTP/1.1\r\nHost: echo-svc\r\n\r\n", "HTTP/1.1 405 "),
        ("CONNECT 10.1.2.3:443 HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "),
        ("CONNECT [::1]:443 HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "),
    ] {
        let mut tcp = TcpStream::connect(env.proxy).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        within(tcp.read_to_string(&mut response)).await.unwrap();
        assert!(response.starts_with(status), "{request:?} -> {response}");
    }
    assert!(env.broker.services_asked.lock().unwrap().is_empty());
}
