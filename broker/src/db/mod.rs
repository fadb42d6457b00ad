//! The broker's SQL: one file per table family, all through [`Db`].
//!
//! SQLite is the embedded default: one file in the data directory, WAL mode,
//! `synchronous=NORMAL`, a 5 s busy timeout, foreign keys on, and the log
//! checkpointed by a background task rather than by commits ([`wal`]). Several
//! processes may use the same file (the running broker and the admin CLI).
//! PostgreSQL (`database_url = "postgres://…"`) is the store broker replicas
//! share. The same SQL runs on both: `$N` placeholders, BIGINT flags and
//! epoch-second times, no engine-specific functions; `migrations/sqlite` and
//! `migrations/postgres` hold the same schema in each dialect.

pub mod alert_throttles;
pub mod certificates;
pub mod connector_links;
pub mod credentials;
pub mod identities;
pub mod login_state;
pub mod meta;
mod migrations;
pub mod order;
pub mod quota_usage;
pub mod replicas;
pub mod revocations;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};

pub use identities::IdentityRecord;
pub use order::OrderBy;

/// The key of the PostgreSQL advisory lock every writing transaction holds
/// (see [`Db::begin_write`]). Any fixed 64-bit value works; this one spells
/// "palisade" in ASCII.
const PG_WRITE_LOCK: i64 = 0x7061_6c69_7361_6465;

/// The SQL engine behind a [`Db`], chosen by the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`: one file, the embedded default for a single broker.
    Sqlite,
    /// `postgres://…` or `postgresql://…`: shared by broker replicas.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    ///
    /// # Errors
    /// The scheme is neither `sqlite:` nor `postgres:` / `postgresql:`.
    pub fn of_url(url: &str) -> Result<Backend, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(sqlx::Error::Configuration(
                "database_url must start with sqlite:// (one broker) or postgres:// (replicas sharing one database)"
                    .into(),
            ))
        }
    }
}

/// A handle to the broker's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    files_dir: Option<PathBuf>,
    /// SQLite: the database file, as SQLite resolved it; `None` in memory.
    sqlite_file: Option<PathBuf>,
    /// SQLite: the task that checkpoints the write-ahead log; stops with the last handle.
    _checkpointer: Option<Arc<wal::Checkpointer>>,
}

impl Db {
    /// Opens the database at `url` (creating a SQLite file if missing) and
    /// applies pending migrations for its backend.
    ///
    /// # Errors
    /// The URL names no supported backend, the database cannot be reached, or a
    /// migration fails.
    pub async fn open(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // A SQLite connection is a file handle in this process: checking it
            // before each use (a round trip to its thread) only costs time.
            // A PostgreSQL connection can die with its server; check those.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _| Box::pin(async move { prepare_connection(conn, backend).await }))
            // A connection whose COMMIT or ROLLBACK failed (a full disk, an I/O
            // error) can come back still inside its transaction; every later
            // `BEGIN` on it would fail. Such a connection is closed, not reused.
            .after_release(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
            .connect(&connect_url(url, backend))
            .await?;
        let migrated = match migrations::migrator(backend) {
            Ok(migrator) => migrator.run(&pool).await,
            Err(e) => Err(e),
        };
        migrated.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        let (files_dir, sqlite_file, checkpointer) = match backend {
            Backend::Sqlite => (sqlite_dir(url), main_file(&pool).await?, Some(Arc::new(wal::start(pool.clone())))),
            Backend::Postgres => (None, None, None),
        };
        Ok(Db { pool, backend, files_dir, sqlite_file, _checkpointer: checkpointer })
    }

    /// SQLite: the database file, for a connection of its own outside the
    /// pool (the audit writer's). `None` for PostgreSQL or an in-memory database.
    #[must_use]
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Sets the directory for the files that belong with this database (the
    /// audit checkpoint key): a broker's data directory. A SQLite database
    /// already has one, the directory of its file.
    #[must_use]
    pub fn with_files_dir(mut self, dir: &Path) -> Db {
        if self.files_dir.is_none() {
            self.files_dir = Some(dir.to_path_buf());
        }
        self
    }

    /// The directory for files that belong with this database, if known.
    #[must_use]
    pub fn files_dir(&self) -> Option<&Path> {
        self.files_dir.as_deref()
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which engine this database runs on.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that holds the database's single write lock.
    ///
    /// Use it for every transaction that writes. On SQLite this is
    /// `BEGIN IMMEDIATE`: a deferred transaction that reads first and writes
    /// later fails with `SQLITE_BUSY` when another writer committed in between,
    /// and the busy timeout does not help in that case. On PostgreSQL the same
    /// guarantee (writers, in every replica, run one at a time and each sees
    /// what the previous one committed) comes from a transaction-scoped
    /// advisory lock taken first thing in the transaction.
    ///
    /// # Errors
    /// No connection, or the lock could not be taken (SQLite: within the busy timeout).
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)").bind(PG_WRITE_LOCK).execute(&mut *tx).await?;
                Ok(tx)
            }
        }
    }

    /// Closes every connection; waits for checked-out ones to come back.
    /// A SQLite file's write-ahead log is then folded into it
    /// ([`wal::fold_at_close`]).
    pub async fn close(&self) {
        self.pool.close().await;
        let Some(file) = self.sqlite_file.clone() else { return };
        let folded = tokio::task::spawn_blocking(move || wal::fold_at_close(&file)).await;
        if let Ok(Err(e)) = folded {
            tracing::debug!(error = %e, "could not fold the write-ahead log at close; the next open replays it");
        }
    }
}

