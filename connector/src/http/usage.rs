//! Sharing quota counts with the broker over the control links.
//!
//! Every [`REPORT_EVERY`], each welcomed link takes what this process
//! counted since the last report; whichever link takes a count reports
//! it, so each count reaches the broker once. The broker answers, on every
//! link, with what the other connector instances counted for the services
//! this one serves ([`learn`]). Without any link, counts wait (bounded) and
//! the connector keeps enforcing its own counts and what it last heard.

use std::time::Duration;

use palisade_proto::control::ConnectorToBroker;
use palisade_proto::usage::{MAX_ENTRIES, UsageElsewhere};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::limits;

/// How often a link reports this process's counts.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(250);
/// At most this many report frames per link and tick.
const MAX_FRAMES_PER_TICK: usize = 4;

/// Tells the broker on a new link which instance this process is (an empty
/// report), so what it sends back leaves this process's own counts out.
pub(crate) fn announce(control: &mpsc::Sender<ConnectorToBroker>) {
    let frame = ConnectorToBroker::Usage { instance: limits::instance().to_owned(), entries: Vec::new() };
    if control.try_send(frame).is_err() {
        tracing::warn!("cannot announce this connector's quota counts on the new link");
    }
}

/// Reports what was counted since the last report, if anything.
pub(crate) fn report(control: &mpsc::Sender<ConnectorToBroker>) {
    let limiter = limits::limiter();
    for _ in 0..MAX_FRAMES_PER_TICK {
        let entries = limiter.take_report(unix_ms(), MAX_ENTRIES);
        if entries.is_empty() {
            return;
        }
        let frame = ConnectorToBroker::Usage { instance: limits::instance().to_owned(), entries };
        match control.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(frame) | TrySendError::Closed(frame)) => {
                if let ConnectorToBroker::Usage { entries, .. } = frame {
                    limiter.put_back(entries);
                }
                return;
            }
        }
    }
}

/// Takes in what the broker says the other instances counted.
pub(crate) fn learn(entries: Vec<UsageElsewhere>) {
    limits::limiter().learn(entries, unix_ms());
}

fn unix_ms() -> u64 {
    limits::Now::current().unix_ms
}
