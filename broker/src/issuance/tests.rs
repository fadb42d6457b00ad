#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::Ca;
use super::csr::{KeyType, MAX_CSR_BYTES, check_csr};
use super::{IssueError, LeafProfile};
use palisade_proto::identity::PeerRole;

fn ca() -> Ca {
    Ca::create(&"palisade.test".parse().unwrap(), SystemTime::now()).unwrap().0
}

fn csr_for(key: &KeyPair, params: &CertificateParams) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn simple_csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
    csr_for(&KeyPair::generate_for(alg).unwrap(), &CertificateParams::default())
}

fn profile() -> LeafProfile {
    LeafProfile {
        role: PeerRole::Machine,
        id: uuid::Uuid::new_v4().to_string(),
        name: "agent-7".into(),
        groups: vec!["ml-agents".into()],
        ttl: Duration::from_secs(8 * 3600),
        session: None,
        mfa_at: None,
        auth_methods: Vec::new(),
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

fn openssl(args: &[&str]) -> Option<String> {
    let out = Command::new("openssl").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn p256_and_ed25519_are_accepted() {
    assert_eq!(check_csr(&simple_csr(&PKCS_ECDSA_P256_SHA256)).unwrap().key_type(), KeyType::EcdsaP256);
    assert_eq!(check_csr(&simple_csr(&PKCS_ED25519)).unwrap().key_type(), KeyType::Ed25519);
}

#[test]
fn p384_is_refused_for_its_key_type() {
    let err = check_csr(&simple_csr(&PKCS_ECDSA_P384_SHA384)).unwrap_err();
    assert!(matches!(&err, IssueError::KeyType(k) if k.contains("P-384")), "{err}");
}

#[test]
fn rsa_is_refused_for_its_key_type() {
    let Some(pem) =
        openssl(&["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "/dev/null", "-subj", "/CN=x"])
    else {
        eprintln!("SKIPPED rsa_is_refused_for_its_key_type: the openssl CLI is not available to make an RSA CSR");
        return;
    };
    let err = check_csr(&pem).unwrap_err();
    assert!(matches!(&err, IssueError::KeyType(k) if k.contains("RSA (2048 bits)")), "{err}");
}

fn openssl_csr(dir: &std::path::Path, keygen: &[&[&str]]) -> Option<String> {
    for step in keygen {
        let args: Vec<String> = step.iter().map(|a| a.replace("{dir}", dir.to_str().unwrap())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(&args)?;
    }
    let key = dir.join("key.pem");
    openssl(&["req", "-new", "-key", key.to_str().unwrap(), "-subj", "/CN=x", "-sha256"])
}

#[test]
fn p192_explicit_curves_and_dsa_are_refused_for_their_key_type() {
    let vectors: [(&str, &[&[&str]], &str); 3] = [
        (
            "P-192",
            &[&["ecparam", "-name", "prime192v1", "-genkey", "-noout", "-out", "{dir}/key.pem"]],
            "1.2.840.10045.3.1.1",
        ),
        (
            "explicit curve",
            &[&[
                "ecparam",
                "-name",
                "prime256v1",
                "-param_enc",
                "explicit",
                "-genkey",
                "-noout",
                "-out",
                "{dir}/key.pem",
            ]],
            "explicit curve parameters",
        ),
        (
            "DSA",
            &[
                &[
                    "genpkey",
                    "-genparam",
                    "-algorithm",
                    "DSA",
                    "-pkeyopt",
                    "dsa_paramgen_bits:1024",
                    "-out",
                    "{dir}/p.pem",
                ],
                &["genpkey", "-paramfile", "{dir}/p.pem", "-out", "{dir}/key.pem"],
            ],
            "DSA",
        ),
    ];
    for (what, keygen, expected) in vectors {
        let dir = tempfile::tempdir().unwrap();
        let Some(pem) = openssl_csr(dir.path(), keygen) else {
            eprintln!("SKIPPED the {what} vector: the openssl CLI could not make it");
            continue;
        };
        let err = check_csr(&pem).unwrap_err();
        assert!(matches!(&err, IssueError::KeyType(k) if k.contains(expected)), "{what}: {err}");
    }
}

#[test]
fn a_broken_signature_is_refused() {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "agent-7");
    let pem = csr_for(&KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(), &params);
    let mut der = pem_body(&pem);
    let at = der.windows(7).position(|w| w == b"agent-7").unwrap();
    der[at] = b'b';
    let forged = palisade_proto::pem::encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(check_csr(&forged), Err(IssueError::Signature)));
    let mut der = pem_body(&pem);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let forged = palisade_proto::pem::encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(check_csr(&forged), Err(IssueError::Signature | IssueError::Malformed(_))));
}

#[test]
fn malformed_pem_is_refused_fast() {
    let good = simple_csr(&PKCS_ECDSA_P256_SHA256);
    let cases = [
        format!("{good}{good}"),
        format!("{good}trailing"),
        format!("junk\n{good}"),
        good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        String::new(),
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n".into(),
    ];
    for case in &cases {
        assert!(matches!(check_csr(case), Err(IssueError::Malformed(_))), "{case:?} was not refused as malformed");
    }
    let mut der = pem_body(&good);
    der.extend_from_slice(&[0, 0]);
    let trailing = palisade_proto::pem::encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(check_csr(&trailing), Err(IssueError::Malformed(_))));
    let huge = format!("{good}{}", " ".repeat(MAX_CSR_BYTES));
    assert!(matches!(check_csr(&huge), Err(IssueError::TooLarge)));
}

#[test]
fn the_issued_certificate_ignores_everything_the_csr_asks_for() {
    let ca = ca();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_owned(), "10.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.distinguished_name.push(DnType::OrganizationName, "Evil");
    params.subject_alt_names.push(SanType::URI("spiffe://evil.trust.domain/user/root".try_into().unwrap()));
    params.subject_alt_names.push(SanType::Rfc822Name("root@evil.example".try_into().unwrap()));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::Any];
    let mut critical = CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
    critical.set_criticality(true);
    params.custom_extensions.push(critical);
    let csr = check_csr(&csr_for(&key, &params)).unwrap();
    let profile = profile();
    let issued = ca.sign(&profile, &csr, SystemTime::now()).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.certificate_der).unwrap();
    assert!(!cert.is_ca());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let expected = format!("spiffe://palisade.test/machine/{}", profile.id);
    assert!(matches!(san.value.general_names.as_slice(), [GeneralName::URI(u)] if *u == expected));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    let subject = cert.subject().to_string();
    assert!(subject.contains("CN=agent-7") && !subject.contains("Evil") && !subject.contains("admin"), "{subject}");
    assert!(cert.extensions().iter().all(|e| e.oid.to_id_string() != "1.2.3.4.5"));
    assert_eq!(issued.spiffe_id, expected);
    assert!(issued.serial_hex.len() >= 30, "serial {} is too short", issued.serial_hex);
}

