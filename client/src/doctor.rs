//! `palisade doctor`: what usually goes wrong for a person, checked in the
//! order a connection needs it — the local enrollment and certificate, the
//! trust bundle, the broker's HTTPS API and its clock, the QUIC path over
//! UDP, the identity the broker sees and the services it may reach — each
//! problem with what to do about it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use palisade_proto::identity::TrustAnchors;
use serde::Serialize;

use crate::status::{Status, status};
use crate::store::{self, Profile};
use crate::tunnel::{Tunnel, TunnelError};

/// Clock skew up to this is fine.
const SKEW_OK: Duration = Duration::from_secs(30);
/// Beyond this, certificates look not-yet-valid or expired to one side.
const SKEW_FAIL: Duration = Duration::from_secs(300);
/// A certificate or CA this close to its end is worth a warning.
const CERT_SOON: Duration = Duration::from_secs(3600);
const CA_SOON: Duration = Duration::from_secs(30 * 86_400);

/// How long each network check may take.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// The QUIC handshake and first query over UDP.
    pub udp_timeout: Duration,
    /// The HTTPS request.
    pub https_timeout: Duration,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self { udp_timeout: Duration::from_secs(10), https_timeout: Duration::from_secs(10) }
    }
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Nothing to do.
    Ok,
    /// Works now, needs attention soon.
    Warn,
    /// Broken: connections will fail until fixed.
    Fail,
    /// Not checked, because something it depends on failed.
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked: `enrollment`, `certificate`, `trust bundle`, `https`, `clock`, `udp`, `identity`, `services`.
    pub name: &'static str,
    /// How it went.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do, when there is something to do.
    pub fix: Option<String>,
}

/// Every check, in the order they ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The check named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Whether any check failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// The report for a terminal.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = match check.outcome {
                Outcome::Ok => " ok ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            let _ = writeln!(out, "[{mark}] {:<13} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                let _ = writeln!(out, "       {:<13} fix: {fix}", "");
            }
        }
        out
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>, fix: Option<String>) {
        self.checks.push(Check { name, outcome, detail: detail.into(), fix });
    }
}

/// Runs every check for the enrollment under `home`. Never fails: what goes
/// wrong is the report.
pub async fn doctor(home: &Path, opts: &DoctorOptions) -> Report {
    let now = SystemTime::now();
    let mut report = Report::default();
    let status = match status(home, now) {
        Ok(status) => status,
        Err(e) => {
            let fix = "run `palisade login --broker URL` (a person) or `palisade enroll` (a machine)";
            report.push("enrollment", Outcome::Fail, e.to_string(), Some(fix.into()));
            return report;
        }
    };
    report.push("enrollment", Outcome::Ok, format!("{} with {}", status.identity, status.broker_url), None);
    check_certificate(&mut report, &status, now);
    let trust = check_trust(&mut report, home, &status, now);
    let https_ok = match &trust {
        Some(trust) => check_https(&mut report, &status.broker_url, trust, opts, now).await,
        None => {
            report.push("https", Outcome::Skip, "no usable trust bundle", None);
            false
        }
    };
    check_quic(&mut report, home, &status, https_ok, opts).await;
    report
}

