//! The files in `deploy/` checked offline: the systemd units with
//! `systemd-analyze` (verify and the offline security score), the
//! Dockerfiles' stages and users, the compose file and the Kubernetes
//! manifests parsed as YAML with every reference followed, and every config
//! they carry parsed by the real broker and connector parsers. One module
//! per kind of file; the configs and the doctors are checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_broker::config::Config as BrokerConfig;
use palisade_connector::ConnectorConfig;
use palisade_tests::bin_path;
use serde::Deserialize as _;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn broker_config(text: &str, origin: &str) -> BrokerConfig {
    BrokerConfig::from_toml_str(text, Path::new("/etc/palisade"), &[])
        .unwrap_or_else(|e| panic!("{origin} is not a valid broker.toml: {e}"))
}

fn connector_config(text: &str, origin: &str) -> ConnectorConfig {
    ConnectorConfig::from_toml(text, origin).unwrap_or_else(|e| panic!("{origin} is not a valid connector.toml: {e}"))
}

mod containers;
mod grafana;
mod kubernetes;
mod systemd;

// ---------------------------------------------------------------- examples

#[test]
fn example_configs_parse_with_the_real_parsers() {
    let broker = broker_config(&read("broker.example.toml"), "deploy/broker.example.toml");
    assert!(!broker.services.is_empty());
    let connector = connector_config(&read("connector.example.toml"), "deploy/connector.example.toml");
    assert!(!connector.services.is_empty());
}

// ---------------------------------------------------------------- doctors against the real programs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doctors_report_ok_against_a_real_broker_connector_and_upstream() {
    use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv};

    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;

    // The real broker's HTTPS answer carries a Date header, QUIC works, policy lets the agent reach `echo`.
    let text = agent.cli(&["doctor"]).await.expect_success();
    for check in ["enrollment", "certificate", "trust bundle", "https", "clock", "udp", "identity", "services"] {
        assert!(text.lines().any(|l| l.starts_with("[ ok ] ") && l[7..].starts_with(check)), "{check}:\n{text}");
    }
    assert!(text.contains("may reach echo"), "{text}");
    let json = agent.cli(&["doctor", "--json"]).await.expect_success();
    let report: serde_json::Value = serde_json::from_str(&json).expect("doctor --json");
    assert!(report["checks"].as_array().expect("checks").iter().all(|c| c["outcome"] == "ok"), "{json}");

    let config = connector.state_dir().parent().expect("connector dir").join("connector.toml");
    let out = Command::new(bin_path("palisade-connector")).arg("doctor").arg("--config").arg(&config).output();
    let out = out.expect("running palisade-connector doctor");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for check in ["config", "enrollment", "certificate", "broker https", "upstream echo"] {
        assert!(said.lines().any(|l| l.starts_with("[ ok ] ") && l[7..].starts_with(check)), "{check}:\n{said}");
    }

    // The upstream goes away: the connector's doctor says which one and fails.
    let upstream_addr = upstream.addr();
    drop(upstream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(upstream_addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the upstream kept listening after it was dropped");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = Command::new(bin_path("palisade-connector")).arg("doctor").arg("--config").arg(&config).output();
    let out = out.expect("running palisade-connector doctor");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.lines().any(|l| l.starts_with("[FAIL] upstream echo")), "{said}");
}
