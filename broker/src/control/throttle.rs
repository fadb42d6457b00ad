//! Throttles after extraction or abuse alerts (`[alerts]
//! throttle_after_alert`): the broker records one in the database when an
//! alert fires for an identity on a service ([`apply`]), and every
//! [`POLL`] sends each connector link the whole set for the services it
//! serves, when it changed ([`ThrottleLink`]). Each broker replica reads the
//! shared database, so a throttle set or cleared through one reaches
//! connectors linked to any other within about a second. Only the broker
//! decides: there is no connector frame that sets or clears one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::control::BrokerToConnector;
use palisade_proto::throttle::{MAX_THROTTLES, Throttle};
use serde_json::json;

use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::db::alert_throttles::{self, ThrottleRow};
use crate::state::Broker;

/// How often a link's throttles are read from the database.
pub(super) const POLL: Duration = Duration::from_millis(500);
/// What the audit event and the connector's request record say.
const REASON: &str = "throttled after alert";

/// Throttles `identity` on `service` after an alert, unless it already is;
/// the row and its `throttle.applied` event commit together.
pub(super) async fn apply(broker: &Broker, identity: &str, service: &str, rule: &str) {
    let rate = broker.config().alerts.throttle_requests_per_minute;
    let row = ThrottleRow {
        service: service.to_owned(),
        identity: identity.to_owned(),
        requests_per_minute: rate,
        rule: rule.to_owned(),
        created_ms: unix_ms(),
    };
    match record(broker, &row).await {
        Ok(true) => tracing::warn!(%identity, %service, rule, rate, "identity throttled after an alert"),
        Ok(false) => tracing::debug!(%identity, %service, "already throttled"),
        Err(e) => tracing::error!(%identity, %service, error = %e, "cannot record the throttle after an alert"),
    }
}

async fn record(broker: &Broker, row: &ThrottleRow) -> Result<bool, crate::audit::AuditError> {
    let mut tx = broker.db().begin_write().await?;
    if !alert_throttles::set_in(&mut tx, row).await? {
        return Ok(false);
    }
    let event = AuditEvent::new(EventKind::ThrottleApplied, Outcome::Success)
        .actor(row.identity.clone())
        .subject(row.service.clone())
        .detail(json!({
            "identity": row.identity,
            "service": row.service,
            "rule": row.rule,
            "requests_per_minute": row.requests_per_minute,
            "reason": REASON,
        }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// One link's side of throttles: what it was last sent.
pub(super) struct ThrottleLink {
    served: Vec<String>,
    sent: Option<Vec<Throttle>>,
}

impl ThrottleLink {
    pub(super) fn new(served: Vec<String>) -> Self {
        Self { served, sent: None }
    }

    /// The services this link serves.
    pub(super) fn served(&self) -> &[String] {
        &self.served
    }

    /// The set for this link's services, if it changed since it was last sent.
    /// A database error sends nothing: the connector keeps what it knew.
    pub(super) async fn poll(&mut self, broker: &Broker) -> Option<BrokerToConnector> {
        let rows = match alert_throttles::list(broker.db(), i64::try_from(MAX_THROTTLES).unwrap_or(i64::MAX)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the throttles; connectors keep the ones they know");
                return None;
            }
        };
        let set = for_link(rows, &self.served);
        if self.sent.as_ref() == Some(&set) {
            return None;
        }
        self.sent = Some(set.clone());
        Some(BrokerToConnector::Throttles { throttles: set })
    }
}

/// The throttles on the services in `served`, in a stable order.
fn for_link(rows: Vec<ThrottleRow>, served: &[String]) -> Vec<Throttle> {
    let mut set: Vec<Throttle> = rows
        .into_iter()
        .filter(|row| served.contains(&row.service))
        .map(|row| Throttle {
            service: row.service,
            identity: row.identity,
            requests_per_minute: row.requests_per_minute,
        })
        .collect();
    set.sort_by(|a, b| (&a.service, &a.identity).cmp(&(&b.service, &b.identity)));
    set
}

fn unix_ms() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, identity: &str) -> ThrottleRow {
        ThrottleRow {
            service: service.into(),
            identity: identity.into(),
            requests_per_minute: 6,
            rule: "prompt_sweep".into(),
            created_ms: 1,
        }
    }

    #[test]
    fn a_link_is_sent_only_the_throttles_of_the_services_it_serves() {
        let rows = vec![row("llm", "b"), row("other", "a"), row("llm", "a")];
        let set = for_link(rows, &["llm".to_owned()]);
        let names: Vec<(&str, &str)> = set.iter().map(|t| (t.service.as_str(), t.identity.as_str())).collect();
        assert_eq!(names, [("llm", "a"), ("llm", "b")]);
        assert!(set.iter().all(|t| t.requests_per_minute == 6));
    }
}
