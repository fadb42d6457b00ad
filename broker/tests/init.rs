//! `palisade-broker init`: creates what is missing, never overwrites, refuses inconsistent directories.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use palisade_broker::audit::{self, EventKind};
use palisade_broker::config::Config;
use palisade_broker::db::{Db, meta, sqlite_url};
use palisade_broker::init::{InitError, InitOptions, init};
use palisade_broker::issuance::ca::{Ca, CaError};
use palisade_broker::issuance::keystore::Kek;

fn opts(dir: &Path) -> InitOptions {
    InitOptions { data_dir: dir.to_owned(), ..InitOptions::default() }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn rows(dir: &Path) -> (Vec<String>, u64) {
    let db = Db::open(&sqlite_url(&dir.join("palisade.db"))).await.unwrap();
    let metas = sqlx::query_scalar::<_, String>("SELECT key || '=' || value FROM meta ORDER BY key")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let events = audit::verify(&db).await.unwrap().events;
    db.close().await;
    (metas, events)
}

#[tokio::test]
async fn init_creates_a_complete_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let report = init(&opts(&dir)).await.unwrap();
    assert_eq!(report.trust_domain.as_str(), "palisade.local");
    assert!(report.kek_beside_key);
    for f in [
        "palisade.db",
        "ca.pem",
        "ca.key.enc",
        "kek",
        "server.pem",
        "server.key",
        "broker.toml",
        "policies/default.cedar",
    ] {
        assert!(dir.join(f).exists(), "{f} is missing");
    }
    assert_eq!(mode(&dir), 0o700);
    for secret in ["kek", "ca.key.enc", "server.key"] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }
    let config = Config::load(&dir.join("broker.toml")).unwrap();
    assert_eq!(config.data_dir, dir);
    let seed_db = Db::open(&config.database_url()).await.unwrap();
    palisade_broker::policy::PolicyStore::load(&config, &seed_db).await.expect("the default policy validates");
    seed_db.close().await;
    let kek = Kek::from_file(&dir.join("kek")).unwrap();
    let ca = Ca::load(&dir, &kek).unwrap();
    assert_eq!(ca.trust_domain().as_str(), "palisade.local");
    let chain = palisade_proto::pem::certs(&std::fs::read_to_string(dir.join("server.pem")).unwrap()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(&chain[1], ca.cert_der());
    let db = Db::open(&config.database_url()).await.unwrap();
    assert_eq!(meta::get(&db, meta::TRUST_DOMAIN).await.unwrap().as_deref(), Some("palisade.local"));
    assert_eq!(audit::query::count(&db, EventKind::BrokerInitialized).await.unwrap(), 1);
}

#[tokio::test]
async fn init_twice_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir)).await.unwrap();
    let files = ["ca.pem", "ca.key.enc", "kek", "server.pem", "server.key", "broker.toml", "policies/default.cedar"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    let rows_before = rows(dir).await;
    let again = init(&opts(dir)).await.unwrap();
    assert!(again.created.is_empty(), "created {:?}", again.created);
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(rows(dir).await, rows_before);
}

#[tokio::test]
async fn init_completes_a_directory_missing_its_server_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir)).await.unwrap();
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    std::fs::remove_file(dir.join("server.key")).unwrap();
    let report = init(&opts(dir)).await.unwrap();
    assert_eq!(report.created, ["server.key", "server.pem"]);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
}

#[tokio::test]
async fn an_inconsistent_directory_is_refused_and_left_alone() {
    let cases: [(&str, &[&str]); 4] = [
        ("ca.key.enc is missing", &["ca.key.enc"]),
        ("palisade.db is missing", &["palisade.db", "palisade.db-wal", "palisade.db-shm"]),
        ("server.pem exists but server.key is missing", &["server.key"]),
        ("ca.pem and ca.key.enc are missing", &["ca.pem", "ca.key.enc", "server.pem", "server.key"]),
    ];
    for (expected, remove) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(&opts(dir)).await.unwrap();
        for f in remove {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let listing = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let before = listing(dir);
        let err = init(&opts(dir)).await.unwrap_err();
        assert!(matches!(err, InitError::Inconsistent { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(listing(dir), before);
    }
}

#[tokio::test]
async fn the_trust_domain_never_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut o = opts(dir);
    o.trust_domain = Some("corp.example".parse().unwrap());
    init(&o).await.unwrap();
    o.trust_domain = Some("other.example".parse().unwrap());
    let err = init(&o).await.unwrap_err().to_string();
    assert!(err.contains("trust domain is corp.example and can never change"), "{err}");
    o.trust_domain = None;
    assert_eq!(init(&o).await.unwrap().trust_domain.as_str(), "corp.example");
}

#[tokio::test]
async fn a_wrong_kek_gives_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir)).await.unwrap();
    let err = Ca::load(dir, &Kek::generate().unwrap()).unwrap_err();
    assert!(matches!(err, CaError::Decrypt));
    assert!(err.to_string().contains("wrong KEK"), "{err}");
    std::fs::write(dir.join("ca.key.enc"), "palisade-ca-key v1 aes-256-gcm\nAAAA\n").unwrap();
    let kek = Kek::from_file(&dir.join("kek")).unwrap();
    assert!(matches!(Ca::load(dir, &kek), Err(CaError::Decrypt)));
}

#[tokio::test]
async fn a_kek_from_the_environment_or_a_file_is_not_written_beside_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = Kek::generate().unwrap();
    let mut o = opts(&tmp.path().join("env"));
    o.kek_env = Some(kek.to_base64());
    let report = init(&o).await.unwrap();
    assert!(!report.kek_beside_key && !tmp.path().join("env/kek").exists());
    Ca::load(&tmp.path().join("env"), &kek).unwrap();

    let secret = tmp.path().join("secret.kek");
    let mut o = opts(&tmp.path().join("file"));
    o.kek_file = Some(secret.clone());
    init(&o).await.unwrap();
    assert_eq!(mode(&secret), 0o600);
    assert!(!tmp.path().join("file/kek").exists());
    let config = Config::load(&tmp.path().join("file/broker.toml")).unwrap();
    assert_eq!(config.ca.kek_file.as_deref(), Some(secret.as_path()));
    Ca::load(&tmp.path().join("file"), &Kek::from_file(&secret).unwrap()).unwrap();
}

#[tokio::test]
async fn policies_can_be_copied_from_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.cedar"), "// a\n").unwrap();
    std::fs::write(src.join("notes.txt"), "skip me").unwrap();
    let mut o = opts(&tmp.path().join("data"));
    o.policy_src = Some(src);
    init(&o).await.unwrap();
    assert!(tmp.path().join("data/policies/a.cedar").exists());
    assert!(!tmp.path().join("data/policies/notes.txt").exists());
    assert!(!tmp.path().join("data/policies/default.cedar").exists());
}
