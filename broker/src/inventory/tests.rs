#![allow(clippy::unwrap_used, clippy::panic)]

use palisade_policies::{AccessRequest, Action, PolicyFile, Principal, PrincipalKind, RequestContext};
use palisade_proto::identity::PeerRole;

use super::*;
use crate::config::Config;
use crate::db::{Db, IdentityRecord, sqlite_url};
use crate::policy::PolicyStore;
use crate::policy_store::{self, Proposal};

const AGENTS: &str = r#"@id("agents") permit (principal in Group::"ml-agents", action == Action::"connect", resource in Segment::"inference");"#;
const GPU_ONLY: &str = r#"@id("gpu") permit (principal in Group::"gpu-team", action == Action::"connect", resource in Segment::"inference");"#;

struct Setup {
    _dir: tempfile::TempDir,
    config: Config,
    db: Db,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/agents.cedar"), AGENTS).unwrap();
    let toml = "[[services]]\nname = \"echo\"\nsegment = \"inference\"\n";
    let config = Config::from_toml_str(toml, dir.path(), &[]).unwrap();
    let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
    Setup { _dir: dir, config, db }
}

async fn audited(db: &Db, kind: &str) -> Vec<serde_json::Value> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_events WHERE kind = $1 ORDER BY seq")
        .bind(kind)
        .fetch_all(db.pool())
        .await
        .unwrap();
    rows.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
}

fn agent() -> Principal {
    Principal {
        kind: PrincipalKind::Machine,
        id: "m-1".into(),
        name: "agent-1".into(),
        groups: vec!["ml-agents".into()],
    }
}

fn allowed(store: &PolicyStore, service: &str) -> bool {
    let principal = agent();
    let context = RequestContext { now_unix_secs: 1_700_000_000, ..RequestContext::default() };
    let request = AccessRequest { principal: &principal, action: Action::Connect, service, context: &context };
    store.verdict(&request).0.decision.is_allow()
}

#[tokio::test]
async fn config_services_seed_the_catalog_once_and_admin_changes_win() {
    let s = setup().await;
    assert_eq!(seed_from_config(&s.db, &s.config).await.unwrap(), 1);
    let (version, entries) = catalog(&s.db).await.unwrap();
    assert_eq!((version.version, entries.len(), entries[0].segment.as_str()), (1, 1, "inference"));

    create_segment(&s.db, "quarantine", "cut off", "admin").await.unwrap();
    assign(&s.db, "echo", Some("quarantine"), None, "admin").await.unwrap();
    assert_eq!(seed_from_config(&s.db, &s.config).await.unwrap(), 0, "a restart must not undo the move");
    assert_eq!(get_service(&s.db, "echo").await.unwrap().unwrap().segment.as_deref(), Some("quarantine"));
}

#[tokio::test]
async fn moves_are_versioned_audited_and_refused_when_they_make_no_sense() {
    let s = setup().await;
    seed_from_config(&s.db, &s.config).await.unwrap();
    let err = assign(&s.db, "echo", Some("nowhere"), None, "admin").await.unwrap_err();
    assert!(matches!(err, InventoryError::UnknownSegment(_)), "{err}");
    let err = assign(&s.db, "ghost", Some("inference"), None, "admin").await.unwrap_err();
    assert!(matches!(err, InventoryError::UnknownService(_)), "{err}");
    let err = assign(&s.db, "echo", Some("inference"), Some("udp"), "admin").await.unwrap_err();
    assert!(matches!(err, InventoryError::BadProtocol(_)), "{err}");
    let err = create_segment(&s.db, "bad\"name", "", "admin").await.unwrap_err();
    assert!(matches!(err, InventoryError::BadName { .. }), "{err}");
    assert_eq!(catalog_version(&s.db).await.unwrap().version, 1, "refusals change nothing");

    create_segment(&s.db, "quarantine", "", "admin").await.unwrap();
    assign(&s.db, "echo", Some("quarantine"), Some("http"), "alice").await.unwrap();
    let version = catalog_version(&s.db).await.unwrap();
    assert_eq!(version.version, 3);
    assert_eq!(version.last_change, "service echo moved from segment inference to quarantine");
    let events = audited(&s.db, "policy.activated").await;
    let moved = events.last().unwrap();
    assert_eq!(moved["change"], "service echo moved from segment inference to quarantine");
    assert_eq!(moved["catalog_version"], 3);

    let err = delete_segment(&s.db, "quarantine", "admin").await.unwrap_err();
    assert!(matches!(&err, InventoryError::SegmentInUse { services, .. } if services == &["echo"]), "{err}");
    let labelled = label(&s.db, "echo", &[LabelChange::Add("pii"), LabelChange::Add("gpu")], "admin").await.unwrap();
    assert_eq!(labelled.labels, ["gpu", "pii"]);
    let err = label(&s.db, "echo", &[LabelChange::Add("bad label")], "admin").await.unwrap_err();
    assert!(matches!(err, InventoryError::BadName { what: "label", .. }), "{err}");
}

