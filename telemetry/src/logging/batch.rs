//! Log lines to stderr in batches under a steady stream of them.
//!
//! Written one `write` each, a broker relaying a thousand new tunnels a
//! second makes two thousand system calls a second for its `stream allowed`
//! and `stream ended` lines (its connector a thousand more), and wakes
//! whatever reads its stderr (journald, a container runtime) as often; on a
//! small host that was about 4 % of a new tunnel's latency (BENCHMARKS.md,
//! Levers). So:
//!
//! - a line after a quiet spell (nothing written for [`FLUSH_DELAY`]) is
//!   written at once, so sporadic lines are never late;
//! - lines that follow within the delay are kept and written together, by a
//!   thread of their own, when the delay since the last write has passed;
//! - a warning or an error is written at once, after whatever is kept, so it
//!   is never late and never out of order;
//! - at most [`MAX_KEPT`] bytes are kept: a line that would pass it is
//!   written at once with the rest.
//!
//! What is kept is lost if the process is killed outright (at most
//! [`FLUSH_DELAY`] of informational lines; the audit trail, not the log, is
//! the record). [`Batcher::flush`] writes it out; the binaries call
//! [`super::flush`] before they exit, and the panic hook before the panic
//! message.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long lines may wait to share a write.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// The most bytes kept between writes.
pub const MAX_KEPT: usize = 256 * 1024;

/// The lines not yet written, and when the last write was.
struct Kept<W> {
    out: W,
    bytes: Vec<u8>,
    last_write: Option<Instant>,
    /// Whether the flushing thread has been started.
    flusher: bool,
}

/// Batches the lines written to `W` (stderr in the binaries, a buffer in tests).
pub struct Batcher<W> {
    kept: Mutex<Kept<W>>,
    pending: Condvar,
}

impl<W: Write + Send + 'static> Batcher<W> {
    /// A batcher writing to `out`.
    pub fn new(out: W) -> Arc<Self> {
        let kept = Kept { out, bytes: Vec::new(), last_write: None, flusher: false };
        Arc::new(Self { kept: Mutex::new(kept), pending: Condvar::new() })
    }

    /// Writes one formatted line now or soon; `urgent` lines (warnings and
    /// errors) now, after the kept ones.
    ///
    /// # Errors
    /// The write to `W` failed; the line and the kept ones are dropped.
    pub fn line(self: &Arc<Self>, line: &[u8], urgent: bool) -> io::Result<()> {
        let now = Instant::now();
        let mut kept = self.lock();
        let quiet = kept.last_write.is_none_or(|at| now.duration_since(at) >= FLUSH_DELAY);
        let full = kept.bytes.len() + line.len() > MAX_KEPT;
        let first = kept.bytes.is_empty();
        kept.bytes.extend_from_slice(line);
        if urgent || full || (quiet && first) {
            return kept.write_out(now);
        }
        if first {
            if !kept.flusher {
                kept.flusher = self.start_flusher();
                if !kept.flusher {
                    return kept.write_out(now);
                }
            }
            self.pending.notify_one();
        }
        Ok(())
    }

    /// Writes whatever is kept.
    ///
    /// # Errors
    /// The write to `W` failed; the kept lines are dropped.
    pub fn flush(&self) -> io::Result<()> {
        self.lock().write_kept()
    }

    /// [`Batcher::flush`] unless this very thread is in the middle of a
    /// write (a panic hook must not wait for a lock its own thread holds).
    pub fn flush_unless_busy(&self) {
        let mut kept = match self.kept.try_lock() {
            Ok(kept) => kept,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let _ = kept.write_kept();
    }

    fn lock(&self) -> MutexGuard<'_, Kept<W>> {
        // A panic while holding the lock leaves at worst a partial batch.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_flusher(self: &Arc<Self>) -> bool {
        let batcher = Arc::clone(self);
        std::thread::Builder::new().name("log-flush".into()).spawn(move || batcher.flush_when_due()).is_ok()
    }

    /// The flushing thread: waits for kept lines, then for the delay since
    /// the last write, then writes them.
    fn flush_when_due(&self) {
        let mut kept = self.lock();
        loop {
            while kept.bytes.is_empty() {
                kept = self.pending.wait(kept).unwrap_or_else(PoisonError::into_inner);
            }
            let now = Instant::now();
            let due = kept.last_write.map_or(now, |at| at + FLUSH_DELAY);
            if due > now {
                drop(kept);
                // Never longer than the delay, whatever the clock says.
                std::thread::sleep((due - now).min(FLUSH_DELAY));
                kept = self.lock();
            }
            // Nothing if a warning wrote them while this thread slept. A
            // failed write has nowhere to be reported; the lines are dropped.
            let _ = kept.write_kept();
        }
    }
}

