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
//!
//! Durability does not change: with `synchronous = NORMAL` a commit is in the
//! log when it returns and survives a killed process whether or not it has
//! been checkpointed; the next open replays the log. The last connection to
//! close the file (in any process) checkpoints what is left, as SQLite always
//! does, so a short-lived admin command leaves no log behind either.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

/// How often the log is copied into the database file. Bounds the log to what
/// the broker writes in this long (about 4 KiB per event).
pub(super) const EVERY: Duration = Duration::from_secs(1);

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
            Ok(mut conn) => checkpoint(&mut conn).await,
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
/// connection is checkpointing, this one does nothing).
///
/// # Errors
/// SQLite failed to read the log, or to write or sync the database file.
pub async fn checkpoint(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_optional(conn).await?;
    Ok(())
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
    async fn no_commit_checkpoints_the_log_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        // Every connection the pool hands out, not just the first.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = db.pool().acquire().await.unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(pages, 0, "a commit would stop to checkpoint the log");
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
}
