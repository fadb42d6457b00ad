//! The broker's SQL: one file per table family, all through [`Db`].
//!
//! SQLite is the embedded default: one file in the data directory, WAL mode,
//! `synchronous=NORMAL`, a 5 s busy timeout and foreign keys on. Several
//! processes may use the same file (the running broker and the admin CLI).

pub mod certificates;
pub mod credentials;
pub mod identities;
pub mod login_state;
pub mod meta;
pub mod revocations;
pub mod sessions;
pub mod tokens;
pub mod users;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub use identities::IdentityRecord;

/// A handle to the broker's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Opens (creating if missing) the database at `url` and applies pending migrations.
    ///
    /// # Errors
    /// The URL is not a SQLite URL, the file cannot be opened, or a migration fails.
    pub async fn open(url: &str) -> Result<Db, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A connection whose COMMIT or ROLLBACK failed (a full disk, an I/O
            // error) can come back still inside its transaction; every later
            // `BEGIN` on it would fail. Such a connection is closed, not reused.
            .after_release(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        Ok(Db { pool })
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`).
    ///
    /// Use it for every transaction that writes: a deferred transaction that reads
    /// first and writes later fails with `SQLITE_BUSY` when another writer committed
    /// in between, and the busy timeout does not help in that case.
    ///
    /// # Errors
    /// No connection, or the lock could not be taken within the busy timeout.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Closes every connection; waits for checked-out ones to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database URL for a SQLite file.
#[must_use]
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
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
