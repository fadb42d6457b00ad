//! Exporting the trail for a SIEM: JSON lines or CSV, one event per line.
//!
//! Names, user agents and other fields come from people who may be hostile.
//! Both formats keep every event on one line and make invisible characters
//! visible: JSON escapes every control, bidi and zero-width character as
//! `\uXXXX` (lossless; serde_json alone leaves U+202E raw), and CSV writes
//! them as `\n`, `\r`, `\t`, `\u{202e}` (with `\` doubled) and prefixes a
//! cell that a spreadsheet would run as a formula with `'` (UI-06, UI-07).
//! The schema is documented in `docs/audit-events.md`.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use futures::TryStreamExt as _;
use serde_json::{Value, json};
use sqlx::Any;

use super::chain::EventRow;
use super::query::{RawRow, from_raw};
use super::{AuditError, EventKind};
use crate::db::Db;

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row, every cell quoted.
    Csv,
}

/// Which events to export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only events before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only events with a greater seq.
    pub after_seq: Option<i64>,
    /// Only events up to and including this seq.
    pub through_seq: Option<i64>,
}

/// The CSV header, in column order.
pub const CSV_COLUMNS: [&str; 14] = [
    "time",
    "time_ms",
    "seq",
    "kind",
    "category_uid",
    "class_uid",
    "class_name",
    "outcome",
    "actor",
    "subject",
    "decision_id",
    "detail",
    "prev_hash",
    "hash",
];

/// Writes the header (CSV only) and every matching event, oldest first.
/// Returns the seq of the last event written, if any.
///
/// # Errors
/// The table could not be read or `out` refused the bytes.
pub async fn export<W: Write + ?Sized>(
    db: &Db,
    filter: Filter,
    format: Format,
    out: &mut W,
) -> Result<Option<i64>, ExportError> {
    write_header(format, out)?;
    write_rows(db, filter, format, out).await
}

/// Writes matching events without a header; returns the last seq written.
///
/// # Errors
/// The table could not be read or `out` refused the bytes.
pub async fn write_rows<W: Write + ?Sized>(
    db: &Db,
    filter: Filter,
    format: Format,
    out: &mut W,
) -> Result<Option<i64>, ExportError> {
    let (_, last) = write_page(db, filter, format, i64::MAX, out).await?;
    out.flush()?;
    Ok(last)
}

/// Events per chunk of a [`chunks`] export.
pub const PAGE_EVENTS: i64 = 1_000;

/// The export as a stream of chunks of at most [`PAGE_EVENTS`] events each
/// (CSV's header first), for a download that may be large and slow: each
/// chunk is its own query, so neither the broker's memory nor a database
/// connection is held while the reader takes its time. The export ends at
/// the last event that existed when it started, however fast new ones come.
pub fn chunks(
    db: Db,
    filter: Filter,
    format: Format,
) -> impl futures::Stream<Item = Result<Vec<u8>, ExportError>> + Send + 'static {
    pages(db, filter, format, PAGE_EVENTS)
}

/// [`chunks`] with `page` events per chunk.
pub(crate) fn pages(
    db: Db,
    filter: Filter,
    format: Format,
    page: i64,
) -> impl futures::Stream<Item = Result<Vec<u8>, ExportError>> + Send + 'static {
    let cursor = Cursor { db, filter, format, page, started: false, done: false };
    futures::stream::try_unfold(cursor, |mut cursor| async move {
        if cursor.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        if !cursor.started {
            cursor.start(&mut out).await?;
        }
        let (written, last) = write_page(&cursor.db, cursor.filter, cursor.format, cursor.page, &mut out).await?;
        cursor.filter.after_seq = last.or(cursor.filter.after_seq);
        cursor.done = written < cursor.page;
        Ok((!out.is_empty()).then_some((out, cursor)))
    })
}

/// Where a [`chunks`] export stands.
struct Cursor {
    db: Db,
    filter: Filter,
    format: Format,
    page: i64,
    started: bool,
    done: bool,
}

impl Cursor {
    /// Fixes the last event of the export and writes the CSV header.
    async fn start(&mut self, out: &mut Vec<u8>) -> Result<(), ExportError> {
        let mut conn = self.db.pool().acquire().await.map_err(AuditError::from)?;
        let (newest, _) = super::head(&mut conn).await.map_err(AuditError::from)?;
        self.filter.through_seq = Some(self.filter.through_seq.map_or(newest, |through| through.min(newest)));
        write_header(self.format, out)?;
        self.started = true;
        Ok(())
    }
}

/// The CSV header row; nothing for JSON lines.
fn write_header<W: Write + ?Sized>(format: Format, out: &mut W) -> io::Result<()> {
    if format == Format::Csv {
        writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    }
    Ok(())
}

