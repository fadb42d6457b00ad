//! Tests that load the machine on purpose — thousands of handshakes or
//! streams thrown at a broker — run alone. Their assertions are about what
//! the broker does under *its* flood (a held tunnel keeps working, another
//! identity is served within seconds); on a two-core CI machine a second
//! flood in a test running beside it would measure the machine instead.
//!
//! Every [`TestEnv`](super::TestEnv) holds a pass: shared for an ordinary
//! test, exclusive for a flood. A waiting exclusive pass keeps new shared
//! passes out, so a flood waits only for the tests already running. A pass
//! that cannot be had within [`PATIENCE`] is taken anyway, with a warning:
//! a leaked environment costs the isolation, never a hung suite.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a test waits for its pass before it runs regardless.
const PATIENCE: Duration = Duration::from_secs(180);

/// What a test asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Share {
    /// Runs beside other ordinary tests.
    Shared,
    /// Runs with no other test of this process.
    Exclusive,
}

struct State {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

impl State {
    fn admits(&self, share: Share) -> bool {
        match share {
            Share::Shared => !self.exclusive && self.exclusive_waiting == 0,
            Share::Exclusive => !self.exclusive && self.shared == 0,
        }
    }
}

static STATE: Mutex<State> = Mutex::new(State { shared: 0, exclusive: false, exclusive_waiting: 0 });
static CHANGED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A test's claim on the machine, given back when dropped.
#[derive(Debug)]
pub(crate) struct Pass {
    share: Share,
}

impl Pass {
    /// Waits until `share` is admitted (or [`PATIENCE`] ran out) and takes it.
    pub(crate) fn take(share: Share) -> Self {
        let deadline = Instant::now() + PATIENCE;
        let mut state = state();
        if share == Share::Exclusive {
            state.exclusive_waiting += 1;
        }
        while !state.admits(share) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                eprintln!("load gate: no {share:?} pass after {PATIENCE:?}; running without it");
                break;
            };
            state = CHANGED.wait_timeout(state, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        match share {
            Share::Shared => state.shared += 1,
            Share::Exclusive => {
                state.exclusive_waiting -= 1;
                state.exclusive = true;
            }
        }
        Self { share }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = state();
        match self.share {
            Share::Shared => state.shared -= 1,
            Share::Exclusive => state.exclusive = false,
        }
        drop(state);
        CHANGED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Takes `share` on another thread; the receiver yields the pass once held.
    fn take_elsewhere(share: Share) -> mpsc::Receiver<Pass> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(Pass::take(share)).expect("the test waits"));
        rx
    }

    const SETTLE: Duration = Duration::from_millis(300);
    const SOON: Duration = Duration::from_secs(5);

    #[test]
    fn an_exclusive_pass_waits_for_running_tests_and_keeps_new_ones_out_until_it_is_done() {
        let running = Pass::take(Share::Shared);
        let flood = take_elsewhere(Share::Exclusive);
        assert!(flood.recv_timeout(SETTLE).is_err(), "the flood waits for the test already running");
        let next = take_elsewhere(Share::Shared);
        assert!(next.recv_timeout(SETTLE).is_err(), "a new test waits behind the waiting flood");

        drop(running);
        let flood = flood.recv_timeout(SOON).expect("the flood runs once the running test is done");
        assert!(next.recv_timeout(SETTLE).is_err(), "no test runs beside the flood");

        drop(flood);
        let next = next.recv_timeout(SOON).expect("the next test runs once the flood is done");
        let beside = take_elsewhere(Share::Shared);
        let beside = beside.recv_timeout(SOON).expect("ordinary tests run side by side");
        drop((next, beside));
    }
}
