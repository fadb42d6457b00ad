//! Fuzz target bodies: every parser that takes bytes from the network or
//! from a person. Each function must return for any input — a panic, a hang
//! or an overflow is the bug. Where a parse succeeds, the function also
//! checks a property (re-encoding round-trips, an export line stays one
//! line), so the fuzzer finds wrong answers and not only crashes.
//!
//! `fuzz/` runs them under libFuzzer (`scripts/fuzz`); `tests/tests/fuzz_corpora.rs`
//! replays the committed corpora (`fuzz/corpus/<target>/`) on every test run.

pub mod mutate;
pub mod quic;

use std::sync::OnceLock;

use palisade_broker::audit::chain::EventRow;
use palisade_broker::audit::export::{csv_line, json_line};
use palisade_policies::{Engine, PolicyBundle, PolicyFile, run_cases};
use palisade_proto::bundle::SignedBundle;
use palisade_proto::control::{BrokerToConnector, ConnectorToBroker};
use palisade_proto::enroll::EnrollmentToken;
use palisade_proto::identity::IdentityAttributes;
use palisade_proto::wire::{StreamHeader, decode_frame};
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

/// A target body: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("stream_header", stream_header),
    ("control_frame", control_frame),
    ("enroll_token", enroll_token),
    ("identity_attributes", identity_attributes),
    ("csr", csr),
    ("signed_bundle", signed_bundle),
    ("policy_source", policy_source),
    ("policy_cases", policy_cases),
    ("audit_export", audit_export),
    ("webauthn_finish", webauthn_finish),
    ("l7_path", l7_path),
    ("openai_request", openai_request),
    ("openai_usage", openai_usage),
    ("certificate_profile", certificate_profile),
    ("quic_initial", quic::quic_initial),
];

/// The stream header every QUIC stream starts with: decode, and re-encode what decoded.
pub fn stream_header(data: &[u8]) {
    if let Ok(header) = StreamHeader::decode_all(data) {
        let encoded = header.encode().expect("a decoded header re-encodes");
        assert_eq!(StreamHeader::decode_all(&encoded).expect("re-decodes"), header);
    }
}

/// Control frames between connector and broker, both directions.
pub fn control_frame(data: &[u8]) {
    let _ = decode_frame::<ConnectorToBroker>(data);
    let _ = decode_frame::<BrokerToConnector>(data);
}

/// `pal1.<secret>.<ca pin>` as pasted by an admin or a script.
pub fn enroll_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = text.parse::<EnrollmentToken>()
    {
        let again: EnrollmentToken = token.expose().parse().expect("an exposed token re-parses");
        assert_eq!((again.secret_hash(), again.ca_pin()), (token.secret_hash(), token.ca_pin()));
    }
}

/// The identity-attributes extension of a client certificate.
pub fn identity_attributes(data: &[u8]) {
    if let Ok(attributes) = IdentityAttributes::from_der(data) {
        let der = attributes.to_der();
        assert_eq!(IdentityAttributes::from_der(&der).expect("re-parse"), attributes);
    }
}

/// A PEM CSR at the enrollment API and on renewal.
pub fn csr(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = palisade_broker::issuance::csr::check_csr(text);
    }
}

/// A signed policy bundle as a connector receives it (JSON), verified
/// against a CA that never signed it: parsing must not panic, and nothing
/// unsigned may verify.
pub fn signed_bundle(data: &[u8]) {
    static CA: OnceLock<Vec<u8>> = OnceLock::new();
    let ca = CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("a CA").der().to_vec()
    });
    if let Ok(bundle) = serde_json::from_slice::<SignedBundle>(data) {
        let ca = rustls_pki_types::CertificateDer::from(ca.as_slice());
        assert!(bundle.verify(&[ca]).is_err(), "a bundle no CA key signed verified");
    }
}

/// A Cedar policy file, parsed and validated against the schema.
pub fn policy_source(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let bundle = PolicyBundle {
            version: 1,
            files: vec![PolicyFile { name: "fuzz.cedar".into(), text: text.to_owned() }],
            services: Vec::new(),
        };
        let _ = Engine::new(&bundle);
    }
}

/// A policy test-case file (TOML) run against a small valid set.
pub fn policy_cases(data: &[u8]) {
    const POLICY: &str = "permit (principal in Group::\"ml-team\", action == Action::\"connect\", resource);";
    if let Ok(text) = std::str::from_utf8(data) {
        let files = [PolicyFile { name: "allow.cedar".into(), text: POLICY.into() }];
        let _ = run_cases(&files, "fuzz.toml", text);
    }
}

/// Export encoders fed attacker-controlled fields: JSON lines and CSV must
/// stay one line, and CSV cells must not start a spreadsheet formula.
pub fn audit_export(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1f}');
    let (actor, subject, detail) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
    let row = EventRow {
        seq: 1,
        ts_ms: i64::from_le_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default()),
        kind: "login.failed".into(),
        outcome: "failure".into(),
        actor: actor.map(str::to_owned),
        subject: subject.map(str::to_owned),
        decision_id: None,
        detail: serde_json::json!({ "user_agent": detail }).to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    };
    for line in [json_line(&row), csv_line(&row)] {
        let body = line.strip_suffix('\n').unwrap_or(&line);
        assert!(!body.contains(['\n', '\r']), "an export line broke in two: {line:?}");
    }
    serde_json::from_str::<serde_json::Value>(json_line(&row).trim_end()).expect("a JSON line is JSON");
}

/// Real ceremonies a WebAuthn finish body is checked against: a registration
/// in progress, and an authentication (known credential and discoverable)
/// for a passkey registered by a software authenticator.
struct Ceremonies {
    webauthn: Webauthn,
    registration: PasskeyRegistration,
    authentication: PasskeyAuthentication,
    discoverable: DiscoverableAuthentication,
    passkey: Passkey,
}

