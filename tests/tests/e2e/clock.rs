//! The wall clock of a running client, broker or connector jumps (catalogue
//! X5-05). The process runs under libfaketime ([`FakeClock`]) and its clock
//! is moved an hour back or an hour ahead while it serves; the client's
//! certificate lives 30 minutes, so an hour ahead is past its expiry, and
//! every certificate was issued within the hour, so an hour back is before
//! its start.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use palisade_proto::reject::RejectCode;
use palisade_tests::bench::procfs;
use palisade_tests::wait::wait_for_some;
use palisade_tests::{ALLOW_ML_AGENTS, DEFAULT_TIMEOUT, EchoUpstream, FakeClock, TestEnv, assert_eventually, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOUR: i64 = 3600;
/// How long a refusal the client decides on its own may take.
const LOCAL_REFUSAL: Duration = Duration::from_secs(10);

fn set_machine_ttl(data_dir: &Path, ttl: &str) {
    let path = data_dir.join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let certificates = config.entry("certificates").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    certificates.as_table_mut().expect("[certificates] is a table").insert("machine_ttl".into(), ttl.into());
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_client_whose_clock_jumps_refuses_its_expired_certificate_and_recovers() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_machine_ttl(broker.data_dir(), "30m");
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let clock = FakeClock::new(&env);
    let forward = agent.connect_with_env("echo", &clock.env()).await;
    let pid = forward.process().pid().expect("palisade connect runs");
    forward.assert_echoes(b"on time").await;

    // An hour behind: the certificate is not expired by this clock, and new
    // streams on the live connection carry on.
    clock.set_offset(-HOUR);
    forward.assert_echoes(b"an hour early").await;

    // An hour ahead, past the certificate's end: refused at once on the
    // client, with the reason, and nothing is sent to the broker.
    let allowed = broker.audit_events().await.of_kind("stream.allowed").len();
    clock.set_offset(HOUR);
    let started = Instant::now();
    let reply = forward.exchange_within(b"an hour late", LOCAL_REFUSAL).await;
    assert!(
        !matches!(&reply, Ok(r) if !r.is_empty()),
        "a client an hour past its certificate's end still carried bytes"
    );
    assert!(
        !matches!(&reply, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "the client hung instead of refusing"
    );
    let refusal = "echo: certificate expired: run `palisade login` (or enroll again)";
    wait_for("palisade connect to say why", LOCAL_REFUSAL, || async { forward.process().stderr().contains(refusal) })
        .await;
    eprintln!("an hour ahead: refused after {:?}", started.elapsed());
    let line = forward.process().stderr().lines().find(|l| l.contains(refusal)).unwrap().to_owned();
    let stamped = humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).expect("a timestamp");
    assert!(
        stamped > SystemTime::now() + Duration::from_secs(50 * 60),
        "the refusal is stamped {line:?}: the client's clock did not move, so this tested nothing"
    );
    assert!(procfs::alive(pid), "palisade connect exited instead of refusing connection by connection");
    let audit = broker.audit_events().await;
    assert_eq!(
        audit.of_kind("stream.allowed").len(),
        allowed,
        "an expired client reached the broker:\n{}",
        audit.summary()
    );

    // The clock set right again: the same process works, with no restart.
    clock.set_offset(0);
    forward.assert_echoes(b"back on time").await;

    // An hour behind when a new handshake is needed: the broker restarted,
    // and its certificate is younger than an hour, so by this clock it is not
    // valid yet. Each connection is refused at once, naming the clock.
    clock.set_offset(-HOUR);
    broker.restart().await;
    let started = Instant::now();
    wait_for("a refusal that names this machine's clock", Duration::from_secs(30), || async {
        let reply = forward.exchange_within(b"an hour early, new handshake", LOCAL_REFUSAL).await;
        assert!(!matches!(&reply, Ok(r) if !r.is_empty()), "a broker that did not verify carried bytes");
        assert!(!matches!(&reply, Err(e) if e.kind() == std::io::ErrorKind::TimedOut), "the client hung");
        forward.process().stderr().contains("set the clock right")
    })
    .await;
    let line = forward.process().stderr().lines().rev().find(|l| l.contains("set the clock right")).unwrap().to_owned();
    eprintln!("an hour behind, new handshake: after {:?}: {line}", started.elapsed());
    let behind = line.split("at least ").nth(1).and_then(|rest| rest.split(" behind").next()).unwrap_or_default();
    let behind = humantime::parse_duration(behind).unwrap_or_else(|e| panic!("no skew named in {line:?}: {e}"));
    assert!(behind > Duration::from_secs(50 * 60) && behind < Duration::from_secs(3600), "skew {behind:?} in {line:?}");

    clock.set_offset(0);
    wait_for("a tunnel once the clock is right again", Duration::from_secs(30), || forward.echoes(b"clock set right"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_clock_jumps_past_a_clients_certificate_refuses_its_new_streams() {
    let env = TestEnv::new();
    let clock = FakeClock::new(&env);
    let mut broker = env
        .broker()
        .service("echo", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .run_env(&clock.env())
        .spawn()
        .await;
    set_machine_ttl(broker.data_dir(), "30m");
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"on time").await;

    // The client's clock is right and its certificate valid by it; the
    // broker's is an hour ahead, past the certificate's end, while the
    // client's connection (verified at its handshake) stays open.
    clock.set_offset(HOUR);
    let reply = forward.exchange_within(b"the broker is an hour ahead", LOCAL_REFUSAL).await;
    assert!(
        !matches!(&reply, Ok(r) if !r.is_empty()),
        "the broker carried a stream for a certificate expired by its clock"
    );
    assert!(!matches!(&reply, Err(e) if e.kind() == std::io::ErrorKind::TimedOut), "the client was left hanging");
    wait_for("palisade connect to say why", LOCAL_REFUSAL, || async {
        forward.process().stderr().contains("echo: the broker refused this identity")
    })
    .await;
    let audit = broker.audit_events().await;
    let denied = audit.last_of_kind("stream.denied").expect("the refusal is audited");
    assert_eq!(denied.detail_str("reason"), Some("certificate_expired"), "{}", audit.summary());
    assert!(denied.ts_ms > now_ms() + 50 * 60 * 1000, "the broker's clock did not move, so this tested nothing");

    clock.set_offset(0);
    wait_for("a tunnel once the broker's clock is right", Duration::from_secs(20), || forward.echoes(b"on time again"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_clock_jumps_back_refuses_new_handshakes_and_recovers() {
    let env = TestEnv::new();
    let clock = FakeClock::new(&env);
    let broker = env
        .broker()
        .service("echo", "inference")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .run_env(&clock.env())
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"on time").await;
    let mut open = tokio::net::TcpStream::connect(forward.addr()).await.expect("connect to the forward");
    echo_on(&mut open, b"before the jump").await;

    // An hour back: the agent's certificate (issued minutes ago) starts in
    // the broker's future. A new handshake is refused at once, and says so.
    clock.set_offset(-HOUR);
    let dialled = upstream.accepted();
    let started = Instant::now();
    let err = agent.tunnel_exchange("echo", b"new handshake, an hour early").await.expect_err("refused");
    eprintln!("broker an hour back, new handshake: after {:?}: {err}", started.elapsed());
    assert!(started.elapsed() < LOCAL_REFUSAL, "the refusal took {:?}", started.elapsed());
    assert_eq!(err.reject_code(), Some(RejectCode::IdentityRejected), "{err}");
    assert!(err.to_string().contains("one of the two clocks is wrong"), "the clocks are not named: {err}");
    assert_eventually!(broker.audit_events().await.has_kind("quic.refused"));
    let audit = broker.audit_events().await;
    let refused = audit.last_of_kind("quic.refused").expect("audited");
    let reason = refused.detail_str("reason").unwrap_or_default();
    eprintln!("audited: {reason}");
    assert!(reason.to_lowercase().contains("not valid yet"), "the audit does not say why: {reason}");
    assert!(refused.ts_ms < now_ms() - 50 * 60 * 1000, "the broker's clock did not move, so this tested nothing");

    // The live connection, verified at its handshake, carries on: the open
    // stream and new streams on it reach the workload as before.
    assert_eq!(upstream.accepted(), dialled, "a refused handshake reached the workload");
    echo_on(&mut open, b"after the jump, same stream").await;
    forward.assert_echoes(b"after the jump, new stream").await;
    assert_eq!(upstream.accepted(), dialled + 1, "only the live connection's new stream reached the workload");
    let audit = broker.audit_events().await;
    assert!(!audit.has_kind("stream.denied"), "{}", audit.summary());

    // The clock set right: new handshakes work again, without a restart.
    clock.set_offset(0);
    let reply = agent.tunnel_exchange("echo", b"clock set right").await.expect("a new handshake");
    assert_eq!(reply, b"clock set right");
}

/// Sends `payload` on a stream that stays open and reads it back.
async fn echo_on(stream: &mut tokio::net::TcpStream, payload: &[u8]) {
    stream.write_all(payload).await.expect("write to the open stream");
    let mut back = vec![0; payload.len()];
    tokio::time::timeout(LOCAL_REFUSAL, stream.read_exact(&mut back))
        .await
        .expect("the open stream answers in time")
        .expect("the open stream still carries bytes");
    assert_eq!(back, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_whose_clock_jumps_past_a_clients_certificate_refuses_its_streams() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_machine_ttl(broker.data_dir(), "30m");
    broker.restart().await;
    let clock = FakeClock::new(&env);
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).run_env(&clock.env()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    assert_eq!(agent.tunnel_exchange("echo", b"on time").await.expect("allowed"), b"on time");

    // The connector an hour ahead, past the agent's certificate; the broker
    // and the client are on time, so the broker admits the stream and the
    // connector refuses it on its own, without dialling the workload.
    clock.set_offset(HOUR);
    let dialled = upstream.accepted();
    let err = agent.tunnel_exchange("echo", b"the connector is an hour ahead").await.expect_err("refused");
    eprintln!("connector an hour ahead: {err}");
    assert_eq!(err.reject_code(), Some(RejectCode::ForbiddenByConnector), "{err}");
    assert_eq!(upstream.accepted(), dialled, "the connector dialled the workload for an expired caller");
    assert_eventually!(broker.audit_events().await.has_kind("connector.stream_denied"));
    let audit = broker.audit_events().await;
    let denied = audit.last_of_kind("connector.stream_denied").expect("reported");
    assert_eq!(denied.detail_str("reason"), Some("identity_rejected"), "{}", audit.summary());
    let detail = denied.detail_str("detail").unwrap_or_default();
    assert!(detail.contains("expired"), "the report does not say why: {detail}");
    let line = wait_for_some("the connector to log its refusal", DEFAULT_TIMEOUT, || async {
        connector.process().stderr().lines().rev().find(|l| l.contains("stream denied")).map(str::to_owned)
    })
    .await;
    eprintln!("connector log: {line}");
    let stamped = humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).expect("a timestamp");
    assert!(stamped > SystemTime::now() + Duration::from_secs(50 * 60), "the connector's clock did not move: {line}");

    // Its own link: the broker restarts, and the connector, still an hour
    // ahead, dials again with its own certificate (valid for longer than an
    // hour) and keeps refusing on its own.
    broker.restart().await;
    wait_for("the connector back on its link, still refusing", Duration::from_secs(20), || async {
        let err = agent.tunnel_exchange("echo", b"after the broker restart").await.expect_err("refused");
        err.reject_code() == Some(RejectCode::ForbiddenByConnector)
    })
    .await;
    assert_eq!(upstream.accepted(), dialled, "the connector dialled the workload for an expired caller");

    // Set right: the same connector process serves the agent again.
    clock.set_offset(0);
    let reply = agent.tunnel_exchange("echo", b"on time again").await.expect("allowed again");
    assert_eq!(reply, b"on time again");
    assert!(procfs::alive(connector.process().pid().expect("runs")), "the connector exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_whose_clock_jumps_back_refuses_new_certificates_and_relinks_once_set_right() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let clock = FakeClock::new(&env);
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).run_env(&clock.env()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    assert_eq!(agent.tunnel_exchange("echo", b"on time").await.expect("allowed"), b"on time");

    // The connector an hour back: the agent's certificate, issued minutes
    // ago, starts in the connector's future; it refuses on its own.
    clock.set_offset(-HOUR);
    let dialled = upstream.accepted();
    let err = agent.tunnel_exchange("echo", b"the connector is an hour behind").await.expect_err("refused");
    assert_eq!(err.reject_code(), Some(RejectCode::ForbiddenByConnector), "{err}");
    assert_eventually!(broker.audit_events().await.has_kind("connector.stream_denied"));
    let audit = broker.audit_events().await;
    let detail = audit.last_of_kind("connector.stream_denied").and_then(|d| d.detail_str("detail")).unwrap_or_default();
    assert!(detail.contains("not valid yet"), "the report does not say why: {detail}\n{}", audit.summary());

    // The broker restarts: the connector dials again, an hour back, and
    // the broker's certificate (minutes old) is not valid yet by its clock.
    // The link stays down, and says why.
    broker.restart().await;
    wait_for("the connector to say why it cannot link", Duration::from_secs(20), || async {
        connector
            .process()
            .stderr()
            .lines()
            .any(|l| l.contains("cannot connect to the broker") && l.contains("not valid yet"))
    })
    .await;
    let stderr = connector.process().stderr();
    let line = stderr.lines().find(|l| l.contains("cannot connect to the broker")).unwrap_or_default();
    eprintln!("connector an hour back, relinking: {line}");
    assert!(
        stderr.contains("not valid yet by this machine's clock, which is behind the broker's"),
        "the connector does not name its clock:\n{stderr}"
    );
    let err = agent.tunnel_exchange("echo", b"no link").await.expect_err("no connector");
    assert_eq!(err.reject_code(), Some(RejectCode::NoConnector), "{err}");
    assert_eq!(upstream.accepted(), dialled, "the workload was reached while the connector's clock was wrong");

    // Set right: the same process links again (within its reconnect
    // backoff, at most 10 s) and serves the agent.
    clock.set_offset(0);
    let started = Instant::now();
    wait_for("the connector to link again and serve", Duration::from_secs(30), || async {
        matches!(agent.tunnel_exchange("echo", b"on time again").await, Ok(reply) if reply == b"on time again")
    })
    .await;
    eprintln!("connector set right: serving again after {:?}", started.elapsed());
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}
