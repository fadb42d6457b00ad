//! Enrollment tokens and issuance against a real SQLite file.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use palisade_broker::audit::{self, Audit, EventKind};
use palisade_broker::db::{Db, certificates, identities, sqlite_url, tokens};
use palisade_broker::issuance::ca::Ca;
use palisade_broker::issuance::enroll::{EnrollError, Enroller, TokenRequest, create_token};
use palisade_broker::issuance::{IssueError, issue_with};
use palisade_proto::identity::{PeerRole, verify_peer};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};

struct Env {
    _dir: tempfile::TempDir,
    db: Db,
    audit: Audit,
    ca: Ca,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
        let audit = Audit::new(db.clone());
        let ca = Ca::create(&"palisade.test".parse().unwrap(), SystemTime::now()).unwrap().0;
        Env { _dir: dir, db, audit, ca }
    }

    fn enroller(&self) -> Enroller<'_> {
        Enroller {
            db: &self.db,
            audit: &self.audit,
            ca: &self.ca,
            machine_ttl: Duration::from_secs(3600),
            connector_ttl: Duration::from_secs(24 * 3600),
            source: None,
        }
    }

    async fn token(&self, role: PeerRole, name: &str, now: SystemTime) -> String {
        let groups = if role == PeerRole::Machine { vec!["ml-agents".to_owned()] } else { vec![] };
        let req =
            TokenRequest { role, name: name.into(), groups, ttl: Duration::from_secs(900), created_by: "cli".into() };
        create_token(&self.db, self.ca.cert_der(), &req, now).await.unwrap().expose()
    }

    async fn count(&self, kind: EventKind) -> u64 {
        audit::query::count(&self.db, kind).await.unwrap()
    }
}

fn csr() -> String {
    csr_with(&KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap())
}

fn csr_with(key: &KeyPair) -> String {
    CertificateParams::default().serialize_request(key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn a_token_enrolls_a_machine_with_its_groups() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Machine, "agent-1", SystemTime::now()).await;
    let enrolled = env.enroller().redeem(&token, &csr(), SystemTime::now()).await.unwrap();
    assert_eq!(enrolled.identity.name, "agent-1");
    assert_eq!(enrolled.identity.groups, ["ml-agents"]);
    let stored = identities::get(&env.db, PeerRole::Machine, &enrolled.identity.id).await.unwrap().unwrap();
    assert_eq!(stored, enrolled.identity);
    let der = rustls_pki_types::CertificateDer::from(enrolled.issued.certificate_der.clone());
    let peer = verify_peer(&[der], env.ca.trust_anchors(), SystemTime::now(), &[PeerRole::Machine]).unwrap();
    assert_eq!(peer.groups(), ["ml-agents"]);
    assert_eq!(peer.serial_hex(), enrolled.issued.serial_hex);
    let certs = certificates::for_identity(&env.db, &enrolled.identity.id).await.unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial, enrolled.issued.serial_hex);
    for kind in [EventKind::TokenCreated, EventKind::TokenRedeemed, EventKind::CertificateIssued] {
        assert_eq!(env.count(kind).await, 1, "{kind}");
    }
    assert!(audit::verify(&env.db).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn two_racing_redemptions_give_exactly_one_identity() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Machine, "agent-race", SystemTime::now()).await;
    let e = env.enroller();
    let (csr_a, csr_b) = (csr(), csr());
    let (a, b) = tokio::join!(e.redeem(&token, &csr_a, SystemTime::now()), e.redeem(&token, &csr_b, SystemTime::now()));
    let wins = [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count();
    assert_eq!(wins, 1);
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(EnrollError::TokenRefused)));
    assert!(identities::find_by_name(&env.db, PeerRole::Machine, "agent-race").await.unwrap().is_some());
    assert_eq!(env.count(EventKind::TokenRedeemed).await, 1);
    assert_eq!(env.count(EventKind::TokenRefused).await, 1);
}

