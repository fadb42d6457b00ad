//! The broker's Prometheus series. [`SERIES`] is the one list of what the
//! broker exports (the operator guide documents it; the Grafana dashboard
//! test checks against it). Served by [`crate::web::metrics`].
//!
//! Decisions, sign-ins and issuances are counted where every one of them
//! already passes: the audit trail ([`audit_event`], called by
//! [`crate::audit::Audit::record`] and `record_in`). A count is an attempt to
//! record: an event whose transaction later rolls back is still counted.
//! Label values are bounded: event kinds and outcomes are enums, reasons
//! are the broker's own codes, connector names are enrolled by an admin.

use palisade_telemetry::{Counter, Family, Gauge, Histogram, Series};

use crate::audit::{AuditEvent, EventKind};

/// Upper bounds, in seconds, of the stream-setup histogram.
const SETUP_BOUNDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Client streams being spliced to a connector right now.
pub static LIVE_TUNNELS: Gauge = Gauge::new();
/// Tunnelled bytes, `direction` = `up` (client → connector) or `down`.
pub static BYTES: Family<Counter> = Family::new(&["direction"], Counter::new);
/// Client stream opens, by `result` (see [`StreamOpen`]).
pub static STREAM_OPENS: Family<Counter> = Family::new(&["result"], Counter::new);
/// Access decisions, by `point` (broker, connector), `result` and `reason`.
pub static DECISIONS: Family<Counter> = Family::new(&["point", "result", "reason"], Counter::new);
/// Completed sign-ins (`success`: a session was created) and failed sign-in steps (`failure`).
pub static SIGNINS: Family<Counter> = Family::new(&["result"], Counter::new);
/// Certificates issued or refused by the CA.
pub static ISSUANCES: Family<Counter> = Family::new(&["result"], Counter::new);
/// Control links from each connector to this broker.
pub static CONNECTOR_LINKS: Family<Gauge> = Family::new(&["connector"], Gauge::new);
/// From a client's stream header to the first spliced byte: decide, audit, open towards the connector.
pub static STREAM_SETUP: Histogram<12> = Histogram::new(SETUP_BOUNDS);
/// Client streams relayed to a connector, by the send `priority` their identity's share of the link gave them.
pub static STREAM_PRIORITIES: Family<Counter> = Family::new(&["priority"], Counter::new);
/// Every audit event, by `kind` and `outcome`.
pub static AUDIT_EVENTS: Family<Counter> = Family::new(&["kind", "outcome"], Counter::new);
/// 1 while this broker cannot confirm its view of the database is current ([`crate::sync`]).
pub static STALE: Gauge = Gauge::new();

/// Everything the broker exports, in the order `/metrics` lists it.
pub static SERIES: [Series; 12] = [
    Series {
        name: "palisade_relay_live_tunnels",
        help: "Client streams being relayed to a connector now.",
        metric: &LIVE_TUNNELS,
    },
    Series {
        name: "palisade_relay_bytes_total",
        help: "Bytes relayed, by direction (up: client to connector, down: connector to client).",
        metric: &BYTES,
    },
    Series {
        name: "palisade_relay_stream_opens_total",
        help: "Client stream opens, by result (allowed, denied, failed, bad_request).",
        metric: &STREAM_OPENS,
    },
    Series {
        name: "palisade_relay_stream_setup_seconds",
        help: "Time from a client's stream header to relaying: decision, audit, opening the connector's stream.",
        metric: &STREAM_SETUP,
    },
    Series {
        name: "palisade_relay_stream_priorities_total",
        help: "Client streams relayed to a connector, by the send priority their identity's share of the link gave \
               them (0: fewer than 8 of its streams open on the link; -1 to -4: each eightfold more).",
        metric: &STREAM_PRIORITIES,
    },
    Series {
        name: "palisade_decisions_total",
        help: "Access decisions, by point (broker, connector), result (allow, deny) and reason.",
        metric: &DECISIONS,
    },
    Series {
        name: "palisade_signins_total",
        help: "Sign-ins: success (a session was created) or failure (a failed sign-in step).",
        metric: &SIGNINS,
    },
    Series {
        name: "palisade_certificate_issuances_total",
        help: "Certificates the CA issued or refused, by result.",
        metric: &ISSUANCES,
    },
    Series {
        name: "palisade_connector_links",
        help: "Live control links from each connector to this broker.",
        metric: &CONNECTOR_LINKS,
    },
    Series {
        name: "palisade_audit_events_total",
        help: "Audit events recorded, by kind and outcome.",
        metric: &AUDIT_EVENTS,
    },
    Series {
        name: "palisade_broker_stale",
        help: "1 while this broker cannot confirm its view of revocations and policy is current (see [consistency]).",
        metric: &STALE,
    },
    palisade_telemetry::runtime::WORKER_THREADS_SERIES,
];

