//! `palisade login --device` (RFC 8628 shape): get a user code, let the
//! person approve it in a browser elsewhere, poll for the certificate.

use std::time::Duration;

use tokio::time::Instant;

use super::LoginError;
use super::https::{BrokerHttps, DevicePoll, LoginAnswer};

/// Consecutive network failures tolerated while polling (a laptop changing networks).
const MAX_POLL_FAILURES: u32 = 3;

/// What the person is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCode {
    /// The short code to type, e.g. `WDJB-MJHT`.
    pub user_code: String,
    /// Where to type it.
    pub verification_uri: String,
    /// The same page with the code filled in, if the broker gave one.
    pub verification_uri_complete: Option<String>,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// How fast to poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// The shortest wait between polls, whatever the broker says.
    pub min_interval: Duration,
    /// Added to the wait on every `slow_down` (RFC 8628: 5 seconds).
    pub slow_down: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self { min_interval: Duration::from_secs(1), slow_down: Duration::from_secs(5) }
    }
}

/// Asks for a code, hands it to `on_code`, and polls until the certificate comes.
pub(crate) async fn run(
    https: &BrokerHttps,
    csr_pem: &str,
    pacing: Pacing,
    on_code: impl FnOnce(&DeviceCode),
) -> Result<LoginAnswer, LoginError> {
    let auth = https.device_authorization().await?;
    let code = DeviceCode {
        user_code: checked("user code", &auth.user_code)?,
        verification_uri: checked_uri(&auth.verification_uri)?,
        verification_uri_complete: auth.verification_uri_complete.as_deref().map(checked_uri).transpose()?,
        expires_in: secs(auth.expires_in),
    };
    on_code(&code);
    let deadline = Instant::now() + code.expires_in;
    let mut interval = secs(auth.interval).max(pacing.min_interval);
    let mut failures = 0;
    let mut progress = Waiting::new(deadline);
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(LoginError::DeviceExpired);
        }
        progress.tick();
        match https.device_token(&auth.device_code, csr_pem).await {
            Ok(DevicePoll::Done(answer)) => return Ok(*answer),
            Ok(DevicePoll::Pending) => {}
            Ok(DevicePoll::SlowDown) => interval += pacing.slow_down,
            Ok(DevicePoll::Expired) => return Err(LoginError::DeviceExpired),
            Ok(DevicePoll::Denied) => return Err(LoginError::DeviceDenied),
            Err(LoginError::Unreachable { url, reason }) if failures + 1 < MAX_POLL_FAILURES => {
                failures += 1;
                tracing::warn!(%url, %reason, "polling the broker failed; trying again");
                continue;
            }
            Err(e) => return Err(e),
        }
        failures = 0;
    }
}

/// While the code waits for approval: the time left, redrawn in place when
/// stderr is a terminal, else one line a minute (so a log shows it is alive).
struct Waiting {
    deadline: Instant,
    terminal: bool,
    last_line: Instant,
}

impl Waiting {
    fn new(deadline: Instant) -> Self {
        use std::io::IsTerminal as _;
        Self { deadline, terminal: std::io::stderr().is_terminal(), last_line: Instant::now() }
    }

    fn tick(&mut self) {
        let left = self.deadline.saturating_duration_since(Instant::now()).as_secs();
        let text = format!("still waiting for approval; the code expires in {}:{:02}", left / 60, left % 60);
        if self.terminal {
            eprint!("\r{text} ");
        } else if self.last_line.elapsed() >= Duration::from_secs(60) {
            eprintln!("{text}");
            self.last_line = Instant::now();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// The broker's strings end up on a terminal: no control characters, no surprises.
fn checked(what: &str, text: &str) -> Result<String, LoginError> {
    if text.is_empty() || text.len() > 64 || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(LoginError::BadAnswer(format!("the {what} is not printable")));
    }
    Ok(text.to_owned())
}

fn checked_uri(text: &str) -> Result<String, LoginError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| LoginError::BadAnswer(format!("the verification URI {:?}: {e}", super::printable(text))))?;
    if url.scheme() != "https" {
        return Err(LoginError::BadAnswer("the verification URI is not https".into()));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_strings_are_checked_before_printing() {
        assert_eq!(checked("user code", "WDJB-MJHT").expect("fine"), "WDJB-MJHT");
        assert!(checked("user code", "WDJB\u{1b}[2J").is_err());
        assert!(checked("user code", "").is_err());
        assert!(checked_uri("http://broker/device").is_err());
        assert!(checked_uri("not a url").is_err());
        assert_eq!(checked_uri("https://broker:8443/device").expect("fine"), "https://broker:8443/device");
    }
}
