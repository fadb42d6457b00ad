//! `palisade login` (browser and device code), `status` and `logout` against
//! an in-test sign-in broker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use palisade_client::login::{PIN_COMMAND, Pacing};
use palisade_client::store::{self, CA_FILE, CERT_FILE, KEY_FILE, PROFILE_FILE};
use palisade_client::{
    CaSource, LoggedIn, LoginError, LoginOptions, LogoutError, Profile, RemoteLogout, StoreError, login_browser,
    login_device,
};
use palisade_proto::enroll::sha256;
use palisade_proto::identity::IdentityAttributes;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fake_login::{FakeLogin, Issue, Step};
use crate::support::{Action, FakeBroker, Pki, within, write_home};

fn options(home: &Path, fake: &FakeLogin) -> LoginOptions {
    let mut opts = LoginOptions::new(home);
    opts.broker = Some(fake.url().to_owned());
    opts.ca = Some(CaSource::Pin(fake.pin()));
    opts.callback_timeout = Duration::from_secs(20);
    opts
}

/// Starts a browser login; returns the URL it wants opened and the login itself.
async fn start(opts: LoginOptions) -> (String, JoinHandle<Result<LoggedIn, LoginError>>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(login_browser(opts, move |url| {
        let _ = tx.send(url.to_owned());
    }));
    (within(rx).await.expect("the login never offered a URL"), task)
}

/// Plays the browser: HTTPS to the broker (trusted like the person's browser would),
/// plain HTTP to the loopback.
fn browser(fake: &FakeLogin) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(palisade_proto::tls::pinned_client_config(fake.pin()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens the sign-in URL and returns where the broker redirects: the loopback callback.
async fn sign_in(fake: &FakeLogin, url: &str) -> String {
    let response = within(browser(fake).get(url).send()).await.unwrap();
    assert_eq!(response.status(), 302);
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn visit(fake: &FakeLogin, url: &str) -> Result<(u16, String), reqwest::Error> {
    let response = within(browser(fake).get(url).send()).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

async fn complete(fake: &FakeLogin, opts: LoginOptions) -> Result<LoggedIn, LoginError> {
    let (url, task) = start(opts).await;
    let callback = sign_in(fake, &url).await;
    assert_eq!(visit(fake, &callback).await.unwrap().0, 200);
    within(task).await.unwrap()
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

fn public_key_of_cert(pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    let der = palisade_proto::pem::certs(pem).unwrap().remove(0);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

fn read(home: &Path, name: &str) -> String {
    std::fs::read_to_string(home.join(name)).unwrap()
}

fn nothing_saved(home: &Path) {
    for name in [PROFILE_FILE, CERT_FILE, KEY_FILE, CA_FILE] {
        assert!(!home.join(name).exists(), "{name} was written");
    }
}

#[tokio::test]
async fn browser_login_checks_the_state_sends_the_verifier_and_stores_a_person_certificate() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let (url, task) = start(options(home.path(), &fake)).await;

    assert!(url.starts_with(&format!("{}/login/cli?", fake.url())), "{url}");
    let params = query(&url);
    assert_eq!(params.len(), 3, "{url}");
    let port: u16 = params["port"].parse().unwrap();
    let callback = sign_in(&fake, &url).await;
    assert!(callback.starts_with(&format!("http://127.0.0.1:{port}/callback?")), "{callback}");

    // Another page hitting the port first: refused, and the real callback still works.
    let forged = format!("http://127.0.0.1:{port}/callback?code=stolen&state=not-the-state");
    assert_eq!(visit(&fake, &forged).await.unwrap().0, 400);
    let (status, page) = visit(&fake, &callback).await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("signed in — you can close this tab"), "{page}");
    let done = within(task).await.unwrap().unwrap();

    let exchanges = fake.exchanges();
    assert_eq!(exchanges.len(), 1, "the forged code was exchanged");
    assert_eq!(exchanges[0].code, query(&callback)["code"]);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(exchanges[0].verifier.as_bytes()));
    assert_eq!(challenge, params["challenge"], "the verifier does not match the challenge");
    assert_ne!(exchanges[0].verifier, params["state"]);

    assert_eq!(done.identity, fake.person());
    assert_eq!(done.name, "Alice");
    assert_eq!(done.groups, ["ml-team"]);
    assert_eq!(done.quic_addr, "127.0.0.1:4433");
    let key = rcgen::KeyPair::from_pem(&read(home.path(), KEY_FILE)).unwrap();
    assert_eq!(public_key_of_cert(&read(home.path(), CERT_FILE)), key.public_key_raw());
    let profile = Profile::load(home.path()).unwrap();
    assert_eq!(profile.identity(), fake.person());
    assert_eq!(profile.session_id(), Some(&done.session_id));
    assert_eq!(profile.session_expires(), Some(done.session_expires));
    assert_eq!(profile.broker_url(), fake.url());
    #[cfg(unix)]
    for name in [KEY_FILE, CERT_FILE] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(home.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }

    // Signing in again needs no flags: the stored broker and CA; the key is reused.
    let key_before = read(home.path(), KEY_FILE);
    let mut again = LoginOptions::new(home.path());
    again.callback_timeout = Duration::from_secs(20);
    let second = complete(&fake, again).await.unwrap();
    assert_ne!(second.session_id, done.session_id);
    assert_eq!(read(home.path(), KEY_FILE), key_before);
    assert_eq!(Profile::load(home.path()).unwrap().session_id(), Some(&second.session_id));
}

#[tokio::test]
async fn a_callback_is_accepted_once_and_then_the_port_is_closed() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let (url, task) = start(options(home.path(), &fake)).await;
    let callback = sign_in(&fake, &url).await;
    assert_eq!(visit(&fake, &callback).await.unwrap().0, 200);
    let replay = visit(&fake, &callback).await;
    assert!(!matches!(replay, Ok((200, _))), "a replayed callback was accepted: {replay:?}");
    within(task).await.unwrap().unwrap();
    assert_eq!(fake.exchanges().len(), 1);
    let port = query(&url)["port"].clone();
    assert!(tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.is_err(), "the listener is still open");
}

#[tokio::test]
async fn login_gives_up_when_no_callback_arrives() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let mut opts = options(home.path(), &fake);
    opts.callback_timeout = Duration::from_millis(300);
    let err = within(login_browser(opts, |_| {})).await.unwrap_err();
    assert!(matches!(err, LoginError::CallbackTimeout(_)), "{err:?}");
    assert!(err.to_string().contains("run `palisade login` again"), "{err}");
    nothing_saved(home.path());
}

#[tokio::test]
async fn a_server_that_does_not_match_the_pin_is_refused_before_the_browser_opens() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let mut opts = options(home.path(), &fake);
    opts.ca = Some(CaSource::Pin(sha256(&Pki::new().ca_der())));
    let offered = AtomicBool::new(false);
    let err = within(login_browser(opts, |_| offered.store(true, Ordering::SeqCst))).await.unwrap_err();
    assert!(matches!(err, LoginError::Untrusted { .. }), "{err:?}");
    assert!(!offered.load(Ordering::SeqCst), "the person was sent to an untrusted server");
    nothing_saved(home.path());
}