#[test]
fn a_third_party_csr_asking_for_ca_true_gets_a_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let key = key.to_str().unwrap();
    if openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]).is_none() {
        eprintln!("SKIPPED a_third_party_csr_asking_for_ca_true_gets_a_leaf: no openssl CLI");
        return;
    }
    let pem = openssl(&[
        "req",
        "-new",
        "-key",
        key,
        "-subj",
        "/CN=admin/O=Evil",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "subjectAltName=DNS:evil.example,IP:10.0.0.1,email:a@evil.example,URI:spiffe://evil/user/x",
    ])
    .unwrap();
    let issued = ca().sign(&profile(), &check_csr(&pem).unwrap(), SystemTime::now()).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.certificate_der).unwrap();
    assert!(!cert.is_ca());
    assert_eq!(cert.subject_alternative_name().unwrap().unwrap().value.general_names.len(), 1);
}

#[test]
fn the_self_check_refuses_a_template_bug() {
    let ca = ca();
    let csr = check_csr(&simple_csr(&PKCS_ECDSA_P256_SHA256)).unwrap();
    type Bug = Box<dyn FnOnce(&mut CertificateParams)>;
    let bugs: Vec<Bug> = vec![
        Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
        Box::new(|p| p.is_ca = IsCa::NoCa),
        Box::new(|p| p.subject_alt_names.push(SanType::DnsName("evil.example".try_into().unwrap()))),
        Box::new(|p| p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth)),
        Box::new(|p| p.extended_key_usages.clear()),
        Box::new(|p| p.not_after += time::Duration::days(365)),
        Box::new(|p| p.custom_extensions.clear()),
    ];
    for (i, bug) in bugs.into_iter().enumerate() {
        let result = ca.sign_with(&profile(), &csr, SystemTime::now(), bug);
        assert!(matches!(result, Err(IssueError::SelfCheck(_))), "bug #{i} was not caught: {result:?}");
    }
}

