//! A small PKI shaped like the broker's, an in-test QUIC "broker" and an
//! in-test HTTPS enrollment endpoint.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_client::store::{self, NewEnrollment, ProfileFile};
use palisade_proto::enroll::{EnrollRequest, EnrollResponse, EnrollmentToken};
use palisade_proto::identity::{ATTRIBUTES_OID, IdentityAttributes, PeerRole, TrustAnchors, verify_peer};
use palisade_proto::reject::RejectCode;
use palisade_proto::tls::TlsIdentity;
use palisade_proto::wire::{self, LogoutDone, Query, ServiceInfo, ServiceListing, StreamHeader, WhoAmI};
use quinn::VarInt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const TRUST_DOMAIN: &str = "td";

/// A CA and the certificates it issues.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

pub struct ClientCert {
    pub identity: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "Palisade test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self { ca: CertifiedIssuer::self_signed(params, key).unwrap() }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn trust(&self) -> TrustAnchors {
        TrustAnchors::new(TRUST_DOMAIN.parse().unwrap(), vec![self.ca_der()]).unwrap()
    }

    /// Client certificate params as the broker writes them.
    fn client_params(&self, identity: &str, name: &str, not_after: OffsetDateTime) -> CertificateParams {
        let attrs = IdentityAttributes {
            v: 1,
            name: name.into(),
            groups: vec!["ml-team".into()],
            session: None,
            mfa_at: None,
            auth_methods: Vec::new(),
        };
        Self::params_with(identity, &attrs, not_after)
    }

    fn params_with(identity: &str, attrs: &IdentityAttributes, not_after: OffsetDateTime) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.custom_extensions = vec![CustomExtension::from_oid_content(ATTRIBUTES_OID, attrs.to_der())];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = not_after;
        params
    }

    pub fn machine_cert(&self, not_after: OffsetDateTime) -> ClientCert {
        let identity = format!("spiffe://{TRUST_DOMAIN}/machine/{}", uuid::Uuid::new_v4());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = self.client_params(&identity, "ci-runner", not_after).signed_by(&key, &self.ca).unwrap();
        ClientCert { identity, cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    pub fn valid_machine_cert(&self) -> ClientCert {
        self.machine_cert(OffsetDateTime::now_utc() + time::Duration::hours(8))
    }

    /// Signs a CSR the way the broker does: its own params, the CSR's key only.
    pub fn sign_csr(&self, csr_pem: &str, identity: &str) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let params = self.client_params(identity, "ci-runner", OffsetDateTime::now_utc() + time::Duration::hours(8));
        params.signed_by(&csr.public_key, &self.ca).unwrap().pem()
    }

    /// Signs a CSR's key for `identity` with these attributes, as the broker's sign-in does.
    pub fn sign_csr_with(
        &self,
        csr_pem: &str,
        identity: &str,
        attrs: &IdentityAttributes,
        not_after: OffsetDateTime,
    ) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        Self::params_with(identity, attrs, not_after).signed_by(&csr.public_key, &self.ca).unwrap().pem()
    }

    /// A person's certificate (with a session) and its key.
    pub fn user_cert(&self, attrs: &IdentityAttributes, not_after: OffsetDateTime) -> ClientCert {
        let identity = format!("spiffe://{TRUST_DOMAIN}/user/{}", uuid::Uuid::new_v4());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = Self::params_with(&identity, attrs, not_after).signed_by(&key, &self.ca).unwrap();
        ClientCert { identity, cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// The broker's server certificate for 127.0.0.1, chain [leaf, CA].
    pub fn server_identity(&self) -> TlsIdentity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        TlsIdentity {
            chain: vec![cert.der().clone(), self.ca_der()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// Writes an enrollment for `cert` (trusting `ca_pem`) into `home`.
pub fn write_home(home: &Path, cert: &ClientCert, ca_pem: &str, quic_addr: SocketAddr) {
    let new = NewEnrollment {
        profile: ProfileFile {
            identity: cert.identity.clone(),
            broker_url: "https://127.0.0.1:1".into(),
            quic_addr: quic_addr.to_string(),
            ..ProfileFile::default()
        },
        key_pem: cert.key_pem.clone(),
        cert_pem: cert.cert_pem.clone(),
        ca_pem: ca_pem.to_owned(),
    };
    store::save(home, &new, true).unwrap();
}

/// What the fake broker does with a stream for a service.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Echo,
    /// Sends "hello", finishes its side at once, then collects what the client sends.
    GreetThenCollect,
    Reject(RejectCode),
    CloseConnection(u32),
}

type Behavior = Arc<dyn Fn(&str) -> Action + Send + Sync>;

/// An in-test QUIC server that speaks the client side of the broker's protocol.
pub struct FakeBroker {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    pub connections: Arc<AtomicUsize>,
    pub services_asked: Arc<Mutex<Vec<String>>>,
    pub collected: Arc<Mutex<Vec<u8>>>,
    /// Sessions that asked to log out.
    pub logouts: Arc<Mutex<Vec<Option<String>>>>,
}

impl FakeBroker {
    pub async fn spawn(pki: &Pki, behavior: impl Fn(&str) -> Action + Send + Sync + 'static) -> Self {
        Self::spawn_on(pki, "127.0.0.1:0".parse().unwrap(), Arc::new(behavior)).await
    }

    pub async fn spawn_on(pki: &Pki, addr: SocketAddr, behavior: Behavior) -> Self {
        let tls = palisade_proto::tls::quic_server_config(&pki.server_identity(), &pki.trust()).unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // After a shutdown in this process the old endpoint's tasks may still hold
        // the port for a moment (a real restart is a new process).
        let mut attempts = 0;
        let endpoint = loop {
            match quinn::Endpoint::server(config.clone(), addr) {
                Ok(endpoint) => break endpoint,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind the fake broker on {addr}: {e}"),
            }
        };
        let broker = Self {
            addr: endpoint.local_addr().unwrap(),
            endpoint: endpoint.clone(),
            connections: Arc::default(),
            services_asked: Arc::default(),
            collected: Arc::default(),
            logouts: Arc::default(),
        };
        let (connections, trust) = (broker.connections.clone(), pki.trust());
        let sinks = Sinks {
            asked: broker.services_asked.clone(),
            collected: broker.collected.clone(),
            logouts: broker.logouts.clone(),
        };
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (behavior, sinks, trust) = (behavior.clone(), sinks.clone(), trust.clone());
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    serve_connection(conn, behavior, sinks, trust).await;
                });
            }
        });
        broker
    }

    /// Closes every connection (as a broker stopping does) and frees the port.
    pub async fn shutdown(self) {
        self.endpoint.close(VarInt::from_u32(0x1a), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// What the fake broker records.
#[derive(Clone)]
struct Sinks {
    asked: Arc<Mutex<Vec<String>>>,
    collected: Arc<Mutex<Vec<u8>>>,
    logouts: Arc<Mutex<Vec<Option<String>>>>,
}

async fn serve_connection(conn: quinn::Connection, behavior: Behavior, sinks: Sinks, trust: TrustAnchors) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (conn, behavior, sinks, trust) = (conn.clone(), behavior.clone(), sinks.clone(), trust.clone());
        tokio::spawn(async move {
            let _ = serve_stream(&conn, send, recv, &behavior, &sinks, &trust).await;
        });
    }
}

