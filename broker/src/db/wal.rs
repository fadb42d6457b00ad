//! SQLite's write-ahead log, copied into the database file off the commit path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the log
//! past 1,000 pages: that commit copies the log into the database file and
//! waits for two or three `fsync`s, 10–40 ms on a virtual disk. On a busy
//! broker that commit is usually a `stream.allowed` event, so one new tunnel
//! in every few hundred waited for the disk. Instead every connection of the
//! pool has automatic checkpoints off (`PRAGMA wal_autocheckpoint = 0`, set
//! when the pool opens the connection) and a task of this module runs a `PASSIVE`
//! checkpoint every [`EVERY`] on a connection of its own (each SQLite
//! connection has its own thread), while writers keep appending to the log.
//! Under steady writes that alone never lets the log start over, so past
//! [`RESTART_FRAMES`] the task also asks for a restart, without waiting for
//! anyone ([`checkpoint`]).
//!
//! Durability does not change: with `synchronous = NORMAL` a commit is in the
//! log when it returns and survives a killed process whether or not it has
//! been checkpointed; the next open replays the log. The last connection to
//! close the file (in any process) checkpoints what is left, as SQLite always
//! does, so a short-lived admin command leaves no log behind either; and when
//! the pool closes, [`fold_at_close`] makes sure some connection was last.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::OpenFlags;
use sqlx::{AnyConnection, AnyPool, Executor as _};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

/// How often the log is copied into the database file. Bounds the log to what
/// the broker writes in this long (about 4 KiB per event).
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// The log size, in frames of one page, past which a checkpoint makes the
/// log start over (about 64 MiB at SQLite's default 4 KiB page).
pub(super) const RESTART_FRAMES: i64 = 16_384;

/// The running checkpoint task. It holds the pool only while it checkpoints:
/// when the last [`super::Db`] handle is dropped the pool goes with it (its
/// connections close, and SQLite folds the log into the file as before), and
/// the task stops.
#[derive(Debug)]
pub(super) struct Checkpointer {
    task: AbortHandle,
    /// The task's only strong reference to the pool.
    _pool: Arc<AnyPool>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checkpointing `pool`'s SQLite database in the background.
pub(super) fn start(pool: AnyPool) -> Checkpointer {
    let pool = Arc::new(pool);
    let task = tokio::spawn(run(Arc::downgrade(&pool))).abort_handle();
    Checkpointer { task, _pool: pool }
}

async fn run(pool: Weak<AnyPool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade().filter(|pool| !pool.is_closed()) else {
            return;
        };
        let progress = match pool.acquire().await {
            Ok(mut conn) => {
                let done = checkpoint(&mut conn).await;
                if done.is_err() {
                    // It may still have its busy timeout off: never hand it out again.
                    let _ = conn.close().await;
                }
                done
            }
            Err(e) => Err(e),
        };
        match progress {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the database's write-ahead log is being checkpointed again");
            }
            Ok(()) => {}
            Err(_) if pool.is_closed() => return,
            // Once per failure spell: the cause (a full disk, say) is the same every second.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot checkpoint the database's write-ahead log; it grows until this succeeds (is the disk full?)");
            }
            Err(_) => {}
        }
    }
}

/// Runs one `PASSIVE` checkpoint: copies as much of the log as no reader
/// still needs, without waiting for readers or writers (if another
/// connection is checkpointing, this one does nothing). If the log has
/// grown past [`RESTART_FRAMES`], then tries to make it start over.
///
/// # Errors
/// SQLite failed to read the log, or to write or sync the database file.
pub async fn checkpoint(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    checkpoint_bounded(conn, RESTART_FRAMES).await
}

/// A passive checkpoint never lets the log start over while writes keep
/// coming: SQLite rewinds the log only for a write that begins when every
/// frame has been copied, and under steady traffic (a new tunnel every
/// millisecond) some write always lands while the checkpoint runs, so the
/// log grew by about 12 KiB per tunnel without end. Past `bound` frames a
/// `RESTART` checkpoint follows: it holds the write lock while it copies
/// what the passive one left (little), so the next write rewinds the log
/// and `journal_size_limit` cuts the file back to 64 MiB. It
/// runs with the busy timeout off: it never waits for a writer or for a
/// reader (an audit export may read for minutes), and while it would wait,
/// every writer would wait with it; it gives up instead and is tried again
/// a second later.
async fn checkpoint_bounded(conn: &mut AnyConnection, bound: i64) -> Result<(), sqlx::Error> {
    if log_frames(conn, "PRAGMA wal_checkpoint(PASSIVE)").await? < bound {
        return Ok(());
    }
    conn.execute("PRAGMA busy_timeout = 0").await?;
    let restarted = log_frames(conn, "PRAGMA wal_checkpoint(RESTART)").await;
    conn.execute(super::SQLITE_BUSY_TIMEOUT).await?;
    restarted.map(|_| ())
}

