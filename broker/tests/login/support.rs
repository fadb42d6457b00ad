//! The sign-in test harness: real OpenID providers (node), a real broker on
//! 127.0.0.1:0, a browser-like HTTP client that keeps cookies and follows
//! redirects by hand, and a software authenticator.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use palisade_broker::audit::{self, EventKind};
use palisade_broker::config::{Config, OidcConfig, Secret};
use palisade_broker::db::Db;
use palisade_broker::init::{InitOptions, init};
use palisade_broker::issuance::ca::read_ca_cert;
use palisade_broker::run::{Ready, run_with_ready};
use palisade_proto::identity::{PeerRole, TrustAnchors, VerifiedPeer, verify_peer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use url::Url;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_rs::prelude::{CreationChallengeResponse, PublicKeyCredential, RequestChallengeResponse};

// ---------------------------------------------------------------- providers

struct Node {
    _stdin: Mutex<ChildStdin>,
    ready: Vec<Vec<String>>,
}

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

/// How long a provider may take to print its ready lines. The misbehaving
/// one makes an RSA key per mode: seconds, more on a loaded machine.
const NODE_READY_WITHIN: Duration = Duration::from_secs(90);

/// Starts `node SCRIPT ARGS` in tests/oidc and collects its ready lines until
/// one contains `done`. The process ends when this test binary does (its
/// stdin closes). A provider that is not ready in time is killed and started
/// once more; a second failure panics with what it wrote on stderr, so a
/// stuck provider fails the tests instead of hanging them.
fn spawn_node(script: &str, args: &[&str], done: &str) -> Node {
    let dir = oidc_dir();
    if Command::new("node").arg("--version").output().is_err() {
        panic!("the sign-in tests need Node.js 20 or later and `node` is not on PATH: run scripts/setup-test-deps");
    }
    if !dir.join("node_modules/oidc-provider").exists() || !dir.join("node_modules/oauth2-mock-server").exists() {
        panic!("{}/node_modules is missing: run scripts/setup-test-deps (npm ci in tests/oidc)", dir.display());
    }
    match try_spawn_node(&dir, script, args, done) {
        Ok(node) => node,
        Err(first) => {
            eprintln!("node {script} was not ready ({first}); starting it once more");
            try_spawn_node(&dir, script, args, done).unwrap_or_else(|second| panic!("node {script}: {second}"))
        }
    }
}

fn try_spawn_node(dir: &std::path::Path, script: &str, args: &[&str], done: &str) -> Result<Node, String> {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let stderr = child.stderr.take().expect("piped stderr");
    let said = Arc::new(Mutex::new(String::new()));
    let said_too = said.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut said = said_too.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if said.len() < 8192 {
                said.push_str(&line);
                said.push('\n');
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let done = done.to_owned();
    std::thread::spawn(move || {
        let mut ready: Vec<Vec<String>> = Vec::new();
        let mut lines = stdout.lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains(" ready ") {
                ready.push(line.split_whitespace().map(str::to_owned).collect());
            }
            if line.contains(&done) {
                let _ = tx.send(Some(ready));
                // Keep draining so the provider never blocks on a full pipe.
                lines.for_each(drop);
                return;
            }
        }
        let _ = tx.send(None);
    });
    let outcome = rx.recv_timeout(NODE_READY_WITHIN);
    let stderr_text = || said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    match outcome {
        Ok(Some(ready)) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            Ok(Node { _stdin: Mutex::new(stdin), ready })
        }
        Ok(None) => {
            let _ = child.wait();
            Err(format!("exited before it was ready; stderr:\n{}", stderr_text()))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("not ready within {NODE_READY_WITHIN:?}; stderr:\n{}", stderr_text()))
        }
    }
}

/// The real provider (oidc-provider), started once per test binary.
pub fn provider() -> &'static str {
    static NODE: OnceLock<Node> = OnceLock::new();
    &NODE.get_or_init(|| spawn_node("provider.mjs", &["--port", "0"], "oidc-provider ready")).ready[0][2]
}

/// The issuer of the misbehaving provider for `mode` (all started once per test binary).
pub fn misbehaving(mode: &str) -> String {
    static NODE: OnceLock<(Node, HashMap<String, String>)> = OnceLock::new();
    let (_, modes) = NODE.get_or_init(|| {
        let node = spawn_node("misbehaving.mjs", &["--all"], "all-ready");
        let modes = node.ready.iter().map(|l| (l[2].clone(), l[3].clone())).collect();
        (node, modes)
    });
    modes.get(mode).unwrap_or_else(|| panic!("no misbehaving mode {mode}")).clone()
}

