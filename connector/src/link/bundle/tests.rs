use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use super::*;
use crate::testing::{TestCa, bundle};

const HOUR: Duration = Duration::from_secs(3_600);

struct Fixture {
    ca: TestCa,
    dir: tempfile::TempDir,
    store: Store,
    policy: PolicyState,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().to_owned());
        Self { ca: TestCa::new(), dir, store, policy: PolicyState::default().with_max_age(HOUR) }
    }

    fn accept(&self, signed: SignedBundle) -> Result<BundleApplied, AcceptError> {
        accept(&self.policy, &self.store, &self.ca.trust(), signed, SystemTime::now())
    }

    fn version(&self) -> Option<u64> {
        self.policy.current(SystemTime::now()).map(|e| e.version())
    }

    /// A connector process started again over the same state directory.
    fn restart(&self) -> (PolicyState, Result<Option<BundleApplied>, RestoreError>) {
        let policy = PolicyState::default().with_max_age(HOUR);
        let restored = restore(&policy, &self.store, &self.ca.trust(), SystemTime::now());
        (policy, restored)
    }
}

#[test]
fn a_bundle_with_a_bad_signature_is_refused_and_the_previous_one_stays() {
    let f = Fixture::new();
    f.accept(f.ca.signed(1, "ml-agents")).expect("v1");
    let mut tampered = f.ca.signed(2, "ml-agents");
    tampered.bundle_json = tampered.bundle_json.replacen("ml-agents", "ml-agentz", 1);
    assert!(matches!(f.accept(tampered), Err(AcceptError::Signature(BundleSignatureError::BadSignature))));
    let mut bad_signature = f.ca.signed(2, "ml-agents");
    bad_signature.signature = flip_a_signature_byte(&bad_signature.signature);
    assert!(matches!(f.accept(bad_signature), Err(AcceptError::Signature(_))));
    let mut backdated = f.ca.signed(2, "ml-agents");
    backdated.signed_at_unix += 1;
    assert!(matches!(f.accept(backdated), Err(AcceptError::Signature(_))));
    assert_eq!(f.version(), Some(1));
    let (_, restored) = f.restart();
    assert!(matches!(restored, Ok(Some(BundleApplied::Installed { version: 1, .. }))), "{restored:?}");
}

fn flip_a_signature_byte(signature: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(signature).expect("base64");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    engine.encode(bytes)
}

#[test]
fn a_bundle_signed_by_another_ca_is_refused() {
    let f = Fixture::new();
    f.accept(f.ca.signed(1, "ml-agents")).expect("v1");
    let other = TestCa::new();
    assert!(matches!(f.accept(other.signed(2, "interns")), Err(AcceptError::Signature(_))));
    assert_eq!(f.version(), Some(1));
}

#[test]
fn an_older_version_is_refused_even_when_correctly_signed() {
    let f = Fixture::new();
    f.accept(f.ca.signed(5, "ml-agents")).expect("v5");
    let refused = f.accept(f.ca.signed(4, "interns"));
    assert!(matches!(refused, Err(AcceptError::Refused(BundleError::Rollback { offered: 4, current: 5 }))));
    assert_eq!(f.version(), Some(5));
    let (_, restored) = f.restart();
    assert!(matches!(restored, Ok(Some(BundleApplied::Installed { version: 5, .. }))), "the saved one is still v5");
}

#[test]
fn the_saved_bundle_is_enforced_after_a_restart_without_a_broker() {
    let f = Fixture::new();
    f.accept(f.ca.signed(3, "ml-agents")).expect("v3");
    let mode = std::fs::metadata(f.dir.path().join("policy-bundle.json")).expect("saved").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (policy, restored) = f.restart();
    assert!(matches!(restored, Ok(Some(BundleApplied::Installed { version: 3, previous: None }))), "{restored:?}");
    assert_eq!(policy.current(SystemTime::now()).map(|e| e.version()), Some(3));
}

#[test]
fn nothing_saved_means_nothing_enforced() {
    let f = Fixture::new();
    let (policy, restored) = f.restart();
    assert!(matches!(restored, Ok(None)));
    assert!(policy.current(SystemTime::now()).is_none());
}

#[test]
fn a_saved_bundle_older_than_the_max_age_is_not_restored() {
    let f = Fixture::new();
    let stale = f.ca.sign_bundle(&bundle(3, "ml-agents"), SystemTime::now() - 2 * HOUR);
    f.store.save_bundle(&stale).expect("save");
    let (policy, restored) = f.restart();
    assert!(matches!(restored, Err(RestoreError::Accept(AcceptError::Refused(BundleError::Expired { .. })))));
    assert!(policy.current(SystemTime::now()).is_none());
}

#[test]
fn a_tampered_saved_bundle_is_not_restored() {
    let f = Fixture::new();
    let mut tampered = f.ca.signed(3, "ml-agents");
    tampered.bundle_json = tampered.bundle_json.replacen("ml-agents", "everyone", 1);
    f.store.save_bundle(&tampered).expect("save");
    let (policy, restored) = f.restart();
    assert!(matches!(restored, Err(RestoreError::Accept(AcceptError::Signature(_)))), "{restored:?}");
    assert!(policy.current(SystemTime::now()).is_none());
}

#[test]
fn an_enforced_bundle_is_dropped_once_older_than_the_max_age_until_a_fresh_one_arrives() {
    let f = Fixture::new();
    let signed_at = SystemTime::now() - Duration::from_secs(60);
    f.accept(f.ca.sign_bundle(&bundle(3, "ml-agents"), signed_at)).expect("v3");
    assert!(f.policy.current(signed_at + HOUR).is_some());
    assert!(f.policy.current(signed_at + HOUR + Duration::from_secs(1)).is_none(), "denies after the max age");
    // The same version signed again later makes it fresh again.
    assert_eq!(f.accept(f.ca.signed(3, "ml-agents")).expect("re-signed"), BundleApplied::Unchanged { version: 3 });
    assert!(f.policy.current(signed_at + HOUR + Duration::from_secs(1)).is_some());
}

#[test]
fn a_bundle_already_past_the_max_age_is_refused() {
    let f = Fixture::new();
    let stale = f.ca.sign_bundle(&bundle(1, "ml-agents"), SystemTime::now() - 2 * HOUR);
    assert!(matches!(f.accept(stale), Err(AcceptError::Refused(BundleError::Expired { .. }))));
    assert!(f.version().is_none());
}
