//! "Tell the broker once per control link, and again every so often": the
//! assertion key and the model inventory ride on the link of whichever
//! tunnel needs them first, without touching the link's own code.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_proto::control::ConnectorToBroker;
use tokio::sync::mpsc;

type Sent = Vec<(mpsc::WeakSender<ConnectorToBroker>, String, Instant)>;

/// What was sent on which link, and when.
pub(crate) struct PerLink {
    every: Duration,
    sent: Mutex<Sent>,
}

impl PerLink {
    pub(crate) const fn new(every: Duration) -> Self {
        Self { every, sent: Mutex::new(Vec::new()) }
    }

    /// Whether `key` is due on `control` at `now`; if so it counts as sent now.
    pub(crate) fn due(&self, control: &mpsc::Sender<ConnectorToBroker>, key: &str, now: Instant) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.retain(|(link, _, _)| link.upgrade().is_some());
        let same = |link: &mpsc::WeakSender<ConnectorToBroker>, k: &str| {
            k == key && link.upgrade().is_some_and(|l| l.same_channel(control))
        };
        if sent.iter().any(|(link, k, at)| same(link, k) && now.saturating_duration_since(*at) < self.every) {
            return false;
        }
        sent.retain(|(link, k, _)| !same(link, k));
        sent.push((control.downgrade(), key.to_owned(), now));
        true
    }

    /// Sending failed after all: due again next time.
    pub(crate) fn forget(&self, control: &mpsc::Sender<ConnectorToBroker>, key: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.retain(|(link, k, _)| !(k == key && link.upgrade().is_some_and(|l| l.same_channel(control))));
    }
}
