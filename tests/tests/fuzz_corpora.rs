//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the target bodies in `palisade_tests::fuzz`, so an input that once made a
//! parser panic stays fixed, and the targets keep compiling and running.
//!
//! `cargo test -p palisade-tests --test fuzz_corpora -- --ignored write_seed_corpora`
//! regenerates the seed inputs from the real encoders.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use palisade_proto::control::{ConnectorToBroker, StreamOutcome};
use palisade_proto::enroll::EnrollmentToken;
use palisade_proto::identity::IdentityAttributes;
use palisade_proto::wire::{OpenStream, Query, StreamHeader};
use palisade_tests::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn every_corpus_replays_without_a_panic() {
    for (name, body) in TARGETS {
        let dir = corpus_dir(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs a seed corpus)", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} is empty", dir.display());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{name} panicked on {}", input.display());
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}

fn write(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    let open = StreamHeader::Open(OpenStream { service: "llm-prod".parse().unwrap() });
    write("stream_header", "open", open.encode().unwrap());
    write("stream_header", "control", StreamHeader::ConnectorControl.encode().unwrap());
    write("stream_header", "query-services", StreamHeader::Query(Query::Services).encode().unwrap());
    write("stream_header", "bad-magic", b"Q\x01\x01\x00\x08llm-prod");

    let hello = ConnectorToBroker::Hello { version: "1.0.0".into(), services: vec!["llm-prod".into()] };
    write("control_frame", "hello", serde_json::to_vec(&hello).unwrap());
    write("control_frame", "renew", serde_json::to_vec(&ConnectorToBroker::Renew { csr_pem: "x".into() }).unwrap());
    let report = ConnectorToBroker::StreamReport {
        decision_id: palisade_proto::id::DecisionId::random(),
        outcome: StreamOutcome::Completed { bytes_up: 1, bytes_down: 2, duration_ms: 3 },
    };
    write("control_frame", "report", serde_json::to_vec(&report).unwrap());

    write("enroll_token", "valid", EnrollmentToken::generate(b"a CA certificate").expose());
    write("enroll_token", "short", "pal1.abc.def");

    let attributes: IdentityAttributes = serde_json::from_value(serde_json::json!({
        "v": 1, "name": "Alice", "groups": ["ml-team"], "session": "s-1", "mfa_at": 1_700_000_000u64,
        "auth_methods": ["oidc", "webauthn"]
    }))
    .unwrap();
    write("identity_attributes", "person", attributes.to_der());

    for (name, key) in [
        ("p256", rcgen::KeyPair::generate().unwrap()),
        ("ed25519", rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()),
    ] {
        write("csr", name, palisade_tests::csr_pem(&rcgen::CertificateParams::default(), &key));
    }
    write("csr", "two-labels", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE-----\n");

    let bundle = serde_json::json!({ "bundle_json": "{\"version\":1,\"files\":[],\"services\":[]}",
                                     "signed_at_unix": 1, "signature": "MEUCIQ==" });
    write("signed_bundle", "unsigned", bundle.to_string());

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for entry in std::fs::read_dir(examples.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            write("policy_source", path.file_name().unwrap().to_str().unwrap(), std::fs::read(&path).unwrap());
        }
    }
    for entry in std::fs::read_dir(examples.join("cases")).unwrap() {
        let path = entry.unwrap().path();
        write("policy_cases", path.file_name().unwrap().to_str().unwrap(), std::fs::read(&path).unwrap());
    }

    write("audit_export", "plain", "spiffe://td/machine/a\u{1f}llm-prod\u{1f}curl/8");
    write("audit_export", "hostile", "=cmd|' /c calc'!A1\n\u{1f}\x1b[31mred\u{202e}\u{1f}</script>\r\nX-Injected: 1");
    write_webauthn_seeds();
}

/// A genuine registration and assertion from a software passkey (for
/// another process's challenges), cut-off JSON and JSON of the wrong shape.
fn write_webauthn_seeds() {
    use webauthn_authenticator_rs::WebauthnAuthenticator as _;
    use webauthn_rs::prelude::{Url, Uuid, WebauthnBuilder};
    let origin = Url::parse("https://localhost:8443").unwrap();
    let webauthn = WebauthnBuilder::new("localhost", &origin).and_then(WebauthnBuilder::build).unwrap();
    let mut passkey = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
    let (ccr, state) = webauthn.start_passkey_registration(Uuid::new_v4(), "seed", "Seed", None).unwrap();
    let registration = serde_json::to_string(&passkey.do_registration(origin.clone(), ccr).unwrap()).unwrap();
    let key = webauthn.finish_passkey_registration(&serde_json::from_str(&registration).unwrap(), &state).unwrap();
    let (rcr, _) = webauthn.start_passkey_authentication(&[key]).unwrap();
    let assertion = serde_json::to_string(&passkey.do_authentication(origin, rcr).unwrap()).unwrap();
    write("webauthn_finish", "registration", &registration);
    write("webauthn_finish", "assertion", &assertion);
    // With a user handle, as a discoverable passkey answers.
    let mut discoverable: serde_json::Value = serde_json::from_str(&assertion).unwrap();
    discoverable["response"]["userHandle"] = "AAECAwQFBgcICQoLDA0ODw".into();
    write("webauthn_finish", "assertion-discoverable", discoverable.to_string());
    write("webauthn_finish", "registration-cut", &registration[..registration.len() / 2]);
    write("webauthn_finish", "wrong-types", r#"{"id":1,"rawId":[],"response":null,"type":"public-key"}"#);
}
