//! A real OpenID provider: `tests/oidc/provider.mjs`, the certified
//! `oidc-provider` package on node, started once per test binary on
//! 127.0.0.1 and shared by every test in it.
//!
//! Its people (password = name + `-pw`): `alice` in `ml-team`, `bob` in no
//! group. Every broker registers its own client (its callback URL has the
//! broker's port), so tests never share a client.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use serde_json::json;

/// How long node may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared provider. Cheap to clone: the node process lives as long as
/// the test binary (it exits when its stdin closes, that is, with us).
#[derive(Clone, Debug)]
pub struct OidcProvider {
    issuer: String,
}

/// The node process, kept for the life of the test binary.
struct Node {
    issuer: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

impl OidcProvider {
    /// The provider, started on first use.
    ///
    /// # Panics
    /// If `node` or `tests/oidc/node_modules` is missing (run
    /// `scripts/setup-test-deps`), or the provider does not start.
    pub async fn shared() -> OidcProvider {
        static NODE: OnceLock<Node> = OnceLock::new();
        let issuer = tokio::task::spawn_blocking(|| NODE.get_or_init(start).issuer.clone())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        OidcProvider { issuer }
    }

    /// `http://127.0.0.1:PORT`, exactly as the provider spells its issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Registers a confidential client (`client_secret_basic`, PKCE) that may
    /// redirect only to `redirect_uri`.
    pub async fn register_client(&self, client_id: &str, client_secret: &str, redirect_uri: &str) {
        let body = json!({ "client_id": client_id, "client_secret": client_secret, "redirect_uris": [redirect_uri] });
        let url = format!("{}/admin/clients", self.issuer);
        let response = plain_http().post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(response.status().is_success(), "POST {url}: {}", response.status());
    }

    /// Sets `user`'s groups at the provider, creating the person (password
    /// [`OidcProvider::password`]) if the provider does not know them yet.
    /// Names are lowercase ASCII letters.
    pub async fn set_user(&self, user: &str, groups: &[&str]) {
        let url = format!("{}/admin/users/{user}", self.issuer);
        let body = json!({ "groups": groups });
        let response = plain_http().post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(response.status().is_success(), "POST {url}: {}", response.status());
    }

    /// Like [`OidcProvider::set_user`], and gives the person `display_name`
    /// as their `name` claim (any text: tests use markup).
    pub async fn set_user_named(&self, user: &str, groups: &[&str], display_name: &str) {
        let url = format!("{}/admin/users/{user}", self.issuer);
        let body = json!({ "groups": groups, "name": display_name });
        let response = plain_http().post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(response.status().is_success(), "POST {url}: {}", response.status());
    }

    /// A test person's password at the provider.
    #[must_use]
    pub fn password(user: &str) -> String {
        format!("{user}-pw")
    }
}

/// An HTTP client for the provider's admin API (plain HTTP on 127.0.0.1).
fn plain_http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("an HTTP client")
}

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Starts `node provider.mjs --port 0` and reads its issuer from the ready line.
fn start() -> Node {
    let dir = oidc_dir();
    let node_runs = Command::new("node").arg("--version").output().is_ok_and(|out| out.status.success());
    assert!(
        node_runs,
        "the sign-in tests need Node.js 20 or later and `node` is not on PATH: run scripts/setup-test-deps"
    );
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "{} is missing: run scripts/setup-test-deps (npm ci in tests/oidc)",
        dir.join("node_modules").display()
    );
    match try_start(&dir) {
        Ok(node) => node,
        Err(first) => {
            eprintln!("{first}; starting the provider once more");
            try_start(&dir).unwrap_or_else(|second| panic!("{first}; and again: {second}"))
        }
    }
}

fn try_start(dir: &std::path::Path) -> Result<Node, String> {
    let mut child = Command::new("node")
        .args(["provider.mjs", "--port", "0"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node provider.mjs in {}: {e}", dir.display()));
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines, ready) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining after the ready line so the provider never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = lines.send(line);
        }
    });
    let issuer = loop {
        match ready.recv_timeout(START_TIMEOUT) {
            Ok(line) => {
                if let Some(issuer) = line.strip_prefix("oidc-provider ready ") {
                    break issuer.trim().to_owned();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("node provider.mjs printed no ready line within {START_TIMEOUT:?}"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("node provider.mjs exited before it was ready ({:?})", child.wait()));
            }
        }
    };
    Ok(Node { issuer, _child: Mutex::new(child), _stdin: Mutex::new(stdin) })
}
