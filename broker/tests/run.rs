//! The running broker: HTTPS enrollment end to end, the admin socket, shutdown.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_broker::admin::{self, AdminError, AdminRequest};
use palisade_broker::audit::{self, EventKind};
use palisade_broker::config::Config;
use palisade_broker::db::Db;
use palisade_broker::init::{InitOptions, init};
use palisade_broker::issuance::ca::read_ca_cert;
use palisade_broker::issuance::enroll::{TokenRequest, create_token};
use palisade_broker::run::{Ready, run_with_ready};
use palisade_proto::enroll::{ApiError, EnrollRequest, EnrollResponse, EnrollmentToken};
use palisade_proto::identity::{PeerRole, TrustAnchors, verify_peer};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use tokio_util::sync::CancellationToken;

struct Running {
    _dir: tempfile::TempDir,
    config: Config,
    ready: Ready,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        data_dir: dir.path().to_owned(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..InitOptions::default()
    };
    init(&opts).await.unwrap();
    let config = Config::load(&dir.path().join("broker.toml")).unwrap();
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_ready(config.clone(), shutdown.clone(), Some(tx)));
    let ready = tokio::time::timeout(Duration::from_secs(20), rx).await.unwrap().unwrap();
    Running { _dir: dir, config, ready, shutdown, task }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.ready.https.port())
    }

    async fn token(&self, name: &str) -> String {
        let db = Db::open(&self.config.database_url()).await.unwrap();
        let (ca, _) = read_ca_cert(&self.config.data_dir).unwrap();
        let req = TokenRequest {
            role: PeerRole::Machine,
            name: name.into(),
            groups: vec!["ml-agents".into()],
            ttl: Duration::from_secs(900),
            created_by: "cli".into(),
        };
        let token = create_token(&db, &ca, &req, SystemTime::now()).await.unwrap().expose();
        db.close().await;
        token
    }

    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task).await.unwrap().unwrap().unwrap();
        assert!(!self.config.data_dir.join("admin.sock").exists());
        self._dir
    }
}

fn trust(data_dir: &Path) -> TrustAnchors {
    let (der, td) = read_ca_cert(data_dir).unwrap();
    TrustAnchors::new(td, vec![der]).unwrap()
}

fn client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(10)).build().unwrap()
}

fn csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
    CertificateParams::default().serialize_request(&KeyPair::generate_for(alg).unwrap()).unwrap().pem().unwrap()
}

