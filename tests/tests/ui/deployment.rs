//! The deployment every step of the UI test shares: a broker that signs
//! people in at the real provider, with `bob@example.com` as console admin;
//! a connector serving `echo`; a machine and a person (alice, through the
//! CLI) with live tunnels, and a second machine (`batch-1`, in a group no
//! policy names yet); chromium with a virtual authenticator and a user
//! agent carrying `</script>`; and bob signed in through that browser.

use std::time::Duration;

use palisade_tests::webdriver::Chrome;
use palisade_tests::{
    ALLOW_ML_AGENTS, ALLOW_ML_TEAM_WITH_MFA, Agent, Broker, Connector, EchoUpstream, Forward, OidcProvider, Person,
    TestEnv,
};
use rustls_pki_types::CertificateDer;

/// Hostile text in the browser's user agent (rendered in session lists and the login trail).
pub(crate) const HOSTILE_USER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) palisade-ui-test </script><img src=x onerror=alert(1)>";

pub(crate) struct Ui {
    pub(crate) env: TestEnv,
    pub(crate) broker: Broker,
    pub(crate) chrome: Chrome,
    pub(crate) _upstream: EchoUpstream,
    pub(crate) _connector: Connector,
    pub(crate) agent: Agent,
    pub(crate) agent_forward: Forward,
    pub(crate) batch: Agent,
    pub(crate) alice: Person,
    pub(crate) alice_forward: Forward,
}

impl Ui {
    pub(crate) async fn start() -> Ui {
        let env = TestEnv::new();
        let provider = OidcProvider::shared().await;
        set_groups(&provider, "bob", &["ml-team"]).await;
        let mut broker = env
            .broker()
            .oidc(&provider)
            .service("echo", "inference")
            .policy("agents.cedar", ALLOW_ML_AGENTS)
            .policy("people.cedar", ALLOW_ML_TEAM_WITH_MFA)
            .spawn()
            .await;
        make_admin(&broker, "bob@example.com");
        broker.restart().await;

        let upstream = EchoUpstream::spawn().await;
        let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
        let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
        let agent_forward = agent.connect("echo").await;
        agent_forward.assert_echoes(b"agent before").await;
        let batch = broker.machine("batch-1").group("batch-agents").enroll().await;
        let alice = broker.person("alice").login().await;
        let alice_forward = alice.connect("echo").await;
        alice_forward.assert_echoes(b"alice before").await;

        let chrome = Chrome::start(&env.fresh_dir("chrome"), Some(HOSTILE_USER_AGENT)).await;
        chrome.add_virtual_authenticator().await;
        Ui {
            env,
            broker,
            chrome,
            _upstream: upstream,
            _connector: connector,
            agent,
            agent_forward,
            batch,
            alice,
            alice_forward,
        }
    }

    /// `https://localhost:PORT<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.public_url().trim_end_matches('/'))
    }

    /// The broker's origin, as a browser sends it in `Origin`.
    pub(crate) fn origin(&self) -> String {
        self.broker.public_url().trim_end_matches('/').to_owned()
    }

    /// An HTTP client that trusts the broker's CA, keeps no cookies and follows no redirects.
    pub(crate) fn http(&self) -> reqwest::Client {
        http_client(&self.broker.ca_der())
    }

    /// The browser's session cookie as a `Cookie` header value.
    pub(crate) async fn session_cookie(&self) -> String {
        let value = self.chrome.cookie("__Host-palisade-session").await.expect("the browser has a session cookie");
        format!("__Host-palisade-session={value}")
    }

    /// Makes bob's last passkey proof an hour old, so the next admin write needs a step-up.
    pub(crate) async fn age_passkey_proof(&self) {
        let db = palisade_tests::open_db(self.broker.database_url()).await;
        sqlx::query(
            "UPDATE sessions SET mfa_at = mfa_at - 3600 \
             WHERE identity_id = (SELECT identity_id FROM users WHERE email = 'bob@example.com')",
        )
        .execute(&db)
        .await
        .unwrap();
    }

    /// Confirms with the passkey on the step-up page the browser is on, and
    /// waits to be back at `return_to`.
    pub(crate) async fn step_up(&self, return_to: &str) {
        self.chrome.wait_for_path("/console/step-up").await;
        self.chrome.click_and_load("#step-up").await;
        self.chrome.wait_for_path("/login/mfa").await;
        self.chrome.click("#go").await;
        self.chrome.wait_for_path(return_to).await;
    }

    /// Clicks an admin write's button on the page at `path`; if the passkey
    /// proof went stale meanwhile, steps up and clicks it again.
    pub(crate) async fn admin_write(&self, css: &str, path: &str) {
        self.chrome.click_and_load(css).await;
        if self.chrome.url().await.path() == "/console/step-up" {
            self.step_up(path).await;
            self.chrome.click_and_load(css).await;
        }
    }

    /// The identity id of the machine named `name`.
    pub(crate) async fn machine_id(&self, name: &str) -> String {
        let db = palisade_tests::open_db(self.broker.database_url()).await;
        let sql = "SELECT id FROM identities WHERE role = 'machine' AND name = $1";
        sqlx::query_scalar(sql).bind(name).fetch_one(&db).await.unwrap()
    }

    /// The identity id of the person with this email.
    pub(crate) async fn user_id(&self, email: &str) -> String {
        let db = palisade_tests::open_db(self.broker.database_url()).await;
        let sql = "SELECT identity_id FROM users WHERE email = $1";
        sqlx::query_scalar(sql).bind(email).fetch_one(&db).await.unwrap()
    }

    pub(crate) async fn finish(self) {
        self.chrome.close().await;
        drop(self.env);
    }
}

pub(crate) fn http_client(ca: &CertificateDer<'static>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("the broker's CA is usable");
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Changes a test person's groups at the provider (its admin API).
async fn set_groups(provider: &OidcProvider, user: &str, groups: &[&str]) {
    let url = format!("{}/admin/users/{user}", provider.issuer());
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let http = reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("an HTTP client");
    let response = http.post(&url).json(&serde_json::json!({ "groups": groups })).send().await.expect("the provider");
    assert!(response.status().is_success(), "POST {url}: {}", response.status());
}

/// Adds `[console] admin_users = [email]` to the broker's configuration.
fn make_admin(broker: &Broker, email: &str) {
    let path = broker.data_dir().join("broker.toml");
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&path).expect("read broker.toml")).unwrap();
    let mut console = toml::Table::new();
    console.insert("admin_users".into(), toml::Value::Array(vec![email.into()]));
    config.insert("console".into(), toml::Value::Table(console));
    std::fs::write(&path, toml::to_string(&config).unwrap()).expect("write broker.toml");
}