/// How often the misbehaving provider for `mode` has served its key set (`GET /stats`).
pub async fn jwks_fetches(mode: &str) -> u64 {
    let response = provider_http().get(format!("{}/stats", misbehaving(mode))).send().await.unwrap();
    let stats: Value = response.json().await.unwrap();
    stats["jwks_fetches"].as_u64().unwrap()
}

/// A client for the providers' own test endpoints (plain HTTP on 127.0.0.1).
fn provider_http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}

async fn provider_admin(path: &str, body: Value) {
    let response = provider_http().post(format!("{}{path}", provider())).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "provider admin {path}: {}", response.status());
}

/// Sets a test user's groups at the real provider.
pub async fn set_groups(user: &str, groups: &[&str]) {
    provider_admin(&format!("/admin/users/{user}"), json!({ "groups": groups })).await;
}

// ---------------------------------------------------------------- broker

/// A running broker in its own temporary data directory.
pub struct TestBroker {
    _dir: tempfile::TempDir,
    pub config: Config,
    pub ready: Ready,
    pub db: Db,
    shutdown: CancellationToken,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Which identity provider a test broker uses.
pub enum Idp {
    /// The real provider: alice and bob.
    Real,
    /// A misbehaving mode.
    Misbehaving(&'static str),
    /// None: local accounts only.
    None,
}

impl TestBroker {
    pub async fn start(idp: Idp, tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            data_dir: dir.path().to_owned(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..InitOptions::default()
        };
        init(&opts).await.unwrap();
        let mut config = Config::load(&dir.path().join("broker.toml")).unwrap();
        let client_id = format!("palisade-{}", uuid::Uuid::new_v4());
        let issuer = match idp {
            Idp::Real => Some(provider().to_owned()),
            Idp::Misbehaving(mode) => Some(misbehaving(mode)),
            Idp::None => None,
        };
        config.oidc = issuer.map(|issuer| OidcConfig {
            issuer,
            client_id: client_id.clone(),
            client_secret: Secret::new("test-secret"),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            groups_claim: "groups".into(),
            allowed_email_domains: Vec::new(),
        });
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(run_with_ready(config.clone(), shutdown.clone(), Some(tx)));
        let ready = tokio::time::timeout(Duration::from_secs(20), rx).await.unwrap().unwrap();
        let db = Db::open(&config.database_url()).await.unwrap();
        config.public_addr = Some(ready.quic.to_string());
        let broker = TestBroker { _dir: dir, config, ready, db, shutdown };
        if matches!(idp, Idp::Real) {
            let redirect = broker.url("/login/oidc/callback");
            let body = json!({ "client_id": client_id, "client_secret": "test-secret", "redirect_uris": [redirect] });
            provider_admin("/admin/clients", body).await;
        }
        broker
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.ready.https.port())
    }

    pub fn origin(&self) -> Url {
        Url::parse(&self.url("")).unwrap()
    }

    pub fn trust(&self) -> TrustAnchors {
        let (der, td) = read_ca_cert(&self.config.data_dir).unwrap();
        TrustAnchors::new(td, vec![der]).unwrap()
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.trust())
    }

    /// A browser whose connections come from `addr` (any 127.0.0.0/8 address works on Linux loopback).
    pub fn browser_from(&self, addr: std::net::IpAddr) -> Browser {
        Browser::build(&self.trust(), Some(addr))
    }

    /// `(step, reason)` of every `login.failed`, oldest first.
    pub async fn failures(&self) -> Vec<(String, String)> {
        let rows = audit::query::recent(&self.db, Some(EventKind::LoginFailed), 500).await.unwrap();
        let mut out: Vec<(String, String)> = rows
            .into_iter()
            .map(|r| {
                let d: Value = serde_json::from_str(&r.detail).unwrap();
                (d["step"].as_str().unwrap().to_owned(), d["reason"].as_str().unwrap().to_owned())
            })
            .collect();
        out.reverse();
        out
    }

    /// Waits for the `login.failed` event (recorded just before the answer) and checks its reason.
    pub async fn assert_failed(&self, step: &str, reason: &str) {
        let want = (step.to_owned(), reason.to_owned());
        let failures = self.failures().await;
        assert!(failures.contains(&want), "expected login.failed {want:?}, got {failures:?}");
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<sqlx::Any, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    pub async fn sessions(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM sessions").await
    }

    pub async fn events(&self, kind: EventKind) -> Vec<Value> {
        let rows = audit::query::recent(&self.db, Some(kind), 500).await.unwrap();
        rows.into_iter().map(|r| serde_json::from_str(&r.detail).unwrap()).collect()
    }
}

// ---------------------------------------------------------------- browser

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub url: Url,
    pub location: Option<Url>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A browser: keeps cookies per host:port, follows no redirect by itself.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<HashMap<String, BTreeMap<String, String>>>>,
}