fn renew_fix(status: &Status) -> String {
    if status.is_person() {
        "run `palisade login`".into()
    } else {
        "ask an admin for a new enrollment token and run `palisade enroll --force`".into()
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn check_certificate(report: &mut Report, status: &Status, now: SystemTime) {
    let Some(cert) = &status.certificate else {
        report.push("certificate", Outcome::Fail, "none (logged out)", Some(renew_fix(status)));
        return;
    };
    let until = rfc3339(cert.not_after);
    if cert.expired {
        report.push("certificate", Outcome::Fail, format!("expired at {until}"), Some(renew_fix(status)));
    } else if let Some(problem) = &cert.problem {
        let detail = format!("does not validate against the stored CA: {problem}");
        report.push("certificate", Outcome::Fail, detail, Some(renew_fix(status)));
    } else if cert.not_after.duration_since(now).unwrap_or_default() < CERT_SOON {
        let detail = format!("valid until {until}, less than an hour from now");
        report.push("certificate", Outcome::Warn, detail, Some(renew_fix(status)));
    } else {
        report.push("certificate", Outcome::Ok, format!("valid until {until}"), None);
    }
}

fn check_trust(report: &mut Report, home: &Path, status: &Status, now: SystemTime) -> Option<TrustAnchors> {
    let again = format!("the CA file is damaged or missing: {}", renew_fix(status));
    let fail = |report: &mut Report, detail: String| {
        report.push("trust bundle", Outcome::Fail, detail, Some(again.clone()));
        None
    };
    let pem = match store::read_optional(home, store::CA_FILE) {
        Ok(Some(pem)) => pem,
        Ok(None) => return fail(report, format!("{} is missing", store::CA_FILE)),
        Err(e) => return fail(report, e.to_string()),
    };
    let cas = match palisade_proto::pem::certs(&pem) {
        Ok(cas) => cas,
        Err(e) => return fail(report, format!("{}: {e}", store::CA_FILE)),
    };
    let Some(ends) = cas.iter().map(|der| ca_not_after(der)).collect::<Option<Vec<_>>>() else {
        return fail(report, format!("{} holds a certificate that does not parse", store::CA_FILE));
    };
    let domain = status.identity.parse::<palisade_proto::identity::SpiffeId>().map(|id| id.trust_domain);
    let trust =
        match domain.map_err(|e| e.to_string()).and_then(|d| TrustAnchors::new(d, cas).map_err(|e| e.to_string())) {
            Ok(trust) => trust,
            Err(e) => return fail(report, format!("{}: {e}", store::CA_FILE)),
        };
    let first_end = ends.iter().min().copied().unwrap_or(now);
    let detail =
        format!("{} CA certificate(s) for {}, valid until {}", ends.len(), trust.trust_domain(), rfc3339(first_end));
    let ask = "the broker's CA is being replaced or has lapsed: ask the admin, then log in or enroll again";
    if first_end <= now {
        report.push("trust bundle", Outcome::Fail, format!("{detail} (expired)"), Some(ask.into()));
    } else if first_end.duration_since(now).unwrap_or_default() < CA_SOON {
        report.push("trust bundle", Outcome::Warn, format!("{detail} (within 30 days)"), Some(ask.into()));
    } else {
        report.push("trust bundle", Outcome::Ok, detail, None);
    }
    Some(trust)
}

fn ca_not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `GET /healthz` over HTTPS, trusting only the enrolled CA; then the clock
/// against the answer's `Date`. Returns whether the broker answered.
async fn check_https(
    report: &mut Report,
    base: &str,
    trust: &TrustAnchors,
    opts: &DoctorOptions,
    now: SystemTime,
) -> bool {
    let answer = healthz(base, trust, opts.https_timeout).await;
    let date = match answer {
        Ok((code, date)) => {
            let outcome = if code == 200 { Outcome::Ok } else { Outcome::Warn };
            let fix = (code != 200).then(|| "the broker is up but not healthy: tell its admin".to_owned());
            report.push("https", outcome, format!("{base} answered {code}"), fix);
            date
        }
        Err(HttpsProblem { detail, fix }) => {
            report.push("https", Outcome::Fail, detail, Some(fix));
            report.push("clock", Outcome::Skip, "the broker did not answer over HTTPS", None);
            return false;
        }
    };
    let Some(broker_time) = date.as_deref().and_then(parse_http_date) else {
        report.push("clock", Outcome::Skip, "the broker's answer had no Date header", None);
        return true;
    };
    check_clock(report, now, broker_time);
    true
}

fn check_clock(report: &mut Report, now: SystemTime, broker_time: SystemTime) {
    let (skew, direction) = match now.duration_since(broker_time) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(behind) => (behind.duration(), "behind"),
    };
    let detail = format!("this machine is {}s {direction} the broker", skew.as_secs());
    let fix =
        "turn on automatic time (NTP), e.g. `timedatectl set-ntp true`; certificates are checked against the clock";
    let outcome = if skew <= SKEW_OK {
        Outcome::Ok
    } else if skew <= SKEW_FAIL {
        Outcome::Warn
    } else {
        Outcome::Fail
    };
    report.push("clock", outcome, detail, (outcome != Outcome::Ok).then(|| fix.to_owned()));
}

struct HttpsProblem {
    detail: String,
    fix: String,
}

async fn healthz(base: &str, trust: &TrustAnchors, timeout: Duration) -> Result<(u16, Option<String>), HttpsProblem> {
    let problem = |detail: String, fix: &str| HttpsProblem { detail, fix: fix.to_owned() };
    let url = reqwest::Url::parse(base).and_then(|u| u.join("/healthz")).map_err(|e| {
        problem(format!("{base:?} is not a URL: {e}"), "log in or enroll again with the right --broker")
    })?;
    let tls = palisade_proto::tls::https_client_config(trust)
        .map_err(|e| problem(format!("cannot use the trust bundle: {e}"), "log in or enroll again"))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| problem(format!("cannot build an HTTPS client: {}", chain(&e)), "report this as a bug"))?;
    let response = client.get(url.clone()).send().await.map_err(|e| https_error(&e, &url))?;
    let date = response.headers().get(reqwest::header::DATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((response.status().as_u16(), date))
}

fn https_error(e: &reqwest::Error, url: &reqwest::Url) -> HttpsProblem {
    let text = chain(e);
    let (detail, fix) = if text.contains("certificate") || text.contains("UnknownIssuer") {
        (
            format!("{url} is not your broker: its certificate is not from the enrolled CA ({text})"),
            "check that nothing intercepts TLS on the way (a proxy); if the broker moved, log in or enroll again",
        )
    } else if e.is_timeout() {
        (format!("{url} did not answer within the timeout"), "check your network and that the broker is running")
    } else {
        (
            format!("cannot reach {url}: {text}"),
            "check the address and your network; ask the admin whether the broker is running",
        )
    };
    HttpsProblem { detail, fix: fix.to_owned() }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP servers send.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut parts = text.split_whitespace().skip(1);
    let (day, month, year, time, zone) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if zone != "GMT" {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    humantime::parse_rfc3339(&format!("{year}-{month:02}-{day:0>2}T{time}Z")).ok()
}

async fn check_quic(report: &mut Report, home: &Path, status: &Status, https_ok: bool, opts: &DoctorOptions) {
    let tunnel = match Profile::load(home).map_err(TunnelError::Store).and_then(Tunnel::new) {
        Ok(tunnel) => tunnel,
        Err(e) => {
            report.push("udp", Outcome::Skip, format!("no usable credentials: {e}"), None);
            return;
        }
    };
    let who = tokio::time::timeout(opts.udp_timeout, tunnel.whoami()).await;
    let addr = &status.quic_addr;
    match who {
        Ok(Ok(who)) => {
            report.push("udp", Outcome::Ok, format!("QUIC to {addr} works"), None);
            report.push("identity", Outcome::Ok, format!("the broker sees {} ({})", who.identity, who.name), None);
            check_services(report, &tunnel, opts).await;
        }
        Ok(Err(TunnelError::Unreachable { reason, .. })) => udp_blocked(report, addr, https_ok, &reason),
        Err(_) => udp_blocked(report, addr, https_ok, "no answer in time"),
        Ok(Err(e @ (TunnelError::IdentityRefused | TunnelError::ClockDisagrees | TunnelError::Revoked))) => {
            report.push("udp", Outcome::Ok, format!("the broker answered over QUIC at {addr}"), None);
            report.push("identity", Outcome::Fail, e.to_string(), Some(renew_fix(status)));
        }
        Ok(Err(e @ (TunnelError::CertificateExpired | TunnelError::NotEnrolled | TunnelError::Store(_)))) => {
            let detail = "not tried: the client connects only with a valid certificate (see above)";
            report.push("udp", Outcome::Skip, detail, None);
            report.push("identity", Outcome::Fail, e.to_string(), Some(renew_fix(status)));
        }
        Ok(Err(e)) => {
            let fix = "run `palisade doctor` again; if it persists, send this report to the admin";
            report.push("udp", Outcome::Fail, e.to_string(), Some(fix.into()));
        }
    }
    tunnel.close().await;
}

fn udp_blocked(report: &mut Report, addr: &str, https_ok: bool, reason: &str) {
    let port = addr.rsplit_once(':').map_or("the broker's port", |(_, p)| p);
    let (detail, fix) = if https_ok {
        (
            format!(
                "the broker answers over HTTPS (TCP) but not over UDP at {addr} ({reason}): UDP is blocked on the way"
            ),
            format!(
                "allow outgoing UDP to port {port} (firewalls, VPNs and guest Wi-Fi often block it), or ask your network admin"
            ),
        )
    } else {
        (
            format!(
                "neither HTTPS nor UDP reached the broker at {addr} ({reason}): it is down or unreachable from here"
            ),
            "check your network connection; ask the admin whether the broker is running".to_owned(),
        )
    };
    report.push("udp", Outcome::Fail, detail, Some(fix));
    report.push("identity", Outcome::Skip, "the broker was not reached", None);
}

async fn check_services(report: &mut Report, tunnel: &Tunnel, opts: &DoctorOptions) {
    let listing = match tokio::time::timeout(opts.udp_timeout, tunnel.services()).await {
        Ok(Ok(listing)) => listing,
        Ok(Err(e)) => return report.push("services", Outcome::Fail, e.to_string(), None),
        Err(_) => return report.push("services", Outcome::Fail, "the broker did not answer in time", None),
    };
    if listing.services.is_empty() {
        let fix = "no policy lets this identity reach any service: ask an admin which group you need";
        return report.push("services", Outcome::Warn, "none", Some(fix.into()));
    }
    let offline: Vec<&str> = listing.services.iter().filter(|s| !s.online).map(|s| s.name.as_str()).collect();
    let names: Vec<&str> = listing.services.iter().map(|s| s.name.as_str()).collect();
    let detail = format!("may reach {}", names.join(", "));
    if offline.is_empty() {
        report.push("services", Outcome::Ok, detail, None);
    } else {
        let fix = format!("no connector serves {} right now: tell the service's owners", offline.join(", "));
        report.push("services", Outcome::Warn, detail, Some(fix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_and_other_forms_do_not() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 +0100").is_none());
        assert!(parse_http_date("").is_none());
    }

    #[test]
    fn clock_skew_is_graded_in_both_directions() {
        let broker = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for (offset_secs, ahead, want) in [
            (5, true, Outcome::Ok),
            (120, false, Outcome::Warn),
            (3600, true, Outcome::Fail),
            (3600, false, Outcome::Fail),
        ] {
            let offset = Duration::from_secs(offset_secs);
            let now = if ahead { broker + offset } else { broker - offset };
            let mut report = Report::default();
            check_clock(&mut report, now, broker);
            let check = report.get("clock").unwrap();
            assert_eq!(check.outcome, want, "{offset_secs}s ahead={ahead}: {}", check.detail);
            assert_eq!(check.fix.is_some(), want != Outcome::Ok);
        }
    }
}
