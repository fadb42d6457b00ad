//! `palisade enroll` and the files under PALISADE_HOME.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use palisade_client::store::{self, CA_FILE, CERT_FILE, KEY_FILE, PROFILE_FILE};
use palisade_client::{EnrollError, Profile, StoreError, Tunnel, bind_local, forward};
use palisade_proto::enroll::EnrollmentToken;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Action, EnrollMode, FakeBroker, FakeEnrollment, Pki, within, write_home};

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn stored_secrets_are_private_and_force_is_needed_to_replace() {
    let pki = Pki::new();
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("palisade");
    let first = pki.valid_machine_cert();
    write_home(&home, &first, &pki.ca_pem(), "127.0.0.1:4433".parse().unwrap());
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&home.join(CERT_FILE)), 0o600);
    assert!(home.join(CA_FILE).exists() && home.join(PROFILE_FILE).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");

    let second = pki.valid_machine_cert();
    let new = store::NewEnrollment {
        profile: store::ProfileFile {
            identity: second.identity.clone(),
            broker_url: "https://b".into(),
            quic_addr: "127.0.0.1:1".into(),
            ..Default::default()
        },
        key_pem: second.key_pem.clone(),
        cert_pem: second.cert_pem.clone(),
        ca_pem: pki.ca_pem(),
    };
    let err = store::save(&home, &new, false).unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyEnrolled { identity, .. } if *identity == first.identity), "{err:?}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(Profile::load(&home).unwrap().identity(), first.identity, "refused save changed nothing");

    store::save(&home, &new, true).unwrap();
    assert_eq!(Profile::load(&home).unwrap().identity(), second.identity);
    assert_eq!(mode(&home.join(KEY_FILE)), 0o600);
}

#[test]
fn an_empty_home_is_not_enrolled() {
    let home = tempfile::tempdir().unwrap();
    let err = Profile::load(home.path()).unwrap_err();
    assert!(matches!(err, StoreError::NotEnrolled { .. }));
    assert!(err.to_string().contains("run `palisade login --broker URL`"), "{err}");
    assert!(err.to_string().contains("`palisade enroll --broker URL --token TOKEN`"), "{err}");
}

#[tokio::test]
async fn enroll_stores_a_working_identity_and_keeps_the_key_local() {
    let pki = Arc::new(Pki::new());
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let server = FakeEnrollment::spawn(pki.clone(), broker.addr.to_string(), EnrollMode::Honest).await;
    let home = tempfile::tempdir().unwrap();

    let enrolled = palisade_client::enroll(&server.url, &server.token.expose(), home.path(), false).await.unwrap();
    assert!(enrolled.identity.starts_with("spiffe://td/machine/"), "{}", enrolled.identity);
    assert_eq!(enrolled.name, "ci-runner");
    let profile = Profile::load(home.path()).unwrap();
    assert_eq!(profile.identity(), enrolled.identity);
    assert_eq!(profile.quic_addr(), broker.addr.to_string());
    #[cfg(unix)]
    assert_eq!(mode(&home.path().join(KEY_FILE)), 0o600);

    // The stored identity works against the broker straight away.
    let tunnel = Tunnel::new(profile).unwrap();
    let listener = bind_local("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(forward::serve(listener, tunnel, "echo-svc".parse().unwrap(), std::future::pending()));
    let mut app = tokio::net::TcpStream::connect(addr).await.unwrap();
    app.write_all(b"enrolled").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(app.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"enrolled");

    // A second enrollment is refused before the token is spent; --force replaces it.
    let err = palisade_client::enroll(&server.url, &server.token.expose(), home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::Store(StoreError::AlreadyEnrolled { .. })), "{err:?}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    let again = palisade_client::enroll(&server.url, &server.token.expose(), home.path(), true).await.unwrap();
    assert_ne!(again.identity, enrolled.identity);
    assert_eq!(Profile::load(home.path()).unwrap().identity(), again.identity);
}

#[tokio::test]
async fn enroll_refuses_a_server_that_does_not_match_the_pin() {
    let pki = Arc::new(Pki::new());
    let server = FakeEnrollment::spawn(pki, "127.0.0.1:1".into(), EnrollMode::Honest).await;
    let other_ca = Pki::new();
    let wrong_pin = EnrollmentToken::generate(&other_ca.ca_der());
    let home = tempfile::tempdir().unwrap();
    let err = palisade_client::enroll(&server.url, &wrong_pin.expose(), home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::PinMismatch { .. }), "{err:?}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 0, "the token went to an unpinned server");
    assert!(!home.path().join(PROFILE_FILE).exists());
}

#[tokio::test]
async fn enroll_checks_the_answer_before_saving() {
    let pki = Arc::new(Pki::new());
    let server = FakeEnrollment::spawn(pki.clone(), "127.0.0.1:1".into(), EnrollMode::WrongKey).await;
    let home = tempfile::tempdir().unwrap();
    let err = palisade_client::enroll(&server.url, &server.token.expose(), home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::BadAnswer(ref m) if m.contains("not for the key")), "{err:?}");
    assert!(!home.path().join(KEY_FILE).exists(), "something was saved");

    let refusing = FakeEnrollment::spawn(pki, "127.0.0.1:1".into(), EnrollMode::Refuse).await;
    let err = palisade_client::enroll(&refusing.url, &refusing.token.expose(), home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::Refused { status: 403, .. }), "{err:?}");
    assert!(err.to_string().contains("already used"), "{err}");
}

#[tokio::test]
async fn enroll_rejects_bad_input_without_touching_the_network() {
    let home = tempfile::tempdir().unwrap();
    let token = EnrollmentToken::generate(b"ca").expose();
    let err = palisade_client::enroll("http://127.0.0.1:1", &token, home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::BrokerUrl { .. }), "{err:?}");
    let err = palisade_client::enroll("https://127.0.0.1:1", "pal1.nope", home.path(), false).await.unwrap_err();
    assert!(matches!(err, EnrollError::Token(_)), "{err:?}");
}