/// Writes up to `limit` matching events, oldest first; returns how many and
/// the seq of the last.
async fn write_page<W: Write + ?Sized>(
    db: &Db,
    filter: Filter,
    format: Format,
    limit: i64,
    out: &mut W,
) -> Result<(i64, Option<i64>), ExportError> {
    let mut rows = sqlx::query_as::<Any, RawRow>(
        "SELECT seq, ts_ms, kind, outcome, actor, subject, decision_id, detail, prev_hash, hash \
         FROM audit_events WHERE ts_ms >= $1 AND ts_ms < $2 AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5",
    )
    .bind(filter.since_ms.unwrap_or(i64::MIN))
    .bind(filter.until_ms.unwrap_or(i64::MAX))
    .bind(filter.after_seq.unwrap_or(0))
    .bind(filter.through_seq.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch(db.pool());
    let (mut written, mut last) = (0, None);
    while let Some(raw) = rows.try_next().await.map_err(AuditError::from)? {
        let row = from_raw(raw);
        let line = match format {
            Format::Jsonl => json_line(&row),
            Format::Csv => csv_line(&row),
        };
        writeln!(out, "{line}")?;
        (written, last) = (written + 1, Some(row.seq));
    }
    Ok((written, last))
}

/// Polls for events after `filter.after_seq` every `poll` and writes them
/// (no header) until `stop` is cancelled.
///
/// # Errors
/// The table could not be read or `out` refused the bytes.
pub async fn follow<W: Write + ?Sized>(
    db: &Db,
    mut filter: Filter,
    format: Format,
    out: &mut W,
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), ExportError> {
    loop {
        if let Some(last) = write_rows(db, filter, format, out).await? {
            filter.after_seq = Some(last);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
}

/// One event as a JSON object on one line.
#[must_use]
pub fn json_line(row: &EventRow) -> String {
    let (class_uid, class_name) = ocsf(&row.kind);
    // detail is stored as JSON text; anything unparsable is kept as a string.
    let detail = serde_json::from_str::<Value>(&row.detail).unwrap_or_else(|_| Value::String(row.detail.clone()));
    let value = json!({
        "time": rfc3339_ms(row.ts_ms),
        "time_ms": row.ts_ms,
        "seq": row.seq,
        "kind": row.kind,
        "category_uid": class_uid / 1000,
        "class_uid": class_uid,
        "class_name": class_name,
        "outcome": row.outcome,
        "actor": row.actor,
        "subject": row.subject,
        "decision_id": row.decision_id,
        "detail": detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    });
    escape_invisible_json(&value.to_string())
}

/// One event as a CSV record on one line.
#[must_use]
pub fn csv_line(row: &EventRow) -> String {
    let (class_uid, class_name) = ocsf(&row.kind);
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let cells = [
        rfc3339_ms(row.ts_ms),
        row.ts_ms.to_string(),
        row.seq.to_string(),
        row.kind.clone(),
        (class_uid / 1000).to_string(),
        class_uid.to_string(),
        class_name.to_owned(),
        row.outcome.clone(),
        opt(&row.actor),
        opt(&row.subject),
        opt(&row.decision_id),
        String::new(),
        row.prev_hash.clone(),
        row.hash.clone(),
    ];
    let mut cells: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    // detail is JSON, an encoding of its own: keep it (escaping only the
    // invisible characters) rather than escaping its backslashes again.
    cells[11] = match serde_json::from_str::<Value>(&row.detail) {
        Ok(detail) => quote(escape_invisible_json(&detail.to_string())),
        Err(_) => csv_cell(&row.detail),
    };
    cells.join(",")
}

fn ocsf(kind: &str) -> (u32, &'static str) {
    EventKind::from_name(kind).map_or((0, "Base Event"), EventKind::ocsf_class)
}

/// A quoted CSV cell: invisible characters made visible, formulas neutralised.
#[must_use]
pub fn csv_cell(raw: &str) -> String {
    let formula = |c: char| matches!(c, '\t' | '\r');
    let cell = visible(raw);
    if raw.starts_with(formula) { quote(format!("'{cell}")) } else { quote(cell) }
}

/// Neutralises a formula and quotes an already single-line, visible cell.
fn quote(mut cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@']) {
        cell.insert(0, '\'');
    }
    format!("\"{}\"", cell.replace('"', "\"\""))
}

/// Escapes `\`, CR, LF, TAB and every [`is_invisible`] character as visible text.
#[must_use]
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_invisible(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Rewrites every [`is_invisible`] character in serialised JSON as a `\uXXXX`
/// escape. Such characters can only occur inside JSON strings, where the
/// escape means the same character, so the value is unchanged.
#[must_use]
pub fn escape_invisible_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_invisible(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Controls (C0, DEL, C1), bidi controls, zero-width characters, line and
/// paragraph separators, the BOM and tag characters.
#[must_use]
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// `2026-11-22T03:08:57.123Z`.
///
/// Times outside 1970…9999 (only a tampered row has one) are clamped, so an
/// export never fails on them; `audit verify` reports the tampering.
#[must_use]
pub fn rfc3339_ms(ts_ms: i64) -> String {
    /// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
    const LAST_MS: u64 = 253_402_300_799_999;
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ts_ms).unwrap_or(0).min(LAST_MS));
    humantime::format_rfc3339_millis(at).to_string()
}
