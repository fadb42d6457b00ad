//! `palisade-connector doctor`: the config, the enrollment and its
//! certificate, the broker's HTTPS API, the saved policy bundle and every
//! upstream, each problem with what to do.
//!
//! It does not open a QUIC connection as this connector: the broker would
//! take it for the running connector's link. The running connector logs its
//! link state; the broker's admin console shows it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use palisade_connector::ConnectorConfig;
use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors, VerifyPeerError, verify_peer};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) outcome: Outcome,
    pub(crate) detail: String,
    pub(crate) fix: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: impl Into<String>, outcome: Outcome, detail: impl Into<String>, fix: Option<&str>) {
        let fix = fix.map(str::to_owned);
        self.checks.push(Check { name: name.into(), outcome, detail: detail.into(), fix });
    }

    pub(crate) fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.outcome {
                Outcome::Ok => " ok ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            let _ = writeln!(out, "[{mark}] {:<22} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "       {:<22} fix: {fix}", "");
            }
        }
        out
    }
}

const ENROLL_FIX: &str = "ask the broker's admin for a connector token and run `palisade-connector enroll --broker URL --token TOKEN --force`";

pub(crate) async fn doctor(config_path: &Path) -> Report {
    let mut report = Report::default();
    let config = match ConnectorConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report.push("config", Outcome::Fail, e.to_string(), Some("fix the named key and run doctor again"));
            return report;
        }
    };
    let names: Vec<String> = config.services.iter().map(|s| s.name.to_string()).collect();
    report.push("config", Outcome::Ok, format!("{} serves {}", config_path.display(), names.join(", ")), None);
    if let Some((broker_url, trust)) = check_enrollment(&mut report, &config.state_dir) {
        check_broker(&mut report, &broker_url, &trust).await;
    }
    check_bundle(&mut report, &config.state_dir);
    for service in &config.services {
        check_upstream(&mut report, service.name.as_str(), &service.upstream, config.connect_timeout).await;
    }
    report
}

/// Reads identity.json, cert.pem and ca.pem; verifies the certificate as the
/// broker will. Returns the broker's URL and the trust bundle.
fn check_enrollment(report: &mut Report, dir: &Path) -> Option<(String, TrustAnchors)> {
    let read =
        |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    let loaded = (|| {
        let record: serde_json::Value =
            serde_json::from_str(&read("identity.json")?).map_err(|e| format!("identity.json: {e}"))?;
        let field = |k: &str| record.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        let identity = field("identity").ok_or("identity.json has no identity")?;
        let broker_url = field("broker_url").ok_or("identity.json has no broker_url")?;
        let id: SpiffeId = identity.parse().map_err(|e| format!("identity.json: {e}"))?;
        let chain = palisade_proto::pem::certs(&read("cert.pem")?).map_err(|e| format!("cert.pem: {e}"))?;
        let cas = palisade_proto::pem::certs(&read("ca.pem")?).map_err(|e| format!("ca.pem: {e}"))?;
        let trust = TrustAnchors::new(id.trust_domain.clone(), cas).map_err(|e| format!("ca.pem: {e}"))?;
        Ok::<_, String>((identity, broker_url, chain, trust))
    })();
    let (identity, broker_url, chain, trust) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            report.push(
                "enrollment",
                Outcome::Fail,
                format!("not enrolled in {}: {e}", dir.display()),
                Some(ENROLL_FIX),
            );
            return None;
        }
    };
    report.push("enrollment", Outcome::Ok, format!("{identity} with {broker_url}"), None);
    match verify_peer(&chain, &trust, SystemTime::now(), &[PeerRole::Connector]) {
        Ok(peer) => {
            let until = humantime::format_rfc3339_seconds(peer.not_after());
            report.push("certificate", Outcome::Ok, format!("valid until {until} (renewed over the link)"), None);
        }
        Err(VerifyPeerError::Expired) => {
            let detail = "expired: the connector was offline longer than its certificate lifetime";
            report.push("certificate", Outcome::Fail, detail, Some(ENROLL_FIX));
        }
        Err(e) => report.push("certificate", Outcome::Fail, format!("does not verify: {e}"), Some(ENROLL_FIX)),
    }
    Some((broker_url, trust))
}

