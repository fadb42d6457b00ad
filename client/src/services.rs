//! `palisade services`, `palisade whoami` and `palisade status`: what the
//! broker and the local files say, for people and scripts.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::wire::{ServiceInfo, ServiceListing, WhoAmI};
use serde::Serialize;

use crate::status::Status;

/// The command that reaches `service` through a local port.
#[must_use]
pub fn connect_command(service: &str) -> String {
    format!("palisade connect {service} --listen 127.0.0.1:PORT")
}

/// One service as printed by `palisade services --json`.
#[derive(Debug, Serialize)]
pub struct ServiceView<'a> {
    /// Service name.
    pub name: &'a str,
    /// Segment it belongs to.
    pub segment: &'a str,
    /// `tcp` or `http`.
    pub protocol: &'a str,
    /// Whether a connector serving it is online.
    pub online: bool,
    /// How to reach it.
    pub command: String,
}

impl<'a> From<&'a ServiceInfo> for ServiceView<'a> {
    fn from(s: &'a ServiceInfo) -> Self {
        Self {
            name: &s.name,
            segment: &s.segment,
            protocol: &s.protocol,
            online: s.online,
            command: connect_command(&s.name),
        }
    }
}

/// The listing as JSON: `{"services": [{name, segment, protocol, online, command}]}`.
///
/// # Errors
/// Only if serde fails, which it does not for these types.
pub fn services_json(listing: &ServiceListing) -> serde_json::Result<String> {
    let services: Vec<ServiceView<'_>> = listing.services.iter().map(ServiceView::from).collect();
    serde_json::to_string_pretty(&serde_json::json!({ "services": services }))
}

/// The listing as a table with the command to reach each service.
#[must_use]
pub fn services_table(listing: &ServiceListing) -> String {
    if listing.services.is_empty() {
        return "You may not reach any service yet: ask an admin for access.\n".to_owned();
    }
    let header = ["SERVICE", "SEGMENT", "PROTOCOL", "STATUS", "REACH IT WITH"];
    let rows: Vec<[String; 5]> = listing
        .services
        .iter()
        .map(|s| {
            let status = if s.online { "online" } else { "offline" };
            [s.name.clone(), s.segment.clone(), s.protocol.clone(), status.to_owned(), connect_command(&s.name)]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    push_row(&mut out, &widths, header.iter().copied());
    for row in &rows {
        push_row(&mut out, &widths, row.iter().map(String::as_str));
    }
    out.push_str("\nOr run `palisade proxy --socks5 127.0.0.1:1080` and ask for SERVICE.palisade through it.\n");
    out
}

fn push_row<'a>(out: &mut String, widths: &[usize; 5], cells: impl Iterator<Item = &'a str>) {
    let line: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
    let _ = writeln!(out, "{}", line.join("  ").trim_end());
}

/// `palisade whoami` for people.
#[must_use]
pub fn whoami_text(who: &WhoAmI, now: SystemTime) -> String {
    let expires = UNIX_EPOCH + Duration::from_secs(who.not_after_unix);
    let left = match expires.duration_since(now) {
        Ok(d) => format!("in {}", humantime::format_duration(Duration::from_secs(d.as_secs() / 60 * 60))),
        Err(_) => "expired: enroll or log in again".to_owned(),
    };
    let groups = if who.groups.is_empty() { "(none)".to_owned() } else { who.groups.join(", ") };
    let mut text = format!(
        "identity: {}\nname:     {}\ngroups:   {groups}\nexpires:  {} ({left})\n",
        who.identity,
        who.name,
        humantime::format_rfc3339_seconds(expires),
    );
    if let Some(session) = &who.session {
        let _ = writeln!(text, "session:  {session}");
    }
    if let Some(mfa_at) = who.mfa_at_unix {
        let _ = writeln!(text, "mfa:      {}", relative(UNIX_EPOCH + Duration::from_secs(mfa_at), now));
    }
    text
}

/// "in 7h 59m" / "3m ago", to the minute.
fn relative(at: SystemTime, now: SystemTime) -> String {
    let minutes = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs() / 60 * 60)).to_string();
    match at.duration_since(now) {
        Ok(d) if d.as_secs() < 60 => "in less than a minute".to_owned(),
        Ok(d) => format!("in {}", minutes(d)),
        Err(e) if e.duration().as_secs() < 60 => "less than a minute ago".to_owned(),
        Err(e) => format!("{} ago", minutes(e.duration())),
    }
}

