//! `palisade doctor` against the in-test broker (real QUIC + mTLS with the
//! real certificate verifier) and an in-test HTTPS `/healthz`: a healthy
//! setup, UDP blocked while HTTPS works, a broker that is down, an expired
//! certificate and a skewed clock.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_client::doctor::{DoctorOptions, Outcome, Report};
use palisade_client::store::{self, NewEnrollment, ProfileFile};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Action, ClientCert, FakeBroker, Pki};

fn options() -> DoctorOptions {
    DoctorOptions { udp_timeout: Duration::from_secs(2), https_timeout: Duration::from_secs(5) }
}

fn enroll_home(home: &Path, cert: &ClientCert, pki: &Pki, broker_url: &str, quic_addr: SocketAddr) {
    let new = NewEnrollment {
        profile: ProfileFile {
            identity: cert.identity.clone(),
            broker_url: broker_url.to_owned(),
            quic_addr: quic_addr.to_string(),
            ..ProfileFile::default()
        },
        key_pem: cert.key_pem.clone(),
        cert_pem: cert.cert_pem.clone(),
        ca_pem: pki.ca_pem(),
    };
    store::save(home, &new, true).unwrap();
}

/// An IMF-fixdate, as HTTP servers write the Date header.
fn http_date(t: OffsetDateTime) -> String {
    let weekday = t.weekday().to_string();
    let month = t.month().to_string();
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        &weekday[..3],
        t.day(),
        &month[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The broker's `GET /healthz` over HTTPS with its server certificate, with a
/// Date header `clock_offset` away from now.
async fn spawn_healthz(pki: &Pki, clock_offset: time::Duration) -> String {
    let tls = palisade_proto::tls::https_server_config(&pki.server_identity()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                assert!(head.starts_with(b"GET /healthz "), "{}", String::from_utf8_lossy(&head));
                let date = http_date(OffsetDateTime::now_utc() + clock_offset);
                let response =
                    format!("HTTP/1.1 200 OK\r\ndate: {date}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

/// A UDP port where something is bound but never answers: the QUIC
/// handshake's packets vanish as they do behind a firewall that drops UDP.
fn silent_udp() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn check<'a>(report: &'a Report, name: &str) -> &'a palisade_client::doctor::Check {
    report.get(name).unwrap_or_else(|| panic!("no {name} check in:\n{}", report.text()))
}

#[tokio::test]
async fn a_healthy_setup_reports_every_check_ok() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let url = spawn_healthz(&pki, time::Duration::ZERO).await;
    let home = tempfile::tempdir().unwrap();
    let cert = pki.valid_machine_cert();
    enroll_home(home.path(), &cert, &pki, &url, broker.addr);

    let report = palisade_client::doctor(home.path(), &options()).await;

    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, ["enrollment", "certificate", "trust bundle", "https", "clock", "udp", "identity", "services"]);
    for c in &report.checks {
        assert_eq!(c.outcome, Outcome::Ok, "{}:\n{}", c.name, report.text());
        assert!(c.fix.is_none());
    }
    assert!(!report.failed());
    assert!(check(&report, "identity").detail.contains(&cert.identity));
    assert!(check(&report, "services").detail.contains("echo-svc"));
    broker.shutdown().await;
}

#[tokio::test]
async fn udp_blocked_while_https_works_is_reported_as_blocked_udp_with_the_port() {
    let pki = Pki::new();
    let url = spawn_healthz(&pki, time::Duration::ZERO).await;
    let (_silent, udp) = silent_udp();
    let home = tempfile::tempdir().unwrap();
    enroll_home(home.path(), &pki.valid_machine_cert(), &pki, &url, udp);

    let report = palisade_client::doctor(home.path(), &options()).await;

    assert!(report.failed());
    assert_eq!(check(&report, "https").outcome, Outcome::Ok, "{}", report.text());
    let udp_check = check(&report, "udp");
    assert_eq!(udp_check.outcome, Outcome::Fail);
    assert!(udp_check.detail.contains("UDP is blocked"), "{}", udp_check.detail);
    assert!(udp_check.fix.as_deref().unwrap().contains(&format!("UDP to port {}", udp.port())), "{:?}", udp_check.fix);
    assert_eq!(check(&report, "identity").outcome, Outcome::Skip);
    assert!(report.get("services").is_none(), "no services claim without a connection");
}

#[tokio::test]
async fn a_broker_that_is_down_is_not_mistaken_for_blocked_udp() {
    let pki = Pki::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_silent, udp) = silent_udp();
    let home = tempfile::tempdir().unwrap();
    enroll_home(home.path(), &pki.valid_machine_cert(), &pki, &format!("https://{closed}"), udp);

    let report = palisade_client::doctor(home.path(), &options()).await;

    assert_eq!(check(&report, "https").outcome, Outcome::Fail, "{}", report.text());
    let udp_check = check(&report, "udp");
    assert_eq!(udp_check.outcome, Outcome::Fail);
    assert!(udp_check.detail.contains("down or unreachable"), "{}", udp_check.detail);
    assert!(!udp_check.detail.contains("UDP is blocked"));
}

#[tokio::test]
async fn an_expired_certificate_is_reported_with_what_to_do() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let url = spawn_healthz(&pki, time::Duration::ZERO).await;
    let home = tempfile::tempdir().unwrap();
    let expired = pki.machine_cert(OffsetDateTime::now_utc() - time::Duration::hours(1));
    enroll_home(home.path(), &expired, &pki, &url, broker.addr);

    let report = palisade_client::doctor(home.path(), &options()).await;

    assert!(report.failed());
    let cert = check(&report, "certificate");
    assert_eq!(cert.outcome, Outcome::Fail, "{}", report.text());
    assert!(cert.detail.starts_with("expired at "), "{}", cert.detail);
    assert!(cert.fix.as_deref().unwrap().contains("enroll"), "a machine re-enrolls: {:?}", cert.fix);
    // The client does not present an expired certificate: no connection, nothing listed as reachable.
    assert_eq!(check(&report, "udp").outcome, Outcome::Skip, "{}", report.text());
    let identity = check(&report, "identity");
    assert_eq!(identity.outcome, Outcome::Fail);
    assert!(identity.detail.contains("expired"), "{}", identity.detail);
    assert!(report.get("services").is_none());
    assert_eq!(check(&report, "trust bundle").outcome, Outcome::Ok);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_clock_an_hour_off_the_brokers_fails_with_the_ntp_fix() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let url = spawn_healthz(&pki, time::Duration::hours(-1)).await;
    let home = tempfile::tempdir().unwrap();
    enroll_home(home.path(), &pki.valid_machine_cert(), &pki, &url, broker.addr);

    let report = palisade_client::doctor(home.path(), &options()).await;

    let clock = check(&report, "clock");
    assert_eq!(clock.outcome, Outcome::Fail, "{}", report.text());
    assert!(clock.detail.contains("ahead of the broker"), "{}", clock.detail);
    assert!(clock.fix.as_deref().unwrap().contains("NTP"));
    broker.shutdown().await;
}

#[tokio::test]
async fn nothing_enrolled_says_how_to_start() {
    let home = tempfile::tempdir().unwrap();
    let report = palisade_client::doctor(home.path(), &options()).await;
    assert_eq!(report.checks.len(), 1);
    let enrollment = check(&report, "enrollment");
    assert_eq!(enrollment.outcome, Outcome::Fail);
    assert!(enrollment.fix.as_deref().unwrap().contains("palisade login"));
}