async fn check_broker(report: &mut Report, broker_url: &str, trust: &TrustAnchors) {
    let fix = "check the network path to the broker (HTTPS on TCP, tunnels on UDP, same port) and that it runs";
    let answer = async {
        let url = reqwest::Url::parse(broker_url).and_then(|u| u.join("/healthz")).map_err(|e| e.to_string())?;
        let tls = palisade_proto::tls::https_client_config(trust).map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
        Ok::<_, String>(response.status().as_u16())
    };
    match answer.await {
        Ok(200) => report.push("broker https", Outcome::Ok, format!("{broker_url} answered 200"), None),
        Ok(code) => report.push("broker https", Outcome::Warn, format!("{broker_url} answered {code}"), Some(fix)),
        Err(e) => report.push("broker https", Outcome::Fail, format!("{broker_url}: {e}"), Some(fix)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

fn check_bundle(report: &mut Report, dir: &Path) {
    if dir.join("policy-bundle.json").is_file() {
        report.push("policy bundle", Outcome::Ok, "a signed bundle from the broker is saved", None);
    } else {
        let fix = "start the connector (`palisade-connector run`) so it links to the broker and receives one";
        report.push(
            "policy bundle",
            Outcome::Warn,
            "none saved yet: every stream is denied until one arrives",
            Some(fix),
        );
    }
}

async fn check_upstream(report: &mut Report, service: &str, upstream: &str, timeout: Duration) {
    let name = format!("upstream {service}");
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(upstream)).await {
        Ok(Ok(_)) => report.push(name, Outcome::Ok, format!("{upstream} accepts TCP connections"), None),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let detail = format!("{upstream} refused the connection: nothing listens there");
            report.push(name, Outcome::Fail, detail, Some("start the workload, or correct `upstream` in the config"));
        }
        Ok(Err(e)) => {
            let detail = format!("cannot connect to {upstream}: {e}");
            report.push(name, Outcome::Fail, detail, Some("check the address and the routes from this machine"));
        }
        Err(_) => {
            let detail = format!("{upstream} did not answer within {}s", timeout.as_secs());
            let fix = "a firewall between this connector and the workload drops the connection: allow it";
            report.push(name, Outcome::Fail, detail, Some(fix));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn run_with(config: &str) -> (Report, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connector.toml");
        std::fs::write(&path, config.replace("STATE", &dir.path().join("state").display().to_string())).unwrap();
        (doctor(&path).await, dir)
    }

    fn find<'a>(report: &'a Report, name: &str) -> &'a Check {
        report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} in\n{}", report.text()))
    }

    #[tokio::test]
    async fn upstreams_are_checked_one_by_one_and_an_unenrolled_state_dir_says_how_to_enroll() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listening.local_addr().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = format!(
            "state_dir = \"STATE\"\n[[service]]\nname = \"llm\"\nupstream = \"{up}\"\n\n[[service]]\nname = \"embed\"\nupstream = \"{closed}\"\n"
        );
        let (report, _dir) = run_with(&config).await;
        assert!(report.failed());
        assert_eq!(find(&report, "config").outcome, Outcome::Ok);
        let enrollment = find(&report, "enrollment");
        assert_eq!(enrollment.outcome, Outcome::Fail);
        assert!(enrollment.fix.as_deref().unwrap().contains("palisade-connector enroll"));
        assert_eq!(find(&report, "upstream llm").outcome, Outcome::Ok, "{}", report.text());
        let embed = find(&report, "upstream embed");
        assert_eq!(embed.outcome, Outcome::Fail);
        assert!(embed.detail.contains("nothing listens"), "{}", embed.detail);
        assert_eq!(find(&report, "policy bundle").outcome, Outcome::Warn);
    }

    #[tokio::test]
    async fn a_bad_config_names_the_key() {
        let (report, _dir) = run_with("state_dir = \"STATE\"\nconect_timeout = \"1s\"\n").await;
        assert_eq!(report.checks.len(), 1);
        let config = find(&report, "config");
        assert_eq!(config.outcome, Outcome::Fail);
        assert!(config.detail.contains("conect_timeout"), "{}", config.detail);
    }
}