async fn enroll(http: &reqwest::Client, url: &str, token: &str, csr_pem: String) -> (u16, String) {
    let body = EnrollRequest { token: token.to_owned(), csr_pem };
    let response = http.post(url).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_machine_enrolls_over_https_with_only_its_token() {
    let broker = start().await;
    let token = broker.token("agent-1").await;
    let pin = token.parse::<EnrollmentToken>().unwrap().ca_pin();
    let http = client(palisade_proto::tls::pinned_client_config(pin).unwrap());

    let healthz = http.get(broker.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.headers()["x-content-type-options"], "nosniff");
    assert_eq!(healthz.text().await.unwrap(), "ok");

    let (status, body) = enroll(&http, &broker.url("/api/v1/enroll"), &token, csr(&PKCS_ECDSA_P256_SHA256)).await;
    assert_eq!(status, 200, "{body}");
    let enrolled: EnrollResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(enrolled.quic_addr, broker.ready.quic.to_string());
    let leaf = palisade_proto::pem::certs(&enrolled.certificate_pem).unwrap();
    let trust = trust(&broker.config.data_dir);
    let peer = verify_peer(&leaf, &trust, SystemTime::now(), &[PeerRole::Machine]).unwrap();
    assert_eq!(peer.id().uri(), enrolled.identity);
    assert_eq!(peer.name(), "agent-1");

    let (status, body) = enroll(&http, &broker.url("/api/v1/enroll"), &token, csr(&PKCS_ECDSA_P256_SHA256)).await;
    assert_eq!(status, 403);
    let err: ApiError = serde_json::from_str(&body).unwrap();
    assert_eq!(err.message, "enrollment token already used or expired: ask an admin for a new one");
    let db = Db::open(&broker.config.database_url()).await.unwrap();
    let redeemed = audit::query::recent(&db, Some(EventKind::TokenRedeemed), 1).await.unwrap();
    assert!(redeemed[0].detail.contains("\"source\":\"127.0.0.1:"), "{}", redeemed[0].detail);
    db.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn enrollment_errors_have_the_right_status() {
    let broker = start().await;
    let http = client(palisade_proto::tls::https_client_config(&trust(&broker.config.data_dir)).unwrap());
    let url = broker.url("/api/v1/enroll");
    let bundle = http.get(broker.url("/api/v1/trust-bundle")).send().await.unwrap().text().await.unwrap();
    assert_eq!(bundle, std::fs::read_to_string(broker.config.data_dir.join("ca.pem")).unwrap());

    let token = broker.token("agent-2").await;
    let (status, body) = enroll(&http, &url, &token, csr(&PKCS_ECDSA_P384_SHA384)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("key type not allowed"), "{body}");
    assert_eq!(enroll(&http, &url, "pal1.x.y", csr(&PKCS_ECDSA_P256_SHA256)).await.0, 401);
    let (status, _) = enroll(&http, &url, &token, "x".repeat(70 * 1024)).await;
    assert_eq!(status, 413);
    let not_json = http.post(&url).body("token=x").send().await.unwrap();
    assert_eq!(not_json.status(), 415);
    let bad_json =
        http.post(&url).header("content-type", "application/json").body("{\"token\":1}").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_eq!(enroll(&http, &url, &token, csr(&PKCS_ECDSA_P256_SHA256)).await.0, 200);
    broker.stop().await;
}

#[tokio::test]
async fn the_admin_socket_reloads_policy_and_refuses_a_broken_one() {
    let broker = start().await;
    let dir = &broker.config.data_dir.clone();
    let first = admin::request(dir, &AdminRequest::PolicyReload).await.unwrap();
    assert!(first.ok);
    let v1 = first.version.unwrap();
    std::fs::write(dir.join("policies/broken.cedar"), "permit (principal, action, resource) when { nope };\n").unwrap();
    let refused = admin::request(dir, &AdminRequest::PolicyReload).await.unwrap();
    assert!(!refused.ok);
    assert!(refused.error.unwrap().contains("broken.cedar"));
    std::fs::remove_file(dir.join("policies/broken.cedar")).unwrap();
    let again = admin::request(dir, &AdminRequest::PolicyReload).await.unwrap();
    assert_eq!(again.version, Some(v1), "the refused set changed nothing; the unchanged directory imports nothing");
    let mut edited = std::fs::read_to_string(dir.join("policies/default.cedar")).unwrap();
    edited.push_str("\n// edited\n");
    std::fs::write(dir.join("policies/default.cedar"), edited).unwrap();
    let imported = admin::request(dir, &AdminRequest::PolicyReload).await.unwrap();
    assert!(imported.ok && imported.version.unwrap() > v1, "an edited directory becomes a new store version");
    assert!(admin::request(dir, &AdminRequest::Ping).await.unwrap().ok);
    let _keep = broker.stop().await;
    let gone = admin::request(dir, &AdminRequest::Ping).await;
    assert!(matches!(gone, Err(AdminError::NotRunning { .. })));
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let broker = start().await;
    let err = run_with_ready(broker.config.clone(), CancellationToken::new(), None).await.unwrap_err();
    assert!(format!("{err:#}").contains("another broker is already running"), "{err:#}");
    broker.stop().await;
}

#[tokio::test]
async fn the_server_certificate_is_reissued_when_a_name_is_added() {
    let broker = start().await;
    let dir = broker.config.data_dir.clone();
    let before = std::fs::read(dir.join("server.pem")).unwrap();
    let mut config = broker.config.clone();
    let _keep = broker.stop().await;
    config.server_names.push("broker.internal".into());
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_ready(config, shutdown.clone(), Some(tx)));
    rx.await.unwrap();
    let after = std::fs::read(dir.join("server.pem")).unwrap();
    assert_ne!(before, after);
    let chain = palisade_proto::pem::certs(&String::from_utf8(after).unwrap()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("broker.internal").unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(chain[1].clone()).unwrap();
            roots
        }),
        palisade_proto::tls::crypto_provider(),
    )
    .build()
    .unwrap();
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &chain[0],
        &[],
        &name,
        &[],
        rustls_pki_types::UnixTime::now(),
    )
    .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