#[tokio::test]
async fn many_racing_redemptions_on_separate_pools_give_exactly_one_identity() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Connector, "gpu-rack-1", SystemTime::now()).await;
    let url = sqlite_url(&env._dir.path().join("palisade.db"));
    let mut pools = Vec::new();
    for _ in 0..8 {
        let db = Db::open(&url).await.unwrap();
        let audit = Audit::new(db.clone());
        pools.push((db, audit, token.clone()));
    }
    let csrs: Vec<String> = (0..pools.len()).map(|_| csr()).collect();
    let results = futures::future::join_all(pools.iter().zip(&csrs).map(|((db, audit, token), csr)| {
        let e = Enroller {
            db,
            audit,
            ca: &env.ca,
            machine_ttl: Duration::from_secs(60),
            connector_ttl: Duration::from_secs(60),
            source: None,
        };
        async move { e.redeem(token, csr, SystemTime::now()).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(EnrollError::TokenRefused))));
    assert!(audit::verify(&env.db).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn used_and_expired_tokens_are_refused_and_audited_without_the_token() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Machine, "agent-2", SystemTime::now()).await;
    env.enroller().redeem(&token, &csr(), SystemTime::now()).await.unwrap();
    let again = env.enroller().redeem(&token, &csr(), SystemTime::now()).await.unwrap_err();
    assert_eq!(again.to_string(), "enrollment token already used or expired: ask an admin for a new one");

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let old = env.token(PeerRole::Machine, "agent-3", an_hour_ago).await;
    assert!(matches!(env.enroller().redeem(&old, &csr(), SystemTime::now()).await, Err(EnrollError::TokenRefused)));

    let refused = audit::query::recent(&env.db, Some(EventKind::TokenRefused), 10).await.unwrap();
    let reasons: Vec<&str> = refused.iter().map(|e| e.detail.as_str()).collect();
    assert!(reasons.iter().any(|d| d.contains("already redeemed")), "{reasons:?}");
    assert!(reasons.iter().any(|d| d.contains("expired")), "{reasons:?}");
    let secret_part = token.split('.').nth(1).unwrap();
    let everything = audit::query::recent(&env.db, None, 100).await.unwrap();
    assert!(
        everything
            .iter()
            .all(|e| !e.detail.contains(secret_part) && !e.subject.clone().unwrap_or_default().contains(secret_part))
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT token_hash FROM enrollment_tokens").fetch_all(env.db.pool()).await.unwrap();
    assert!(stored.iter().all(|h| !h.contains(secret_part)));
}

#[tokio::test]
async fn a_bad_csr_is_refused_without_using_up_the_token() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Machine, "agent-4", SystemTime::now()).await;
    let p384 = csr_with(&KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap());
    let err = env.enroller().redeem(&token, &p384, SystemTime::now()).await.unwrap_err();
    assert!(matches!(err, EnrollError::Issue(IssueError::KeyType(_))), "{err}");
    assert_eq!(env.count(EventKind::CertificateRefused).await, 1);
    assert!(identities::find_by_name(&env.db, PeerRole::Machine, "agent-4").await.unwrap().is_none());
    env.enroller().redeem(&token, &csr(), SystemTime::now()).await.unwrap();
}

#[tokio::test]
async fn malformed_tokens_and_tokens_for_another_ca_are_refused() {
    let env = Env::new().await;
    assert!(matches!(
        env.enroller().redeem("pal1.nope", &csr(), SystemTime::now()).await,
        Err(EnrollError::MalformedToken)
    ));
    let other = Env::new().await;
    let foreign = other.token(PeerRole::Machine, "agent-5", SystemTime::now()).await;
    assert!(matches!(env.enroller().redeem(&foreign, &csr(), SystemTime::now()).await, Err(EnrollError::TokenRefused)));
    assert_eq!(env.count(EventKind::TokenRefused).await, 2);
}

#[tokio::test]
async fn names_are_unique_per_role_and_requests_are_checked() {
    let env = Env::new().await;
    let now = SystemTime::now();
    let token = env.token(PeerRole::Machine, "agent-6", now).await;
    let req = |role, name: &str, groups: Vec<&str>, ttl| TokenRequest {
        role,
        name: name.into(),
        groups: groups.into_iter().map(str::to_owned).collect(),
        ttl,
        created_by: "cli".into(),
    };
    let min15 = Duration::from_secs(900);
    let pending =
        create_token(&env.db, env.ca.cert_der(), &req(PeerRole::Machine, "agent-6", vec![], min15), now).await;
    assert!(matches!(pending, Err(EnrollError::NameTaken { .. })));
    env.enroller().redeem(&token, &csr(), now).await.unwrap();
    let taken = create_token(&env.db, env.ca.cert_der(), &req(PeerRole::Machine, "agent-6", vec![], min15), now).await;
    assert!(taken.unwrap_err().to_string().contains("already exists"));
    create_token(&env.db, env.ca.cert_der(), &req(PeerRole::Connector, "agent-6", vec![], min15), now).await.unwrap();
    for bad in [
        req(PeerRole::Machine, "a/b", vec![], min15),
        req(PeerRole::Machine, "ok", vec!["has space"], min15),
        req(PeerRole::Machine, "ok", vec![], Duration::from_secs(8 * 24 * 3600)),
        req(PeerRole::Connector, "ok2", vec!["g"], min15),
        req(PeerRole::User, "ok3", vec![], min15),
    ] {
        let result = create_token(&env.db, env.ca.cert_der(), &bad, now).await;
        assert!(matches!(result, Err(EnrollError::Invalid(_))), "{bad:?}");
    }
    assert_eq!(tokens::count(&env.db).await.unwrap(), 2);
}