/// How a client's stream open ended, for [`STREAM_OPENS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOpen {
    /// Decided, audited and relayed to a connector.
    Allowed,
    /// Refused by a decision (policy, no connector, a stale view of the database).
    Denied,
    /// Allowed, but the audit event or the connector's stream failed.
    Failed,
    /// No usable stream header.
    BadRequest,
}

/// Counts one client stream open.
pub fn stream_open(result: StreamOpen) {
    let result = match result {
        StreamOpen::Allowed => "allowed",
        StreamOpen::Denied => "denied",
        StreamOpen::Failed => "failed",
        StreamOpen::BadRequest => "bad_request",
    };
    STREAM_OPENS.get(&[result]).inc();
}

/// Counts an audit event, and the decision, sign-in or issuance it records.
pub fn audit_event(event: &AuditEvent) {
    AUDIT_EVENTS.get(&[event.kind.as_str(), event.outcome.as_str()]).inc();
    match event.kind {
        EventKind::StreamAllowed => DECISIONS.get(&["broker", "allow", "permit"]).inc(),
        EventKind::StreamDenied => DECISIONS.get(&["broker", "deny", reason(event)]).inc(),
        EventKind::ConnectorStreamDenied => DECISIONS.get(&["connector", "deny", reason(event)]).inc(),
        EventKind::SessionCreated => SIGNINS.get(&["success"]).inc(),
        EventKind::LoginFailed => SIGNINS.get(&["failure"]).inc(),
        EventKind::CertificateIssued => ISSUANCES.get(&["issued"]).inc(),
        EventKind::CertificateRefused => ISSUANCES.get(&["refused"]).inc(),
        _ => {}
    }
}

/// The event's `detail.reason` if it looks like one of our codes (short
/// `snake_case`), else `other`: a label value must never grow without bound.
fn reason(event: &AuditEvent) -> &str {
    let code = event.detail.get("reason").and_then(serde_json::Value::as_str).unwrap_or("unknown");
    let is_code = !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if is_code { code } else { "other" }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::Outcome;

    fn denied(reason: serde_json::Value) -> AuditEvent {
        AuditEvent::new(EventKind::StreamDenied, Outcome::Deny).detail(json!({ "reason": reason }))
    }

    #[test]
    fn reasons_outside_our_codes_become_other() {
        assert_eq!(reason(&denied(json!("no_policy_permits"))), "no_policy_permits");
        assert_eq!(reason(&denied(json!("alice@example.com"))), "other");
        assert_eq!(reason(&denied(json!("x".repeat(41)))), "other");
        assert_eq!(reason(&denied(json!(7))), "unknown");
    }

    #[test]
    fn audit_events_count_decisions_signins_and_issuances() {
        let before = |labels: &[&str]| DECISIONS.get(labels).get();
        let deny = before(&["broker", "deny", "forbidden"]);
        let issued = ISSUANCES.get(&["issued"]).get();
        audit_event(&denied(json!("forbidden")));
        audit_event(&AuditEvent::new(EventKind::CertificateIssued, Outcome::Success));
        assert_eq!(before(&["broker", "deny", "forbidden"]), deny + 1);
        assert_eq!(ISSUANCES.get(&["issued"]).get(), issued + 1);
        assert!(AUDIT_EVENTS.get(&["stream.denied", "deny"]).get() >= 1);
    }

    #[test]
    fn series_names_are_unique_and_prometheus_shaped() {
        let mut names: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        for name in &names {
            assert!(name.starts_with("palisade_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let counter = SERIES.iter().any(|s| s.name == *name && s.metric.kind() == "counter");
            assert_eq!(counter, name.ends_with("_total"), "{name}: counters and only counters end in _total");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERIES.len());
    }
}
