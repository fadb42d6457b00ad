//! Crashes heal themselves: a killed connector or broker comes back and
//! clients' new connections work again without anyone doing anything.

use std::time::{Duration, Instant};

use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, wait_for};

/// A SIGKILLed peer sends no close: the survivors notice through QUIC's
/// idle timeout or a stateless reset, then reconnect with backoff.
const RECOVERY: Duration = Duration::from_secs(90);

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
    let t = Instant::now();
    let r = agent.tunnel_exchange("echo", b"while down").await;
    eprintln!(
        "while the connector is down: {:?} after {:?}",
        r.map_err(|e| (e.reject_code(), e.to_string())),
        t.elapsed()
    );
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
    eprintln!("broker restart: tunnels worked again after {:?}", started.elapsed());

    // And a client started after the restart, with the same enrollment.
    let fresh = agent.connect("echo").await;
    fresh.assert_echoes(b"a new forward").await;
}
