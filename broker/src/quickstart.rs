//! `palisade-broker quickstart`: a working setup on one machine.
//!
//! Initializes the data directory if needed (with the service `llm-demo` in
//! segment `inference`), starts a small OpenAI-style demo server on
//! 127.0.0.1, runs the broker, enrolls and runs a connector in this process,
//! creates a machine token for group `ml-agents`, and prints what to run next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_proto::identity::PeerRole;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServiceConfig};
use crate::init::{CONFIG_FILE, InitOptions};
use crate::issuance::enroll::{EnrollError, TokenRequest, create_token};
use crate::issuance::keystore::KEK_ENV;
use crate::run::Ready;

const SERVICE: &str = "llm-demo";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Data directory, created if missing.
    pub data_dir: PathBuf,
    /// HTTPS and QUIC address of the broker.
    pub listen: SocketAddr,
}

type Tasks = JoinSet<anyhow::Result<&'static str>>;

/// Runs everything until `shutdown`, or until a part fails.
///
/// # Errors
/// A part that could not start (port in use, inconsistent data directory, …) or failed.
pub async fn quickstart(opts: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = prepare(&opts).await?;
    let mut tasks = Tasks::new();
    let demo = start_demo(&mut tasks, shutdown.clone()).await?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let (c, s) = (config.clone(), shutdown.clone());
    tasks.spawn(async move { crate::run::run_with_ready(c, s, Some(ready_tx)).await.map(|()| "broker") });
    let ready = wait(&mut tasks, ready_rx, "the broker").await?;
    let connector = start_connector(&mut tasks, &config, &ready, demo, shutdown.clone()).await?;
    let token = machine_token(&config).await?;
    print_next_steps(&config, &opts.data_dir, &ready, demo, &connector, &token);
    supervise(tasks, shutdown).await
}

async fn prepare(opts: &Options) -> anyhow::Result<Config> {
    let service = ServiceConfig {
        name: SERVICE.parse()?,
        segment: "inference".into(),
        protocol: "http".into(),
        labels: vec!["demo".into()],
    };
    let init_opts = InitOptions {
        data_dir: opts.data_dir.clone(),
        listen: Some(opts.listen),
        services: vec![service],
        kek_env: std::env::var(KEK_ENV).ok(),
        ..InitOptions::default()
    };
    let report = crate::init::init(&init_opts).await.context("initializing the data directory")?;
    if report.kek_beside_key {
        eprintln!(
            "note: the CA key-encryption key is in {}/kek, beside the encrypted CA key (fine for a demo)",
            opts.data_dir.display()
        );
    }
    let config = Config::load(&opts.data_dir.join(CONFIG_FILE))?;
    if !config.services.iter().any(|s| s.name.as_str() == SERVICE) {
        bail!(
            "{} has no [[services]] entry named {SERVICE}; add one or use a new --data-dir",
            opts.data_dir.join(CONFIG_FILE).display()
        );
    }
    Ok(config)
}

async fn wait<T>(tasks: &mut Tasks, ready: oneshot::Receiver<T>, what: &str) -> anyhow::Result<T> {
    tokio::select! {
        got = tokio::time::timeout(READY_TIMEOUT, ready) => match got {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => bail!("{what} did not start within {READY_TIMEOUT:?}"),
        },
        Some(ended) = tasks.join_next() => match ended {
            Ok(Err(e)) => Err(e.context(format!("{what} failed to start"))),
            Ok(Ok(name)) => bail!("{name} stopped while {what} was starting"),
            Err(e) => bail!("{what} panicked: {e}"),
        },
    }
}

async fn supervise(mut tasks: Tasks, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut failure = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        Some(ended) = tasks.join_next(), if !shutdown.is_cancelled() => {
            failure = match ended {
                Ok(Ok(name)) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
                Ok(Err(e)) => Some(e),
                Err(e) => Some(anyhow::anyhow!("a task panicked: {e}")),
            };
            shutdown.cancel();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), async { while tasks.join_next().await.is_some() {} }).await;
    failure.map_or(Ok(()), Err)
}

async fn start_demo(tasks: &mut Tasks, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("demo model server")?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        axum::serve(listener, demo_router()).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        Ok("demo model server")
    });
    Ok(addr)
}

/// The demo upstream: a tiny OpenAI-style API with canned answers.
pub fn demo_router() -> Router {
    Router::new()
        .route("/", get(|| async { "Palisade demo model server. Try GET /v1/models or POST /v1/chat/completions.\n" }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": "palisade-demo-1", "object": "model", "created": unix_now(), "owned_by": "palisade" }]
    }))
}

