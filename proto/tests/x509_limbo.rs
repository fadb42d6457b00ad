//! x509-limbo SERVER cases (catalogue X5-01) through the verifier a client
//! and a connector use for the broker's certificate
//! ([`palisade_proto::tls::broker_verifier`], the one `quic_client_config`
//! and `https_client_config` install). The cases and how they were chosen
//! are described in `tests/x509-limbo/README.md`.
//!
//! Every case must end as limbo expects, except the ones listed below with
//! the reason. A case limbo expects to fail that verifies is a failure of
//! this test unless it is listed; so is a listed case that no longer
//! deviates (the lists stay true).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use palisade_proto::identity::TrustAnchors;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

/// webpki takes a trust anchor as a subject and a key: the root
/// certificate's validity, extensions, AKI/SKI and EKU are not examined.
/// Palisade's only root is the CA it created itself; a retired CA is taken
/// out of the bundle rather than left to expire.
const ANCHOR: &str = "trust anchor examined as name and key only";
/// webpki builds paths by name and signature; it neither requires nor
/// compares authority/subject key identifiers.
const KEY_IDS: &str = "AKI/SKI not required or compared";
/// webpki does not enforce which known extensions must (not) be critical.
const CRITICALITY: &str = "extension criticality not enforced";
/// Pedantic name-constraint rules (constraints in a leaf, a leading period,
/// an empty constraint set). Palisade's chains have no intermediate that
/// could carry name constraints (X5-07 refuses more than our CA).
const NAME_CONSTRAINTS: &str = "pedantic name-constraint rule";
/// webpki never reads the subject CN; names come from the SAN only, and the
/// SAN matches the name dialled in these cases.
const COMMON_NAME: &str = "CN ignored, the SAN matches";
/// The leaf's own key is not used to verify the chain; rustls
/// refuses DSA, P-192 and short RSA keys when the server signs the
/// handshake with them (only the provider's schemes verify).
const LEAF_KEY: &str = "key type refused at the handshake signature, not in the chain";
/// An issuance-profile rule (serial encoding, empty subject, key usage on a
/// leaf, `_` in a DNS name, public suffixes, AIA syntax, EKU `any` or
/// missing, RSA modulus sizes). webpki does not enforce issuance profiles.
/// Under Palisade's CA (a P-256 key) the broker's certificate comes from
/// `issue_server` (serverAuth, digitalSignature, CA:FALSE, random serial),
/// and the self-check (CA-09) keeps every client leaf exactly clientAuth,
/// which webpki refuses as a server certificate.
const ISSUANCE: &str = "issuance-profile rule our CA's template already keeps";

/// Cases limbo expects to fail that webpki accepts, and why that is
/// acceptable for a broker certificate issued by Palisade's own CA.
const ACCEPTED_DESPITE_FAILURE: &[(&str, &str)] = &[
    ("rfc5280::validity::expired-root", ANCHOR),
    ("rfc5280::unknown-critical-extension-root", ANCHOR),
    ("rfc5280::root-missing-basic-constraints", ANCHOR),
    ("rfc5280::root-non-critical-basic-constraints", ANCHOR),
    ("rfc5280::root-inconsistent-ca-extensions", ANCHOR),
    ("rfc5280::ski::root-missing-ski", ANCHOR),
    ("rfc5280::aki::cross-signed-root-missing-aki", ANCHOR),
    ("webpki::aki::root-with-aki-all-fields", ANCHOR),
    ("webpki::aki::root-with-aki-authoritycertissuer", ANCHOR),
    ("webpki::aki::root-with-aki-authoritycertserialnumber", ANCHOR),
    ("webpki::aki::root-with-aki-missing-keyidentifier", ANCHOR),
    ("webpki::aki::root-with-aki-ski-mismatch", ANCHOR),
    ("webpki::eku::root-has-eku", ANCHOR),
    ("rfc5280::aki::critical-aki", KEY_IDS),
    ("rfc5280::aki::intermediate-missing-aki", KEY_IDS),
    ("rfc5280::aki::leaf-missing-aki", KEY_IDS),
    ("rfc5280::ski::critical-ski", KEY_IDS),
    ("rfc5280::ski::intermediate-missing-ski", KEY_IDS),
    ("rfc5280::nc::permitted-dns-match-noncritical", CRITICALITY),
    ("rfc5280::san::noncritical-with-empty-subject", CRITICALITY),
    ("webpki::san::san-critical-with-nonempty-subject", CRITICALITY),
    ("webpki::eku::ee-critical-eku", CRITICALITY),
    ("rfc5280::pc::ica-noncritical-pc", CRITICALITY),
    ("rfc5280::nc::invalid-dnsname-leading-period", NAME_CONSTRAINTS),
    ("rfc5280::nc::not-allowed-in-ee-critical", NAME_CONSTRAINTS),
    ("rfc5280::nc::not-allowed-in-ee-noncritical", NAME_CONSTRAINTS),
    ("webpki::nc::intermediate-permitted-excluded-subtrees-both-empty-sequences", NAME_CONSTRAINTS),
    ("webpki::nc::intermediate-permitted-excluded-subtrees-both-null", NAME_CONSTRAINTS),
    ("webpki::cn::case-mismatch", COMMON_NAME),
    ("webpki::cn::ipv4-hex-mismatch", COMMON_NAME),
    ("webpki::cn::ipv4-leading-zeros-mismatch", COMMON_NAME),
    ("webpki::cn::ipv6-non-rfc5952-mismatch", COMMON_NAME),
    ("webpki::cn::ipv6-uncompressed-mismatch", COMMON_NAME),
    ("webpki::cn::ipv6-uppercase-mismatch", COMMON_NAME),
    ("webpki::cn::not-in-san", COMMON_NAME),
    ("webpki::cn::punycode-not-in-san", COMMON_NAME),
    ("webpki::cn::utf8-vs-punycode-mismatch", COMMON_NAME),
    ("webpki::forbidden-dsa-leaf", LEAF_KEY),
    ("webpki::forbidden-p192-leaf", LEAF_KEY),
    ("webpki::forbidden-weak-rsa-in-leaf", LEAF_KEY),
    ("webpki::forbidden-rsa-key-not-divisible-by-8-in-leaf", LEAF_KEY),
    ("webpki::forbidden-rsa-not-divisible-by-8-in-root", ISSUANCE),
    ("rfc5280::serial::too-long", ISSUANCE),
    ("rfc5280::serial::zero", ISSUANCE),
    ("rfc5280::ca-empty-subject", ISSUANCE),
    ("rfc5280::leaf-ku-keycertsign", ISSUANCE),
    ("rfc5280::san::underscore-dns", ISSUANCE),
    ("webpki::san::public-suffix-multi-label-wildcard-san", ISSUANCE),
    ("webpki::san::public-suffix-private-namespace-wildcard-san", ISSUANCE),
    ("webpki::malformed-aia", ISSUANCE),
    ("webpki::eku::ee-anyeku", ISSUANCE),
    ("webpki::eku::ee-without-eku", ISSUANCE),
];