fn when(at: SystemTime, now: SystemTime) -> String {
    format!("{} ({})", humantime::format_rfc3339_seconds(at), relative(at, now))
}

/// `palisade status` for people.
#[must_use]
pub fn status_text(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "identity:    {}", status.identity);
    let Some(cert) = &status.certificate else {
        let _ = writeln!(out, "certificate: none (logged out): run `palisade login`");
        let _ = writeln!(out, "broker:      {}", status.broker_url);
        return out;
    };
    let groups = if cert.groups.is_empty() { "(none)".to_owned() } else { cert.groups.join(", ") };
    let _ = writeln!(out, "name:        {}\ngroups:      {groups}", cert.name);
    if let Some(session) = &cert.session {
        let ends = status.session_expires.map(|at| format!(", ends {}", when(at, now))).unwrap_or_default();
        let _ = writeln!(out, "session:     {session}{ends}");
    }
    if let Some(mfa_at) = cert.mfa_at {
        let _ = writeln!(out, "mfa:         {}", when(mfa_at, now));
    }
    let validity = if cert.expired {
        format!("EXPIRED {}: run `palisade login`", when(cert.not_after, now))
    } else {
        format!("valid until {}", when(cert.not_after, now))
    };
    let _ = writeln!(out, "certificate: {validity}");
    if let Some(problem) = &cert.problem {
        let _ = writeln!(out, "problem:     {problem}");
    }
    let _ = writeln!(out, "broker:      {} (tunnels to {})", status.broker_url, status.quic_addr);
    out
}

/// `palisade status --json`: times as seconds since the epoch.
#[must_use]
pub fn status_json(status: &Status, now: SystemTime) -> serde_json::Value {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let certificate = status.certificate.as_ref().map(|c| {
        serde_json::json!({
            "name": c.name,
            "groups": c.groups,
            "session": c.session,
            "auth_methods": c.auth_methods,
            "mfa_at_unix": c.mfa_at.map(secs),
            "mfa_age_secs": c.mfa_age.map(|d| d.as_secs()),
            "not_after_unix": secs(c.not_after),
            "expired": c.expired,
            "problem": c.problem,
        })
    });
    serde_json::json!({
        "identity": status.identity,
        "broker_url": status.broker_url,
        "quic_addr": status.quic_addr,
        "session_expires_unix": status.session_expires.map(secs),
        "usable": status.is_usable(),
        "checked_at_unix": secs(now),
        "certificate": certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> ServiceListing {
        ServiceListing {
            services: vec![
                ServiceInfo { name: "llm-prod".into(), segment: "llm".into(), protocol: "http".into(), online: true },
                ServiceInfo { name: "vdb".into(), segment: "data".into(), protocol: "tcp".into(), online: false },
            ],
        }
    }

    #[test]
    fn table_shows_status_and_command() {
        let table = services_table(&listing());
        assert!(table.contains("llm-prod  llm"), "{table}");
        assert!(table.contains("offline"), "{table}");
        assert!(table.contains("palisade connect vdb --listen 127.0.0.1:PORT"), "{table}");
    }

    #[test]
    fn json_has_commands() {
        let json: serde_json::Value = serde_json::from_str(&services_json(&listing()).expect("json")).expect("parses");
        assert_eq!(json["services"][1]["online"], false);
        assert_eq!(json["services"][0]["command"], "palisade connect llm-prod --listen 127.0.0.1:PORT");
    }
}