#[tokio::test]
async fn answers_that_do_not_check_out_are_refused_and_nothing_is_saved() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    for (issue, expected) in [
        (Issue::WrongKey, "not for the key made here"),
        (Issue::MachineRole, "a machine certificate cannot be used as a user"),
        (Issue::OtherCa, "does not contain the CA this login trusts"),
        (Issue::WrongSession, "the certificate is for session"),
    ] {
        fake.set_issue(issue);
        let home = tempfile::tempdir().unwrap();
        let err = complete(&fake, options(home.path(), &fake)).await.unwrap_err();
        assert!(matches!(&err, LoginError::BadAnswer(m) if m.contains(expected)), "{issue:?}: {err:?}");
        nothing_saved(home.path());
    }
}

#[tokio::test]
async fn without_a_ca_the_message_says_how_to_get_the_pin() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let mut opts = options(home.path(), &fake);
    opts.ca = None;
    let err = login_browser(opts, |_| panic!("no URL without trust")).await.unwrap_err();
    assert!(matches!(err, LoginError::NoTrust { .. }), "{err:?}");
    assert!(err.to_string().contains(PIN_COMMAND), "{err}");
    assert!(err.to_string().contains("--ca-pin"), "{err}");
}

#[tokio::test]
async fn a_machine_enrollment_is_not_replaced_without_force() {
    let pki = Arc::new(Pki::new());
    let fake = FakeLogin::spawn(pki.clone(), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let machine = pki.valid_machine_cert();
    write_home(home.path(), &machine, &pki.ca_pem(), "127.0.0.1:4433".parse().unwrap());
    let err = login_browser(options(home.path(), &fake), |_| panic!("no URL")).await.unwrap_err();
    assert!(matches!(err, LoginError::OtherProfile { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");

    let mut forced = options(home.path(), &fake);
    forced.force = true;
    let done = complete(&fake, forced).await.unwrap();
    assert_eq!(Profile::load(home.path()).unwrap().identity(), done.identity);
    assert_ne!(read(home.path(), KEY_FILE), machine.key_pem, "--force makes a new key");
}

#[tokio::test]
async fn mfa_refresh_keeps_the_session_and_refuses_another() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    let home = tempfile::tempdir().unwrap();
    let mut mfa = LoginOptions::new(home.path());
    mfa.mfa_only = true;
    mfa.callback_timeout = Duration::from_secs(20);
    let mut elsewhere = mfa.clone();
    elsewhere.broker = Some(fake.url().to_owned());
    let err = login_browser(elsewhere.clone(), |_| panic!("no URL")).await.unwrap_err();
    assert!(matches!(err, LoginError::NotSignedIn { .. }), "{err:?}");

    let first = complete(&fake, options(home.path(), &fake)).await.unwrap();
    let (url, task) = start(mfa.clone()).await;
    let params = query(&url);
    assert_eq!(params["mfa_only"], "1");
    assert_eq!(params["session"], first.session_id.to_string());
    let callback = sign_in(&fake, &url).await;
    assert_eq!(visit(&fake, &callback).await.unwrap().0, 200);
    let refreshed = within(task).await.unwrap().unwrap();
    assert_eq!(refreshed.session_id, first.session_id);
    assert_eq!(refreshed.identity, first.identity);
    assert!(refreshed.mfa_at.is_some());

    fake.set_issue(Issue::NewSession);
    let cert_before = read(home.path(), CERT_FILE);
    let err = complete(&fake, mfa).await.unwrap_err();
    assert!(matches!(&err, LoginError::BadAnswer(m) if m.contains("instead of")), "{err:?}");
    assert_eq!(read(home.path(), CERT_FILE), cert_before, "a refused refresh replaced the certificate");
}

fn quick() -> Pacing {
    Pacing { min_interval: Duration::from_millis(20), slow_down: Duration::from_millis(400) }
}

#[tokio::test]
async fn device_login_waits_through_pending_and_slow_down() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    fake.script(&[Step::Pending, Step::SlowDown, Step::Pending, Step::Approve]);
    let home = tempfile::tempdir().unwrap();
    let mut opts = options(home.path(), &fake);
    opts.pacing = quick();
    let mut shown = None;
    let done = within(login_device(opts, |code| shown = Some(code.clone()))).await.unwrap();

    let shown = shown.unwrap();
    assert_eq!(shown.user_code, "WDJB-MJHT");
    assert_eq!(shown.verification_uri, format!("{}/device", fake.url()));
    assert_eq!(
        shown.verification_uri_complete.as_deref(),
        Some(&*format!("{}/device?user_code=WDJB-MJHT", fake.url()))
    );
    let polls = fake.polls();
    assert_eq!(polls.len(), 4);
    for after_slow_down in [2, 3] {
        let gap = polls[after_slow_down] - polls[after_slow_down - 1];
        assert!(gap >= Duration::from_millis(400), "poll {after_slow_down} came {gap:?} after the previous one");
    }
    assert_eq!(Profile::load(home.path()).unwrap().session_id(), Some(&done.session_id));
}

#[tokio::test]
async fn device_login_stops_on_expired_and_denied_codes() {
    let fake = FakeLogin::spawn(Arc::new(Pki::new()), "127.0.0.1:4433".into()).await;
    for (steps, expected) in [
        (&[Step::Pending, Step::Expired][..], "the code expired before it was approved"),
        (&[Step::Denied][..], "the sign-in was denied"),
    ] {
        fake.script(steps);
        let home = tempfile::tempdir().unwrap();
        let mut opts = options(home.path(), &fake);
        opts.pacing = quick();
        let err = within(login_device(opts, |_| {})).await.unwrap_err();
        assert!(err.to_string().starts_with(expected), "{err}");
        assert!(err.to_string().contains("palisade login --device"), "{err}");
        nothing_saved(home.path());
    }
}

/// Writes a person's sign-in (session and MFA in the certificate) into `home`.
pub fn write_person(home: &Path, pki: &Pki, quic_addr: &str, not_after: OffsetDateTime) -> String {
    let session = uuid::Uuid::new_v4().to_string();
    let mfa_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 600;
    let attrs = IdentityAttributes {
        v: 1,
        name: "Alice".into(),
        groups: vec!["ml-team".into(), "oncall".into()],
        session: Some(session.clone()),
        mfa_at: Some(mfa_at),
        auth_methods: vec!["oidc".into(), "webauthn".into()],
    };
    let cert = pki.user_cert(&attrs, not_after);
    let new = store::NewEnrollment {
        profile: store::ProfileFile {
            identity: cert.identity.clone(),
            broker_url: "https://127.0.0.1:1".into(),
            quic_addr: quic_addr.to_owned(),
            replicas: Vec::new(),
            session_id: Some(session.parse().unwrap()),
            session_expires_unix: Some(mfa_at + 12 * 3600),
        },
        key_pem: cert.key_pem,
        cert_pem: cert.cert_pem,
        ca_pem: pki.ca_pem(),
    };
    store::save(home, &new, true).unwrap();
    session
}

fn in_hours(h: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::hours(h)
}

#[tokio::test]
async fn logout_revokes_the_session_then_deletes_the_certificate_and_keeps_the_key() {
    let pki = Pki::new();
    let broker = FakeBroker::spawn(&pki, |_| Action::Echo).await;
    let home = tempfile::tempdir().unwrap();
    let session = write_person(home.path(), &pki, &broker.addr.to_string(), in_hours(8));
    let key = read(home.path(), KEY_FILE);

    let out = within(palisade_client::logout(home.path())).await.unwrap();
    assert_eq!(out.remote, RemoteLogout::Revoked);
    assert!(out.deleted_certificate);
    assert_eq!(*broker.logouts.lock().unwrap(), [Some(session)]);
    assert!(!home.path().join(CERT_FILE).exists());
    assert_eq!(read(home.path(), KEY_FILE), key);
    let profile = store::read_profile(home.path()).unwrap().unwrap();
    assert_eq!((profile.session_id, profile.session_expires_unix), (None, None));
    assert!(!read(home.path(), PROFILE_FILE).contains("session"));
    let err = Profile::load(home.path()).unwrap_err();
    assert!(matches!(err, StoreError::LoggedOut { .. }), "{err:?}");
    assert!(err.to_string().contains("run `palisade login`"), "{err}");
    let status = palisade_client::status(home.path(), SystemTime::now()).unwrap();
    assert!(status.certificate.is_none() && !status.is_usable());

    let again = palisade_client::logout(home.path()).await.unwrap();
    assert_eq!(again.remote, RemoteLogout::NothingToRevoke);
    assert_eq!(broker.logouts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn logout_deletes_the_certificate_even_when_the_broker_is_unreachable() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    write_person(home.path(), &pki, "127.0.0.1:9", in_hours(8));
    let out = within(palisade_client::logout::logout_within(home.path(), Duration::from_millis(500))).await.unwrap();
    assert!(matches!(&out.remote, RemoteLogout::NotRevoked { .. }), "{:?}", out.remote);
    assert!(out.deleted_certificate);
    assert!(!home.path().join(CERT_FILE).exists());
    assert!(home.path().join(KEY_FILE).exists() && home.path().join(CA_FILE).exists());
}

#[tokio::test]
async fn logout_leaves_a_machine_enrollment_alone() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    write_home(home.path(), &pki.valid_machine_cert(), &pki.ca_pem(), "127.0.0.1:9".parse().unwrap());
    let err = palisade_client::logout(home.path()).await.unwrap_err();
    assert!(matches!(err, LogoutError::NotASignIn { .. }), "{err:?}");
    assert!(home.path().join(CERT_FILE).exists());
}

#[test]
fn status_reads_the_local_certificate_and_says_when_it_expired() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    let session =
        write_person(home.path(), &pki, "127.0.0.1:9", OffsetDateTime::now_utc() - time::Duration::minutes(5));
    let now = SystemTime::now();

    let status = palisade_client::status(home.path(), now).unwrap();
    let cert = status.certificate.clone().unwrap();
    assert!(cert.expired && !status.is_usable() && status.is_person());
    assert_eq!(cert.problem, None, "expiry is not a validation problem");
    assert_eq!(cert.session.as_deref(), Some(&*session));
    assert_eq!(cert.groups, ["ml-team", "oncall"]);
    let age = cert.mfa_age.unwrap();
    assert!(age >= Duration::from_secs(600) && age < Duration::from_secs(660), "{age:?}");
    let text = palisade_client::services::status_text(&status, now);
    for expected in ["identity:    spiffe://td/user/", "session:     ", "mfa:         ", "10m ago", "EXPIRED", "Alice"]
    {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }

    // `now` is an argument: ten minutes earlier the same certificate was fine.
    let earlier = palisade_client::status(home.path(), now - Duration::from_secs(600)).unwrap();
    assert!(earlier.is_usable(), "{earlier:?}");
    let json = palisade_client::services::status_json(&status, now);
    assert_eq!(json["certificate"]["expired"], true);
    assert_eq!(json["certificate"]["session"], session);
}

#[test]
fn status_flags_a_certificate_from_another_ca() {
    let pki = Pki::new();
    let home = tempfile::tempdir().unwrap();
    write_person(home.path(), &pki, "127.0.0.1:9", in_hours(8));
    std::fs::write(home.path().join(CA_FILE), Pki::new().ca_pem()).unwrap();
    let status = palisade_client::status(home.path(), SystemTime::now()).unwrap();
    assert!(status.certificate.as_ref().unwrap().problem.is_some(), "{status:?}");
    assert!(!status.is_usable());
}