/// Cases limbo expects to verify that webpki refuses: stricter than
/// RFC 5280 is deny on doubt, never a way in.
/// webpki's path building does not find the valid path through these
/// self-issued (same subject) intermediates and reports `BadSignature`.
const SELF_ISSUED: &str = "chain through self-issued intermediates not found";
/// webpki refuses a certificate with CA:TRUE as the end entity
/// (`CaUsedAsEndEntity`), which RFC 5280 allows.
const CA_AS_LEAF: &str = "CA certificate refused as the end entity";
const REFUSED_DESPITE_SUCCESS: &[(&str, &str)] = &[
    ("pathlen::self-issued-certs-pathlen", SELF_ISSUED),
    ("rfc5280::nc::permitted-self-issued", SELF_ISSUED),
    ("pathlen::validation-ignores-pathlen-in-leaf", CA_AS_LEAF),
    ("rfc5280::ca-as-leaf", CA_AS_LEAF),
];

#[derive(Deserialize)]
struct Suite {
    testcases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    trusted_certs: Vec<String>,
    untrusted_intermediates: Vec<String>,
    peer_certificate: String,
    validation_time: Option<u64>,
    expected_result: Expected,
    expected_peer_name: PeerName,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "UPPERCASE")]
enum Expected {
    Success,
    Failure,
}

#[derive(Deserialize)]
struct PeerName {
    value: String,
}

fn suite() -> Suite {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/x509-limbo/limbo-server.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A limbo certificate; bad PEM is a broken data file, not a refusal.
fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap_or_else(|e| panic!("limbo PEM: {e}"))
}

/// Runs one case through the broker verifier; `Ok` means it verified.
fn verify(case: &Case) -> Result<(), String> {
    let roots = case.trusted_certs.iter().map(|p| der(p)).collect();
    let intermediates: Vec<_> = case.untrusted_intermediates.iter().map(|p| der(p)).collect();
    let leaf = der(&case.peer_certificate);
    // The trust domain plays no part in server verification.
    let trust = TrustAnchors::new("limbo.test".parse().unwrap(), roots).map_err(|e| format!("trust anchors: {e}"))?;
    let verifier = palisade_proto::tls::broker_verifier(&trust).map_err(|e| format!("verifier: {e}"))?;
    let name = ServerName::try_from(case.expected_peer_name.value.as_str()).map_err(|e| format!("name: {e}"))?;
    let now =
        case.validation_time.map_or_else(UnixTime::now, |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs)));
    verifier.verify_server_cert(&leaf, &intermediates, &name, &[], now).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn limbo_server_cases_never_verify_unexpectedly() {
    let suite = suite();
    let accepted: BTreeMap<_, _> = ACCEPTED_DESPITE_FAILURE.iter().copied().collect();
    let refused: BTreeMap<_, _> = REFUSED_DESPITE_SUCCESS.iter().copied().collect();
    let mut problems = Vec::new();
    let started = SystemTime::now();
    for case in &suite.testcases {
        let outcome = verify(case);
        let listed = match case.expected_result {
            Expected::Failure => accepted.contains_key(case.id.as_str()),
            Expected::Success => refused.contains_key(case.id.as_str()),
        };
        let as_expected = outcome.is_ok() == (case.expected_result == Expected::Success);
        match (as_expected, listed, &outcome) {
            (true, false, _) | (false, true, _) => {}
            (false, false, Ok(())) => problems.push(format!("{}: verified, limbo expects a failure", case.id)),
            (false, false, Err(e)) => problems.push(format!("{}: refused ({e}), limbo expects success", case.id)),
            (true, true, _) => problems.push(format!("{}: listed as deviating but now ends as limbo expects", case.id)),
        }
    }
    let ids: Vec<&str> = suite.testcases.iter().map(|c| c.id.as_str()).collect();
    for listed in accepted.keys().chain(refused.keys()) {
        assert!(ids.contains(listed), "{listed} is listed but not in the suite");
    }
    let refusals = suite.testcases.iter().filter(|c| c.expected_result == Expected::Failure).count() - accepted.len();
    assert!(refusals >= 70, "only {refusals} cases refused as limbo expects: is the suite complete?");
    eprintln!("x509-limbo: {} SERVER cases in {:?}", suite.testcases.len(), started.elapsed().unwrap_or_default());
    assert!(problems.is_empty(), "{} unexpected outcomes:\n{}", problems.len(), problems.join("\n"));
}