#[test]
fn validity_is_clamped_to_the_ca_and_backdated_a_minute() {
    let created = SystemTime::now();
    let ca = ca();
    let csr = check_csr(&simple_csr(&PKCS_ED25519)).unwrap();
    let late = ca.not_after() - Duration::from_secs(3600);
    let issued = ca.sign(&profile(), &csr, late).unwrap();
    assert_eq!(issued.not_after_unix, super::ca::unix(ca.not_after()));
    let now = SystemTime::now();
    let issued = ca.sign(&profile(), &csr, now).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.certificate_der).unwrap();
    let nb = u64::try_from(cert.validity().not_before.timestamp()).unwrap();
    assert_eq!(nb, super::ca::unix(now) - 60);
    assert_eq!(issued.not_after_unix, super::ca::unix(now) + 8 * 3600);
    assert!(matches!(ca.sign(&profile(), &csr, ca.not_after() + Duration::from_secs(1)), Err(IssueError::CaExpired)));
    assert!(ca.not_after() > created + Duration::from_secs(9 * 365 * 24 * 3600));
}

#[test]
fn names_with_separators_or_control_characters_are_refused() {
    let ca = ca();
    let csr = check_csr(&simple_csr(&PKCS_ECDSA_P256_SHA256)).unwrap();
    for bad in ["a,b", "a/b", "a\nb", "a\0b", "", "\u{202e}evil"] {
        let mut p = profile();
        p.name = bad.into();
        assert!(matches!(ca.sign(&p, &csr, SystemTime::now()), Err(IssueError::Identity(_))), "{bad:?}");
    }
    let mut p = profile();
    p.groups = vec!["ops,admins".into()];
    assert!(matches!(ca.sign(&p, &csr, SystemTime::now()), Err(IssueError::Identity(_))));
    let mut p = profile();
    p.role = PeerRole::Broker;
    assert!(matches!(ca.sign(&p, &csr, SystemTime::now()), Err(IssueError::Identity(_))));
}

/// CA-11: a 10 kB name or group never reaches the certificate, and the refusal says what the limit is.
#[test]
fn a_ten_kilobyte_name_or_group_is_refused_naming_the_limit() {
    let ca = ca();
    let csr = check_csr(&simple_csr(&PKCS_ECDSA_P256_SHA256)).unwrap();
    let long = "a".repeat(10 * 1024);
    let mut named = profile();
    named.name.clone_from(&long);
    let mut grouped = profile();
    grouped.groups = vec![long];
    for p in [named, grouped] {
        let err = ca.sign(&p, &csr, SystemTime::now()).unwrap_err();
        assert!(matches!(&err, IssueError::Identity(m) if m.contains("at most 63 characters")), "{err}");
        assert!(err.to_string().len() < 200, "the message does not echo the name: {err}");
    }
}

#[test]
fn a_csr_with_the_cas_own_key_is_refused() {
    let (ca, pkcs8) = Ca::create(&"palisade.test".parse().unwrap(), SystemTime::now()).unwrap();
    let ca_key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
    let csr = check_csr(&csr_for(&ca_key, &CertificateParams::default())).unwrap();
    assert!(matches!(ca.sign(&profile(), &csr, SystemTime::now()), Err(IssueError::CaKey)));
}

#[test]
fn serials_are_unique() {
    let ca = ca();
    let csr = check_csr(&simple_csr(&PKCS_ED25519)).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        assert!(seen.insert(ca.sign(&profile(), &csr, SystemTime::now()).unwrap().serial_hex));
    }
}
