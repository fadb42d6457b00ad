//! The database-backed alert rules against a real SQLite trail: sign-ins from
//! a new device or address, connectors offline too long and back, and normal
//! use that must not alert.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::serve_configured;
use crate::audit::chain::EventRow;
use crate::audit::{Audit, AuditEvent, CheckpointPolicy, EventKind, Outcome};
use crate::config::{AuditSinkConfig, AuditSinkTarget, AuditTrailConfig};
use crate::db::{Db, connector_links, sqlite_url};

struct Trail {
    _dir: tempfile::TempDir,
    db: Db,
    audit: Audit,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<&'static str>>,
}

async fn trail(offline_after: Duration) -> Trail {
    trail_with(offline_after, Vec::new()).await
}

async fn trail_with(offline_after: Duration, sinks: Vec<AuditSinkConfig>) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let stop = CancellationToken::new();
    let config = AuditTrailConfig { connector_offline_alert: offline_after, ..AuditTrailConfig::default() };
    let task = tokio::spawn(serve_configured(db.clone(), audit.clone(), sinks, config, stop.clone()));
    Trail { _dir: dir, db, audit, stop, task }
}

impl Trail {
    async fn sign_in(&self, user: &str, source: &str, user_agent: &str) {
        let event = AuditEvent::new(EventKind::SessionCreated, Outcome::Success)
            .actor(format!("user/{user}"))
            .subject(format!("session-{}", uuid::Uuid::new_v4()))
            .detail(json!({ "expires_at": 0, "auth_methods": ["oidc", "webauthn"], "source": source,
                            "user_agent": user_agent, "via": "browser" }));
        self.audit.record(event).await.unwrap();
    }

    async fn link(&self, kind: EventKind, connector: &str, detail: Value) {
        let event = AuditEvent::new(kind, Outcome::Success).actor(connector).detail(detail);
        self.audit.record(event).await.unwrap();
    }

    /// Waits until the alert task has read everything (its cursor is at the head).
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let head = crate::audit::query::recent(&self.db, None, 1).await.unwrap()[0].seq;
            if super::cursor(&self.db, super::alerts::CURSOR).await.unwrap() >= head {
                return;
            }
            assert!(Instant::now() < deadline, "the alert task did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn alerts(&self) -> Vec<EventRow> {
        let mut rows = crate::audit::query::recent(&self.db, None, 1000).await.unwrap();
        rows.retain(|r| r.kind.starts_with("alert."));
        rows.reverse();
        rows
    }

    async fn stop(self) -> (tempfile::TempDir, Db) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        let report = crate::audit::verify(&self.db).await.unwrap();
        assert!(report.broken.is_none(), "{report:?}");
        (self._dir, self.db)
    }
}

