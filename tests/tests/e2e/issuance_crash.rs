//! Issue #10's "broker killed during certificate issuance": eighty machines
//! enroll, eight at a time, and the broker is SIGKILLed in the middle. After a
//! restart nothing is half-issued: an identity exists exactly when its
//! token is spent, has its certificate row, and that certificate has its
//! `certificate.issued` event; every certificate a client was handed is
//! among them; a token whose redemption did not commit can still be used;
//! and the audit chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_tests::TestEnv;
use rcgen::{CertificateParams, KeyPair};
use sqlx::Row as _;
use x509_parser::prelude::{FromDer, X509Certificate};

const MACHINES: usize = 80;
/// Enrollments in flight at once.
const WORKERS: usize = 8;
/// The broker is killed the moment this many enrollments have been answered.
const KILL_AFTER: usize = 10;

fn csr() -> String {
    CertificateParams::default()
        .serialize_request(&KeyPair::generate().expect("a key"))
        .expect("a CSR")
        .pem()
        .expect("PEM")
}

/// The serial as the broker stores it: lowercase hex, no separators.
fn serial_of(pem: &str) -> String {
    let der = palisade_proto::pem::certs(pem).expect("a PEM certificate").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("a certificate");
    cert.raw_serial_as_string().replace(':', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_during_issuance_leaves_nothing_half_issued() {
    let env = TestEnv::new();
    let mut broker = env.broker().spawn().await;
    let mut tokens = Vec::with_capacity(MACHINES);
    for i in 0..MACHINES {
        tokens
            .push((format!("burst-{i:02}"), broker.machine(&format!("burst-{i:02}")).group("ml-agents").token().await));
    }
    let api = Arc::new(broker.enroll_api(&tokens[0].1));
    let queue = Arc::new(std::sync::Mutex::new(tokens.clone()));
    let done = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let handed = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (api, queue, done, enough) = (api.clone(), queue.clone(), done.clone(), enough.clone());
        let handed = handed.clone();
        // A request cut by the kill panics inside the harness, which ends that worker.
        workers.spawn(async move {
            loop {
                let Some((name, token)) = queue.lock().expect("the queue").pop() else { return };
                let answer = api.enroll(&token, &csr()).await;
                if answer.status == 200 {
                    handed.lock().expect("the answers").insert(name, serial_of(answer.certificate_pem()));
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    enough.notify_one();
                }
            }
        });
    }
    enough.notified().await;
    broker.kill().await;
    while workers.join_next().await.is_some() {}
    let handed_out = std::mem::take(&mut *handed.lock().expect("the answers"));
    let untouched = queue.lock().expect("the queue").len();
    eprintln!("{} enrollments answered before the kill, {untouched} never started", handed_out.len());
    assert!(untouched > 0, "the kill came after every enrollment; nothing was tested");

    broker.restart().await;
    let db = palisade_tests::open_db(broker.database_url()).await;
    let identities: BTreeMap<String, String> =
        sqlx::query("SELECT name, id FROM identities WHERE role = 'machine' AND name LIKE 'burst-%'")
            .fetch_all(&db)
            .await
            .expect("identities")
            .iter()
            .map(|row| (row.get("name"), row.get("id")))
            .collect();
    let spent: BTreeSet<String> =
        sqlx::query_scalar("SELECT name FROM enrollment_tokens WHERE name LIKE 'burst-%' AND redeemed_at IS NOT NULL")
            .fetch_all(&db)
            .await
            .expect("tokens")
            .into_iter()
            .collect();
    assert_eq!(spent, identities.keys().cloned().collect(), "a token is spent exactly when its identity exists");
    let rows: Vec<(String, String)> = sqlx::query("SELECT serial, identity_id FROM certificates")
        .fetch_all(&db)
        .await
        .expect("certificates")
        .iter()
        .map(|row| (row.get("serial"), row.get("identity_id")))
        .collect();
    let certified: BTreeSet<&String> = rows.iter().map(|(_, id)| id).collect();
    for (name, id) in &identities {
        assert!(certified.contains(id), "{name} exists without a certificate");
    }
    let audit = broker.audit_events().await;
    let audited: BTreeSet<String> =
        audit.of_kind("certificate.issued").iter().filter_map(|r| r.detail_str("serial").map(str::to_owned)).collect();
    let stored: BTreeSet<String> = rows.iter().map(|(serial, _)| serial.clone()).collect();
    assert_eq!(stored, audited, "every stored certificate has its certificate.issued event and no event is orphaned");
    for (name, serial) in &handed_out {
        assert!(stored.contains(serial), "{name} was handed certificate {serial}, which the broker lost");
    }

    // What did not commit can be redeemed now; what did is spent.
    let api = broker.enroll_api(&tokens[0].1);
    for (name, token) in &tokens {
        let again = api.enroll(token, &csr()).await;
        if identities.contains_key(name) {
            assert_ne!(again.status, 200, "{name}'s token was spent before the kill and must stay spent");
        } else {
            assert_eq!(again.status, 200, "{name}'s redemption did not commit, so its token still works: {again:?}");
        }
    }
    let out = broker.cli(&["audit", "verify"]).await;
    assert!(out.success(), "the chain verifies after the kill:\n{out}");
}