impl<W: Write> Kept<W> {
    /// Writes the kept lines, if there are any.
    fn write_kept(&mut self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        self.write_out(Instant::now())
    }

    fn write_out(&mut self, now: Instant) -> io::Result<()> {
        let written = self.out.write_all(&self.bytes).and_then(|()| self.out.flush());
        self.bytes.clear();
        if self.bytes.capacity() > MAX_KEPT {
            self.bytes.shrink_to(MAX_KEPT);
        }
        self.last_write = Some(now);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One write: when, and what.
    type Write1 = (Instant, Vec<u8>);

    /// Records each write to it separately, with when it happened.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Write1>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push((Instant::now(), buf.to_vec()));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn calls(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().map(|(_, w)| String::from_utf8_lossy(w).into_owned()).collect()
        }

        fn times(&self) -> Vec<Instant> {
            self.0.lock().unwrap().iter().map(|(at, _)| *at).collect()
        }

        fn wait_for(&self, text: &str) -> Vec<String> {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.calls().concat() != text && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.calls()
        }
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_at_once() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        batcher.line(b"first\n", false).unwrap();
        assert_eq!(writes.calls(), ["first\n"]);
        std::thread::sleep(FLUSH_DELAY + Duration::from_millis(5));
        batcher.line(b"later\n", false).unwrap();
        assert_eq!(writes.calls(), ["first\n", "later\n"], "no wait after a quiet spell");
    }

    #[test]
    fn a_burst_is_written_together_once_the_delay_has_passed() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        for line in expected.split_inclusive('\n') {
            batcher.line(line.as_bytes(), false).unwrap();
        }
        let calls = writes.wait_for(&expected);
        assert_eq!(calls.concat(), expected, "every line, in order");
        assert_eq!(calls[0], "line 0\n", "the first line at once");
        // One more write for the other 99, unless the test thread was held up
        // longer than the delay in the middle of the burst.
        assert!(calls.len() < 10, "not batched: {} writes", calls.len());
        let times = writes.times();
        assert!(times[1] - times[0] >= FLUSH_DELAY - Duration::from_millis(1), "the batch came early");
    }

    #[test]
    fn a_warning_is_written_at_once_after_the_kept_lines() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        batcher.line(b"info 1\n", false).unwrap();
        batcher.line(b"info 2\n", false).unwrap();
        batcher.line(b"WARN\n", true).unwrap();
        assert_eq!(writes.calls().concat(), "info 1\ninfo 2\nWARN\n", "the warning is not kept");
        std::thread::sleep(FLUSH_DELAY * 2);
        assert_eq!(writes.calls().concat(), "info 1\ninfo 2\nWARN\n", "nothing written twice");
    }

    #[test]
    fn flush_writes_what_is_kept_and_nothing_twice() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        batcher.line(b"a\n", false).unwrap();
        batcher.line(b"b\n", false).unwrap();
        batcher.flush().unwrap();
        assert_eq!(writes.calls().concat(), "a\nb\n");
        batcher.flush().unwrap();
        std::thread::sleep(FLUSH_DELAY * 2);
        assert_eq!(writes.calls().concat(), "a\nb\n");
    }

    #[test]
    fn a_panic_hook_flushes_unless_the_lock_is_held() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        batcher.line(b"a\n", false).unwrap();
        batcher.line(b"b\n", false).unwrap();
        {
            let _held = batcher.lock();
            batcher.flush_unless_busy();
            assert_eq!(writes.calls(), ["a\n"], "nothing written while the lock was held");
        }
        batcher.flush_unless_busy();
        assert_eq!(writes.calls().concat(), "a\nb\n");
    }

    #[test]
    fn no_more_than_the_bound_is_kept() {
        let writes = Writes::default();
        let batcher = Batcher::new(writes.clone());
        let line = vec![b'x'; 1000];
        for _ in 0..2 * MAX_KEPT / line.len() {
            batcher.line(&line, false).unwrap();
            assert!(batcher.lock().bytes.len() <= MAX_KEPT, "more than the bound kept");
        }
        let largest = writes.calls().iter().map(String::len).max().unwrap_or(0);
        assert!(largest > line.len(), "nothing was batched");
        assert!(largest <= MAX_KEPT + line.len(), "{largest} bytes in one write");
    }
}
