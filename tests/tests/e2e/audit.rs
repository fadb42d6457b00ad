//! The audit trail is hash-chained: `audit verify` passes on a real run and
//! names the first broken link after a row is edited or deleted.

use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv, assert_eventually, open_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_on_a_real_run_and_names_an_edited_or_deleted_row() {
    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let intruder = broker.machine("intruder").group("web").enroll().await;
    agent.connect("echo").await.assert_echoes(b"a real tunnel").await;
    intruder.tunnel_exchange("echo", b"denied").await.expect_err("denied");
    assert_eventually!(broker.audit_events().await.has_kind("stream.ended"));

    let out = broker.cli(&["audit", "verify"]).await;
    let stdout = out.expect_success();
    let events: usize = stdout
        .strip_prefix("audit chain intact: ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output:\n{out}"));
    let audit = broker.audit_events().await;
    assert!(events >= 8 && events <= audit.len(), "verified {events} of {} events:\n{}", audit.len(), audit.summary());

    // Edit one row in the middle of the chain, as someone with write access
    // to the database file would: the append-only triggers are no obstacle.
    let target = audit.of_kind("certificate.issued")[0].clone();
    let db = open_db(broker.database_url()).await;
    for trigger in ["audit_events_no_update", "audit_events_no_delete"] {
        // PostgreSQL names the table a trigger is on; SQLite does not accept that.
        let on = if broker.database_url().starts_with("postgres") { " ON audit_events" } else { "" };
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER IF EXISTS {trigger}{on}"))).execute(&db).await.unwrap();
    }
    let original: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE seq = $1")
        .bind(target.seq)
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET detail = '{\"groups\":[\"admins\"]}' WHERE seq = $1")
        .bind(target.seq)
        .execute(&db)
        .await
        .unwrap();
    let out = broker.cli(&["audit", "verify"]).await;
    assert_eq!(out.code(), Some(1), "an edited row must break the chain:\n{out}");
    assert!(out.all_output().contains(&format!("audit chain broken at event #{}", target.seq)), "{out}");

    // Put it back: the chain is whole again, so verify points at real damage only.
    sqlx::query("UPDATE audit_events SET detail = $1 WHERE seq = $2")
        .bind(&original)
        .bind(target.seq)
        .execute(&db)
        .await
        .unwrap();
    broker.cli(&["audit", "verify"]).await.expect_success();

    // Delete a row: the first broken link is where the gap is.
    let deleted = audit.of_kind("token.redeemed")[0].seq;
    sqlx::query("DELETE FROM audit_events WHERE seq = $1").bind(deleted).execute(&db).await.unwrap();
    db.close().await;
    let out = broker.cli(&["audit", "verify"]).await;
    assert_eq!(out.code(), Some(1), "a deleted row must break the chain:\n{out}");
    let output = out.all_output();
    assert!(
        [deleted, deleted + 1].iter().any(|seq| output.contains(&format!("audit chain broken at event #{seq}"))),
        "verify must name the gap at #{deleted}:\n{out}"
    );
}

/// Retention (issue #6): with `[audit] retention` the running broker prunes
/// old events on its own, archives them first, and the chain still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_prunes_past_its_retention_period_archiving_first_and_the_chain_still_verifies() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let _agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let old = broker.audit_events().await;
    let last_old = old.last().unwrap().seq;
    assert!(old.has_kind("token.redeemed"), "{}", old.summary());

    let config_path = broker.data_dir().join("broker.toml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str("\n[audit]\nretention = \"8s\"\nprune_interval = \"1s\"\narchive = \"audit-archive.jsonl\"\n");
    std::fs::write(&config_path, config).unwrap();
    // Every event so far is past the retention period when the broker comes back.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    broker.restart().await;
    let _later = broker.machine("agent-2").group("ml-agents").enroll().await;

    assert_eventually!(broker.audit_events().await.iter().all(|r| r.seq > last_old));
    let checked_at =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let kept = broker.audit_events().await;
    let archive = std::fs::read_to_string(broker.data_dir().join("audit-archive.jsonl")).unwrap();
    let archived: Vec<serde_json::Value> = archive.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<i64> = archived.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
    assert!((1..=last_old).all(|seq| seqs.contains(&seq)), "every pruned event is archived first: {seqs:?}");
    // Nothing younger than the retention period was pruned: every archived
    // event was already 8 s old when it went (however slow this machine is).
    for event in &archived {
        assert!(event["time_ms"].as_i64().unwrap() < checked_at - 8000, "pruned too young: {event}");
    }
    let enrolled = |r: &serde_json::Value| r["kind"] == "token.redeemed" && r["subject"] == "machine:agent-2";
    assert!(
        kept.of_kind("token.redeemed").iter().any(|r| r.subject.as_deref() == Some("machine:agent-2"))
            || archived.iter().any(enrolled),
        "agent-2's enrollment is kept, or archived once past the retention period:\n{}",
        kept.summary()
    );
    let out = broker.cli(&["audit", "verify"]).await;
    assert!(out.success(), "the chain verifies across the cut:\n{out}");
    assert!(out.all_output().contains("audit chain intact"), "{out}");
}