/// The directory of a SQLite URL's file; `None` for an in-memory database.
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = Path::new(rest.split('?').next().unwrap_or(rest));
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return None;
    }
    let dir = path.parent()?;
    Some(if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() })
}

/// The file SQLite opened for the `main` schema (`PRAGMA database_list`);
/// `None` in memory, where the name is empty.
async fn main_file(pool: &AnyPool) -> Result<Option<PathBuf>, sqlx::Error> {
    let files = sqlx::query_as::<Any, (i64, String, String)>("PRAGMA database_list").fetch_all(pool).await?;
    Ok(files
        .into_iter()
        .find(|(_, schema, _)| schema == "main")
        .map(|(_, _, file)| PathBuf::from(file))
        .filter(|file| !file.as_os_str().is_empty()))
}

/// The URL handed to the driver: a SQLite file is created when missing.
fn connect_url(url: &str, backend: Backend) -> String {
    match backend {
        Backend::Sqlite if !url.contains("mode=") => {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        }
        _ => url.to_owned(),
    }
}

/// Per-connection settings. SQLite: WAL (readers never wait for the writer),
/// `synchronous=NORMAL` (a commit survives a killed process; WAL keeps it
/// consistent across power loss), no checkpoint inside a commit (the
/// [`wal`] task does them, and cuts the log file back to 64 MiB when it
/// starts over), a 5 s busy timeout and foreign keys on.
async fn prepare_connection(conn: &mut AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        for pragma in SQLITE_PRAGMAS {
            conn.execute(pragma).await?;
        }
    }
    Ok(())
}

/// The settings of every SQLite connection the broker opens, the pool's and
/// the audit writer's alike (see [`prepare_connection`]).
pub const SQLITE_PRAGMAS: [&str; 6] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA wal_autocheckpoint = 0",
    // 64 MiB: what the log file is cut back to when it starts over (wal).
    "PRAGMA journal_size_limit = 67108864",
    SQLITE_BUSY_TIMEOUT,
    "PRAGMA foreign_keys = ON",
];

/// How long a SQLite connection waits for another's lock before it fails.
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000";

/// The database URL for a SQLite file.
#[must_use]
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A database URL fit for a log line or an error message: any password in it
/// replaced by `***`.
#[must_use]
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &url[..scheme_end], &authority[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// Seconds since the Unix epoch, as stored in the database.
#[must_use]
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a database error is a UNIQUE or PRIMARY KEY violation.
#[must_use]
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Backend, connect_url, redacted, sqlite_dir};

    #[test]
    fn the_url_scheme_picks_the_backend_and_anything_else_is_refused() {
        assert_eq!(Backend::of_url("sqlite:///var/lib/palisade/palisade.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of_url("postgres://p@db/palisade").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of_url("postgresql://p@db/palisade").unwrap(), Backend::Postgres);
        let err = Backend::of_url("mysql://p@db/palisade").unwrap_err().to_string();
        assert!(err.contains("sqlite://") && err.contains("postgres://"), "{err}");
    }

    #[test]
    fn a_sqlite_file_is_created_when_missing_unless_the_url_says_otherwise() {
        assert_eq!(connect_url("sqlite:///d/p.db", Backend::Sqlite), "sqlite:///d/p.db?mode=rwc");
        assert_eq!(
            connect_url("sqlite:///d/p.db?cache=shared", Backend::Sqlite),
            "sqlite:///d/p.db?cache=shared&mode=rwc"
        );
        assert_eq!(connect_url("sqlite:///d/p.db?mode=ro", Backend::Sqlite), "sqlite:///d/p.db?mode=ro");
        assert_eq!(connect_url("postgres://h/db", Backend::Postgres), "postgres://h/db");
    }

    #[test]
    fn files_belonging_with_a_sqlite_database_live_beside_its_file() {
        assert_eq!(sqlite_dir("sqlite:///d/p.db?mode=rwc").as_deref(), Some(Path::new("/d")));
        assert_eq!(sqlite_dir("sqlite://p.db").as_deref(), Some(Path::new(".")));
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
    }

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redacted("postgres://palisade:s3cret@db:5432/p"), "postgres://palisade:***@db:5432/p");
        assert_eq!(redacted("postgres://palisade@db/p"), "postgres://palisade@db/p");
        assert_eq!(redacted("sqlite:///d/p.db"), "sqlite:///d/p.db");
    }
}
