//! Events nobody waits on, left for the SQLite writer thread without
//! waking it.
//!
//! A tunnel's `stream.allowed` (durable in the intent journal already) and
//! its `stream.ended` wait for no one. Sent through the channel, each would
//! wake the writer's thread, a context switch and a commit per tunnel. So
//! while the writer is due to look again on its own (it is awake, or waits
//! with a deadline), such an event is left here, and the writer takes it
//! with whatever wakes it next, or at the latest [`LINGER`] after it was
//! left: busy tunnels cost one commit per [`LINGER`], not one each. A
//! parked writer (waiting for nothing sooner than its checkpoint timer) is
//! reached through the channel instead.
//!
//! [`LINGER`]: super::writer::LINGER

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::writer::Job;

/// What the callers left for the writer, and whether the writer still looks on its own.
#[derive(Default)]
pub(super) struct Lingering {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    jobs: Vec<(Instant, Job)>,
    /// The writer waits for nothing sooner than its checkpoint timer.
    parked: bool,
    /// The writer has stopped: nothing is taken any more.
    closed: bool,
}

impl Lingering {
    /// Leaves `job` for the writer (`None`), or hands it back to be sent
    /// through the channel if the writer would not look again on its own.
    pub(super) fn leave(&self, job: Job) -> Option<Job> {
        let mut state = self.lock();
        // A full list goes through the bounded channel, which makes callers wait.
        if state.parked || state.closed || state.jobs.len() >= super::writer::QUEUE {
            return Some(job);
        }
        state.jobs.push((Instant::now(), job));
        None
    }

    /// Keeps a job the writer received through the channel, as if left now.
    pub(super) fn keep(&self, job: Job) {
        self.lock().jobs.push((Instant::now(), job));
    }

    /// Moves every event left here into `batch`, oldest first.
    pub(super) fn take_into(&self, batch: &mut Vec<Job>) {
        batch.extend(self.lock().jobs.drain(..).map(|(_, job)| job));
    }

    /// When the oldest event left here is due: `linger` after it was left.
    pub(super) fn due(&self, linger: Duration) -> Option<Instant> {
        self.lock().jobs.first().map(|(left, _)| *left + linger)
    }

    /// Marks the writer parked if nothing is left here; `false` if something is.
    pub(super) fn park_if_empty(&self) -> bool {
        let mut state = self.lock();
        state.parked = state.jobs.is_empty();
        state.parked
    }

    /// The writer is awake and looks here again before it next waits.
    pub(super) fn unpark(&self) {
        self.lock().parked = false;
    }

    /// The writer stops: later events go to the channel (which refuses them),
    /// and those still here are dropped, so their callers hear that the
    /// writer is gone instead of waiting for ever (a journaled one stays in
    /// the journal for the next start).
    pub(super) fn close(&self) {
        let stranded = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.jobs)
        };
        drop(stranded);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a list of jobs behind: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::audit::{AuditEvent, EventKind, Outcome};

    fn job() -> Job {
        let (done, _) = tokio::sync::oneshot::channel();
        let event = AuditEvent::new(EventKind::StreamEnded, Outcome::Success);
        Job { event, at: SystemTime::now(), lazy: true, journaled: false, done }
    }

    #[test]
    fn jobs_are_left_only_for_a_writer_that_looks_again_and_only_up_to_the_queue_size() {
        let lingering = Lingering::default();
        for _ in 0..super::super::writer::QUEUE {
            assert!(lingering.leave(job()).is_none());
        }
        assert!(lingering.leave(job()).is_some(), "a full list sends through the bounded channel");
        let mut batch = Vec::new();
        lingering.take_into(&mut batch);
        assert_eq!(batch.len(), super::super::writer::QUEUE);
        assert!(lingering.park_if_empty());
        assert!(lingering.leave(job()).is_some(), "a parked writer is woken through the channel");
        lingering.unpark();
        assert!(lingering.leave(job()).is_none());
        assert!(!lingering.park_if_empty(), "not parked while something is left");
        lingering.close();
        assert!(lingering.due(Duration::ZERO).is_none(), "dropped at close");
        assert!(lingering.leave(job()).is_some(), "nothing is left for a stopped writer");
    }
}