async fn chat(body: Option<Json<Value>>) -> Json<Value> {
    let model =
        body.as_ref().and_then(|b| b.get("model")).and_then(Value::as_str).unwrap_or("palisade-demo-1").to_owned();
    let content = "Hello from behind Palisade! This answer came through an identity-checked, policy-checked tunnel.";
    Json(json!({
        "id": format!("chatcmpl-demo-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 0, "completion_tokens": 18, "total_tokens": 18 }
    }))
}

async fn start_connector(
    tasks: &mut Tasks,
    config: &Config,
    ready: &Ready,
    demo: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<String> {
    let state_dir = config.data_dir.join("connector");
    let broker_url = format!("https://{}", ready.https);
    let name = if state_dir.join("identity.json").exists() {
        "quickstart-connector (enrolled before)".to_owned()
    } else {
        let (name, token) = token_with_free_name(config, PeerRole::Connector, "quickstart-connector", vec![]).await?;
        palisade_connector::enroll(&broker_url, &token, &state_dir, false).await.context("enrolling the connector")?;
        name
    };
    let connector = palisade_connector::ConnectorConfig {
        state_dir,
        broker: Some(ready.quic.to_string()),
        brokers: Vec::new(),
        connect_timeout: Duration::from_secs(10),
        services: vec![palisade_connector::ServiceConfig { name: SERVICE.parse()?, upstream: demo.to_string() }],
        policy_dir: None,
        bundle_max_age: palisade_connector::DEFAULT_BUNDLE_MAX_AGE,
        metrics_listen: None,
        log_format: palisade_telemetry::LogFormat::Text,
        // The quickstart's one runtime is the broker's.
        worker_threads: None,
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    tasks.spawn(async move {
        palisade_connector::run_with_ready(connector, shutdown, Some(ready_tx)).await?;
        Ok("connector")
    });
    wait(tasks, ready_rx, "the connector").await?;
    Ok(name)
}

async fn machine_token(config: &Config) -> anyhow::Result<String> {
    let (_, token) =
        token_with_free_name(config, PeerRole::Machine, "quickstart-agent", vec!["ml-agents".into()]).await?;
    Ok(token)
}

async fn token_with_free_name(
    config: &Config,
    role: PeerRole,
    base: &str,
    groups: Vec<String>,
) -> anyhow::Result<(String, String)> {
    let db = config.open_db().await?;
    let (ca_der, _) = crate::issuance::ca::read_ca_cert(&config.data_dir)?;
    let mut name = base.to_owned();
    let result = loop {
        let request = TokenRequest {
            role,
            name: name.clone(),
            groups: groups.clone(),
            ttl: Duration::from_secs(3600),
            created_by: "quickstart".into(),
        };
        match create_token(&db, &ca_der, &request, SystemTime::now()).await {
            Ok(token) => break Ok((name, token.expose())),
            Err(EnrollError::NameTaken { .. }) => {
                name = format!("{base}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
            }
            Err(e) => break Err(e.into()),
        }
    };
    db.close().await;
    result
}

/// How the README runs the client and the broker from a source checkout.
const CLIENT: &str = "cargo run --release -p palisade-client --";
const BROKER: &str = "cargo run --release -p palisade-broker --";

fn print_next_steps(config: &Config, shown_dir: &Path, ready: &Ready, demo: SocketAddr, connector: &str, token: &str) {
    let dir = config.data_dir.display();
    // The start-up lines first, then the block people read.
    palisade_telemetry::logging::flush();
    println!();
    println!("Palisade quickstart is running.");
    println!("  broker     https://{} (QUIC on UDP {}), data in {dir}", ready.https, ready.quic);
    println!("  connector  {connector}, serving {SERVICE} -> demo model server at http://{demo}");
    println!("  policy     {dir}/policies/ (default: group ml-agents may reach segment inference)");
    println!();
    println!("In another terminal, in this directory, enroll as a machine in group ml-agents (the token is");
    println!("valid for 1 hour, once) and open a tunnel to {SERVICE} on local port 9000:");
    println!();
    println!("  {CLIENT} enroll --broker https://{} --token {token}", ready.https);
    println!("  {CLIENT} connect {SERVICE} --listen 127.0.0.1:9000");
    println!();
    println!("In a third terminal, call the model through the tunnel, then find the call in the audit trail:");
    println!();
    println!("  curl http://127.0.0.1:9000/v1/models");
    println!("  {BROKER} audit query --data-dir {} --service {SERVICE}", shown_dir.display());
    println!();
    println!("(With the programs installed, `palisade` and `palisade-broker` stand for the `cargo run` commands.)");
    println!("Press Ctrl-C to stop.");
}
