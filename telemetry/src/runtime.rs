//! How many worker threads the async runtime of a broker or connector gets.
//!
//! By default one per CPU the process may use, less one, and at least one.
//! Neither process is only its runtime: the broker's audit writer commits
//! every tunnel's `stream.allowed` event on a thread of its own, log lines are
//! written by another, and the kernel's network stack does part of every
//! relayed packet's work on some CPU. A runtime with a worker on every CPU
//! competes with them, and its workers wake each other to share out tasks,
//! each wake-up a cross-CPU interrupt; on a two-CPU host that is most of what
//! a second worker does. Measured there (`BENCHMARKS.md`, Levers): broker and
//! connector on one worker each set up a new tunnel about a tenth faster with
//! a seventh less CPU, and relay bulk data about a tenth faster.
//!
//! An operator sets the count in the process's config, or with tokio's own
//! `TOKIO_WORKER_THREADS`, which the config wins over.

use std::fmt;
use std::num::NonZeroUsize;

use crate::{Gauge, Series};

/// Tokio's variable for its worker count, honoured when the config sets none.
pub const WORKERS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The worker threads of the runtime [`Workers::runtime`] built last, as the runtime reports them.
pub static WORKER_THREADS: Gauge = Gauge::new();

/// [`WORKER_THREADS`] as both processes export it.
pub const WORKER_THREADS_SERIES: Series = Series {
    name: "palisade_runtime_worker_threads",
    help: "Worker threads of the async runtime (see [relay] worker_threads / worker_threads).",
    metric: &WORKER_THREADS,
};

/// Where the worker count came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// The process's config file (or its environment override).
    Configured,
    /// [`WORKERS_ENV`].
    Environment,
    /// One less than the CPUs the process may use.
    Host {
        /// CPUs the process may use (affinity and cgroup quota counted).
        cpus: NonZeroUsize,
    },
}

/// The worker count chosen for a runtime and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers {
    /// Worker threads of the multi-threaded runtime.
    pub threads: NonZeroUsize,
    /// Where the count came from.
    pub sizing: Sizing,
}

/// [`WORKERS_ENV`] holds something that is not a thread count.
#[derive(Debug, thiserror::Error)]
#[error("{WORKERS_ENV}={0:?} is not a number of worker threads: set a whole number of at least 1, or unset it")]
pub struct InvalidWorkers(String);

impl Workers {
    /// The count for this process: `configured`, else [`WORKERS_ENV`], else
    /// one less than the CPUs it may use.
    ///
    /// # Errors
    /// [`WORKERS_ENV`] is set to something other than a positive whole number.
    pub fn for_this_process(configured: Option<NonZeroUsize>) -> Result<Workers, InvalidWorkers> {
        let env = std::env::var(WORKERS_ENV).ok();
        let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        Workers::choose(configured, env.as_deref(), cpus)
    }

    /// [`Workers::for_this_process`] with its inputs given.
    ///
    /// # Errors
    /// `env` is set to something other than a positive whole number.
    pub fn choose(
        configured: Option<NonZeroUsize>,
        env: Option<&str>,
        cpus: NonZeroUsize,
    ) -> Result<Workers, InvalidWorkers> {
        if let Some(threads) = configured {
            return Ok(Workers { threads, sizing: Sizing::Configured });
        }
        if let Some(value) = env {
            let threads = value.trim().parse::<NonZeroUsize>().map_err(|_| InvalidWorkers(value.to_owned()))?;
            return Ok(Workers { threads, sizing: Sizing::Environment });
        }
        let threads = NonZeroUsize::new(cpus.get() - 1).unwrap_or(NonZeroUsize::MIN);
        Ok(Workers { threads, sizing: Sizing::Host { cpus } })
    }

    /// A multi-threaded runtime with this many workers, I/O and timers enabled.
    ///
    /// # Errors
    /// The runtime's threads or its I/O driver could not be created.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(self.threads.get()).enable_all().build()?;
        WORKER_THREADS.set(i64::try_from(runtime.metrics().num_workers()).unwrap_or(i64::MAX));
        Ok(runtime)
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.threads.get() == 1 { "" } else { "s" };
        write!(f, "{} worker thread{plural} ", self.threads)?;
        match self.sizing {
            Sizing::Configured => f.write_str("(configured)"),
            Sizing::Environment => write!(f, "({WORKERS_ENV})"),
            Sizing::Host { cpus } => write!(f, "(one less than the {cpus} CPUs this process may use, at least one)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).expect("a positive count")
    }

    #[test]
    fn the_host_keeps_one_cpu_for_the_threads_outside_the_runtime() {
        for (cpus, threads) in [(1, 1), (2, 1), (3, 2), (8, 7), (64, 63)] {
            let chosen = Workers::choose(None, None, n(cpus)).expect("no environment to reject");
            assert_eq!(chosen, Workers { threads: n(threads), sizing: Sizing::Host { cpus: n(cpus) } });
        }
    }

    #[test]
    fn the_config_wins_over_the_environment_and_the_host() {
        let chosen = Workers::choose(Some(n(6)), Some("3"), n(2)).expect("configured");
        assert_eq!(chosen, Workers { threads: n(6), sizing: Sizing::Configured });
        // Even an environment value that would be refused: the config decides.
        let chosen = Workers::choose(Some(n(2)), Some("lots"), n(2)).expect("configured");
        assert_eq!(chosen.threads, n(2));
    }

    #[test]
    fn tokios_variable_is_honoured_without_a_config() {
        let chosen = Workers::choose(None, Some(" 4 "), n(2)).expect("a valid count");
        assert_eq!(chosen, Workers { threads: n(4), sizing: Sizing::Environment });
    }

    #[test]
    fn a_variable_that_is_no_thread_count_is_refused_with_what_to_do() {
        for bad in ["0", "-1", "two", "", "1.5"] {
            let error = Workers::choose(None, Some(bad), n(2)).expect_err(bad).to_string();
            assert!(error.contains(WORKERS_ENV) && error.contains("at least 1"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_runtime_has_the_chosen_number_of_workers() {
        let workers = Workers { threads: n(3), sizing: Sizing::Configured };
        let runtime = workers.runtime().expect("a runtime");
        assert_eq!(runtime.metrics().num_workers(), 3);
        assert_eq!(WORKER_THREADS.get(), 3, "exported as the runtime reports it");
        assert_eq!(workers.to_string(), "3 worker threads (configured)");
    }
}
