//! Crashes heal themselves: a killed connector or broker comes back and
//! clients' new connections work again without anyone doing anything.

use std::time::{Duration, Instant};

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, wait_for};

/// A SIGKILLed peer sends no close: the survivors notice through QUIC's
/// idle timeout or a stateless reset, then reconnect with backoff.
const RECOVERY: Duration = Duration::from_secs(90);

/// A restarted broker answers its old peers' packets with stateless resets
/// (its reset key is kept in the database), so they reconnect at their next
/// packet instead of waiting out the 30 s idle timeout.
const PROMPT_RECOVERY: Duration = Duration::from_secs(20);

/// How long a client may wait to hear that a service's connector is gone:
/// the broker's `[relay] connect_timeout` (10 s by default) and some slack.
const CLEAR_ERROR: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_and_broker_restarts_recover_without_manual_steps() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let mut connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let forward = agent.connect("echo").await;
    forward.assert_echoes(b"before any restart").await;

    connector.kill().await;
    let started = Instant::now();
    connector.restart().await;
    wait_for("a new connection after the connector restarted", RECOVERY, || {
        forward.echoes(b"after the connector restart")
    })
    .await;
    eprintln!("connector restart: tunnels worked again after {:?}", started.elapsed());

    let started = Instant::now();
    broker.restart().await;
    wait_for("a new connection after the broker restarted", RECOVERY, || forward.echoes(b"after the broker restart"))
        .await;
    let recovered = started.elapsed();
    eprintln!("broker restart: tunnels worked again after {recovered:?}");

    // And a client started after the restart, with the same enrollment.
    let fresh = agent.connect("echo").await;
    fresh.assert_echoes(b"a new forward").await;

    assert!(
        recovered < PROMPT_RECOVERY,
        "tunnels came back {recovered:?} after the broker restarted: its old clients and connectors \
         waited for the idle timeout instead of being reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_connector_is_down_a_client_is_told_so_promptly() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let mut connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    agent.tunnel_exchange("echo", b"while it runs").await.expect("the connector serves");

    // A crash sends nothing: the broker has to notice on its own (keep-alives,
    // [relay] connect_timeout), and must not leave the client hanging.
    connector.kill().await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(CLEAR_ERROR, agent.tunnel_exchange("echo", b"while it is down")).await;
    let err = match outcome {
        Ok(Ok(reply)) => panic!("a crashed connector carried a stream: {reply:?}"),
        Ok(Err(err)) => err,
        Err(_) => panic!("no answer within {CLEAR_ERROR:?} while the connector is down: the client just hangs"),
    };
    eprintln!("with the connector down: {err} after {:?}", started.elapsed());
    assert!(
        matches!(
            err.reject_code(),
            Some(RejectCode::NoConnector | RejectCode::UpstreamTimeout | RejectCode::UpstreamUnreachable)
        ),
        "expected a clear reason, got {err}"
    );
}
