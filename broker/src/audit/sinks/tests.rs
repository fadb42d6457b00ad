//! Sinks against real receivers: an HTTP webhook that is down and comes back,
//! a broker restart resuming from the cursor, and rsyslog parsing our syslog.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::alerts::Detector;
use super::{cursor, serve};
use crate::audit::chain::EventRow;
use crate::audit::{Audit, AuditEvent, CheckpointPolicy, EventKind, Outcome};
use crate::config::{AuditSinkConfig, AuditSinkTarget, Secret};
use crate::db::{Db, sqlite_url};

const HOSTILE: &str = "mallory\r\n<13>1 forged\u{1b}[2J\u{202e}gpj.exe";

async fn record(db: &Db, seqs: std::ops::RangeInclusive<i64>) {
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    for i in seqs {
        let event = AuditEvent::new(EventKind::LoginFailed, Outcome::Failure)
            // A different account each time, so no burst alert joins the stream.
            .subject(format!("{HOSTILE}{i}"))
            .detail(json!({ "n": i, "user_agent": HOSTILE }));
        assert_eq!(audit.record(event).await.unwrap(), u64::try_from(i).unwrap());
    }
}

fn sink(name: &str, target: AuditSinkTarget) -> AuditSinkConfig {
    AuditSinkConfig { name: name.into(), target, ca_file: None, batch_size: 7, max_backoff: Duration::from_millis(400) }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// At least once and in order: every seq in 1..=last arrived, and no
/// delivery skipped ahead of what had arrived before it.
fn assert_in_order_without_gaps(seqs: &[i64], last: i64) {
    let mut high = 0;
    for &seq in seqs {
        assert!(seq <= high + 1, "seq {seq} arrived before {}: {seqs:?}", high + 1);
        high = high.max(seq);
    }
    assert_eq!(high, last, "{seqs:?}");
}

type Received = Arc<Mutex<Vec<Value>>>;

async fn ingest(State(received): State<Received>, headers: HeaderMap, body: String) -> StatusCode {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret-token") {
        return StatusCode::UNAUTHORIZED;
    }
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    let mut lines = received.lock().unwrap();
    lines.extend(body.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    StatusCode::NO_CONTENT
}

fn seqs(received: &Received) -> Vec<i64> {
    received.lock().unwrap().iter().map(|v| v["seq"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn webhook_gets_every_event_in_order_after_an_outage_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("palisade.db"));
    let db = Db::open(&url).await.unwrap();
    record(&db, 1..=25).await;
    let port = free_port();
    let target = AuditSinkTarget::Webhook {
        url: format!("http://127.0.0.1:{port}/ingest").parse().unwrap(),
        bearer_token: Some(Secret::new("s3cret-token")),
    };
    let config = sink("siem", target);

    // The receiver is down: the sink retries and the cursor stays put.
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        db.clone(),
        Audit::with_signer(db.clone(), None, CheckpointPolicy::default()),
        vec![config.clone()],
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cursor(&db, "siem").await.unwrap(), 0);

    let received = Received::default();
    let app = axum::Router::new().route("/ingest", axum::routing::post(ingest)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    eventually("the first 25 events", || seqs(&received).last() == Some(&25)).await;
    let db_check = db.clone();
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered != 25 {
        assert!(Instant::now() < deadline, "cursor never reached 25");
        delivered = cursor(&db_check, "siem").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), "audit sinks");
    let before_restart = seqs(&received).len();

    // A restarted broker (a fresh pool on the same file) resumes after the cursor.
    let db = Db::open(&url).await.unwrap();
    record(&db, 26..=40).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        db.clone(),
        Audit::with_signer(db.clone(), None, CheckpointPolicy::default()),
        vec![config],
        stop.clone(),
    ));
    eventually("events 26..=40", || seqs(&received).last() == Some(&40)).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let all = seqs(&received);
    assert_in_order_without_gaps(&all, 40);
    assert_eq!(all[before_restart], 26, "resumed from the cursor: {all:?}");
    let first = &received.lock().unwrap()[0];
    assert_eq!(
        (first["kind"].as_str(), first["subject"].as_str()),
        (Some("login.failed"), Some(format!("{HOSTILE}1").as_str()))
    );
}

fn rsyslogd() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("rsyslogd"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("rsyslogd is not installed: run scripts/setup-test-deps (it installs Debian's rsyslog) and retry")
    })
}