async fn serve_stream(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    behavior: &Behavior,
    sinks: &Sinks,
    trust: &TrustAnchors,
) -> anyhow::Result<()> {
    let mut prefix = [0u8; wire::PREFIX_LEN];
    recv.read_exact(&mut prefix).await?;
    let (kind, len) = wire::parse_prefix(&prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    match StreamHeader::decode(kind, &body)? {
        StreamHeader::Open(open) => {
            let service = open.service.as_str().to_owned();
            sinks.asked.lock().unwrap().push(service.clone());
            match behavior(&service) {
                Action::Echo => {
                    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                        send.write_all(&chunk.bytes).await?;
                    }
                    send.finish()?;
                    send.stopped().await?;
                }
                Action::GreetThenCollect => {
                    send.write_all(b"hello").await?;
                    send.finish()?;
                    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                        sinks.collected.lock().unwrap().extend_from_slice(&chunk.bytes);
                    }
                }
                Action::Reject(code) => {
                    let code = VarInt::from_u32(code.as_u32());
                    send.reset(code)?;
                    recv.stop(code)?;
                }
                Action::CloseConnection(code) => conn.close(VarInt::from_u32(code), b"refused"),
            }
        }
        StreamHeader::Query(Query::Services) => {
            let listing = ServiceListing {
                services: vec![ServiceInfo {
                    name: "echo-svc".into(),
                    segment: "test".into(),
                    protocol: "tcp".into(),
                    online: true,
                }],
            };
            send.write_all(&wire::encode_frame(&listing)?).await?;
            send.finish()?;
            send.stopped().await?;
        }
        StreamHeader::Query(Query::WhoAmI) => {
            let chain = conn.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
            let peer = verify_peer(&chain, trust, std::time::SystemTime::now(), &[PeerRole::Machine, PeerRole::User])?;
            let who = WhoAmI {
                identity: peer.id().uri(),
                name: peer.name().into(),
                groups: peer.groups().to_vec(),
                not_after_unix: peer.not_after().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
                session: peer.session().map(str::to_owned),
                mfa_at_unix: peer.mfa_at(),
            };
            send.write_all(&wire::encode_frame(&who)?).await?;
            send.finish()?;
            send.stopped().await?;
        }
        StreamHeader::Query(Query::Logout) => {
            // As the broker does: revoke, answer, then cut the caller's connections.
            let chain = conn.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
            let peer = verify_peer(&chain, trust, std::time::SystemTime::now(), &[PeerRole::User])?;
            let session = peer.session().map(str::to_owned);
            sinks.logouts.lock().unwrap().push(session.clone());
            let done = LogoutDone { revoked: session.is_some(), session };
            send.write_all(&wire::encode_frame(&done)?).await?;
            send.finish()?;
            send.stopped().await?;
            conn.close(VarInt::from_u32(palisade_proto::reject::close::REVOKED), b"revoked");
        }
        other => anyhow::bail!("unexpected header {other:?}"),
    }
    Ok(())
}

