//! A real browser for the UI tests: Debian's `chromium`, headless, driven
//! through `chromedriver` with fantoccini. Each [`Chrome`] has its own
//! chromedriver process on a free port and a fresh profile directory.
//!
//! The broker's certificate comes from its own test CA, so the browser runs
//! with `--ignore-certificate-errors` (Chromium still allows WebAuthn on
//! `localhost`). A WebAuthn virtual authenticator (CTAP2, resident keys,
//! user verification) stands in for a platform passkey: see
//! [`Chrome::add_virtual_authenticator`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Where screenshots go: `<workspace>/target/ui-screenshots/`.
#[must_use]
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

/// A headless Chromium session and its chromedriver.
pub struct Chrome {
    client: Client,
    _driver: Child,
}

/// Whether Debian's chromium and chromedriver are installed.
#[must_use]
pub fn available() -> bool {
    Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists()
}

fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    socket.local_addr().expect("a local address").port()
}

fn capabilities(profile: &Path, user_agent: Option<&str>) -> Capabilities {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--ignore-certificate-errors".into(),
        "--window-size=1280,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    if let Some(ua) = user_agent {
        args.push(format!("--user-agent={ua}"));
    }
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "unhandledPromptBehavior": "ignore",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
    });
    match caps {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

impl Chrome {
    /// Starts chromedriver and a browser with a fresh profile under `dir`.
    ///
    /// # Panics
    /// If chromium or chromedriver is missing (run `scripts/setup-test-deps`) or does not start.
    pub async fn start(dir: &Path, user_agent: Option<&str>) -> Chrome {
        assert!(available(), "chromium and chromedriver are missing: run scripts/setup-test-deps");
        let port = free_port();
        let profile = dir.join("chrome-profile");
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("create the chromedriver log");
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let caps = capabilities(&profile, user_agent);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new()).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not start a WebDriver session at {url}: {e}"),
            }
        };
        Chrome { client, _driver: driver }
    }

    /// The fantoccini client, for anything this wrapper does not cover.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Adds a CTAP2 virtual authenticator that holds resident keys, verifies
    /// the user and consents to every ceremony. Returns its id.
    pub async fn add_virtual_authenticator(&self) -> String {
        let answer = self.client.issue_cmd(AddAuthenticator).await.expect("add a virtual authenticator");
        answer
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| answer["authenticatorId"].as_str().unwrap_or("").to_owned())
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.expect("the current URL")
    }

    /// Waits (up to 15 s) for an element matching `css`.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let wait = self.client.wait().at_most(Duration::from_secs(15));
        match wait.for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => {
                let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let source = self.client.source().await.unwrap_or_default();
                panic!("no element {css} on {url}: {e}\n{source}")
            }
        }
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client.find_all(Locator::Css(css)).await.expect("find elements")
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks the element matching `css` (a submit button or a link) and
    /// waits until the next document has loaded, so later reads never see
    /// the page the click left.
    pub async fn click_and_load(&self, css: &str) {
        let mark = "window.__palisadeLeft = true; return true;";
        self.client.execute(mark, vec![]).await.expect("mark the current document");
        self.click(css).await;
        self.wait_for_new_document(css).await;
    }

    /// Presses Enter on the element matching `css` (a link or a button:
    /// what a keyboard user does) and waits until the next document has
    /// loaded, as [`Chrome::click_and_load`].
    pub async fn enter_and_load(&self, css: &str) {
        let mark = "window.__palisadeLeft = true; return true;";
        self.client.execute(mark, vec![]).await.expect("mark the current document");
        let element = self.find(css).await;
        element.send_keys("\u{e007}").await.unwrap_or_else(|e| panic!("press Enter on {css}: {e}"));
        self.wait_for_new_document(css).await;
    }

    async fn wait_for_new_document(&self, css: &str) {
        let loaded = "return window.__palisadeLeft === undefined && document.readyState === 'complete';";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Value::Bool(true)) = self.client.execute(loaded, vec![]).await {
                return;
            }
            let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            assert!(tokio::time::Instant::now() < deadline, "clicking {css} on {url} loaded no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the value of the input or textarea matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// Waits (up to 15 s) until the URL's path is `path`.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.url().await;
            if url.path() == path {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "still at {url}, waiting for {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of an open alert/confirm/prompt dialog, if one is open.
    pub async fn dialog(&self) -> Option<String> {
        self.client.get_alert_text().await.ok()
    }

    /// A cookie's value (HttpOnly ones too: WebDriver sees them).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client.get_named_cookie(name).await.ok().map(|c| c.value().to_owned())
    }

    /// Saves a PNG of the viewport as `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("take a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write a screenshot");
        path
    }

    /// Ends the WebDriver session (the browser exits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// `POST /session/{id}/webauthn/authenticator` (WebAuthn Level 2, §11.3).
#[derive(Debug)]
struct AddAuthenticator;

impl WebDriverCompatibleCommand for AddAuthenticator {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/webauthn/authenticator", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        });
        (reqwest::Method::POST, Some(body.to_string()))
    }
}
