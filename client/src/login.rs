//! `palisade login`: a person signs in with the browser (or approves a code on
//! another device) and this machine gets a short-lived certificate for its
//! own key, which never leaves it. The contract with the broker is
//! `docs/login-protocol.md`.
//!
//! The flow, in module order:
//! - `attempt`: which broker, how it is trusted, which key; nothing is sent yet.
//! - browser: `loopback` listens once on 127.0.0.1; the person signs in at the
//!   broker's `/login/cli`; the broker redirects the browser to the loopback
//!   with a one-time code; `https` trades code + verifier + CSR for a certificate.
//! - device: `device` gets a user code and polls for the certificate.
//! - `answer` checks the certificate before `attempt` has [`store`](crate::store) write it.

mod answer;
mod attempt;
mod device;
mod https;
mod loopback;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use palisade_proto::id::SessionId;

pub use device::{DeviceCode, Pacing};
pub use loopback::CALLBACK_PATH;

use crate::enroll::EnrollError;
use crate::store::StoreError;
use attempt::{Attempt, Pkce};
use https::ExchangeRequest;

/// How long `palisade login` waits for the browser by default.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The command that prints a CA pin, for the message that asks for one.
pub const PIN_COMMAND: &str = "openssl x509 -in ca.pem -outform der | sha256sum";

/// An explicitly given way to trust the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file with the broker's CA certificate (`--ca-file`).
    File(PathBuf),
    /// The SHA-256 of the CA certificate's DER (`--ca-pin`).
    Pin([u8; 32]),
}

/// What `palisade login` was asked to do.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// `PALISADE_HOME`.
    pub home: PathBuf,
    /// `https://HOST:PORT`; `None` uses the broker of the stored profile.
    pub broker: Option<String>,
    /// Used only when no CA is stored for this broker yet.
    pub ca: Option<CaSource>,
    /// `--mfa`: refresh the second factor of the current session only.
    pub mfa_only: bool,
    /// Replace a profile of another identity kind or broker, with a new key.
    pub force: bool,
    /// How long to wait for the browser's redirect.
    pub callback_timeout: Duration,
    /// How `--device` polls.
    pub pacing: Pacing,
}

impl LoginOptions {
    /// Defaults: the stored broker and CA, a full sign-in, a 5-minute wait.
    #[must_use]
    pub fn new(home: impl Into<PathBuf>) -> LoginOptions {
        LoginOptions {
            home: home.into(),
            broker: None,
            ca: None,
            mfa_only: false,
            force: false,
            callback_timeout: CALLBACK_TIMEOUT,
            pacing: Pacing::default(),
        }
    }
}

/// A finished sign-in; everything is stored under `home`.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    /// `spiffe://<td>/user/<id>`.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Groups at sign-in.
    pub groups: Vec<String>,
    /// The sign-in session.
    pub session_id: SessionId,
    /// When the session ends (a new `palisade login` is needed then).
    pub session_expires: SystemTime,
    /// When this certificate ends (`palisade login` again renews it within the session).
    pub not_after: SystemTime,
    /// The last second-factor proof.
    pub mfa_at: Option<SystemTime>,
    /// Where the files are.
    pub home: PathBuf,
    /// The broker's HTTPS URL.
    pub broker_url: String,
    /// Where tunnels go.
    pub quic_addr: String,
}