/// How the fake enrollment endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollMode {
    Honest,
    /// Issues a certificate for a key of its own, not the CSR's.
    WrongKey,
    /// Answers 403 with an API error.
    Refuse,
}

/// An in-test HTTPS server for `POST /api/v1/enroll`.
pub struct FakeEnrollment {
    pub url: String,
    pub token: EnrollmentToken,
    pub requests: Arc<AtomicUsize>,
}

impl FakeEnrollment {
    pub async fn spawn(pki: Arc<Pki>, quic_addr: String, mode: EnrollMode) -> Self {
        let tls = palisade_proto::tls::https_server_config(&pki.server_identity()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let token = EnrollmentToken::generate(&pki.ca_der());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, pki, quic_addr, counter) =
                    (acceptor.clone(), pki.clone(), quic_addr.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Some(body) = read_http_request(&mut tls).await else { return };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, json) = answer_enroll(&pki, &body, &quic_addr, mode);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { url, token, requests }
    }
}

async fn read_http_request(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().ok())??;
        if buf.len() >= end + 4 + len {
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
    }
}

fn answer_enroll(pki: &Pki, body: &[u8], quic_addr: &str, mode: EnrollMode) -> (&'static str, String) {
    if mode == EnrollMode::Refuse {
        return ("403 Forbidden", r#"{"error":"invalid_token","message":"this token was already used"}"#.into());
    }
    let request: EnrollRequest = serde_json::from_slice(body).unwrap();
    let identity = format!("spiffe://{TRUST_DOMAIN}/machine/{}", uuid::Uuid::new_v4());
    let csr_pem = if mode == EnrollMode::WrongKey {
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        CertificateParams::default().serialize_request(&other).unwrap().pem().unwrap()
    } else {
        request.csr_pem
    };
    let answer = EnrollResponse {
        identity: identity.clone(),
        certificate_pem: pki.sign_csr(&csr_pem, &identity),
        ca_pem: pki.ca_pem(),
        not_after_unix: 0,
        quic_addr: quic_addr.to_owned(),
        replicas: Vec::new(),
    };
    ("200 OK", serde_json::to_string(&answer).unwrap())
}

/// Fails the test instead of hanging it.
pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut).await.expect("timed out")
}
