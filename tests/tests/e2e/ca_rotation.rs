//! CA rotation with `palisade-broker ca prepare | activate | retire`: tunnels
//! keep working through each step for everyone who renewed, a certificate
//! from the new CA is accepted by the broker and by a connector that
//! learned the new bundle on its own, and a retired CA's certificates are
//! refused.

use std::path::Path;
use std::time::Duration;

use palisade_tests::{ALLOW_ML_AGENTS, Agent, Broker, EchoUpstream, TestEnv, wait_for, wait_for_some};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The connector renews after two thirds of this and checks every 5 s, so
/// a renewal lands between 20 and 25 s, at least 5 s before the certificate
/// ends (with 15 s there was no margin at all: a connector that missed one
/// check on a loaded CI machine kept an expired certificate for good, as
/// `renewal.rs` also avoids).
const CONNECTOR_TTL: &str = "30s";
const RENEWED_WITHIN: Duration = Duration::from_secs(45);

fn bundle(file: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read_to_string(file).unwrap_or_default();
    palisade_proto::pem::certs(&pem).unwrap_or_default().into_iter().map(|c| c.to_vec()).collect()
}

fn issuer_of(home: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(home.join("cert.pem")).expect("cert.pem");
    let der = palisade_proto::pem::certs(&pem).expect("a certificate").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("parses");
    cert.issuer().as_raw().to_vec()
}

fn subject_of(der: &[u8]) -> Vec<u8> {
    X509Certificate::from_der(der).expect("parses").1.subject().as_raw().to_vec()
}

async fn ca(broker: &Broker, args: &[&str]) -> palisade_tests::CliOutput {
    let mut all = vec!["ca"];
    all.extend_from_slice(args);
    broker.cli(&all).await
}

/// Waits until `agent` reaches the echo service again (the connector relinks after a broker restart).
async fn echoes_again(agent: &Agent, what: &str) {
    let forward = agent.connect("echo").await;
    wait_for(what, Duration::from_secs(20), || forward.echoes(what.as_bytes())).await;
}

