//! `[[audit.sinks]]` through the real `run`: a webhook receiver that is down
//! at start, then comes back, then a broker restart resumes from the cursor.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use palisade_broker::config::Config;
use palisade_broker::db::Db;
use palisade_broker::init::{InitOptions, init};
use palisade_broker::issuance::ca::read_ca_cert;
use palisade_broker::issuance::enroll::{TokenRequest, create_token};
use palisade_broker::run::run_with_ready;
use palisade_proto::identity::PeerRole;
use tokio_util::sync::CancellationToken;

type Received = Arc<Mutex<Vec<i64>>>;

async fn ingest(State(received): State<Received>, body: String) -> StatusCode {
    let seqs = body.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_i64().unwrap());
    received.lock().unwrap().extend(seqs);
    StatusCode::OK
}

async fn head(config: &Config) -> i64 {
    let db = Db::open(&config.database_url()).await.unwrap();
    let seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetch_one(db.pool()).await.unwrap();
    db.close().await;
    seq
}

async fn add_events(config: &Config, prefix: &str, n: usize) {
    let db = Db::open(&config.database_url()).await.unwrap();
    let (ca, _) = read_ca_cert(&config.data_dir).unwrap();
    for i in 0..n {
        let req = TokenRequest {
            role: PeerRole::Machine,
            name: format!("{prefix}{i}"),
            groups: vec![],
            ttl: Duration::from_secs(900),
            created_by: "cli".into(),
        };
        create_token(&db, &ca, &req, SystemTime::now()).await.unwrap();
    }
    db.close().await;
}

async fn delivered_through(received: &Received, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().iter().max().copied().unwrap_or(0) < seq {
        assert!(Instant::now() < deadline, "not delivered through {seq}: {:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_broker(config: &Config) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_ready(config.clone(), shutdown.clone(), Some(tx)));
    tokio::time::timeout(Duration::from_secs(20), rx).await.unwrap().unwrap();
    (shutdown, task)
}

#[tokio::test]
async fn webhook_sink_delivers_across_an_outage_and_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        data_dir: dir.path().to_owned(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..InitOptions::default()
    };
    init(&opts).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let toml = dir.path().join("broker.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(&format!(
        "\n[[audit.sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/in\"\n\
         batch_size = 2\nmax_backoff = \"300ms\"\n"
    ));
    std::fs::write(&toml, text).unwrap();
    let config = Config::load(&toml).unwrap();
    add_events(&config, "a", 3).await;

    let (shutdown, task) = run_broker(&config).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let received = Received::default();
    let app = axum::Router::new().route("/in", axum::routing::post(ingest)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let first = head(&config).await;
    delivered_through(&received, first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let before = received.lock().unwrap().len();
    add_events(&config, "b", 3).await;
    let (shutdown, task) = run_broker(&config).await;
    let last = head(&config).await;
    delivered_through(&received, last).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let seqs = received.lock().unwrap().clone();
    let mut high = 0;
    for &seq in &seqs {
        assert!(seq <= high + 1, "gap before {seq}: {seqs:?}");
        high = high.max(seq);
    }
    assert!(seqs[before] <= first + 1, "resumed from the cursor, not the start: {seqs:?}");
    assert!(seqs[before] > 1, "a restart does not re-send everything: {seqs:?}");
}