/// Why a sign-in failed. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The broker URL is not usable.
    #[error("bad broker URL {url:?}: {reason} (expected https://HOST:PORT)")]
    BrokerUrl {
        /// What was given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No `--broker` and no stored profile.
    #[error("which broker? pass --broker https://HOST:PORT")]
    NoBroker,
    /// Nothing says how to trust this broker.
    #[error(
        "palisade does not know the CA of {broker} yet: pass --ca-file ca.pem or --ca-pin SHA256 \
         (an admin of the broker gets the pin with `{PIN_COMMAND}` on the broker's ca.pem)"
    )]
    NoTrust {
        /// The broker.
        broker: String,
    },
    /// `--ca-pin` is not a SHA-256.
    #[error("--ca-pin must be 64 hex digits (the SHA-256 of the CA certificate, from `{PIN_COMMAND}`)")]
    BadPin,
    /// `--ca-file` could not be used.
    #[error("{}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The home holds something this login would silently replace.
    #[error(
        "{} holds {identity} for {broker}; pass --force to replace it (with a new key), or use another --home",
        home.display()
    )]
    OtherProfile {
        /// The stored identity.
        identity: String,
        /// The stored broker.
        broker: String,
        /// The home directory.
        home: PathBuf,
    },
    /// `--mfa` needs a current sign-in.
    #[error("--mfa refreshes a current sign-in with {broker}, and {reason}: run `palisade login` first")]
    NotSignedIn {
        /// The broker.
        broker: String,
        /// What is missing.
        reason: String,
    },
    /// `--mfa` works in the browser only.
    #[error("--mfa needs the browser; it cannot be combined with --device")]
    MfaNeedsBrowser,
    /// Local files.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key pair or CSR could not be made or read.
    #[error("the local key: {0}")]
    Key(String),
    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// The loopback listener could not be bound.
    #[error("cannot listen on 127.0.0.1 for the browser's redirect: {0}")]
    Loopback(std::io::Error),
    /// The browser did not come back.
    #[error("no sign-in arrived within {}: run `palisade login` again", humantime::format_duration(*.0))]
    CallbackTimeout(Duration),
    /// The HTTPS client could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The broker could not be reached.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server's certificate does not chain to the CA we trust.
    #[error(
        "the server at {url} did not prove it is the broker (its certificate is not from the trusted CA): check --broker, --ca-file or --ca-pin"
    )]
    Untrusted {
        /// The broker.
        url: String,
    },
    /// The broker said no.
    #[error("the broker refused the sign-in (HTTP {status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
    },
    /// The device code ran out before anyone approved it.
    #[error("the code expired before it was approved: run `palisade login --device` again")]
    DeviceExpired,
    /// The device sign-in was refused.
    #[error(
        "the sign-in was denied (refused in the browser, or the code was already used): run `palisade login --device` again"
    )]
    DeviceDenied,
    /// The broker's answer does not check out.
    #[error("the broker's answer does not check out: {0}; nothing was saved")]
    BadAnswer(String),
}

impl From<EnrollError> for LoginError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::BrokerUrl { url, reason } => Self::BrokerUrl { url, reason },
            EnrollError::Store(e) => Self::Store(e),
            EnrollError::BadAnswer(m) => Self::BadAnswer(m),
            other => Self::BadAnswer(other.to_string()),
        }
    }
}

/// Parses `--ca-pin`: 64 hex digits, colons allowed (as `openssl -fingerprint` prints them).
///
/// # Errors
/// [`LoginError::BadPin`].
pub fn parse_ca_pin(text: &str) -> Result<[u8; 32], LoginError> {
    let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return Err(LoginError::BadPin);
    }
    let mut pin = [0u8; 32];
    for (byte, pair) in pin.iter_mut().zip(hex.chunks(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| LoginError::BadPin)?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| LoginError::BadPin)?;
    }
    Ok(pin)
}

/// Signs in with the browser. `on_url` gets the URL to open (the CLI prints it
/// and starts a browser; a test drives its own); then this waits for the
/// broker's redirect on the loopback port, trades the one-time code for a
/// certificate and stores it.
///
/// # Errors
/// [`LoginError`]; nothing is written unless everything checked out.
pub async fn login_browser(opts: LoginOptions, on_url: impl FnOnce(&str)) -> Result<LoggedIn, LoginError> {
    let attempt = Attempt::prepare(&opts)?;
    attempt.https.preflight().await?;
    let listener = loopback::Loopback::bind().await.map_err(LoginError::Loopback)?;
    let pkce = Pkce::generate()?;
    let url = attempt.start_url(listener.port(), &pkce)?;
    on_url(url.as_str());
    let code = listener.receive_code(&pkce.state, opts.callback_timeout).await?;
    let request = ExchangeRequest { code, verifier: pkce.verifier, csr_pem: attempt.csr_pem.clone() };
    let answer = attempt.https.exchange(&request).await?;
    attempt.finish(&answer, SystemTime::now())
}

/// Signs in with a device code: `on_code` shows the code and where to enter
/// it, then this polls until someone approves it, and stores the certificate.
///
/// # Errors
/// [`LoginError`], including [`LoginError::DeviceExpired`] and [`LoginError::DeviceDenied`].
pub async fn login_device(opts: LoginOptions, on_code: impl FnOnce(&DeviceCode)) -> Result<LoggedIn, LoginError> {
    if opts.mfa_only {
        return Err(LoginError::MfaNeedsBrowser);
    }
    let attempt = Attempt::prepare(&opts)?;
    let answer = device::run(&attempt.https, &attempt.csr_pem, opts.pacing, on_code).await?;
    attempt.finish(&answer, SystemTime::now())
}

/// Strips what a terminal would interpret from a string a server sent.
pub(crate) fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits_with_optional_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_ca_pin(&hex).expect("valid"), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_ca_pin(&colons).expect("valid"), [0xab; 32]);
        assert!(parse_ca_pin(&hex[..62]).is_err());
        assert!(parse_ca_pin(&"zz".repeat(32)).is_err());
        assert!(parse_ca_pin(&"é".repeat(32)).is_err());
    }
}
