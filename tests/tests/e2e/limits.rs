//! Denial-of-service limits on the QUIC listener: a per-identity connection
//! cap, and address validation with Retry that legitimate clients pass.

use std::path::Path;

use palisade_client::{Profile, Tunnel};
use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv};

fn set_relay(data_dir: &Path, key: &str, value: toml::Value) {
    let path = data_dir.join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let relay = config.entry("relay").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    relay.as_table_mut().expect("[relay] is a table").insert(key.into(), value);
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_hold_more_connections_than_its_cap() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_relay(broker.data_dir(), "max_connections_per_identity", 2.into());
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;

    let service = "echo".parse().expect("service name");
    let mut held = Vec::new();
    for _ in 0..2 {
        let tunnel = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
        // A full round trip, so the broker has registered this connection before the next one.
        assert!(agent_echo(&tunnel, &service).await, "a connection within the cap works");
        held.push(tunnel);
    }
    let third = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    let refused = match third.open(&service).await {
        Ok((mut send, mut recv)) => {
            // The refusal may arrive after the stream was opened locally: observe it.
            let _ = send.write_all(b"x").await;
            let mut buf = [0u8; 1];
            recv.read(&mut buf).await.expect_err("the third connection must be closed").to_string()
        }
        Err(e) => {
            assert_eq!(e.reject_code(), Some(RejectCode::RateLimited), "{e}");
            e.to_string()
        }
    };
    assert!(!refused.is_empty());
    palisade_tests::wait_for("the refusal in the audit trail", std::time::Duration::from_secs(5), || async {
        broker
            .audit_events()
            .await
            .of_kind("quic.refused")
            .iter()
            .any(|r| r.detail_str("reason") == Some("per-identity connection limit"))
    })
    .await;
    for tunnel in &held {
        assert!(
            agent_echo(tunnel, &service).await,
            "a connection within the cap keeps carrying data after the refusal"
        );
    }

    drop(held);
    // A connection freed, another one fits again.
    palisade_tests::wait_for("a connection once the others closed", std::time::Duration::from_secs(10), || async {
        let tunnel = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
        agent_echo(&tunnel, &service).await
    })
    .await;
}

async fn agent_echo(tunnel: &Tunnel, service: &palisade_proto::id::ServiceName) -> bool {
    let Ok((mut send, mut recv)) = tunnel.open(service).await else { return false };
    if send.write_all(b"ping").await.is_err() || send.finish().is_err() {
        return false;
    }
    matches!(recv.read_to_end(64).await, Ok(bytes) if bytes == b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_always_legitimate_clients_still_connect() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_relay(broker.data_dir(), "retry", "always".into());
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    agent.connect("echo").await.assert_echoes(b"after an address-validating Retry").await;
}
