//! Connectors renew their certificates over the live link, well before they
//! expire, and keep serving tunnels with the new one.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, wait_for_some};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The connector renews after two thirds of its certificate's lifetime and
/// checks every 5 s; with a 30 s certificate that is 20–25 s after enrollment.
const CONNECTOR_TTL: &str = "30s";
const RENEWED_WITHIN: Duration = Duration::from_secs(45);

fn not_after(state_dir: &Path) -> Option<i64> {
    let pem = std::fs::read_to_string(state_dir.join("cert.pem")).ok()?;
    let der = palisade_proto::pem::certs(&pem).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn set_connector_ttl(data_dir: &Path, ttl: &str) {
    let path = data_dir.join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let certificates = config.entry("certificates").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    certificates.as_table_mut().expect("[certificates] is a table").insert("connector_ttl".into(), ttl.into());
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_renews_its_certificate_over_the_live_link() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_connector_ttl(broker.data_dir(), CONNECTOR_TTL);
    broker.restart().await;

    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let first = not_after(connector.state_dir()).expect("the enrolled certificate");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!(first - now <= 31, "the connector certificate should live {CONNECTOR_TTL}, not until {first}");

    let renewed = wait_for_some("a renewed connector certificate", RENEWED_WITHIN, || async {
        not_after(connector.state_dir()).filter(|&t| t > first)
    })
    .await;
    assert!(renewed > first);

    let audit = broker.audit_events().await;
    let renewals: Vec<_> =
        audit.of_kind("certificate.issued").into_iter().filter(|r| r.detail_str("via") == Some("renewal")).collect();
    assert!(!renewals.is_empty(), "the renewal is audited: {}", audit.summary());

    // The renewed identity is the one that serves tunnels from now on.
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    agent.connect("echo").await.assert_echoes(b"through a connector with a renewed certificate").await;
}