fn host_key(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

impl Browser {
    pub fn new(trust: &TrustAnchors) -> Browser {
        Browser::build(trust, None)
    }

    fn build(trust: &TrustAnchors, local: Option<std::net::IpAddr>) -> Browser {
        let tls = palisade_proto::tls::https_client_config(trust).unwrap();
        let mut http = reqwest::Client::builder();
        if let Some(local) = local {
            // `localhost` could resolve to ::1 first, which an IPv4 source cannot reach.
            http = http.local_address(local).resolve("localhost", std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        let http = http
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .user_agent("palisade-login-tests")
            .build()
            .unwrap();
        Browser { http, jar: Arc::default() }
    }

    /// Another browser with a copy of this one's cookies.
    pub fn fork(&self) -> Browser {
        let jar = self.jar.lock().unwrap().clone();
        Browser { http: self.http.clone(), jar: Arc::new(Mutex::new(jar)) }
    }

    /// A browser with none of this one's cookies.
    pub fn fresh(&self) -> Browser {
        Browser { http: self.http.clone(), jar: Arc::default() }
    }

    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).unwrap();
        self.jar.lock().unwrap().get(&host_key(&url)).and_then(|c| c.get(name).cloned())
    }

    async fn send(&self, url: &str, request: reqwest::RequestBuilder) -> Resp {
        let url = Url::parse(url).unwrap();
        let cookies = self.jar.lock().unwrap().get(&host_key(&url)).cloned().unwrap_or_default();
        let mut request = request;
        if !cookies.is_empty() {
            let header = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            request = request.header("cookie", header);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        {
            let mut jar = self.jar.lock().unwrap();
            let host = jar.entry(host_key(&url)).or_default();
            for value in response.headers().get_all("set-cookie") {
                let text = value.to_str().unwrap();
                let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
                let (name, value) = pair.split_once('=').unwrap();
                if attrs.to_ascii_lowercase().contains("max-age=0") || value.is_empty() {
                    host.remove(name.trim());
                } else {
                    host.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
        let location = response.headers().get("location").map(|l| url.join(l.to_str().unwrap()).unwrap());
        let body = response.text().await.unwrap_or_default();
        Resp { status, url, location, body }
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.send(url, self.http.get(url)).await
    }

    pub async fn post_json(&self, url: &str, body: &impl serde::Serialize) -> Resp {
        self.send(url, self.http.post(url).json(body)).await
    }

    /// `POST` with a `text/plain` body: what a cross-site form can send without a preflight.
    pub async fn post_text(&self, url: &str, body: &str) -> Resp {
        self.send(url, self.http.post(url).header("content-type", "text/plain").body(body.to_owned())).await
    }

    /// `POST` of raw bytes declared as JSON: malformed or oversized bodies `post_json` cannot make.
    pub async fn post_raw_json(&self, url: &str, body: Vec<u8>) -> Resp {
        self.send(url, self.http.post(url).header("content-type", "application/json").body(body)).await
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Resp {
        self.send(url, self.http.post(url).form(form)).await
    }

    /// `POST` of a form from one of the broker's own pages: with the
    /// `Origin` and `Sec-Fetch-Site` a browser sends then.
    pub async fn post_form_same_origin(&self, url: &str, form: &[(&str, &str)]) -> Resp {
        let origin = Url::parse(url).unwrap().origin().ascii_serialization();
        let request = self.http.post(url).header("origin", origin).header("sec-fetch-site", "same-origin").form(form);
        self.send(url, request).await
    }

    pub async fn delete(&self, url: &str) -> Resp {
        self.send(url, self.http.delete(url)).await
    }

    /// Follows redirects from `start`, filling in the provider's login form
    /// as `user`, until a page that is not a redirect (or `/login/mfa`).
    pub async fn sign_in(&self, start: &str, user: &str) -> Resp {
        let mut r = self.get(start).await;
        for _ in 0..20 {
            if let Some(next) = r.location.clone().filter(|_| (300..400).contains(&r.status)) {
                r = self.get(next.as_str()).await;
            } else if r.url.path().starts_with("/interaction/") && r.body.contains("<form") {
                let action = format!("{}/login", r.url.as_str().trim_end_matches('/'));
                r = self.post_form(&action, &[("username", user), ("password", &format!("{user}-pw"))]).await;
            } else {
                return r;
            }
        }
        panic!("too many redirects from {start}");
    }
}

// ---------------------------------------------------------------- WebAuthn

/// A software authenticator (UV claimed, as a platform passkey would).
pub struct Key(pub SoftToken);

impl Key {
    pub fn new() -> Key {
        Key(SoftToken::new(true).unwrap().0)
    }

    /// A clone of this authenticator, sharing its keys and counter state.
    pub fn clone_key(&self) -> Key {
        Key(SoftToken::from_cbor(&self.0.to_cbor().unwrap()).unwrap())
    }

    pub fn register(&mut self, origin: &Url, mut ccr: CreationChallengeResponse) -> Value {
        // SoftToken keeps no resident keys; it stands in for a platform passkey here.
        if let Some(sel) = ccr.public_key.authenticator_selection.as_mut() {
            sel.require_resident_key = false;
            sel.resident_key = None;
        }
        serde_json::to_value(self.0.do_registration(origin.clone(), ccr).unwrap()).unwrap()
    }

    pub fn assert(&mut self, origin: &Url, rcr: RequestChallengeResponse) -> PublicKeyCredential {
        self.0.do_authentication(origin.clone(), rcr).unwrap()
    }
}

/// `POST register/start` → the authenticator → `POST register/finish`.
pub async fn register(browser: &Browser, broker: &TestBroker, key: &mut Key) -> Resp {
    let start = browser.post_json(&broker.url("/login/webauthn/register/start"), &json!({})).await;
    assert_eq!(start.status, 200, "register/start: {}", start.body);
    let ccr: CreationChallengeResponse = serde_json::from_str(&start.body).unwrap();
    let reg = key.register(&broker.origin(), ccr);
    browser.post_json(&broker.url("/login/webauthn/register/finish"), &reg).await
}

/// `POST authenticate/start`, parsed.
pub async fn auth_start(browser: &Browser, broker: &TestBroker) -> RequestChallengeResponse {
    let start = browser.post_json(&broker.url("/login/webauthn/authenticate/start"), &json!({})).await;
    assert_eq!(start.status, 200, "authenticate/start: {}", start.body);
    serde_json::from_str(&start.body).unwrap()
}

pub async fn auth_finish(browser: &Browser, broker: &TestBroker, cred: &PublicKeyCredential) -> Resp {
    browser.post_json(&broker.url("/login/webauthn/authenticate/finish"), cred).await
}

pub async fn authenticate(browser: &Browser, broker: &TestBroker, key: &mut Key) -> Resp {
    let rcr = auth_start(browser, broker).await;
    let cred = key.assert(&broker.origin(), rcr);
    auth_finish(browser, broker, &cred).await
}

/// The `data-mode` of the MFA page.
pub fn mfa_mode(page: &Resp) -> &str {
    assert_eq!(page.status, 200, "{}", page.body);
    let at = page.body.find("data-mode=\"").unwrap_or_else(|| panic!("not the MFA page: {}", page.body)) + 11;
    &page.body[at..at + page.body[at..].find('"').unwrap()]
}

// ---------------------------------------------------------------- CLI

/// What `palisade login` keeps to itself: port, state and PKCE-style verifier.
pub struct Cli {
    pub port: u16,
    pub state: String,
    pub verifier: String,
}

impl Cli {
    pub fn new() -> Cli {
        Cli { port: 45_000, state: "cli-state-1".into(), verifier: format!("verifier-{}", uuid::Uuid::new_v4()) }
    }

    pub fn challenge(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(palisade_proto::enroll::sha256(self.verifier.as_bytes()))
    }

    pub fn start_path(&self) -> String {
        format!("/login/cli?port={}&state={}&challenge={}", self.port, self.state, self.challenge())
    }

    /// The one-time code from a finish answer's loopback redirect.
    pub fn code(&self, finish: &Resp) -> String {
        assert_eq!(finish.status, 200, "{}", finish.body);
        let redirect = Url::parse(finish.json()["redirect"].as_str().unwrap()).unwrap();
        assert_eq!(redirect.host_str(), Some("127.0.0.1"));
        assert_eq!(redirect.port(), Some(self.port));
        assert_eq!(redirect.path(), "/callback");
        let q: HashMap<_, _> = redirect.query_pairs().into_owned().collect();
        assert_eq!(q["state"], self.state);
        q["code"].clone()
    }
}

pub fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap()
}

pub async fn exchange(browser: &Browser, broker: &TestBroker, code: &str, verifier: &str) -> Resp {
    let body = json!({ "code": code, "verifier": verifier, "csr_pem": csr() });
    browser.post_json(&broker.url("/api/v1/login/exchange"), &body).await
}

/// Verifies a person's certificate from an exchange answer.
pub fn person(broker: &TestBroker, answer: &Value) -> VerifiedPeer {
    let chain = palisade_proto::pem::certs(answer["certificate_pem"].as_str().unwrap()).unwrap();
    verify_peer(&chain, &broker.trust(), SystemTime::now(), &[PeerRole::User]).unwrap()
}