fn detail(row: &EventRow) -> Value {
    serde_json::from_str(&row.detail).unwrap()
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";

#[tokio::test]
async fn repeated_sign_ins_from_the_usual_device_and_address_do_not_alert() {
    let t = trail(Duration::from_secs(300)).await;
    for _ in 0..4 {
        t.sign_in("alice", "192.0.2.10", FIREFOX).await;
        t.sign_in("bob", "192.0.2.20", PHONE).await;
    }
    // A port in the source is not a new address.
    t.sign_in("alice", "192.0.2.10:51234", FIREFOX).await;
    t.settled().await;
    assert_eq!(t.alerts().await, Vec::new(), "first sign-ins set the baseline; repeats are normal");
    t.stop().await;
}

#[tokio::test]
async fn a_sign_in_from_a_new_device_or_address_alerts_once_for_that_person() {
    let t = trail(Duration::from_secs(300)).await;
    t.sign_in("alice", "192.0.2.10", FIREFOX).await;
    // Bob's phone and address are new to Alice, not to Bob's own baseline.
    t.sign_in("bob", "203.0.113.66", PHONE).await;
    t.sign_in("alice", "203.0.113.66", FIREFOX).await;
    t.sign_in("alice", "192.0.2.10", PHONE).await;
    t.sign_in("alice", "203.0.113.66", PHONE).await;
    t.settled().await;
    let alerts = t.alerts().await;
    let got: Vec<(String, Option<String>, Value)> =
        alerts.iter().map(|a| (a.kind.clone(), a.subject.clone(), detail(a)["value"].clone())).collect();
    assert_eq!(
        got,
        vec![
            ("alert.new_address".to_owned(), Some("user/alice".to_owned()), json!("203.0.113.66")),
            ("alert.new_device".to_owned(), Some("user/alice".to_owned()), json!(PHONE)),
        ],
        "one alert per new value, none for a value already seen"
    );
    assert_eq!(detail(&alerts[0])["known"], json!(1));
    assert_eq!(alerts[0].outcome, "failure");
    let (dir, db) = t.stop().await;

    // A restarted alert task remembers what was seen (the table, not memory).
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve_configured(
        db.clone(),
        audit.clone(),
        Vec::new(),
        AuditTrailConfig::default(),
        stop.clone(),
    ));
    let again = Trail { _dir: dir, db, audit, stop, task };
    again.sign_in("alice", "203.0.113.66", PHONE).await;
    again.settled().await;
    assert_eq!(again.alerts().await.len(), 2, "no new alert after a restart for a known device and address");
    again.stop().await;
}

