use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::CertificateDer;

use super::*;

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "test CA");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

fn attrs() -> CustomExtension {
    let attrs = IdentityAttributes {
        v: 1,
        name: "agent".into(),
        groups: vec!["ml-agents".into()],
        session: None,
        mfa_at: None,
        auth_methods: Vec::new(),
    };
    CustomExtension::from_oid_content(ATTRIBUTES_OID, attrs.to_der())
}

fn leaf(ca: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://palisade.test/machine/7c2c1f06-2b6b-4f51-9d43-0d3b1f3f1a11".try_into().expect("uri"),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = vec![attrs()];
    edit(&mut params);
    params.signed_by(&key, &ca.issuer).expect("signed").der().clone()
}

fn trust(ca: &Ca) -> TrustAnchors {
    TrustAnchors::new("palisade.test".parse().expect("td"), vec![ca.der.clone()]).expect("anchors")
}

type Edit = dyn FnOnce(&mut CertificateParams);

const MACHINE: &[PeerRole] = &[PeerRole::Machine, PeerRole::User];

#[test]
fn a_well_formed_machine_certificate_is_verified() {
    let ca = ca();
    let peer = verify_peer(&[leaf(&ca, |_| {})], &trust(&ca), SystemTime::now(), MACHINE).expect("verified");
    assert_eq!(peer.role(), PeerRole::Machine);
    assert_eq!(peer.name(), "agent");
    assert_eq!(peer.groups(), ["ml-agents".to_owned()]);
    assert_eq!(peer.id().id, "7c2c1f06-2b6b-4f51-9d43-0d3b1f3f1a11");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let (ours, theirs) = (ca(), ca());
    let err = verify_peer(&[leaf(&theirs, |_| {})], &trust(&ours), SystemTime::now(), MACHINE).unwrap_err();
    assert!(matches!(err, VerifyPeerError::Chain(_)), "{err:?}");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = ca();
    let cert = leaf(&ca, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 2);
    });
    assert_eq!(
        verify_peer(std::slice::from_ref(&cert), &trust(&ca), SystemTime::now(), MACHINE).unwrap_err(),
        VerifyPeerError::Expired
    );
    let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    assert_eq!(verify_peer(&[cert], &trust(&ca), before, MACHINE).unwrap_err(), VerifyPeerError::NotYetValid);
}

#[test]
fn server_auth_only_and_missing_eku_are_refused() {
    let ca = ca();
    let server_only = leaf(&ca, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    assert!(verify_peer(&[server_only], &trust(&ca), SystemTime::now(), MACHINE).is_err());
    // webpki alone accepts a client certificate without EKU; the profile must not.
    let no_eku = leaf(&ca, |p| p.extended_key_usages.clear());
    assert!(verify_peer(std::slice::from_ref(&no_eku), &trust(&ca), SystemTime::now(), MACHINE).is_err());
    assert!(check_profile(&no_eku, &trust(&ca)).is_err());
}

#[test]
fn san_problems_are_refused() {
    let ca = ca();
    let cases: Vec<(&str, Box<Edit>)> = vec![
        ("no SAN", Box::new(|p| p.subject_alt_names.clear())),
        ("DNS SAN", Box::new(|p| p.subject_alt_names = vec![SanType::DnsName("x.test".try_into().expect("dns"))])),
        (
            "two URIs",
            Box::new(|p| {
                p.subject_alt_names.push(SanType::URI("spiffe://palisade.test/machine/other".try_into().expect("uri")))
            }),
        ),
        (
            "foreign trust domain",
            Box::new(|p| {
                p.subject_alt_names = vec![SanType::URI("spiffe://evil.test/machine/abc".try_into().expect("uri"))]
            }),
        ),
        (
            "not spiffe",
            Box::new(|p| p.subject_alt_names = vec![SanType::URI("https://palisade.test/x".try_into().expect("uri"))]),
        ),
        ("no attributes", Box::new(|p| p.custom_extensions.clear())),
        ("CA:TRUE", Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained))),
    ];
    for (what, edit) in cases {
        let cert = leaf(&ca, edit);
        assert!(verify_peer(&[cert], &trust(&ca), SystemTime::now(), MACHINE).is_err(), "{what} was accepted");
    }
}

