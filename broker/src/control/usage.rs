//! Quota usage on a connector's control link, so the connector replicas of
//! a service share one per-identity quota.
//!
//! A connector reports what its process (an *instance*) counted
//! ([`ConnectorToBroker::Usage`]). A report is checked whole — bounded,
//! only services this link said it serves, only current windows, one
//! instance per link — and added to that instance's own rows; a refused
//! report changes nothing. Every [`POLL`] the link is sent what the other
//! instances counted for the services it serves: each broker replica reads
//! the shared database, so a count reported through one replica reaches
//! connectors linked to another within about a second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_proto::control::BrokerToConnector;
use palisade_proto::usage::{MAX_ENTRIES, UsageDelta, check_report};

use crate::db::quota_usage::{self, Reporter};
use crate::relay::accept::Peer;
use crate::state::Broker;

/// How often a link is sent the other instances' counts.
pub(super) const POLL: Duration = Duration::from_millis(500);
/// Counts that changed this long before a poll are sent again: covers the
/// poll interval and the clocks of the replicas that wrote them.
const RESEND_WITHIN_MS: i64 = 5_000;
/// The most keys sent per service and poll (the most recently changed).
const MAX_SENT_PER_SERVICE: i64 = 1_024;
/// The most report entries taken from one link per second.
const MAX_ENTRIES_PER_SECOND: usize = 8 * MAX_ENTRIES;

/// One link's side of usage sharing.
pub(super) struct UsageLink {
    served: Vec<String>,
    /// The instance this link reports for, once it said.
    instance: Option<String>,
    /// Counts changed since then are due on the next poll.
    since_ms: i64,
    /// Entries taken in the current second, and when it began.
    second: (Instant, usize),
}

impl UsageLink {
    pub(super) fn new(served: Vec<String>) -> Self {
        Self { served, instance: None, since_ms: 0, second: (Instant::now(), 0) }
    }

    /// Checks a report and adds it to the instance's counts, or refuses it whole.
    pub(super) async fn report(&mut self, broker: &Broker, peer: &Peer, instance: String, entries: Vec<UsageDelta>) {
        let connector_id = &peer.identity.id().id;
        if let Err(why) = self.accept(&instance, &entries) {
            return tracing::warn!(connector = %peer.identity.name(), %why, "refused a quota usage report");
        }
        if !entries.is_empty() {
            let reporter = Reporter { connector_id, instance: &instance };
            if let Err(e) = quota_usage::add(broker.db(), reporter, &entries, unix_ms()).await {
                return tracing::error!(connector = %peer.identity.name(), error = %e, "cannot store quota usage");
            }
        }
        self.instance = Some(instance);
    }

    fn accept(&mut self, instance: &str, entries: &[UsageDelta]) -> Result<(), String> {
        if self.instance.as_deref().is_some_and(|known| known != instance) {
            return Err("the link already reports for another instance".into());
        }
        check_report(instance, entries, &self.served, u64::try_from(unix_ms()).unwrap_or(0))
            .map_err(|e| e.to_string())?;
        let (started, taken) = &mut self.second;
        if started.elapsed() >= Duration::from_secs(1) {
            *started = Instant::now();
            *taken = 0;
        }
        if *taken + entries.len() > MAX_ENTRIES_PER_SECOND {
            return Err(format!("more than {MAX_ENTRIES_PER_SECOND} entries in a second"));
        }
        *taken += entries.len();
        Ok(())
    }

    /// The frames that tell the connector what other instances counted lately.
    pub(super) async fn elsewhere(&mut self, broker: &Broker, peer: &Peer) -> Vec<BrokerToConnector> {
        let Some(instance) = self.instance.as_deref() else { return Vec::new() };
        let reporter = Reporter { connector_id: &peer.identity.id().id, instance };
        let now = unix_ms();
        let mut entries = Vec::new();
        for service in &self.served {
            match quota_usage::elsewhere(broker.db(), reporter, service, now, self.since_ms, MAX_SENT_PER_SERVICE).await
            {
                Ok(found) => entries.extend(found),
                Err(e) => {
                    tracing::warn!(connector = %peer.identity.name(), error = %e, "cannot read shared quota usage");
                    return Vec::new();
                }
            }
        }
        self.since_ms = now - RESEND_WITHIN_MS;
        entries.chunks(MAX_ENTRIES).map(|chunk| BrokerToConnector::UsageElsewhere { entries: chunk.to_vec() }).collect()
    }
}

fn unix_ms() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}