/// CA-11 at the token API: a 10 kB name or group is refused with the limit
/// named, and neither a token nor an audit event is written.
#[tokio::test]
async fn a_ten_kilobyte_name_or_group_is_refused_at_the_token_api() {
    let env = Env::new().await;
    let long = "a".repeat(10 * 1024);
    let min15 = Duration::from_secs(900);
    for (role, name, groups) in [
        (PeerRole::Machine, long.clone(), vec![]),
        (PeerRole::Connector, long.clone(), vec![]),
        (PeerRole::Machine, "ok".into(), vec![long.clone()]),
    ] {
        let req = TokenRequest { role, name, groups, ttl: min15, created_by: "cli".into() };
        let err = create_token(&env.db, env.ca.cert_der(), &req, SystemTime::now()).await.unwrap_err();
        assert!(matches!(&err, EnrollError::Invalid(m) if m.contains("at most 63 characters")), "{err}");
        assert!(err.to_string().len() < 200, "the message does not echo the name: {err}");
    }
    assert_eq!(tokens::count(&env.db).await.unwrap(), 0);
    assert_eq!(env.count(EventKind::TokenCreated).await, 0);
}

fn token_create(dir: &std::path::Path, name: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_palisade-broker"))
        .args(["token", "create", &format!("--machine={name}"), "--data-dir"])
        .arg(dir)
        .env("PALISADE_LOG", "error")
        .output()
        .unwrap()
}

