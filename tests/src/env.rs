//! One test's world: a temporary directory and the output of every process
//! started in it.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod load_gate;

use self::load_gate::{Pass, Share};
use crate::broker::BrokerBuilder;
use crate::process::LogBook;
use crate::store::{Store, TestDatabase};

/// A test's deployment root. Cheap to clone; the directory is removed (and,
/// if the test failed, every process's output printed) when the last clone
/// and every process started from it are gone.
#[derive(Clone)]
pub struct TestEnv {
    inner: Arc<Inner>,
}

struct Inner {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    logs: LogBook,
    databases: Mutex<Vec<TestDatabase>>,
    /// Released last, once every process of the test is gone.
    _pass: Pass,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.logs.dump();
            eprintln!("test directory: {}", self.path.display());
        }
        if std::env::var_os("PALISADE_TEST_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh temporary directory, for a test that may run beside others.
    #[must_use]
    pub fn new() -> Self {
        Self::with_share(Share::Shared)
    }

    /// A fresh temporary directory for a test that floods the broker on
    /// purpose: it waits for the tests already running and runs with no
    /// other test of this binary beside it (see `env/load_gate.rs`).
    #[must_use]
    pub fn alone() -> Self {
        Self::with_share(Share::Exclusive)
    }

    fn with_share(share: Share) -> Self {
        let _pass = Pass::take(share);
        let dir = tempfile::Builder::new().prefix("palisade-e2e-").tempdir().expect("create a temporary directory");
        let path = dir.path().to_path_buf();
        Self {
            inner: Arc::new(Inner {
                dir: Some(dir),
                path,
                logs: LogBook::default(),
                databases: Mutex::default(),
                _pass,
            }),
        }
    }

    /// The test's root directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A new, empty, private (0700) directory under the root, named after
    /// `name` (with a number appended if the name was used before in this test).
    #[must_use]
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        for n in 1.. {
            let dir = if n == 1 { self.path().join(name) } else { self.path().join(format!("{name}-{n}")) };
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("create {}: {e}", dir.display()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Starts describing a broker.
    pub fn broker(&self) -> BrokerBuilder {
        BrokerBuilder::new(self.clone())
    }

    /// A database for a new broker on the store this run tests
    /// ([`Store::current`]): `None` for SQLite (the broker's own file), else
    /// the URL of a fresh PostgreSQL database that lives as long as this test.
    #[must_use]
    pub fn new_database(&self) -> Option<String> {
        match Store::current() {
            Store::Sqlite => None,
            Store::Postgres => {
                let db = TestDatabase::create();
                let url = db.url().to_owned();
                self.inner.databases.lock().expect("not poisoned").push(db);
                Some(url)
            }
        }
    }

    /// Starts `cmd` as a process whose output joins this test's logs.
    pub fn spawn(&self, name: &str, cmd: tokio::process::Command) -> crate::Proc {
        crate::Proc::spawn(name, cmd, self.logs())
    }

    pub(crate) fn logs(&self) -> &LogBook {
        &self.inner.logs
    }
}