#[tokio::test]
async fn rsyslog_parses_one_rfc5424_message_per_event() {
    let rsyslogd = rsyslogd();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("events.log");
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imtcp\")\n\
             template(name=\"fields\" type=\"list\") {{\n  property(name=\"msgid\") constant(value=\" \")\n  \
             property(name=\"app-name\") constant(value=\" \")\n  property(name=\"syslogfacility\") \
             constant(value=\" \")\n  property(name=\"msg\") constant(value=\"\\n\")\n}}\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"fields\")\n",
            dir = dir.path().display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let _rsyslog = tokio::process::Command::new(&rsyslogd)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslogd.pid"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "rsyslogd did not listen on 127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
    record(&db, 1..=12).await;
    let target = AuditSinkTarget::Syslog { address: format!("127.0.0.1:{port}"), tls: false };
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        db.clone(),
        Audit::with_signer(db.clone(), None, CheckpointPolicy::default()),
        vec![sink("syslog", target)],
        stop.clone(),
    ));
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    eventually("12 lines from rsyslog", || read().lines().count() >= 12).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let text = read();
    let mut seqs = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (msgid, app, facility, msg) =
            (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        assert_eq!((msgid, app, facility), ("login.failed", "palisade-broker", "13"), "{line}");
        let event: Value = serde_json::from_str(msg.trim_start()).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["subject"].as_str().unwrap().starts_with(HOSTILE), "{line}");
        assert_eq!(event["detail"]["user_agent"].as_str(), Some(HOSTILE));
        seqs.push(event["seq"].as_i64().unwrap());
    }
    assert_in_order_without_gaps(&seqs, 12);
    assert_eq!(text.lines().count(), 12, "one line per event:\n{text}");
}

fn row(seq: i64, ts_ms: i64, kind: &str, actor: Option<&str>, subject: Option<&str>, source: &str) -> EventRow {
    EventRow {
        seq,
        ts_ms,
        kind: kind.into(),
        outcome: "failure".into(),
        actor: actor.map(str::to_owned),
        subject: subject.map(str::to_owned),
        decision_id: None,
        detail: json!({ "source": source }).to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

#[test]
fn bursts_alert_once_per_threshold_and_only_within_the_window() {
    let mut detector = Detector::default();
    let minute = 60_000;
    // Failures for alice from different addresses, spread so only 5 fall in 5 minutes.
    let mut alerts = Vec::new();
    for (i, ts) in [0, 4 * minute, 5 * minute, 6 * minute, 7 * minute, 8 * minute].into_iter().enumerate() {
        let seq = i64::try_from(i).unwrap() + 1;
        alerts.extend(detector.observe(&row(
            seq,
            ts,
            "login.failed",
            None,
            Some("user/alice"),
            &format!("10.0.0.{i}"),
        )));
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].kind, alerts[0].subject.as_deref()), (EventKind::AlertLoginFailures, Some("user/alice")));
    assert_eq!(alerts[0].detail["seqs"], json!([2, 3, 4, 5, 6]), "the failure at 0 fell out of the window");

    // Unknown accounts from one address.
    let alerts: Vec<_> =
        (10..15).flat_map(|seq| detector.observe(&row(seq, seq, "login.failed", None, None, "203.0.113.9"))).collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].detail["key"].as_str(), alerts[0].detail["value"].as_str()),
        (Some("address"), Some("203.0.113.9"))
    );

    // Denials for one identity; other kinds and another identity's 9 do not count.
    let (bob, eve) = (Some("spiffe://corp/user/bob"), Some("spiffe://corp/user/eve"));
    let mut alerts = Vec::new();
    for seq in 20..30 {
        alerts.extend(detector.observe(&row(seq, seq, "stream.denied", bob, Some("llm"), "")));
        if seq < 29 {
            alerts.extend(detector.observe(&row(100 + seq, seq, "stream.denied", eve, None, "")));
        }
        alerts.extend(detector.observe(&row(200 + seq, seq, "stream.allowed", bob, None, "")));
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].kind, alerts[0].subject.as_deref()), (EventKind::AlertStreamDenials, bob));
}

#[tokio::test]
async fn the_alert_task_records_a_burst_as_an_event_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(db.clone(), audit.clone(), Vec::new(), stop.clone()));
    for _ in 0..5 {
        let event = AuditEvent::new(EventKind::LoginFailed, Outcome::Failure)
            .subject("user/alice")
            .detail(json!({ "source": "198.51.100.7", "reason": "bad_passkey" }));
        audit.record(event).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let alerts = crate::audit::query::recent(&db, Some(EventKind::AlertLoginFailures), 10).await.unwrap();
        if alerts.len() == 2 {
            break alerts;
        }
        assert!(Instant::now() < deadline, "no alert: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys: Vec<Value> =
        alerts.iter().map(|a| serde_json::from_str::<Value>(&a.detail).unwrap()["key"].clone()).collect();
    assert!(keys.contains(&json!("account")) && keys.contains(&json!("address")), "{keys:?}");
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = crate::audit::verify(&db).await.unwrap();
    assert!(report.broken.is_none() && report.events == 7, "{report:?}");
}
