//! The intent journal: a tunnel's `stream.allowed` made durable with one
//! `write`, before the chained trail has it.
//!
//! A stream moves no byte before its `stream.allowed` event is durable. With
//! a SQLite file that used to mean a hand-over to the writer thread, a
//! commit, and a hand-over back, on the way of every new tunnel's first
//! byte. Now the stream's own thread appends the event as one line to
//! `<database>.audit-intents` (opened with `O_APPEND`, mode 0600) and goes
//! on; the writer thread chains the event into the trail as usual, and once
//! everything written here is committed, cuts the file back to nothing.
//!
//! Durable means what SQLite's `synchronous = NORMAL` gives the trail: the
//! line is in the operating system when the stream goes on, so a killed
//! broker loses nothing; a lost machine may lose the last moments of both.
//!
//! One process owns the journal: the one holding an exclusive lock on it
//! (the running broker). Another process on the same database (the admin
//! CLI) gets none and waits for its commits as on PostgreSQL. When the owner
//! opens the journal, lines an earlier run left in it are moved to
//! `<database>.audit-intents.replay` (appended, then the journal cut), and
//! the writer thread chains them into the trail before anything else,
//! skipping those the trail already has (the writer may have committed them
//! and been killed before cutting the journal), then removes that file. A
//! line the broker was killed in the middle of writing cannot have let a
//! stream through (the stream waits for the whole `write`), so an unreadable
//! last line is dropped; an unreadable line before it is logged.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::id::DecisionId;
use serde::{Deserialize, Serialize};

use super::{AuditEvent, EventKind, Outcome};

/// The journal beside a SQLite database file.
pub(super) struct Journal {
    path: PathBuf,
    /// Lines an earlier run left, until they are chained.
    replay_path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// Lines written since the file was last cut whose events are not yet committed.
    unfolded: u64,
    /// Bytes written since the file was last cut.
    len: u64,
}

/// One line: an event and when it happened.
#[derive(Serialize, Deserialize)]
struct Line {
    ts_ms: u64,
    kind: String,
    outcome: String,
    actor: Option<String>,
    subject: Option<String>,
    decision_id: Option<String>,
    detail: serde_json::Value,
}

impl Journal {
    /// The journal's path for the database file `db`.
    pub(super) fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".audit-intents");
        db.with_file_name(name)
    }

    /// [`Journal::open`] for the writer of `db`: without a journal (another
    /// process owns it, or it cannot be opened) every event waits for its
    /// commit, as on PostgreSQL.
    pub(super) fn for_database(db: &Path) -> Option<std::sync::Arc<Journal>> {
        match Journal::open(db) {
            Ok(journal) => journal.map(std::sync::Arc::new),
            Err(e) => {
                let path = Self::path_for(db);
                tracing::error!(error = %e, path = %path.display(), "no audit intent journal; streams wait for the commit");
                None
            }
        }
    }

    /// Opens the journal of the database file `db` for this process, or
    /// `None` if another process owns it. Lines an earlier run left in it
    /// are moved to the replay file ([`Journal::replay`] chains them).
    pub(super) fn open(db: &Path) -> std::io::Result<Option<Journal>> {
        let path = Self::path_for(db);
        let mut file = OpenOptions::new().create(true).append(true).read(true).mode(0o600).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut replay_path = path.clone().into_os_string();
        replay_path.push(".replay");
        let replay_path = PathBuf::from(replay_path);
        let mut left = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut left)?;
        if !left.is_empty() {
            let mut replay = OpenOptions::new().create(true).append(true).mode(0o600).open(&replay_path)?;
            replay.write_all(&left)?;
            file.set_len(0)?;
        }
        Ok(Some(Journal { path, replay_path, state: Mutex::new(State { file, unfolded: 0, len: 0 }) }))
    }

    /// Appends `event`, which happened `at`, with one `write`; the event is
    /// durable when this returns.
    pub(super) fn write(&self, event: &AuditEvent, at: SystemTime) -> std::io::Result<()> {
        let line = line(event, at)?;
        let mut state = self.lock();
        if let Err(e) = state.file.write_all(&line) {
            // A partial line would join the next one: cut it off again.
            let len = state.len;
            let _ = state.file.set_len(len);
            return Err(e);
        }
        state.len += line.len() as u64;
        state.unfolded += 1;
        Ok(())
    }

    /// `n` journaled events are committed to the trail; once none is left
    /// uncommitted, the file is cut back to nothing.
    pub(super) fn folded(&self, n: u64) {
        let mut state = self.lock();
        state.unfolded = state.unfolded.saturating_sub(n);
        if state.unfolded > 0 {
            return;
        }
        match state.file.set_len(0) {
            Ok(()) => state.len = 0,
            Err(e) => tracing::warn!(error = %e, path = %self.path.display(), "could not cut the audit intent journal"),
        }
    }

    /// Hands the lines an earlier run left to `chain`, oldest first; once
    /// it says they are committed, removes the replay file.
    pub(super) fn replay(&self, chain: impl FnOnce(Vec<(AuditEvent, SystemTime)>) -> bool) {
        let text = match std::fs::read(&self.replay_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(error = %e, path = %self.replay_path.display(), "cannot read the audit intents left by the last run");
                return;
            }
        };
        if chain(parse(&text, &self.replay_path))
            && let Err(e) = std::fs::remove_file(&self.replay_path)
        {
            tracing::warn!(error = %e, path = %self.replay_path.display(), "could not remove the chained audit intents");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a file and a count behind: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One journal line for `event` at `at`.
pub(super) fn line(event: &AuditEvent, at: SystemTime) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Line::of(event, at))?;
    line.push(b'\n');
    Ok(line)
}

/// The events of a journal's text; a torn last line is dropped, any other
/// unreadable line logged and skipped.
fn parse(text: &str, path: &Path) -> Vec<(AuditEvent, SystemTime)> {
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Line>(line).ok().and_then(Line::event) {
            Some(event) => events.push(event),
            None if i + 1 == lines.len() && !complete => {
                tracing::warn!(path = %path.display(), "dropped a torn last line of the audit intent journal");
            }
            None => tracing::error!(path = %path.display(), line = i + 1, "skipped an unreadable audit intent line"),
        }
    }
    events
}

impl Line {
    fn of(event: &AuditEvent, at: SystemTime) -> Line {
        Line {
            ts_ms: at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            kind: event.kind.as_str().to_owned(),
            outcome: event.outcome.as_str().to_owned(),
            actor: event.actor.clone(),
            subject: event.subject.clone(),
            decision_id: event.decision_id.map(|d| d.to_string()),
            detail: event.detail.clone(),
        }
    }

    fn event(self) -> Option<(AuditEvent, SystemTime)> {
        let decision_id = match self.decision_id {
            Some(id) => Some(id.parse::<DecisionId>().ok()?),
            None => None,
        };
        let event = AuditEvent {
            kind: EventKind::from_name(&self.kind)?,
            outcome: Outcome::from_name(&self.outcome)?,
            actor: self.actor,
            subject: self.subject,
            decision_id,
            detail: self.detail,
        };
        Some((event, UNIX_EPOCH + Duration::from_millis(self.ts_ms)))
    }
}