/// Runs a `wal_checkpoint` pragma and returns the frames in the log
/// (its row is `busy, log, checkpointed`; `-1` when not in WAL mode).
async fn log_frames(conn: &mut AnyConnection, pragma: &'static str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query_as::<sqlx::Any, (i64, i64, i64)>(pragma).fetch_optional(conn).await?;
    Ok(row.map_or(0, |(_, log, _)| log))
}

/// Run once the pool has closed. The last connection to close a file folds
/// the log into it and deletes the log and its shared-memory file, but a
/// connection learns it is the last only by taking the file's exclusive lock:
/// two closing at the same moment (the checkpoint task's and an idle one, say)
/// can each still see the other, and both leave the log behind. It is
/// replayed at the next open, so nothing is lost, but a directory that a
/// refused `init` only read must look as it did. One more connection, opened
/// and closed alone, is last. It never waits: where a connection is still
/// open (the audit writer's thread), that one closes last and folds the log.
///
/// # Errors
/// The file cannot be opened or read.
pub(super) fn fold_at_close(file: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::ZERO)?;
    // A connection opens the log with its first read.
    conn.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::db::{Db, sqlite_url};

    async fn open(dir: &Path) -> Db {
        Db::open(&sqlite_url(&dir.join("palisade.db"))).await.unwrap()
    }

    #[tokio::test]
    async fn a_log_that_the_last_connections_left_is_folded_when_the_pool_closes() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let file = dir.path().join("palisade.db");
        let log = dir.path().join("palisade.db-wal");
        let shm = dir.path().join("palisade.db-shm");
        // A connection that closes without folding the log, as each of two
        // connections closing together does when it still sees the other.
        let other = rusqlite::Connection::open(&file).unwrap();
        other.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
        other.execute_batch("CREATE TABLE kept (x INTEGER); INSERT INTO kept VALUES (42)").unwrap();
        db.pool().close().await;
        drop(other);
        assert!(log.exists() && shm.exists(), "the test needs a log that nobody folded");

        db.close().await;
        assert!(!log.exists(), "the write-ahead log was left behind");
        assert!(!shm.exists(), "the shared-memory file was left behind");
        let reopened = rusqlite::Connection::open(&file).unwrap();
        let x: i64 = reopened.query_row("SELECT x FROM kept", [], |row| row.get(0)).unwrap();
        assert_eq!(x, 42, "what was in the log is in the database file");
    }

    #[tokio::test]
    async fn no_commit_checkpoints_the_log_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        // Every connection the pool hands out, not just the first.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = db.pool().acquire().await.unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(pages, 0, "a commit would stop to checkpoint the log");
            let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(limit, 64 * 1024 * 1024, "the log file is not cut back when it starts over");
            held.push(conn);
        }
    }

    #[tokio::test]
    async fn the_background_task_copies_the_log_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let file = dir.path().join("palisade.db");
        sqlx::query("CREATE TABLE filler (b BLOB)").execute(db.pool()).await.unwrap();
        for _ in 0..64 {
            sqlx::query("INSERT INTO filler VALUES (zeroblob(4096))").execute(db.pool()).await.unwrap();
        }
        // 256 KiB is far below SQLite's own 1,000-page threshold: only the
        // task puts it into the database file.
        let deadline = Instant::now() + EVERY * 5;
        while std::fs::metadata(&file).unwrap().len() < 64 * 4096 {
            assert!(Instant::now() < deadline, "the log was not checkpointed within {:?}", EVERY * 5);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(db.pool()).await.unwrap();
        assert_eq!(count, 64);
    }

    /// Writes small rows on a connection of its own, back to back, until told to stop.
    fn steady_writes(db: &Db, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
        let db = db.clone();
        tokio::spawn(async move {
            let mut conn = db.pool().acquire().await.unwrap();
            // Cut the log file right back when it starts over, so its size shows when it did.
            sqlx::query("PRAGMA journal_size_limit = 0").execute(&mut *conn).await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sqlx::query("INSERT INTO filler VALUES (zeroblob(100))").execute(&mut *conn).await.unwrap();
            }
            sqlx::query("PRAGMA journal_size_limit = -1").execute(&mut *conn).await.unwrap();
        })
    }

    #[tokio::test]
    async fn under_steady_writes_a_long_log_still_starts_over() {
        const RESTARTS: u32 = 10;
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let log = dir.path().join("palisade.db-wal");
        sqlx::query("CREATE TABLE filler (b BLOB)").execute(db.pool()).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = steady_writes(&db, stop.clone());
        let mut conn = db.pool().acquire().await.unwrap();
        // A passive checkpoint alone may find a quiet moment now and then;
        // here the log must start over again and again.
        let (mut last, mut largest, mut restarts) = (0, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            checkpoint_bounded(&mut conn, 64).await.unwrap();
            let size = std::fs::metadata(&log).map_or(0, |m| m.len());
            restarts += u32::from(size < last);
            (last, largest) = (size, largest.max(size));
            if restarts == RESTARTS {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
        assert_eq!(restarts, RESTARTS, "the log grew to {largest} bytes and started over {restarts} times");
    }
}