#[test]
fn roles_are_enforced() {
    let ca = ca();
    let connector = leaf(&ca, |p| {
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://palisade.test/connector/7c2c1f06-2b6b-4f51-9d43-0d3b1f3f1a11".try_into().expect("uri"),
        )]
    });
    let err = verify_peer(std::slice::from_ref(&connector), &trust(&ca), SystemTime::now(), MACHINE).unwrap_err();
    assert!(matches!(err, VerifyPeerError::WrongRole { actual: PeerRole::Connector, .. }), "{err:?}");
    assert!(verify_peer(&[connector], &trust(&ca), SystemTime::now(), &[PeerRole::Connector]).is_ok());
    let machine = leaf(&ca, |_| {});
    assert!(verify_peer(&[machine], &trust(&ca), SystemTime::now(), &[PeerRole::Connector]).is_err());
}

#[test]
fn spiffe_ids_parse_strictly() {
    let id: SpiffeId = "spiffe://palisade.test/machine/abc".parse().expect("parses");
    assert_eq!(id.uri(), "spiffe://palisade.test/machine/abc");
    for bad in [
        "spiffe://palisade.test/machine",
        "spiffe://palisade.test/machine/abc/def",
        "spiffe://palisade.test/admin/abc",
        "spiffe://palisade.test/machine/a,b",
        "http://palisade.test/machine/abc",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad} was accepted");
    }
}

#[test]
fn attributes_round_trip_and_refuse_garbage() {
    let attrs = IdentityAttributes {
        v: 1,
        name: "n".repeat(300),
        groups: vec!["g".into()],
        session: Some("s".into()),
        mfa_at: Some(1_700_000_000),
        auth_methods: vec!["webauthn".into()],
    };
    assert_eq!(IdentityAttributes::from_der(&attrs.to_der()).expect("parses"), attrs);
    assert!(IdentityAttributes::from_der(&[0x0c, 5, b'{']).is_err());
    assert!(IdentityAttributes::from_der(&[0x04, 2, b'{', b'}']).is_err());
    let v2 = IdentityAttributes { v: 2, ..attrs };
    assert!(IdentityAttributes::from_der(&v2.to_der()).is_err());
}

// ------------------------------------------------ X5-07: intermediates

