//! A wall clock a test can move under a running process: libfaketime
//! (Debian's `faketime` package, which `scripts/setup-test-deps` installs)
//! preloaded into it, re-reading its offset from a file at every clock
//! reading. The monotonic clock is left alone, as a real jump of the wall
//! clock (an NTP step, a hand-set clock, a laptop waking up) leaves it, so
//! timers and timeouts run as before.
//!
//! This works on our binaries because they link glibc dynamically and read
//! the time through its `clock_gettime`, which the preloaded library replaces.

use std::path::{Path, PathBuf};

use crate::env::TestEnv;

/// Where distributions put the multi-threaded variant of the library.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime",
    "/usr/lib/aarch64-linux-gnu/faketime",
    "/usr/lib/faketime",
    "/usr/local/lib/faketime",
];
const LIBRARY: &str = "libfaketimeMT.so.1";

/// An offset file and the environment that makes a process follow it.
pub struct FakeClock {
    file: PathBuf,
    library: PathBuf,
}

impl FakeClock {
    /// A clock on time (offset `+0`).
    ///
    /// # Panics
    /// libfaketime is not installed: `apt-get install faketime` (`scripts/setup-test-deps` does).
    #[must_use]
    pub fn new(env: &TestEnv) -> Self {
        let library =
            LIBRARY_DIRS.iter().map(|dir| Path::new(dir).join(LIBRARY)).find(|path| path.is_file()).unwrap_or_else(
                || panic!("{LIBRARY} is not installed: `apt-get install faketime` (scripts/setup-test-deps does)"),
            );
        let clock = Self { file: env.fresh_dir("clock").join("offset"), library };
        clock.set_offset(0);
        clock
    }

    /// Moves the clock to `seconds` from the real time (negative: behind).
    /// The processes see it at their next clock reading.
    pub fn set_offset(&self, seconds: i64) {
        // Renamed into place, so a reader never sees half a line.
        let fresh = self.file.with_extension("new");
        std::fs::write(&fresh, format!("{seconds:+}\n")).expect("write the clock offset");
        std::fs::rename(&fresh, &self.file).expect("move the clock offset into place");
    }

    /// The variables that put a process on this clock.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    }
}
