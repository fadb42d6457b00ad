//! Enrollment: one-time, short-lived tokens (CA-07) and a CA that takes
//! nothing from a CSR but a well-proven, acceptable public key (CA-01..03).

use std::process::Command;
use std::time::{Duration, SystemTime};

use palisade_tests::{EnrollAnswer, TestEnv, csr_pem, leaf_info, wait_until_clock_passes};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType};

fn plain_csr() -> String {
    csr_pem(&CertificateParams::default(), &KeyPair::generate().unwrap())
}

fn assert_refused(answer: &EnrollAnswer, what: &str) {
    assert!(matches!(answer.status, 401 | 403), "{what}: expected 401/403, got {answer:?}");
    assert!(answer.body.get("certificate_pem").is_none(), "{what}: a refusal must not carry a certificate");
    assert!(
        answer.body["error"].is_string() && answer.body["message"].is_string(),
        "{what}: JSON error body: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_are_single_use_even_when_raced_and_expire() {
    let env = TestEnv::new();
    let broker = env.broker().spawn().await;
    let token = broker.machine("agent-1").group("ml-agents").token().await;
    let api = broker.enroll_api(&token);
    assert_eq!(api.healthz().await, 200);
    let first = api.enroll(&token, &plain_csr()).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_refused(&api.enroll(&token, &plain_csr()).await, "a used token");

    // Two redemptions racing: exactly one wins.
    let token = broker.machine("agent-2").group("ml-agents").token().await;
    let (csr_a, csr_b) = (plain_csr(), plain_csr());
    let (a, b) = tokio::join!(api.enroll(&token, &csr_a), api.enroll(&token, &csr_b));
    let winners = [&a, &b].iter().filter(|r| r.status == 200).count();
    assert_eq!(winners, 1, "exactly one racing redemption may succeed: {a:?} / {b:?}");
    assert_refused(if a.status == 200 { &b } else { &a }, "the racing loser");

    let token = broker.machine("agent-3").token_ttl("1s").token().await;
    let created = SystemTime::now();
    wait_until_clock_passes(created + Duration::from_secs(2)).await;
    assert_refused(&api.enroll(&token, &plain_csr()).await, "an expired token");

    let audit = broker.audit_events().await;
    assert_eq!(audit.of_kind("certificate.issued").len(), 2, "{}", audit.summary());
    assert!(audit.of_kind("token.refused").len() >= 3, "every refusal is audited:\n{}", audit.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_bad_csrs_and_ignores_every_name_a_csr_asks_for() {
    let env = TestEnv::new();
    let broker = env.broker().spawn().await;
    // CA-01: a CSR whose self-signature does not verify (no proof of possession).
    let token = broker.machine("broken-signature").token().await;
    let api = broker.enroll_api(&token);
    let good = CertificateParams::default().serialize_request(&KeyPair::generate().unwrap()).unwrap();
    let mut der = good.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let broken = palisade_proto::pem::encode("CERTIFICATE REQUEST", &der);
    let answer = api.enroll(&token, &broken).await;
    assert_eq!(answer.status, 400, "a CSR with a broken signature: {answer:?}");

    // CA-02: RSA-1024 is not an acceptable key.
    let token = broker.machine("rsa-1024").token().await;
    let answer = api.enroll(&token, &rsa_1024_csr(env.path())).await;
    assert_eq!(answer.status, 400, "an RSA-1024 CSR: {answer:?}");
    assert!(answer.body["message"].as_str().is_some_and(|m| m.to_lowercase().contains("key")), "{answer:?}");

    // CA-03: a CSR asking for CN=admin, O=Evil, extra SANs and CA:TRUE.
    let token = broker.machine("agent-1").group("ml-agents").token().await;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "admin");
    dn.push(DnType::OrganizationName, "Evil");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName("admin.example".try_into().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
        SanType::Rfc822Name("root@example.com".try_into().unwrap()),
        SanType::URI("spiffe://evil.example/machine/admin".try_into().unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let answer = api.enroll(&token, &csr_pem(&params, &KeyPair::generate().unwrap())).await;
    eprintln!("a CSR asking for names and CA:TRUE: {} {}", answer.status, answer.body["identity"]);
    if answer.status == 200 {
        let identity = answer.body["identity"].as_str().expect("identity").to_owned();
        let leaf = leaf_info(answer.certificate_pem().as_bytes());
        assert_eq!(leaf.uri_sans, vec![identity.clone()], "only the broker's own URI SAN");
        assert!(identity.contains("/machine/") && !identity.contains("evil"), "{identity}");
        assert!(leaf.other_sans.is_empty(), "no SAN from the CSR: {:?}", leaf.other_sans);
        assert!(!leaf.is_ca && !leaf.key_cert_sign, "the leaf must not be a CA");
        assert!(leaf.client_auth && !leaf.server_auth, "clientAuth only");
        assert!(!leaf.subject.contains("admin") && !leaf.subject.contains("Evil"), "subject {}", leaf.subject);
        let attributes = leaf.attributes.expect("identity attributes");
        assert_eq!(
            (attributes.name.as_str(), attributes.groups.as_slice()),
            ("agent-1", &["ml-agents".to_owned()][..])
        );
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(leaf.not_after_unix <= now + 8 * 3600 + 60, "longer than the 8 h machine TTL");
    } else {
        assert_eq!(answer.status, 400, "a CSR asking for names is either cleaned or refused: {answer:?}");
    }

    let audit = broker.audit_events().await;
    assert!(audit.of_kind("certificate.refused").len() >= 2, "refusals are audited:\n{}", audit.summary());
}

/// An RSA-1024 CSR made with the `openssl` command (ring cannot make RSA keys).
fn rsa_1024_csr(dir: &std::path::Path) -> String {
    let (key, csr) = (dir.join("rsa1024.key"), dir.join("rsa1024.csr"));
    let status = Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=agent-1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("the `openssl` command is needed for the RSA-1024 case (scripts/test installs it)");
    assert!(status.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&status.stderr));
    std::fs::read_to_string(csr).expect("read the RSA CSR")
}