#[tokio::test]
async fn an_advertised_service_is_unreachable_until_an_admin_assigns_it() {
    let s = setup().await;
    seed_from_config(&s.db, &s.config).await.unwrap();
    let mut tx = s.db.begin_write().await.unwrap();
    let record = IdentityRecord {
        id: "m-1".into(),
        role: PeerRole::Machine,
        name: "agent-1".into(),
        groups: vec!["ml-agents".into()],
        disabled: false,
    };
    crate::db::identities::insert(&mut tx, &record, 1).await.unwrap();
    tx.commit().await.unwrap();
    let valid = on_hello(&s.db, "c-1", "rack-1", vec!["llm".into(), "echo".into(), "bad name".into()]).await;
    assert_eq!(valid, ["llm", "echo"], "invalid names are not routed");

    let store = PolicyStore::load(&s.config, &s.db).await.unwrap();
    assert!(!allowed(&store, "llm"), "a service without a segment is unknown to the policy");
    let rows = inventory(&s.db, store.current().engine(), None).await.unwrap();
    let llm = rows.iter().find(|r| r.service.name == "llm").unwrap();
    assert_eq!((llm.reachability, llm.service.connectors[0].name.as_str()), (Reachability::Unassigned, "rack-1"));
    let echo = rows.iter().find(|r| r.service.name == "echo").unwrap();
    assert_eq!(
        (echo.reachability, echo.reachable_by.as_slice()),
        (Reachability::Reachable, ["machine:agent-1".to_owned()].as_slice())
    );

    assign(&s.db, "llm", Some("inference"), None, "admin").await.unwrap();
    assert!(store.sync().await.unwrap());
    assert!(allowed(&store, "llm"));
    assert_eq!(store.current().change, "service llm assigned to segment inference");
}

#[tokio::test]
async fn the_broker_seeds_version_one_and_a_cached_allow_never_outlives_its_version() {
    let s = setup().await;
    let store = PolicyStore::load(&s.config, &s.db).await.unwrap();
    assert_eq!(store.current().store_version, 1, "the policy directory seeds version 1");
    assert!(allowed(&store, "echo"));
    assert!(allowed(&store, "echo"));
    assert_eq!(store.cache_stats(), (1, 1), "the second decision came from the cache");

    let files = [PolicyFile { name: "agents.cedar".into(), text: GPU_ONLY.into() }];
    let (_, services) = catalog(&s.db).await.unwrap();
    let proposal = Proposal {
        files: &files,
        parent: Some(1),
        author: "a",
        comment: "gpu only",
        services: &services,
        cases_dir: None,
    };
    policy_store::apply(&s.db, &proposal).await.unwrap();
    assert!(allowed(&store, "echo"), "until the broker syncs, the old version decides");
    assert!(store.sync().await.unwrap());
    assert_eq!((store.current().store_version, store.current().change.as_str()), (2, "policy version 2"));
    assert!(!allowed(&store, "echo"), "the cached allow of version 1 must not be used");

    // The directory mirrors the active version, so a reload imports nothing.
    let mirrored = std::fs::read_to_string(s.config.policy_dir.join("agents.cedar")).unwrap();
    assert_eq!(mirrored, GPU_ONLY);
    assert!(!store.sync().await.unwrap(), "nothing changed");

    // A catalog change is a new set too: back to allowed by nobody, then moved.
    create_segment(&s.db, "quarantine", "", "admin").await.unwrap();
    assign(&s.db, "echo", Some("quarantine"), None, "admin").await.unwrap();
    assert!(store.sync().await.unwrap());
    assert_eq!(store.current().change, "service echo moved from segment inference to quarantine");
}
