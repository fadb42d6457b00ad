//! Export: hostile fields stay on one line and visible (UI-07), CSV formulas
//! are neutralised (UI-06), and the documented catalogue matches the code.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::export::{self, CSV_COLUMNS, Filter, Format};
use super::*;
use crate::db::{Db, sqlite_url};

const HOSTILE_NAME: &str = "=HYPERLINK(\"http://x\")";
const HOSTILE_AGENT: &str = "curl\r\n{\"kind\":\"login.succeeded\"}\u{1b}[2J\u{202e}txt.exe\t\\";

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("audit.db"))).await.unwrap();
    (dir, db)
}

async fn hostile_events(db: &Db) {
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let events = [
        AuditEvent::new(EventKind::LoginFailed, Outcome::Failure)
            .subject(HOSTILE_NAME)
            .detail(json!({ "user_agent": HOSTILE_AGENT, "reason": "bad_state" })),
        AuditEvent::new(EventKind::UserInvited, Outcome::Success).actor("+cmd|' /C calc'!A0").subject("-2+3"),
        AuditEvent::new(EventKind::StreamDenied, Outcome::Deny).actor("@SUM(1)").subject("\tinference\r"),
    ];
    for event in events {
        audit.record(event).await.unwrap();
    }
}

async fn exported(db: &Db, filter: Filter, format: Format) -> String {
    let mut out = Vec::new();
    export::export(db, filter, format, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn assert_single_line_and_visible(out: &str, lines: usize) {
    assert_eq!(out.matches('\n').count(), lines, "{out}");
    for bad in ['\r', '\u{1b}', '\u{202e}', '\t'] {
        assert!(!out.contains(bad), "raw {bad:?} in export:\n{out}");
    }
}

#[tokio::test]
async fn jsonl_keeps_hostile_fields_exact_but_on_one_line_and_escaped() {
    let (_dir, db) = fresh().await;
    hostile_events(&db).await;
    let out = exported(&db, Filter::default(), Format::Jsonl).await;
    assert_single_line_and_visible(&out, 3);
    assert!(out.contains(r"\u202e") && out.contains(r"\u001b") && out.contains(r"\r\n"), "{out}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["subject"], HOSTILE_NAME);
    assert_eq!(lines[0]["detail"]["user_agent"], HOSTILE_AGENT);
    assert_eq!(lines[0]["kind"], "login.failed");
    assert_eq!((lines[0]["class_uid"].as_u64(), lines[0]["category_uid"].as_u64()), (Some(3002), Some(3)));
    assert_eq!(lines[2]["class_name"], "Authorize Session");
    assert_eq!(lines[2]["outcome"], "deny");
    assert_eq!(lines[1]["seq"], 2);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(lines[0]["decision_id"], Value::Null);
    let keys: Vec<&str> = lines[0].as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = CSV_COLUMNS.to_vec();
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected, "JSON and CSV carry the same fields");
}

#[tokio::test]
async fn csv_neutralises_formulas_and_shows_invisible_characters() {
    let (_dir, db) = fresh().await;
    hostile_events(&db).await;
    let out = exported(&db, Filter::default(), Format::Csv).await;
    assert_single_line_and_visible(&out, 4);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], CSV_COLUMNS.join(","));
    assert!(lines[1].contains(r#","'=HYPERLINK(""http://x"")","#), "{}", lines[1]);
    // detail stays JSON text (its own escapes), with the invisible characters escaped too.
    assert!(
        lines[1].contains(r#"curl\r\n{\""kind\"":\""login.succeeded\""}\u001b[2J\u202etxt.exe\t\\""#),
        "{}",
        lines[1]
    );
    let detail: Value = serde_json::from_str(&cells(lines[1])[11]).unwrap();
    assert_eq!(detail["user_agent"], HOSTILE_AGENT);
    assert!(lines[2].contains(r#""'+cmd|' /C calc'!A0""#), "{}", lines[2]);
    assert!(lines[2].contains(r#""'-2+3""#), "{}", lines[2]);
    assert!(lines[3].contains(r#""'@SUM(1)""#), "{}", lines[3]);
    assert!(lines[3].contains(r#""'\tinference\r""#), "{}", lines[3]);
    for line in &lines[1..] {
        assert_eq!(cells(line).len(), CSV_COLUMNS.len(), "{line}");
        for cell in cells(line) {
            assert!(!cell.starts_with(['=', '+', '-', '@']), "{cell} in {line}");
        }
    }
}

/// Splits one line of RFC 4180 CSV whose cells are all quoted.
fn cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut rest = line;
    while let Some(body) = rest.strip_prefix('"') {
        let mut cell = String::new();
        let mut chars = body.char_indices().peekable();
        let end = loop {
            let (i, c) = chars.next().unwrap();
            if c != '"' {
                cell.push(c);
            } else if chars.peek().map(|&(_, c)| c) == Some('"') {
                cell.push('"');
                chars.next();
            } else {
                break i + 1;
            }
        };
        cells.push(cell);
        rest = body[end..].strip_prefix(',').unwrap_or("");
    }
    cells
}

#[test]
fn csv_cells_escape_backslashes_so_escapes_are_unambiguous() {
    assert_eq!(export::csv_cell(r"a\nb"), r#""a\\nb""#);
    assert_eq!(export::csv_cell("a\nb"), r#""a\nb""#);
    assert_eq!(export::csv_cell("\u{2066}x"), r#""\u{2066}x""#);
    assert_eq!(export::csv_cell("plain"), "\"plain\"");
}

#[tokio::test]
async fn since_and_until_select_by_time_and_follow_picks_up_new_events() {
    let (_dir, db) = fresh().await;
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    audit.record(AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = i64::try_from(std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    audit.record(AuditEvent::new(EventKind::TokenRedeemed, Outcome::Success)).await.unwrap();
    let late = exported(&db, Filter { since_ms: Some(middle), ..Filter::default() }, Format::Jsonl).await;
    let early = exported(&db, Filter { until_ms: Some(middle), ..Filter::default() }, Format::Jsonl).await;
    assert_eq!((late.lines().count(), early.lines().count()), (1, 1));
    assert!(late.contains("token.redeemed") && early.contains("token.created"));

    let stop = tokio_util::sync::CancellationToken::new();
    let buf = SharedBuf::default();
    let follower = {
        let (db, stop, mut out) = (db.clone(), stop.clone(), buf.clone());
        tokio::spawn(async move {
            let filter = Filter { after_seq: Some(2), ..Filter::default() };
            export::follow(&db, filter, Format::Jsonl, &mut out, Duration::from_millis(10), stop).await.unwrap();
        })
    };
    audit.record(AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow)).await.unwrap();
    audit.record(AuditEvent::new(EventKind::StreamEnded, Outcome::Success)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while buf.text().lines().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "follow wrote {:?}", buf.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    follower.await.unwrap();
    let seqs: Vec<i64> =
        buf.text().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [3, 4]);
}

/// A streamed export, a few events per page, says exactly what the one-query
/// export says, page by page, and ends at the events that existed when it
/// started even while new ones keep coming.
#[tokio::test]
async fn a_paged_export_matches_the_whole_export_and_stops_at_its_start() {
    use futures::TryStreamExt as _;
    const PAGE: i64 = 4;
    let (_dir, db) = fresh().await;
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    for n in 0..10 {
        audit
            .record(AuditEvent::new(EventKind::StreamAllowed, Outcome::Allow).subject(format!("svc-{n}")))
            .await
            .unwrap();
    }
    hostile_events(&db).await;
    for format in [Format::Jsonl, Format::Csv] {
        let whole = exported(&db, Filter::default(), format).await;
        let mut pages = Box::pin(export::pages(db.clone(), Filter::default(), format, PAGE));
        let first = pages.try_next().await.unwrap().expect("a first page");
        // An event recorded after the export started is not part of it.
        audit.record(AuditEvent::new(EventKind::TokenCreated, Outcome::Success)).await.unwrap();
        let rest: Vec<Vec<u8>> = pages.try_collect().await.unwrap();
        let chunks: Vec<String> = std::iter::once(first).chain(rest).map(|c| String::from_utf8(c).unwrap()).collect();
        assert_eq!(chunks.concat(), whole, "{format:?}");
        let header = usize::from(format == Format::Csv);
        let events: Vec<usize> =
            chunks.iter().enumerate().map(|(i, c)| c.lines().count() - if i == 0 { header } else { 0 }).collect();
        let total = whole.lines().count() - header;
        let expected: Vec<usize> =
            (0..total).step_by(PAGE as usize).map(|start| (total - start).min(PAGE as usize)).collect();
        assert_eq!(events, expected, "{format:?}: events per chunk");
    }
    let after = exported(&db, Filter::default(), Format::Jsonl).await;
    assert!(after.lines().last().unwrap().contains("token.created"), "the later events are in the next export");
}

#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_catalogue_documents_every_kind_with_its_ocsf_class() {
    let doc = include_str!("../../../docs/audit-events.md");
    for kind in EventKind::all() {
        let (uid, name) = kind.ocsf_class();
        let heading = format!("### `{}`", kind.as_str());
        let section = doc.split(&heading).nth(1).unwrap_or_else(|| panic!("{heading} missing from the catalogue"));
        let section = section.split("\n### ").next().unwrap();
        let class = format!("{name} ({uid})");
        assert!(section.contains(&class), "{heading} must name OCSF class {class}");
    }
}

#[test]
fn the_machine_checkable_schema_names_every_kind_with_its_class_and_matches_the_page() {
    let schema: Value = serde_json::from_str(include_str!("../../../docs/audit-events.schema.json")).unwrap();
    let kinds = schema["kinds"].as_object().unwrap();
    let doc = include_str!("../../../docs/audit-events.md");
    for kind in EventKind::all() {
        let entry = kinds.get(kind.as_str()).unwrap_or_else(|| panic!("{kind} missing from the schema"));
        assert_eq!(entry["class_uid"], json!(kind.ocsf_class().0), "{kind}: class_uid");
        let section = doc.split(&format!("### `{}`", kind.as_str())).nth(1).unwrap().split("\n### ").next().unwrap();
        for field in entry["detail"].as_object().unwrap().keys() {
            assert!(section.contains(&format!("`{field}`")), "{kind}: detail field `{field}` is not on the page");
        }
        for outcome in entry["outcomes"].as_array().unwrap() {
            let outcome = outcome.as_str().unwrap();
            assert!(["success", "failure", "allow", "deny"].contains(&outcome), "{kind}: outcome {outcome}");
        }
    }
    assert_eq!(kinds.len(), EventKind::all().len(), "the schema names a kind the code does not have");
}
