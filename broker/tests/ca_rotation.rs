//! CA rotation steps on a real data directory: each step refuses what does
//! not apply and changes nothing then, and an activation interrupted between
//! its file moves is finished by running it again.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use palisade_broker::db::{Db, sqlite_url};
use palisade_broker::init::{InitOptions, init};
use palisade_broker::issuance::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, read_ca_cert};
use palisade_broker::issuance::keystore::Kek;
use palisade_broker::issuance::rotation::{
    self, CA_NEXT_CERT_FILE, CA_NEXT_KEY_FILE, CA_PREVIOUS_CERT_FILE, RotationError, fingerprint,
};

const DAY: Duration = Duration::from_secs(86_400);

async fn data_dir() -> (tempfile::TempDir, Db, Kek) {
    let tmp = tempfile::tempdir().unwrap();
    init(&InitOptions { data_dir: tmp.path().to_owned(), ..InitOptions::default() }).await.unwrap();
    let db = Db::open(&sqlite_url(&tmp.path().join("palisade.db"))).await.unwrap();
    let kek = Kek::from_file(&tmp.path().join("kek")).unwrap();
    (tmp, db, kek)
}

fn active(dir: &Path) -> String {
    fingerprint(&read_ca_cert(dir).unwrap().0)
}

fn refusal<T: std::fmt::Debug>(result: Result<T, RotationError>) -> String {
    match result {
        Err(RotationError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn activation_waits_for_renewals_unless_forced_and_keeps_the_old_ca_trusted() {
    let (tmp, db, kek) = data_dir().await;
    let dir = tmp.path();
    let old = active(dir);
    let now = SystemTime::now();
    let prepared = rotation::prepare(dir, &db, &kek, now).await.unwrap();
    assert_ne!(prepared.sha256, old);
    assert!(refusal(rotation::prepare(dir, &db, &kek, now).await).contains("prepared already"));

    let early = refusal(rotation::activate(dir, &db, &kek, now + DAY / 2, DAY, false).await);
    assert!(early.contains("--force"), "{early}");
    assert_eq!(active(dir), old, "a refused activation changes nothing");

    let done = rotation::activate(dir, &db, &kek, now + DAY, DAY, false).await.unwrap();
    assert_eq!((done.active.as_str(), done.previous.as_str()), (prepared.sha256.as_str(), old.as_str()));
    assert_eq!(active(dir), prepared.sha256);
    assert!(!dir.join(CA_NEXT_CERT_FILE).exists() && !dir.join(CA_NEXT_KEY_FILE).exists());
    Ca::load(dir, &kek).expect("the new CA's key is in place");
    let trusted = rotation::also_trusted(dir, &db, &read_ca_cert(dir).unwrap().1).await.unwrap();
    assert_eq!(trusted.iter().map(|c| fingerprint(c)).collect::<Vec<_>>(), [old]);
    let roles = rotation::roles(&db).await.unwrap();
    assert_eq!(roles.active.as_deref(), Some(prepared.sha256.as_str()));
    assert!(roles.next.is_none());
}

#[tokio::test]
async fn an_activation_interrupted_between_its_moves_is_finished_by_running_it_again() {
    let (tmp, db, kek) = data_dir().await;
    let dir = tmp.path();
    let old = active(dir);
    let now = SystemTime::now();
    let next = rotation::prepare(dir, &db, &kek, now).await.unwrap().sha256;
    // A crash after the key moved into place and before the certificate did.
    std::fs::write(dir.join(CA_PREVIOUS_CERT_FILE), std::fs::read(dir.join(CA_CERT_FILE)).unwrap()).unwrap();
    std::fs::rename(dir.join(CA_NEXT_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
    assert!(Ca::load(dir, &kek).is_err(), "a broker cannot start on the half-moved files");

    let done = rotation::activate(dir, &db, &kek, now, DAY, true).await.unwrap();
    assert_eq!((done.active, done.previous), (next.clone(), old.clone()));
    assert_eq!(active(dir), next);
    Ca::load(dir, &kek).expect("consistent again");

    // A crash after both moves, before the database: the rerun only records it.
    let (tmp2, db2, kek2) = data_dir().await;
    let dir2 = tmp2.path();
    let old2 = active(dir2);
    let next2 = rotation::prepare(dir2, &db2, &kek2, now).await.unwrap().sha256;
    std::fs::write(dir2.join(CA_PREVIOUS_CERT_FILE), std::fs::read(dir2.join(CA_CERT_FILE)).unwrap()).unwrap();
    std::fs::rename(dir2.join(CA_NEXT_KEY_FILE), dir2.join(CA_KEY_FILE)).unwrap();
    std::fs::rename(dir2.join(CA_NEXT_CERT_FILE), dir2.join(CA_CERT_FILE)).unwrap();
    let ca_der = read_ca_cert(dir2).unwrap().0;
    let start = refusal(rotation::check_active(dir2, &db2, &ca_der).await);
    assert!(start.contains("interrupted"), "a broker start names the interrupted activation: {start}");
    let done = rotation::activate(dir2, &db2, &kek2, now, DAY, true).await.unwrap();
    assert_eq!((done.active, done.previous), (next2, old2));
    rotation::check_active(dir2, &db2, &ca_der).await.expect("recorded now");
}

#[tokio::test]
async fn retirement_waits_for_the_old_certificates_and_a_successor_can_be_cancelled() {
    let (tmp, db, kek) = data_dir().await;
    let dir = tmp.path();
    let now = SystemTime::now();
    assert!(refusal(rotation::retire(dir, &db, now, false).await).contains("nothing to retire"));
    assert!(refusal(rotation::cancel(dir, &db).await).contains("nothing to cancel"));

    let first = rotation::prepare(dir, &db, &kek, now).await.unwrap().sha256;
    assert_eq!(rotation::cancel(dir, &db).await.unwrap(), first);
    assert!(!dir.join(CA_NEXT_CERT_FILE).exists() && !dir.join(CA_NEXT_KEY_FILE).exists());

    let old = active(dir);
    rotation::prepare(dir, &db, &kek, now).await.unwrap();
    // A certificate the old CA issued before the activation, valid for a day.
    sqlx::query("INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES ('m1', 'machine', 'm1', '[]', 0, 0)")
        .execute(db.pool())
        .await
        .unwrap();
    let (issued, until) = (unix(now) - 10, unix(now + DAY));
    sqlx::query("INSERT INTO certificates (serial, identity_id, public_key_sha256, issued_at, not_after) VALUES ('01', 'm1', 'x', $1, $2)")
        .bind(issued)
        .bind(until)
        .execute(db.pool())
        .await
        .unwrap();
    rotation::activate(dir, &db, &kek, now, DAY, true).await.unwrap();
    assert!(refusal(rotation::prepare(dir, &db, &kek, now).await).contains("retire it first"));
    let early = refusal(rotation::retire(dir, &db, now, false).await);
    assert!(early.contains("1 certificate(s)"), "{early}");
    assert!(dir.join(CA_PREVIOUS_CERT_FILE).exists(), "a refused retirement changes nothing");

    let retired = rotation::retire(dir, &db, now + DAY + DAY / 24, false).await.unwrap();
    assert_eq!((retired.sha256, retired.still_valid), (old, 0));
    assert!(!dir.join(CA_PREVIOUS_CERT_FILE).exists());
    assert!(rotation::roles(&db).await.unwrap().previous.is_none());
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}
