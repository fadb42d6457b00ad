use palisade_proto::identity::PeerRole;

use super::*;
use crate::testing::{TRUST_DOMAIN, TestCa};

const CONNECTOR_ID: &str = "0f8e4a9c-1d2b-4c3d-8e9f-a0b1c2d3e4f5";

struct Answer {
    ca: TestCa,
    token: EnrollmentToken,
    key: rcgen::KeyPair,
    response: EnrollResponse,
}

fn answer() -> Answer {
    let ca = TestCa::new();
    let token = EnrollmentToken::generate(&ca.der);
    let issued = ca.issue(PeerRole::Connector, CONNECTOR_ID, "gpu-rack-1", &[]);
    let response = EnrollResponse {
        identity: format!("spiffe://{TRUST_DOMAIN}/connector/{CONNECTOR_ID}"),
        certificate_pem: issued.pem,
        ca_pem: ca.pem.clone(),
        not_after_unix: 0,
        quic_addr: "127.0.0.1:4433".into(),
        replicas: Vec::new(),
    };
    Answer { ca, token, key: issued.key, response }
}

fn check(a: &Answer) -> Result<u64, EnrollError> {
    check_response(&a.response, &a.token, &a.key, SystemTime::now())
}

#[test]
fn a_good_answer_is_accepted() {
    let a = answer();
    let not_after = check(&a).expect("accepted");
    assert!(not_after > SystemTime::now().duration_since(UNIX_EPOCH).expect("now").as_secs());
}

#[test]
fn a_ca_that_does_not_match_the_pin_is_refused() {
    let mut a = answer();
    a.token = EnrollmentToken::generate(&TestCa::new().der);
    let err = check(&a).expect_err("refused").to_string();
    assert!(err.contains("pins"), "{err}");
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let mut a = answer();
    a.key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let err = check(&a).expect_err("refused").to_string();
    assert!(err.contains("not for the key"), "{err}");
}

#[test]
fn a_machine_certificate_is_refused() {
    let mut a = answer();
    let issued = a.ca.issue(PeerRole::Machine, CONNECTOR_ID, "ci", &[]);
    a.response.certificate_pem = issued.pem;
    a.key = issued.key;
    assert!(check(&a).is_err());
    a.response.identity = format!("spiffe://{TRUST_DOMAIN}/machine/{CONNECTOR_ID}");
    let err = check(&a).expect_err("refused").to_string();
    assert!(err.contains("not a connector"), "{err}");
}

#[test]
fn a_certificate_naming_someone_else_is_refused() {
    let mut a = answer();
    a.response.identity = format!("spiffe://{TRUST_DOMAIN}/connector/{}", uuid::Uuid::new_v4());
    assert!(check(&a).is_err());
}

#[test]
fn broker_urls_must_be_https() {
    assert_eq!(enroll_url("https://b.example:8443").expect("ok").as_str(), "https://b.example:8443/api/v1/enroll");
    assert_eq!(enroll_url("https://127.0.0.1:8443/").expect("ok").as_str(), "https://127.0.0.1:8443/api/v1/enroll");
    for bad in ["http://b.example", "b.example:443", "https://", "https://b.example/?x=1"] {
        assert!(enroll_url(bad).is_err(), "{bad} accepted");
    }
}

#[tokio::test]
async fn an_existing_enrollment_is_not_overwritten_without_force() {
    let a = answer();
    let dir = tempfile::tempdir().expect("tempdir");
    let record = IdentityRecord {
        identity: a.response.identity.clone(),
        broker_url: "https://127.0.0.1:1".into(),
        quic_addr: a.response.quic_addr.clone(),
    };
    Store::new(dir.path().to_owned())
        .save_enrollment(&a.key.serialize_pem(), &a.response.certificate_pem, &a.ca.pem, &record)
        .expect("save");
    let err = enroll("https://127.0.0.1:1", &a.token.expose(), dir.path(), false).await.expect_err("refused");
    assert!(matches!(err, EnrollError::AlreadyEnrolled { .. }), "{err}");
    // With --force it goes on to the network (nothing listens on port 1) and leaves the files alone.
    let err = enroll("https://127.0.0.1:1", &a.token.expose(), dir.path(), true).await.expect_err("unreachable");
    assert!(matches!(err, EnrollError::Http { .. }), "{err}");
    let loaded = Store::new(dir.path().to_owned()).load().expect("still enrolled");
    assert_eq!(loaded.record, record);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("key.pem")).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// A one-shot HTTPS server speaking just enough HTTP/1.1 for `POST /api/v1/enroll`.