/// CA-11, printed commands: `token create` prints the token alone on stdout
/// and an enroll command built from the broker's address and a placeholder;
/// a name that would mean something to a shell is refused before anything
/// is created, so it never reaches a command someone pastes.
#[tokio::test]
async fn token_create_never_puts_a_name_into_the_command_it_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    palisade_broker::init::init(&palisade_broker::init::InitOptions {
        data_dir: dir.clone(),
        ..palisade_broker::init::InitOptions::default()
    })
    .await
    .unwrap();
    for hostile in ["$(touch pwned)", "a;reboot", "`id`", "a b", "a'b", "-x", &"a".repeat(10 * 1024)] {
        let out = token_create(&dir, hostile);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{hostile:?} was taken");
        assert!(out.stdout.is_empty(), "{hostile:?}: no token printed");
        assert!(stderr.contains("identity name"), "{hostile:?}: the error names the problem: {stderr}");
        assert!(stderr.len() < 400, "{hostile:?}: the error does not echo a long name");
    }
    assert!(!tmp.path().join("pwned").exists() && !std::path::Path::new("pwned").exists());

    let out = token_create(&dir, "eval-agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.strip_suffix('\n').unwrap();
    assert!(
        token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "the token needs no quoting in a shell: {token}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let command = stderr.lines().last().unwrap().trim();
    assert!(command.starts_with("palisade enroll --broker https://"), "{stderr}");
    assert!(command.ends_with(" --token <TOKEN>"), "{stderr}");
    assert!(!command.contains("eval-agent"), "the name is not part of the command: {command}");
}

#[tokio::test]
async fn a_key_already_certified_for_another_identity_is_refused() {
    let env = Env::new().await;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let first = env.token(PeerRole::Machine, "agent-7", SystemTime::now()).await;
    env.enroller().redeem(&first, &csr_with(&key), SystemTime::now()).await.unwrap();
    let second = env.token(PeerRole::Machine, "agent-8", SystemTime::now()).await;
    let err = env.enroller().redeem(&second, &csr_with(&key), SystemTime::now()).await.unwrap_err();
    assert!(matches!(err, EnrollError::Issue(IssueError::KeyReused)), "{err}");
    assert!(identities::find_by_name(&env.db, PeerRole::Machine, "agent-8").await.unwrap().is_none());
    env.enroller().redeem(&second, &csr(), SystemTime::now()).await.unwrap();
}

/// CA-05: a connector's key, and the key of an identity that was disabled
/// (Palisade revokes identities and sessions, not single certificates), are
/// refused for any other identity.
#[tokio::test]
async fn a_connectors_key_or_a_disabled_identitys_key_is_refused_for_another_identity() {
    let env = Env::new().await;
    let now = SystemTime::now();
    let connector_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let token = env.token(PeerRole::Connector, "gpu-rack-9", now).await;
    env.enroller().redeem(&token, &csr_with(&connector_key), now).await.unwrap();
    let token = env.token(PeerRole::Machine, "agent-9", now).await;
    let err = env.enroller().redeem(&token, &csr_with(&connector_key), now).await.unwrap_err();
    assert!(matches!(err, EnrollError::Issue(IssueError::KeyReused)), "{err}");

    let revoked_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let token = env.token(PeerRole::Machine, "agent-10", now).await;
    let revoked = env.enroller().redeem(&token, &csr_with(&revoked_key), now).await.unwrap();
    assert!(identities::set_disabled(&env.db, &revoked.identity.id, true).await.unwrap());
    let token = env.token(PeerRole::Machine, "agent-11", now).await;
    let err = env.enroller().redeem(&token, &csr_with(&revoked_key), now).await.unwrap_err();
    assert!(matches!(err, EnrollError::Issue(IssueError::KeyReused)), "{err}");
    for name in ["agent-9", "agent-11"] {
        assert!(identities::find_by_name(&env.db, PeerRole::Machine, name).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test]
async fn renewal_honours_a_disable_and_records_every_outcome() {
    let env = Env::new().await;
    let token = env.token(PeerRole::Connector, "gpu-rack-2", SystemTime::now()).await;
    let enrolled = env.enroller().redeem(&token, &csr(), SystemTime::now()).await.unwrap();
    let ttl = Duration::from_secs(24 * 3600);
    let now = SystemTime::now();
    let renewed = issue_with(&env.db, &env.audit, &env.ca, ttl, &enrolled.identity, &csr(), now).await.unwrap();
    assert_eq!(renewed.spiffe_id, enrolled.issued.spiffe_id);
    assert_eq!(renewed.not_after_unix, now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + ttl.as_secs());
    assert!(identities::set_disabled(&env.db, &enrolled.identity.id, true).await.unwrap());
    let err = issue_with(&env.db, &env.audit, &env.ca, ttl, &enrolled.identity, &csr(), now).await.unwrap_err();
    assert!(matches!(err, IssueError::Disabled(_)), "{err}");
    assert_eq!(env.count(EventKind::CertificateIssued).await, 2);
    assert_eq!(env.count(EventKind::CertificateRefused).await, 1);
    assert_eq!(certificates::for_identity(&env.db, &enrolled.identity.id).await.unwrap().len(), 2);
    assert!(!identities::set_disabled(&env.db, "no-such-id", true).await.unwrap());
}

/// CA-10: 10,000 issuances give 10,000 distinct serial numbers of at least
/// 64 bits, and each one is in the audit trail (`certificate.issued` with
/// its serial), committed with its certificate row.
#[tokio::test]
async fn ten_thousand_issuances_have_distinct_serials_and_are_all_audited() {
    const ISSUANCES: usize = 10_000;
    let env = Env::new().await;
    let token = env.token(PeerRole::Connector, "gpu-rack-9", SystemTime::now()).await;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let enrolled = env.enroller().redeem(&token, &csr_with(&key), SystemTime::now()).await.unwrap();
    let mut serials = std::collections::HashSet::from([enrolled.issued.serial_hex.clone()]);
    let (ttl, request) = (Duration::from_secs(3600), csr_with(&key));
    for _ in 1..ISSUANCES {
        let issued = issue_with(&env.db, &env.audit, &env.ca, ttl, &enrolled.identity, &request, SystemTime::now())
            .await
            .unwrap();
        assert!(serials.insert(issued.serial_hex), "a serial number was issued twice");
    }
    for serial in &serials {
        let bits = serial.len() * 4 - serial.chars().take_while(|&c| c == '0').count() * 4;
        assert!(bits >= 64, "serial {serial} has fewer than 64 significant bits");
    }
    let issued = audit::query::recent(&env.db, Some(EventKind::CertificateIssued), 20_000).await.unwrap();
    let audited: std::collections::HashSet<String> = issued
        .iter()
        .map(|row| {
            serde_json::from_str::<serde_json::Value>(&row.detail).unwrap()["serial"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(issued.len(), ISSUANCES, "one certificate.issued event per issuance");
    assert_eq!(audited, serials, "the audited serials are exactly the issued ones");
    assert_eq!(certificates::for_identity(&env.db, &enrolled.identity.id).await.unwrap().len(), ISSUANCES);
}
