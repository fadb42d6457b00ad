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
use palisade_tests::fuzz::{TARGETS, mutate};

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

/// Every target body has a libFuzzer entry point and is in `scripts/fuzz`'s list.
#[test]
fn every_target_has_a_libfuzzer_entry_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
    let script = std::fs::read_to_string(root.join("scripts/fuzz")).unwrap();
    for (name, _) in TARGETS {
        let entry = std::fs::read_to_string(root.join(format!("fuzz/fuzz_targets/{name}.rs"))).unwrap_or_default();
        assert!(entry.contains(&format!("::{name}(data)")), "fuzz/fuzz_targets/{name}.rs");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "no [[bin]] {name} in fuzz/Cargo.toml");
        assert!(
            script.split_whitespace().any(|w| w.trim_start_matches("targets=(").trim_end_matches(')') == *name),
            "{name} not in scripts/fuzz"
        );
    }
}

/// Each target, fed mutations of its corpus for a moment (see
/// `palisade_tests::fuzz::mutate`). The seed changes every run and is
/// printed; `PALISADE_FUZZ_SEED=<seed>` repeats a run, `PALISADE_FUZZ_SECS`
/// lengthens it. A crashing input is written under `fuzz/artifacts/<target>/`.
#[test]
fn every_target_survives_a_brief_mutation_run() {
    let seed = std::env::var("PALISADE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let longer: Option<f64> = std::env::var("PALISADE_FUZZ_SECS").ok().and_then(|s| s.parse().ok());
    let (secs, max_inputs) = longer.map_or((1.0, 100_000), |secs| (secs, usize::MAX));
    eprintln!("mutation seed {seed} (PALISADE_FUZZ_SEED={seed} repeats this run)");
    for (name, body) in TARGETS {
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(name))
            .unwrap()
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        let budget = std::time::Duration::from_secs_f64(secs);
        match mutate::brief_run(*body, &corpus, seed, budget, max_inputs) {
            Ok(ran) => eprintln!("{name}: {ran} mutated inputs"),
            Err(crash) => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/artifacts").join(name);
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("crash-seed-{seed}"));
                std::fs::write(&path, &crash.input).unwrap();
                panic!("{name} panicked ({}) on an input saved to {}", crash.message, path.display());
            }
        }
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
    write_l7_seeds();
    write_certificate_seeds(&attributes);
    write_quic_seeds();
}

/// Client Initials: transport parameters in a real ClientHello (mode byte
/// 1), and raw Initial frames (mode byte 0).
fn write_quic_seeds() {
    use palisade_tests::fuzz::quic::{client_hello_frames, valid_params};
    write("quic_initial", "params", [&[1u8][..], &valid_params()].concat());
    write("quic_initial", "params-empty", [1u8]);
    write("quic_initial", "frames-client-hello", [&[0u8][..], &client_hello_frames(&valid_params())].concat());
    // PING, ACK of packet 0, CRYPTO with a truncated handshake message.
    write("quic_initial", "frames-misc", [0u8, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x04, 0x01, 0x00, 0x01]);
}

/// Request paths, OpenAI request bodies and answers as the connector sees them.
fn write_l7_seeds() {
    for (name, path) in [
        ("chat", "/v1/chat/completions"),
        ("dots", "/v1/./models/../chat//completions/"),
        ("escapes", "/v1/%63hat/%E2%82%AC?x"),
        ("encoded-slash", "/v1/admin%2Fkeys"),
        ("encoded-dot", "/v1/%2e%2e/admin"),
        ("above-root", "/../etc/passwd"),
        ("params", "/v1;jsessionid=1/models"),
    ] {
        write("l7_path", name, path);
    }
    let chat = r#"{"model":"llama-3-70b","max_tokens":256,"n":1,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    write("openai_request", "chat", chat);
    write("openai_request", "duplicate", r#"{"model":"small","model":"big","max_tokens":1}"#);
    write(
        "openai_request",
        "types",
        r#"{"model":7,"max_tokens":-1,"n":1.5,"logprobs":3,"best_of":9223372036854775808}"#,
    );
    let usage = r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
    write("openai_usage", "json", usage);
    let sse =
        format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"Hi\"}}}}]}}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
    write("openai_usage", "sse", sse);
    write("openai_usage", "responses-api", r#"{"usage":{"input_tokens":5,"output_tokens":6}}"#);
}

/// Leaves in and out of Palisade's profile, for the certificate-profile target.
fn write_certificate_seeds(attributes: &IdentityAttributes) {
    use palisade_tests::{ForeignCa, LeafSpec};
    let ca = ForeignCa::new();
    let id = format!("spiffe://{}/person/alice", palisade_tests::fuzz::FUZZ_TRUST_DOMAIN);
    let valid = LeafSpec::valid(&id, attributes.clone());
    let mut variants = vec![("valid", valid.clone())];
    let mut other_domain = valid.clone();
    other_domain.uri_sans = vec!["spiffe://elsewhere.test/person/alice".into()];
    variants.push(("other-domain", other_domain));
    let mut two_sans = valid.clone();
    two_sans.uri_sans.push(format!("spiffe://{}/machine/m", palisade_tests::fuzz::FUZZ_TRUST_DOMAIN));
    variants.push(("two-sans", two_sans));
    let mut ca_leaf = valid.clone();
    ca_leaf.is_ca = true;
    variants.push(("ca", ca_leaf));
    let mut no_eku = valid.clone();
    no_eku.ekus.clear();
    variants.push(("no-eku", no_eku));
    let mut no_attributes = valid;
    no_attributes.attributes = None;
    variants.push(("no-attributes", no_attributes));
    for (name, spec) in variants {
        write("certificate_profile", name, ca.sign(&spec).chain[0].as_ref());
    }
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