async fn enroll_api(
    ca: &TestCa,
    answer: impl FnOnce(EnrollRequest) -> (u16, String) + Send + 'static,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut identity = ca.server();
    identity.chain.push(ca.der.clone());
    let mut tls = palisade_proto::tls::https_server_config(&identity).expect("TLS");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        // A client that refuses our certificate ends the handshake here.
        let Ok(mut stream) = acceptor.accept(tcp).await else { return };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let (head_len, body_len) = loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                assert!(head.starts_with("post /api/v1/enroll http/1.1"), "{head}");
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (end + 4, len);
            }
        };
        while request.len() < head_len + body_len {
            let n = stream.read(&mut buf).await.expect("read body");
            request.extend_from_slice(&buf[..n]);
        }
        let body: EnrollRequest = serde_json::from_slice(&request[head_len..]).expect("request JSON");
        let (status, json) = answer(body);
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        );
        stream.write_all(response.as_bytes()).await.expect("write");
        stream.shutdown().await.expect("shutdown");
    });
    addr
}

#[tokio::test]
async fn enrollment_stores_a_checked_certificate_for_a_local_key() {
    let ca = std::sync::Arc::new(TestCa::new());
    let token = EnrollmentToken::generate(&ca.der);
    let expected_token = token.expose();
    let signer = ca.clone();
    let addr = enroll_api(&ca, move |request| {
        assert_eq!(request.token, expected_token);
        let certificate_pem =
            signer.sign_csr(&request.csr_pem, PeerRole::Connector, CONNECTOR_ID, Duration::from_secs(3_600));
        let response = EnrollResponse {
            identity: format!("spiffe://{TRUST_DOMAIN}/connector/{CONNECTOR_ID}"),
            certificate_pem,
            ca_pem: signer.pem.clone(),
            not_after_unix: 0,
            quic_addr: "127.0.0.1:4433".into(),
            replicas: Vec::new(),
        };
        (200, serde_json::to_string(&response).expect("JSON"))
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let enrolled = enroll(&format!("https://{addr}"), &token.expose(), &state, false).await.expect("enrolled");
    assert!(enrolled.identity.ends_with(CONNECTOR_ID));
    let loaded = Store::new(state.clone()).load().expect("load");
    assert_eq!(loaded.record.quic_addr, "127.0.0.1:4433");
    assert_eq!(loaded.record.broker_url, format!("https://{addr}"));
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state.join(p)).expect(p).permissions()) & 0o777
    };
    assert_eq!((mode("."), mode("key.pem"), mode("cert.pem")), (0o700, 0o600, 0o600));
}

#[tokio::test]
async fn an_api_error_is_shown_with_its_message() {
    let ca = TestCa::new();
    let token = EnrollmentToken::generate(&ca.der);
    let addr = enroll_api(&ca, |_| {
        let body = r#"{"error":"token_used","message":"this enrollment token was already used; ask for a new one"}"#;
        (403, body.to_owned())
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let err = enroll(&format!("https://{addr}"), &token.expose(), dir.path(), false).await.expect_err("refused");
    assert!(err.to_string().contains("already used; ask for a new one"), "{err}");
    assert!(!dir.path().join("identity.json").exists());
}

#[tokio::test]
async fn a_broker_whose_chain_lacks_the_pinned_ca_is_not_contacted() {
    let ca = TestCa::new();
    let token = EnrollmentToken::generate(&TestCa::new().der);
    let addr = enroll_api(&ca, |_| (500, String::new())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let err = enroll(&format!("https://{addr}"), &token.expose(), dir.path(), false).await.expect_err("refused");
    assert!(matches!(err, EnrollError::Http { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