/// A CA certificate named `cn` with basic constraints `is_ca`, signed by `parent`.
fn sub_ca(parent: &Issuer<'static, KeyPair>, cn: &str, is_ca: IsCa) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = is_ca;
    params.distinguished_name.push(DnType::CommonName, cn);
    // Without clientAuth here webpki refuses the path for the EKU before reaching the defect under test.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, parent).expect("signed");
    Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

/// A self-issued CA certificate (subject = issuer = `cn`) with its own key: anyone can make these.
fn look_alike(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

/// Verifies `chain`, returning the error and how long the refusal took.
fn refuse(chain: &[CertificateDer<'static>], ca: &Ca) -> (VerifyPeerError, Duration) {
    let started = std::time::Instant::now();
    let err = verify_peer(chain, &trust(ca), SystemTime::now(), MACHINE).expect_err("the chain must be refused");
    let took = started.elapsed();
    eprintln!("refused in {took:?}: {err:?}");
    (err, took)
}

fn chain_error(err: &VerifyPeerError) -> &str {
    match err {
        VerifyPeerError::Chain(e) => e,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

/// X5-07: twelve CA certificates between our CA and the leaf, each one
/// properly signed by the one above. Refused for its length before any
/// path is built (webpki alone would stop at its depth limit, six
/// intermediates, in about 0.1 ms).
#[test]
fn a_twelve_deep_chain_of_intermediates_is_refused_quickly() {
    let root = ca();
    let mut below: Vec<Ca> = Vec::new();
    for depth in 1..=12 {
        let parent = below.last().map_or(&root.issuer, |c| &c.issuer);
        let next = sub_ca(parent, &format!("intermediate {depth}"), IsCa::Ca(BasicConstraints::Unconstrained));
        below.push(next);
    }
    let mut chain = vec![leaf(below.last().expect("twelve"), |_| {})];
    chain.extend(below.iter().rev().map(|c| c.der.clone()));
    assert_eq!(chain.len(), 13);
    let (err, _) = refuse(&chain, &root);
    assert!(chain_error(&err).contains("12 intermediate certificates"), "{err:?}");
}

/// X5-07: an intermediate under our CA that is not a CA (basicConstraints
/// CA:FALSE) signs a leaf. Refused as an intermediate that is not our CA
/// before any path is built; webpki alone refuses it too
/// (`EndEntityUsedAsCa`, checked here with the chain handed to it directly).
#[test]
fn a_leaf_signed_by_a_non_ca_intermediate_is_refused() {
    let root = ca();
    let not_a_ca = sub_ca(&root.issuer, "not a CA", IsCa::ExplicitNoCa);
    let chain = [leaf(&not_a_ca, |_| {}), not_a_ca.der.clone()];
    let (err, _) = refuse(&chain, &root);
    assert!(chain_error(&err).contains("not the Palisade CA"), "{err:?}");
    let anchors = [webpki::anchor_from_trusted_cert(&root.der).expect("an anchor").to_owned()];
    let leaf_cert = webpki::EndEntityCert::try_from(&chain[0]).expect("a leaf");
    let webpki_alone = leaf_cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    );
    assert!(matches!(webpki_alone, Err(webpki::Error::EndEntityUsedAsCa)), "{:?}", webpki_alone.err());
}

/// X5-07, path-building explosion: a forged leaf presented with 50
/// self-issued CA certificates that all carry its issuer's name, so every
/// one is a candidate issuer of the leaf and of each other (50^6 paths
/// without a budget). webpki's path-building budget (200 000 calls) would
/// end the search after about 240 ms of CPU (debug build) on every
/// handshake; the chain is refused for its length before that.
#[test]
fn fifty_look_alike_intermediates_are_refused_quickly() {
    let root = ca();
    let name = "Palisade Intermediate";
    let look_alikes: Vec<Ca> = (0..50).map(|_| look_alike(name)).collect();
    let issuer = look_alike(name);
    let mut chain = vec![leaf(&issuer, |_| {})];
    chain.extend(look_alikes.iter().map(|c| c.der.clone()));
    let (err, _) = refuse(&chain, &root);
    assert!(chain_error(&err).contains("50 intermediate certificates"), "{err:?}");
    // Our CA sent along, as some clients do, is still fine.
    let with_ca = [leaf(&root, |_| {}), root.der.clone()];
    verify_peer(&with_ca, &trust(&root), SystemTime::now(), MACHINE).expect("a leaf with our CA sent along");
}

/// X5-07, name constraints: a sub-CA that our CA key itself signed, with
/// name constraints the leaf's name falls outside of (permitted: only
/// `example.com`), and with none. Palisade's CA never makes a sub-CA, so
/// any intermediate but our CA certificate is refused, before webpki would
/// weigh the constraints; our CA sent along is still fine.
#[test]
fn an_intermediate_our_ca_signed_is_refused_with_or_without_name_constraints() {
    use rcgen::{GeneralSubtree, NameConstraints};
    let root = ca();
    let constrained = {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "constrained intermediate");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("example.com".into())],
            excluded_subtrees: vec![],
        });
        let cert = params.signed_by(&key, &root.issuer).expect("signed");
        Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
    };
    let plain = sub_ca(&root.issuer, "plain intermediate", IsCa::Ca(BasicConstraints::Unconstrained));
    for sub in [&constrained, &plain] {
        let chain = [leaf(sub, |_| {}), sub.der.clone()];
        let (err, _) = refuse(&chain, &root);
        assert!(chain_error(&err).contains("not the Palisade CA"), "{err:?}");
    }
    let with_ca = [leaf(&root, |_| {}), root.der.clone()];
    verify_peer(&with_ca, &trust(&root), SystemTime::now(), MACHINE).expect("a leaf with our CA sent along");
}
