//! `palisade services` and `palisade whoami`: what the broker says, for people and scripts.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::wire::{ServiceInfo, ServiceListing, WhoAmI};
use serde::Serialize;

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
    format!(
        "identity: {}\nname:     {}\ngroups:   {groups}\nexpires:  {} ({left})\n",
        who.identity,
        who.name,
        humantime::format_rfc3339_seconds(expires),
    )
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
