use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::dial;

/// A listener on 127.0.0.1 whose accept queue holds at most `backlog` + 1
/// connections the test has not accepted.
fn listener(backlog: i32) -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    socket.listen(backlog).expect("listen");
    socket.set_nonblocking(true).expect("non-blocking");
    TcpListener::from_std(socket.into()).expect("a tokio listener")
}

#[tokio::test]
async fn a_workload_beside_the_connector_is_dialled_and_carries_bytes() {
    let workload = listener(16);
    let addr = workload.local_addr().expect("its address");
    let mut stream = dial(&addr.to_string()).await.expect("dialled");
    assert_eq!(stream.peer_addr().expect("connected"), addr);
    let (mut accepted, _) = workload.accept().await.expect("accepted");
    stream.write_all(b"ping").await.expect("written");
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"ping");
}

#[tokio::test]
async fn a_refused_dial_fails_with_the_refusal() {
    let addr = listener(16).local_addr().expect("its address");
    // The listener is gone: nothing listens on the port any more.
    let err = dial(&addr.to_string()).await.expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn a_name_is_resolved_and_its_addresses_tried_in_turn() {
    // `localhost` may resolve to ::1 before 127.0.0.1; only the latter listens.
    let workload = listener(16);
    let port = workload.local_addr().expect("its address").port();
    let stream = dial(&format!("localhost:{port}")).await.expect("dialled by name");
    assert_eq!(stream.peer_addr().expect("connected"), SocketAddr::from(([127, 0, 0, 1], port)));
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_at_once_is_waited_for() {
    // With its accept queue full, the workload's kernel drops new SYNs, so
    // the dial's handshake is still in flight when `connect` returns and
    // completes only at the SYN's retransmission, after room has been made.
    let workload = listener(0);
    let addr = workload.local_addr().expect("its address");
    let mut fillers = Vec::new();
    while let Ok(filler) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
        fillers.push(filler);
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    let dialling = tokio::spawn(async move { dial(&addr.to_string()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!dialling.is_finished(), "the handshake cannot have finished while the queue is full");
    for _ in &fillers {
        workload.accept().await.expect("a filler accepted");
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), dialling)
        .await
        .expect("the dial finishes once the SYN is retransmitted")
        .expect("the task ran")
        .expect("dialled");
    assert_eq!(stream.peer_addr().expect("connected"), addr);
    let (_, from) = workload.accept().await.expect("the dial accepted");
    assert_eq!(from, stream.local_addr().expect("its own address"));
}
