//! The wall clock of a running client jumps (catalogue X5-05). `palisade
//! connect` runs under libfaketime ([`FakeClock`]) and its clock is moved an
//! hour back and an hour ahead while it serves; its certificate lives 30
//! minutes, so an hour ahead is past its expiry.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use palisade_tests::bench::procfs;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, FakeClock, TestEnv, wait_for};

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

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}