fn set_connector_ttl(broker: &Broker) {
    let path = broker.data_dir().join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let certificates = config.entry("certificates").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    certificates.as_table_mut().expect("a table").insert("connector_ttl".into(), CONNECTOR_TTL.into());
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_keeps_tunnels_working_and_a_retired_one_is_refused() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    set_connector_ttl(&broker);
    broker.restart().await;
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let old_ca = broker.ca_der().to_vec();
    let before = broker.machine("before").group("ml-agents").enroll().await;
    before.connect("echo").await.assert_echoes(b"before any rotation").await;

    // Prepare: a successor beside the active CA; refused twice and too early to activate.
    let prepared = ca(&broker, &["prepare"]).await;
    assert!(prepared.expect_success().contains("prepared a successor CA"), "{prepared}");
    let again = ca(&broker, &["prepare"]).await;
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(again.stderr.contains("prepared already"), "{again}");
    let early = ca(&broker, &["activate"]).await;
    assert_eq!(early.code(), Some(1), "{early}");
    assert!(early.stderr.contains("--force"), "activation waits for renewals: {early}");
    assert_eq!(broker.ca_der().to_vec(), old_ca, "nothing changed");
    let status = ca(&broker, &["status"]).await.expect_success();
    assert!(status.contains("next ") && status.contains("ca activate"), "{status}");

    // After a restart the broker hands out both CAs; the connector gets them with its renewal.
    broker.restart().await;
    let connector_bundle = connector.state_dir().join("ca.pem");
    wait_for_some("the connector's bundle with both CAs", RENEWED_WITHIN, || async {
        (bundle(&connector_bundle).len() == 2).then_some(())
    })
    .await;
    let between = broker.machine("between").group("ml-agents").enroll().await;
    assert_eq!(bundle(&between.home().join("ca.pem")).len(), 2, "enrollment hands out the rotation bundle");
    assert_eq!(issuer_of(between.home()), subject_of(&old_ca), "the old CA still issues");
    between.connect("echo").await.assert_echoes(b"while the successor is prepared").await;

    // Activate: the successor issues; the old CA stays trusted.
    ca(&broker, &["activate", "--force"]).await.expect_success();
    broker.restart().await;
    let new_ca = broker.ca_der().to_vec();
    assert_ne!(new_ca, old_ca);
    let after = broker.machine("after").group("ml-agents").enroll().await;
    assert_eq!(issuer_of(after.home()), subject_of(&new_ca), "the new CA issues");
    echoes_again(&after, "a certificate from the new CA, checked by the connector too").await;
    between.connect("echo").await.assert_echoes(b"the previous CA's certificate still works").await;
    // A client that never got the new CA cannot verify the broker any more: it must enroll again.
    assert!(before.tunnel_exchange("echo", b"stale bundle").await.is_err(), "a bundle without the new CA");

    // The connector renews from the new CA on its own (a connector still on
    // the old CA's certificate would be cut off by the retirement).
    wait_for_some("the connector's certificate from the new CA", RENEWED_WITHIN, || async {
        (issuer_of(connector.state_dir()) == subject_of(&new_ca)).then_some(())
    })
    .await;

    // Retire: refused while the previous CA's certificates are valid, then forced.
    let early = ca(&broker, &["retire"]).await;
    assert_eq!(early.code(), Some(1), "{early}");
    assert!(early.stderr.contains("still valid"), "{early}");
    ca(&broker, &["retire", "--force"]).await.expect_success();
    broker.restart().await;
    echoes_again(&after, "the new CA alone").await;
    let refused = between.tunnel_exchange("echo", b"from a retired CA").await;
    assert!(refused.is_err(), "a certificate from a retired CA is refused");
    wait_for_some("the connector's bundle without the retired CA", RENEWED_WITHIN, || async {
        (bundle(&connector_bundle) == vec![new_ca.clone()]).then_some(())
    })
    .await;
    after.connect("echo").await.assert_echoes(b"after the connector dropped the old CA").await;

    let audit = broker.audit_events().await;
    let steps: Vec<_> =
        audit.of_kind("ca.rotated").iter().filter_map(|r| r.detail_str("step").map(str::to_owned)).collect();
    assert_eq!(steps, ["prepared", "activated", "retired"], "{}", audit.summary());
    let verify = broker.cli(&["audit", "verify"]).await;
    assert!(verify.success(), "the chain verifies across the rotation: {verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refuses_ca_files_the_database_does_not_record() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").spawn().await;
    // Someone drops in another deployment's CA (same trust domain) as the "previous" CA.
    let other = env.broker().service("echo", "inference").spawn().await;
    std::fs::copy(other.data_dir().join("ca.pem"), broker.data_dir().join("ca-previous.pem")).expect("copy");
    broker.kill().await;
    let start = tokio::time::timeout(Duration::from_secs(30), broker.cli(&["run"])).await.expect("refused at once");
    assert!(!start.success(), "the broker must not start trusting an unrecorded CA");
    assert!(start.stderr.contains("ca-previous.pem is not the CA the database records"), "{start}");
    std::fs::remove_file(broker.data_dir().join("ca-previous.pem")).expect("remove");
    broker.restart().await;

    // Nothing prepared: activate, retire and cancel say so and change nothing.
    for step in ["activate", "retire", "cancel"] {
        let out = ca(&broker, &[step]).await;
        assert_eq!(out.code(), Some(1), "{step}: {out}");
        assert!(out.stderr.contains("refused: no "), "{step}: {out}");
    }
    // A prepared successor can be cancelled; the active CA is untouched.
    let active = broker.ca_der().to_vec();
    ca(&broker, &["prepare"]).await.expect_success();
    ca(&broker, &["cancel"]).await.expect_success();
    assert!(!broker.data_dir().join("ca-next.pem").exists() && !broker.data_dir().join("ca-next.key.enc").exists());
    assert_eq!(broker.ca_der().to_vec(), active);
    broker.restart().await;
}
