//! The `palisade` binary: its one stdout line, exit codes and error messages.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

use crate::fake_login::FakeLogin;
use crate::support::{Action, FakeBroker, Pki, within, write_home};

fn palisade(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.arg("--home").arg(home).env_remove("PALISADE_LOG").kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.unwrap().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn connect_prints_one_line_then_forwards() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let home = tempfile::tempdir().unwrap();
    write_home(home.path(), &pki.valid_machine_cert(), &pki.ca_pem(), broker.addr);

    let mut child = palisade(home.path())
        .args(["connect", "echo-svc", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix(" -> echo-svc"))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let mut app = tokio::net::TcpStream::connect(addr).await.unwrap();
    app.write_all(b"via the binary").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(app.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"via the binary");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn proxy_prints_its_address() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    write_home(home.path(), &pki.valid_machine_cert(), &pki.ca_pem(), "127.0.0.1:9".parse().unwrap());
    let mut child =
        palisade(home.path()).args(["proxy", "--socks5", "127.0.0.1:0"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: std::net::SocketAddr = line.strip_prefix("proxy listening on ").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback());
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_listen_address_needs_allow_remote() {
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        output(palisade(home.path()).args(["connect", "echo-svc", "--listen", "0.0.0.0:0"])).await;
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("--allow-remote"), "{stderr}");

    let (code, _, stderr) = output(palisade(home.path()).args(["proxy", "--socks5", "0.0.0.0:0"])).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = output(palisade(empty.path()).arg("services")).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("palisade login --broker URL") && stderr.contains("palisade enroll --broker URL --token TOKEN"),
        "{stderr}"
    );

    let pki = Pki::new();
    let expired = tempfile::tempdir().unwrap();
    let cert = pki.machine_cert(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    write_home(expired.path(), &cert, &pki.ca_pem(), "127.0.0.1:9".parse().unwrap());
    let (code, _, stderr) =
        output(palisade(expired.path()).args(["connect", "echo-svc", "--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("certificate expired: run `palisade login` (or enroll again)"), "{stderr}");
}

#[tokio::test]
async fn services_and_whoami_print_what_the_broker_says() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let home = tempfile::tempdir().unwrap();
    let cert = pki.valid_machine_cert();
    write_home(home.path(), &cert, &pki.ca_pem(), broker.addr);

    let (code, stdout, stderr) = output(palisade(home.path()).arg("services")).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("echo-svc") && stdout.contains("online"), "{stdout}");
    assert!(stdout.contains("palisade connect echo-svc --listen 127.0.0.1:PORT"), "{stdout}");

    let (code, stdout, _) = output(palisade(home.path()).args(["services", "--json"])).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["services"][0]["name"], "echo-svc");

    let (code, stdout, stderr) = output(palisade(home.path()).arg("whoami")).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&cert.identity), "{stdout}");
}

/// `palisade login` as a person would run it without a display: one URL line, then
/// (after the browser part) the summary; then `status` and `logout`.
#[tokio::test]
async fn login_status_and_logout_through_the_binary() {
    let pki = std::sync::Arc::new(Pki::new());
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let fake = FakeLogin::spawn(pki.clone(), broker.addr.to_string()).await;
    let home = tempfile::tempdir().unwrap();

    let mut child = palisade(home.path())
        .args(["login", "--broker", fake.url(), "--ca-pin", &fake.pin_hex()])
        .env("CI", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within(stdout.read_line(&mut line)).await.unwrap();
    let url = line.trim_end().strip_prefix("open this URL to sign in: ").unwrap_or_else(|| panic!("{line:?}"));
    assert!(url.starts_with(&format!("{}/login/cli?port=", fake.url())), "{url}");

    let browser = reqwest::Client::builder()
        .use_preconfigured_tls(palisade_proto::tls::pinned_client_config(fake.pin()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = within(browser.get(url).send()).await.unwrap();
    let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(within(browser.get(callback).send()).await.unwrap().status(), 200);
    let status = within(child.wait()).await.unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains(&format!("Signed in as Alice ({}).", fake.person())), "{rest}");

    let (code, out, err) = output(palisade(home.path()).arg("status")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("session:") && out.contains("valid until") && out.contains("ml-team"), "{out}");
    let (code, out, err) = output(palisade(home.path()).args(["status", "--online", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["broker_sees"]["identity"], fake.person());

    let (code, out, err) = output(palisade(home.path()).arg("logout")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Revoked") && out.contains("Deleted the local certificate"), "{out}");
    let (code, out, err) = output(palisade(home.path()).arg("status")).await;
    assert_eq!(code, 1);
    assert!(out.contains("logged out") && err.contains("run `palisade login`"), "{out}{err}");
}

#[tokio::test]
async fn login_without_a_ca_explains_how_to_get_the_pin() {
    let fake = FakeLogin::spawn(std::sync::Arc::new(Pki::new()), "127.0.0.1:9".into()).await;
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = output(palisade(home.path()).args(["login", "--broker", fake.url()])).await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("--ca-pin") && err.contains("openssl x509 -in ca.pem -outform der | sha256sum"), "{err}");
}

#[tokio::test]
async fn status_of_an_expired_sign_in_fails_and_logout_still_forgets_it() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    crate::login::write_person(home.path(), &pki, "127.0.0.1:9", past);
    let (code, out, err) = output(palisade(home.path()).arg("status")).await;
    assert_eq!(code, 1);
    assert!(out.contains("EXPIRED") && err.contains("the certificate has expired: run `palisade login`"), "{out}{err}");

    let (code, _, err) = output(palisade(home.path()).arg("logout")).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("could not revoke") && err.contains("expired"), "{err}");
    assert!(!home.path().join(palisade_client::store::CERT_FILE).exists());
}
