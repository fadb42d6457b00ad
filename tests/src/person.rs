//! People: `palisade login --no-browser` in a fresh home, with the headless
//! [`Browser`] signing in at the real provider and the [`Passkey`] as the
//! second factor, then everything an enrolled [`Agent`] does.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::broker::BrokerInfo;
use crate::browser::{Browser, Passkey};
use crate::client::Agent;
use crate::process::{Proc, command};

const BIN: &str = "palisade";
/// The line `palisade login` prints before the URL to open.
const URL_PREFIX: &str = "open this URL to sign in: ";
/// The line `palisade login --device` prints with the approval page's address.
const DEVICE_PREFIX: &str = "(or open ";

/// Describes a person before they sign in.
#[must_use = "call .login().await"]
pub struct PersonBuilder {
    broker: Arc<BrokerInfo>,
    name: String,
}

impl PersonBuilder {
    pub(crate) fn new(broker: Arc<BrokerInfo>, name: &str) -> Self {
        Self { broker, name: name.to_owned() }
    }

    /// Runs `palisade login --broker … --ca-file … --no-browser` in a fresh
    /// home and plays the browser: the provider's form as this person, a new
    /// passkey registered at the broker, then the CLI's loopback callback.
    /// Returns once `palisade login` has stored the certificate and exited.
    pub async fn login(self) -> Person {
        let home = self.broker.env.fresh_dir(&format!("home-{}", self.name));
        let browser = Browser::new(&self.broker.ca_der());
        let mut passkey = Passkey::new();

        let mut cmd = command(BIN);
        cmd.arg("--home").arg(&home).args(["login", "--no-browser", "--broker", &self.broker.public_url()]);
        cmd.arg("--ca-file").arg(self.broker.data_dir.join("ca.pem"));
        let mut login = Proc::spawn(&format!("login {}", self.name), cmd, self.broker.env.logs());
        let line = login.wait_for_line("the sign-in URL", |l| l.starts_with(URL_PREFIX)).await;
        let url = line.strip_prefix(URL_PREFIX).expect("the prefix matched").trim().to_owned();

        let mfa = browser.sign_in(&url, &self.name).await;
        let callback = browser.second_factor(&mfa, &mut passkey).await;
        assert_eq!(callback.host_str(), Some("127.0.0.1"), "the broker must send the browser to the CLI's loopback");
        let answered = browser.get(&callback).await;
        assert_eq!(answered.status, 200, "the CLI's loopback answered: {}", answered.body);

        let status = login.wait().await;
        assert!(status.success(), "palisade login failed ({status}):\n{}", login.stderr());
        let line = login.wait_for_line("`Session ID ends …`", |l| l.starts_with("Session ")).await;
        let session_id = line.split_whitespace().nth(1).expect("a session id").to_owned();
        let agent = Agent::at(self.broker, home, &self.name);
        Person { agent, session_id }
    }

    /// Runs `palisade login --device --broker … --ca-file …` in a fresh home
    /// and returns once it prints the approval page's address; someone
    /// signed in as this person approves it in a browser, then
    /// [`DeviceLogin::finish`] waits for the CLI.
    pub async fn start_device_login(self) -> DeviceLogin {
        let home = self.broker.env.fresh_dir(&format!("home-{}-device", self.name));
        let mut cmd = command(BIN);
        cmd.arg("--home").arg(&home).args(["login", "--device", "--broker", &self.broker.public_url()]);
        cmd.arg("--ca-file").arg(self.broker.data_dir.join("ca.pem"));
        let login = Proc::spawn(&format!("login --device {}", self.name), cmd, self.broker.env.logs());
        let line = login.wait_for_line("the approval URL", |l| l.starts_with(DEVICE_PREFIX)).await;
        let url = line.strip_prefix(DEVICE_PREFIX).and_then(|l| l.strip_suffix(')')).expect("(or open URL)").to_owned();
        DeviceLogin { broker: self.broker, name: self.name, home, login, url }
    }
}

/// `palisade login --device` waiting for someone to approve its code.
pub struct DeviceLogin {
    broker: Arc<BrokerInfo>,
    name: String,
    home: std::path::PathBuf,
    login: Proc,
    url: String,
}

impl DeviceLogin {
    /// The approval page with the code filled in (`…/device?user_code=…`).
    #[must_use]
    pub fn approval_url(&self) -> &str {
        &self.url
    }

    /// Waits for `palisade login --device` to get its certificate and exit.
    ///
    /// # Panics
    /// If it fails or does not finish in time.
    pub async fn finish(mut self) -> Person {
        let status = self.login.wait().await;
        assert!(status.success(), "palisade login --device failed ({status}):\n{}", self.login.stderr());
        let line = self.login.wait_for_line("`Session ID ends …`", |l| l.starts_with("Session ")).await;
        let session_id = line.split_whitespace().nth(1).expect("a session id").to_owned();
        Person { agent: Agent::at(self.broker, self.home, &self.name), session_id }
    }
}

/// A signed-in person: a `palisade` home with their key and certificate.
/// Their home works like a machine's, so everything an [`Agent`] does
/// (connect, the client library, `palisade` commands) works for them too.
pub struct Person {
    agent: Agent,
    session_id: String,
}

impl Person {
    /// The sign-in session their certificate names.
    #[must_use]
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Their identity id (the last segment of the SPIFFE id).
    #[must_use]
    pub fn identity_id(&self) -> String {
        let spiffe = self.spiffe_id();
        spiffe.rsplit('/').next().expect("a SPIFFE id has segments").to_owned()
    }

    /// A copy of their home as it is now, in a new directory: the same key and
    /// certificate, kept when they log out (a stolen laptop's backup).
    #[must_use]
    pub fn copy_of_home(&self, name: &str) -> Agent {
        let copy = self.agent.broker().env.fresh_dir(name);
        copy_dir(self.home(), &copy);
        Agent::at(self.agent.broker().clone(), copy, self.name())
    }
}

impl Deref for Person {
    type Target = Agent;

    fn deref(&self) -> &Agent {
        &self.agent
    }
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            std::fs::create_dir(&target).expect("create a directory");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}
