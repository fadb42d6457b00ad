//! Bytes through client → broker → connector → workload, intact, in both
//! directions, with half-close, and many at once.

use std::time::Duration;

use palisade_proto::reject::RejectCode;
use palisade_tests::{
    ALLOW_ML_AGENTS, DigestUpstream, EchoUpstream, Probe, QuicProbe, TestEnv, assert_eventually, exchange,
    random_bytes, sha256, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_arrive_intact_and_half_close_keeps_the_reply() {
    let env = TestEnv::new();
    let broker = env
        .broker()
        .service("echo", "inference")
        .service("digest", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .spawn()
        .await;
    let echo = EchoUpstream::spawn().await;
    let digest = DigestUpstream::spawn().await;
    let _connector =
        broker.connector("rack-1").service("echo", echo.addr()).service("digest", digest.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;

    let payload = random_bytes(64 * MIB);
    let forward = agent.connect("echo").await;
    let reply = forward.exchange(&payload).await.expect("64 MiB through the tunnel");
    assert_eq!(reply.len(), payload.len(), "bytes lost or added on the way");
    assert!(sha256(&reply) == sha256(&payload), "the 64 MiB came back corrupted");

    // The client shuts its write side; the workload sees EOF only then, and
    // only then answers: the reply must still reach the client.
    let forward = agent.connect("digest").await;
    let sent = &payload[..8 * MIB];
    let mut stream = TcpStream::connect(forward.addr()).await.expect("connect to the forward");
    within("send 8 MiB and half-close", Duration::from_secs(60), async {
        stream.write_all(sent).await.expect("write");
        stream.shutdown().await.expect("half-close");
    })
    .await;
    let mut reply = Vec::new();
    within("the reply after half-close", Duration::from_secs(60), stream.read_to_end(&mut reply))
        .await
        .expect("read the reply after half-close");
    let mut expected = sha256(sent).to_vec();
    expected.extend_from_slice(&(sent.len() as u64).to_be_bytes());
    assert_eq!(reply, expected, "the workload did not see exactly what was sent before the half-close");

    assert_eventually!(
        broker
            .audit_events()
            .await
            .of_kind("stream.ended")
            .iter()
            .any(|row| { row.detail["bytes_up"] == 64 * MIB && row.detail["bytes_down"] == 64 * MIB }),
        "a stream.ended event counting 64 MiB each way; audit:\n{}",
        broker.audit_events().await.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_through_one_client_all_complete() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;

    let mut connections = JoinSet::new();
    for i in 0..200 {
        let addr = forward.addr();
        connections.spawn(async move {
            let payload = random_bytes(4096 + i * 17);
            let stream = TcpStream::connect(addr).await?;
            let reply = exchange(stream, &payload).await?;
            std::io::Result::Ok(reply == payload)
        });
    }
    let results =
        within("200 concurrent tunnelled connections", Duration::from_secs(120), connections.join_all()).await;
    let failed: Vec<_> = results.iter().enumerate().filter(|(_, r)| !matches!(r, Ok(true))).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 connections failed, e.g. {:?}\nstderr of palisade connect:\n{}",
        failed.len(),
        failed.first(),
        forward.process().stderr()
    );
    assert_eq!(upstream.accepted(), 200, "every tunnelled connection is one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_headers_are_reset_with_a_reason_and_reach_nothing() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let probe = QuicProbe::new(broker.quic_addr(), broker.trust_anchors(&agent.trust_domain()));
    let identity = agent.identity();

    // Control: a well-formed header, hand-made, is served.
    let mut valid = vec![0x50, 0x01, 0x01, 0x00, 0x05, 0x04];
    valid.extend_from_slice(b"echoping");
    assert_eq!(probe.raw_stream(&identity, &valid).await, Probe::Served(b"ping".to_vec()));

    let bad_request = u64::from(RejectCode::BadRequest.as_u32());
    let cases: [(&str, Vec<u8>, u64); 6] = [
        ("an unknown version", vec![0x50, 0x02, 0x01, 0x00, 0x05, 0x04, b'e', b'c', b'h', b'o'], bad_request),
        ("a bad magic byte", vec![0x51, 0x01, 0x01, 0x00, 0x05, 0x04, b'e', b'c', b'h', b'o'], bad_request),
        ("an unknown stream kind", vec![0x50, 0x01, 0x7f, 0x00, 0x00], bad_request),
        ("a length of 65535", vec![0x50, 0x01, 0x01, 0xff, 0xff, 0x04], bad_request),
        ("a truncated body", vec![0x50, 0x01, 0x01, 0x00, 0x20, 0x04, b'e'], bad_request),
        (
            "an unknown service",
            vec![0x50, 0x01, 0x01, 0x00, 0x05, 0x04, b'n', b'o', b'p', b'e'],
            u64::from(RejectCode::UnknownService.as_u32()),
        ),
    ];
    for (what, bytes, code) in &cases {
        let outcome = probe.raw_stream(&identity, bytes).await;
        assert_eq!(outcome, Probe::Reset(*code), "a header with {what}");
    }
    assert_eq!(upstream.accepted(), 1, "only the well-formed stream may reach the workload");
}