#[tokio::test]
async fn a_connector_offline_past_the_threshold_alerts_and_its_return_is_recorded() {
    let t = trail(Duration::from_millis(1500)).await;
    let (rack1, rack2) = ("spiffe://corp/connector/rack-1", "spiffe://corp/connector/rack-2");
    t.link(EventKind::ConnectorOnline, rack1, json!({ "services": ["llm"], "remote": "10.0.0.1:4433" })).await;
    t.link(EventKind::ConnectorOnline, rack2, json!({ "services": ["llm"], "remote": "10.0.0.2:4433" })).await;
    // rack-2 blips: offline and back within the threshold: no alert.
    t.link(EventKind::ConnectorOffline, rack2, json!({ "remote": "10.0.0.2:4433", "broker_stopping": false })).await;
    t.link(EventKind::ConnectorOnline, rack2, json!({ "services": ["llm"], "remote": "10.0.0.2:4433" })).await;
    // A broker shutdown closing a link is not the connector's absence.
    t.link(EventKind::ConnectorOffline, rack2, json!({ "remote": "10.0.0.2:4433", "broker_stopping": true })).await;
    t.link(EventKind::ConnectorOffline, rack1, json!({ "remote": "10.0.0.1:4433", "broker_stopping": false })).await;
    t.settled().await;
    assert_eq!(t.alerts().await, Vec::new(), "nothing is overdue yet");

    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        if let Some(a) = t.alerts().await.into_iter().next() {
            break a;
        }
        assert!(Instant::now() < deadline, "no alert.connector_offline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((alert.kind.as_str(), alert.subject.as_deref()), ("alert.connector_offline", Some(rack1)));
    assert!(detail(&alert)["offline_ms"].as_i64().unwrap() >= 1500, "{}", alert.detail);
    assert_eq!(detail(&alert)["threshold_ms"], json!(1500));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(t.alerts().await.len(), 1, "one alert per outage, not one per check");

    t.link(EventKind::ConnectorOnline, rack1, json!({ "services": ["llm"], "remote": "10.0.0.1:4434" })).await;
    t.settled().await;
    let alerts = t.alerts().await;
    let kinds: Vec<(&str, Option<&str>)> = alerts.iter().map(|a| (a.kind.as_str(), a.subject.as_deref())).collect();
    assert_eq!(
        kinds,
        vec![("alert.connector_offline", Some(rack1)), ("alert.connector_back_online", Some(rack1))],
        "rack-2 never alerted"
    );
    assert_eq!(alerts[1].outcome, "success");
    t.stop().await;
}

/// #9: with broker replicas a connector holds one link per replica; losing
/// one of them is not being offline.
#[tokio::test]
async fn a_connector_still_linked_through_another_replica_does_not_alert() {
    let t = trail(Duration::from_millis(1000)).await;
    let rack = "spiffe://corp/connector/rack-9";
    sqlx::query(
        "INSERT INTO identities (id, role, name, groups, disabled, created_at)          VALUES ('rack-9', 'connector', 'rack-9', '[]', 0, 0)",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
    let now = crate::db::unix_seconds(std::time::SystemTime::now());
    let link = |broker| connector_links::LinkRef { connector_id: "rack-9", broker, link_id: broker };
    for (broker, remote) in [("10.0.0.1:443", "10.0.0.9:4433"), ("10.0.0.2:443", "10.0.0.9:4434")] {
        connector_links::connected(&t.db, link(broker), remote, "0.1.0", now).await.unwrap();
        t.link(EventKind::ConnectorOnline, rack, json!({ "services": ["llm"], "remote": remote })).await;
    }
    // A link replaced by a newer one of the same pair ends: nothing changes.
    let stale = connector_links::LinkRef { link_id: "older", ..link("10.0.0.2:443") };
    connector_links::disconnected(&t.db, stale, now).await.unwrap();
    assert!(connector_links::statuses(&t.db, now).await.unwrap()["rack-9"].linked_to.len() == 2);
    // Replica A loses its link; B still holds one.
    connector_links::disconnected(&t.db, link("10.0.0.1:443"), now).await.unwrap();
    t.link(EventKind::ConnectorOffline, rack, json!({ "remote": "10.0.0.9:4433", "broker_stopping": false })).await;
    t.settled().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(t.alerts().await, Vec::new(), "still linked through replica B");

    // Then B's link goes too: now it is offline.
    connector_links::disconnected(&t.db, link("10.0.0.2:443"), now).await.unwrap();
    t.link(EventKind::ConnectorOffline, rack, json!({ "remote": "10.0.0.9:4434", "broker_stopping": false })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.alerts().await.is_empty() {
        assert!(Instant::now() < deadline, "no alert.connector_offline once the last link went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.alerts().await[0].subject.as_deref(), Some(rack));
    t.stop().await;
}

async fn ingest(
    axum::extract::State(received): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
    body: String,
) -> axum::http::StatusCode {
    received.lock().unwrap().extend(body.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    axum::http::StatusCode::NO_CONTENT
}

#[tokio::test]
async fn the_new_alerts_reach_the_webhook_like_every_other_event() {
    let received = Arc::new(Mutex::new(Vec::<Value>::new()));
    let app = axum::Router::new().route("/ingest", axum::routing::post(ingest)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sink = AuditSinkConfig {
        name: "siem".into(),
        target: AuditSinkTarget::Webhook {
            url: format!("http://127.0.0.1:{port}/ingest").parse().unwrap(),
            bearer_token: None,
        },
        ca_file: None,
        batch_size: 10,
        max_backoff: Duration::from_millis(400),
    };
    let t = trail_with(Duration::from_millis(300), vec![sink]).await;
    t.sign_in("alice", "192.0.2.10", FIREFOX).await;
    t.sign_in("alice", "198.51.100.23", FIREFOX).await;
    let rack = "spiffe://corp/connector/rack-1";
    t.link(EventKind::ConnectorOffline, rack, json!({ "remote": "10.0.0.1:4433", "broker_stopping": false })).await;
    let kinds = || -> Vec<String> {
        received.lock().unwrap().iter().filter_map(|v| v["kind"].as_str().map(str::to_owned)).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(kinds().contains(&"alert.new_address".to_owned())
        && kinds().contains(&"alert.connector_offline".to_owned()))
    {
        assert!(Instant::now() < deadline, "the alerts did not reach the webhook: {:?}", kinds());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alert = received.lock().unwrap().iter().find(|v| v["kind"] == "alert.new_address").cloned().unwrap();
    assert_eq!((alert["class_uid"].clone(), alert["subject"].clone()), (json!(2004), json!("user/alice")));
    assert_eq!(alert["detail"]["value"], json!("198.51.100.23"));
    t.stop().await;
}

#[tokio::test]
async fn after_a_broker_restart_a_connector_that_does_not_come_back_alerts_and_one_that_does_not() {
    let t = trail(Duration::from_secs(300)).await;
    let (rack1, rack2, rack3) =
        ("spiffe://corp/connector/rack-1", "spiffe://corp/connector/rack-2", "spiffe://corp/connector/rack-3");
    for rack in [rack1, rack2, rack3] {
        t.link(EventKind::ConnectorOnline, rack, json!({ "services": ["llm"], "remote": "10.0.0.1:4433" })).await;
    }
    // rack-1's link was cut by a SIGKILL of the broker (no offline event),
    // rack-2's by a clean stop; rack-3 had really gone away before.
    t.link(EventKind::ConnectorOffline, rack2, json!({ "remote": "10.0.0.2:4433", "broker_stopping": true })).await;
    t.link(EventKind::ConnectorOffline, rack3, json!({ "remote": "10.0.0.3:4433", "broker_stopping": false })).await;
    t.settled().await;
    let (dir, db) = t.stop().await;

    // The broker is down a while (longer than the new threshold): that alone must not alert.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let audit = Audit::with_signer(db.clone(), None, CheckpointPolicy::default());
    let stop = CancellationToken::new();
    let config =
        AuditTrailConfig { connector_offline_alert: Duration::from_millis(1500), ..AuditTrailConfig::default() };
    let task = tokio::spawn(serve_configured(db.clone(), audit.clone(), Vec::new(), config, stop.clone()));
    let t = Trail { _dir: dir, db, audit, stop, task };
    t.link(EventKind::ConnectorOnline, rack2, json!({ "services": ["llm"], "remote": "10.0.0.2:4434" })).await;
    t.settled().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.alerts().await.len() < 2 {
        assert!(Instant::now() < deadline, "no alert for rack-1 and rack-3: {:?}", t.alerts().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alerts = t.alerts().await;
    let mut subjects: Vec<&str> = alerts.iter().map(|a| a.subject.as_deref().unwrap()).collect();
    subjects.sort_unstable();
    assert_eq!(subjects, vec![rack1, rack3], "rack-2 came back; the broker's downtime is not counted");
    let rack1_offline = alerts.iter().find(|a| a.subject.as_deref() == Some(rack1)).unwrap();
    let rack3_offline = alerts.iter().find(|a| a.subject.as_deref() == Some(rack3)).unwrap();
    assert!(
        detail(rack1_offline)["offline_since"].as_str().unwrap()
            > detail(rack3_offline)["offline_since"].as_str().unwrap(),
        "rack-1's clock started at the broker's start, rack-3's at its own offline event"
    );
    t.stop().await;
}

/// Under steady traffic the sinks catch up with less than a full batch and
/// must then wait a poll interval: stepping again at once wrote the cursor
/// after every few events, and each write held the database's write lock
/// against the audit writer (SQLite's busy handler then slept 1 ms or more).
#[test]
fn a_sink_that_caught_up_waits_a_poll_interval_before_looking_again() {
    use super::alerts::{BATCH, wait_after};
    use super::{POLL, SinkError, after_delivery};
    assert_eq!(wait_after(&Ok(BATCH)), Duration::ZERO, "a full batch: more are waiting");
    assert_eq!(wait_after(&Ok(BATCH - 1)), POLL);
    assert_eq!(wait_after(&Ok(1)), POLL);
    assert_eq!(wait_after(&Ok(0)), POLL);
    assert!(wait_after(&Err(SinkError::Alert("x".into()))) > POLL);
    assert_eq!(after_delivery(100, 100), Duration::ZERO);
    assert_eq!(after_delivery(3, 100), POLL);
    assert_eq!(after_delivery(0, 100), POLL);
}