fn ceremonies() -> &'static Ceremonies {
    static CEREMONIES: OnceLock<Ceremonies> = OnceLock::new();
    CEREMONIES.get_or_init(|| {
        let origin = Url::parse("https://localhost:8443").expect("an origin");
        let webauthn = WebauthnBuilder::new("localhost", &origin).and_then(WebauthnBuilder::build).expect("an RP");
        let mut authenticator = SoftPasskey::new(true);
        let user = Uuid::new_v4();
        let (ccr, state) = webauthn.start_passkey_registration(user, "fuzz", "Fuzz", None).expect("start");
        let reg = authenticator.do_registration(origin, ccr).expect("the soft passkey registers");
        let passkey = webauthn.finish_passkey_registration(&reg, &state).expect("a genuine registration");
        let (_, registration) = webauthn.start_passkey_registration(user, "fuzz", "Fuzz", None).expect("start");
        let (_, authentication) = webauthn.start_passkey_authentication(std::slice::from_ref(&passkey)).expect("start");
        let (_, discoverable) = webauthn.start_discoverable_authentication().expect("start");
        Ceremonies { webauthn, registration, authentication, discoverable, passkey }
    })
}

/// The JSON bodies of the WebAuthn finish endpoints (`/login/webauthn/register/finish`,
/// `/login/webauthn/authenticate/finish`, `/api/v1/me/credentials/register/finish`),
/// parsed as the broker's `Json` extractor parses them and, when they parse,
/// finished against live ceremonies, so the CBOR attestation object, the
/// authenticator data and the COSE key inside are attacker bytes too. No
/// assertion may pass: the fuzzer cannot sign with the ceremony's key.
pub fn webauthn_finish(data: &[u8]) {
    let c = ceremonies();
    if let Ok(reg) = serde_json::from_slice::<RegisterPublicKeyCredential>(data) {
        let _ = c.webauthn.finish_passkey_registration(&reg, &c.registration);
    }
    if let Ok(cred) = serde_json::from_slice::<PublicKeyCredential>(data) {
        let known = c.webauthn.finish_passkey_authentication(&cred, &c.authentication);
        assert!(known.is_err(), "an assertion nobody signed was accepted");
        if c.webauthn.identify_discoverable_authentication(&cred).is_ok() {
            let found = c.webauthn.finish_discoverable_authentication_v2(&cred, c.discoverable.clone(), &c.passkey);
            assert!(found.is_err(), "a discoverable assertion nobody signed was accepted");
        }
    }
}

/// The connector's L7 path normalizer. A path it accepts is canonical: the
/// decoded form has no empty, `.` or `..` segment, and normalizing the
/// encoded form (what the workload receives) yields the same path, so the
/// workload's router reads what the policy decided on.
pub fn l7_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok((decoded, encoded)) = palisade_connector::fuzzing::normalize_path(raw) else { return };
    assert!(decoded.starts_with('/'), "{raw:?} decoded to a relative path {decoded:?}");
    let inner = decoded.strip_suffix('/').unwrap_or(&decoded);
    for segment in inner.split('/').skip(1) {
        assert!(!matches!(segment, "" | "." | ".."), "{raw:?} kept segment {segment:?} in {decoded:?}");
    }
    let again = palisade_connector::fuzzing::normalize_path(&encoded);
    assert_eq!(again, Ok((decoded.clone(), encoded.clone())), "{raw:?}: the forwarded path reads differently");
}

/// The OpenAI request fields the connector decides on (model, token
/// limits, `n`, `logprobs`, `stream`) from a JSON body.
pub fn openai_request(data: &[u8]) {
    if let Ok(fields) = palisade_connector::fuzzing::request_fields(data) {
        let as_long = |n: Option<u64>| n.is_none_or(|n| i64::try_from(n).is_ok());
        assert!(as_long(fields.max_tokens) && as_long(fields.n), "a count Cedar cannot hold: {fields:?}");
    }
}

/// The `usage` parser for JSON responses and server-sent-event streams.
/// How the stream is cut into reads must not change what is counted: the
/// first byte picks a split point, and the stream is fed whole, in two
/// pieces, and byte by byte.
pub fn openai_usage(data: &[u8]) {
    use palisade_connector::fuzzing::{sse_usage, usage_of_json};
    let _ = usage_of_json(data);
    let whole = sse_usage(&[data]);
    let at = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let (left, right) = data.split_at(at);
    assert_eq!(sse_usage(&[left, right]), whole, "splitting the stream at {at} changed the count");
    if data.len() <= 4096 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(sse_usage(&bytes), whole, "feeding byte by byte changed the count");
    }
}

/// Palisade's certificate profile checks (one URI SAN in our trust domain,
/// clientAuth, not a CA, the identity-attributes extension) on any DER, as
/// they run after a chain verified. An accepted leaf names our trust domain.
pub fn certificate_profile(data: &[u8]) {
    use palisade_proto::identity::{TrustAnchors, fuzzing::check_profile};
    static TRUST: OnceLock<TrustAnchors> = OnceLock::new();
    let trust = TRUST.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("a CA").der().clone();
        TrustAnchors::new(FUZZ_TRUST_DOMAIN.parse().expect("a trust domain"), vec![ca]).expect("trust anchors")
    });
    if let Ok(uri) = check_profile(&rustls_pki_types::CertificateDer::from(data), trust) {
        let prefix = format!("spiffe://{FUZZ_TRUST_DOMAIN}/");
        assert!(uri.starts_with(&prefix), "a leaf outside our trust domain passed as {uri}");
    }
}

/// The trust domain of the certificate-profile target's seeds.
pub const FUZZ_TRUST_DOMAIN: &str = "fuzz.palisade.test";
