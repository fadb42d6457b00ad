//! People: a sign-in at a real OpenID provider (`oidc-provider` on node), a
//! passkey as the second factor, `palisade login`'s loopback exchange, then
//! tunnels the person's groups allow; `palisade status` and `palisade logout`.

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_TEAM_WITH_MFA, Broker, EchoUpstream, OidcProvider, TestEnv, assert_eventually};

/// A broker whose people sign in at the shared provider; ml-team may reach `echo`.
pub(crate) async fn broker_for_people(env: &TestEnv) -> Broker {
    let provider = OidcProvider::shared().await;
    env.broker()
        .oidc(&provider)
        .service("echo", "inference")
        .policy("ml-team.cedar", ALLOW_ML_TEAM_WITH_MFA)
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_the_provider_and_a_passkey_and_reaches_what_their_group_may() {
    let env = TestEnv::new();
    let broker = broker_for_people(&env).await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;

    let alice = broker.person("alice").login().await;
    let attributes = alice.certificate().attributes.expect("a person's certificate carries identity attributes");
    assert_eq!(attributes.session.as_deref(), Some(alice.session_id()));
    assert_eq!(attributes.groups, ["ml-team"]);
    assert_eq!(attributes.auth_methods, ["oidc", "webauthn"]);
    let forward = alice.connect("echo").await;
    forward.assert_echoes(b"hello from alice, ml-team, fresh passkey").await;

    let status = alice.cli(&["status"]).await.expect_success();
    assert!(status.contains(&format!("session:     {}", alice.session_id())), "`palisade status`:\n{status}");
    assert!(status.contains("groups:      ml-team"), "`palisade status`:\n{status}");
    assert!(status.contains(&broker.public_url()), "`palisade status` names the broker:\n{status}");
    assert_eq!(broker.active_sessions("alice").await, [alice.session_id()]);

    // Bob signs in just as well, but no policy lets a person without a group in.
    let bob = broker.person("bob").login().await;
    let err = bob.tunnel_exchange("echo", b"let me in").await.expect_err("bob is in no group");
    assert_eq!(err.reject_code(), Some(RejectCode::Forbidden), "{err}");
    assert!(err.to_string().contains("denied by policy"), "{err}");
    let refused = bob.connect("echo").await;
    assert!(refused.exchange(b"let me in").await.unwrap_or_default().is_empty(), "a denied stream carried data");
    assert_eventually!(
        refused.process().stderr().contains("denied by policy"),
        "`palisade connect` should say \"denied by policy\"; stderr:\n{}",
        refused.process().stderr()
    );

    assert_eq!(upstream.accepted(), 1, "only alice's connection reaches the workload");
    let audit = broker.audit_events().await;
    let allowed =
        audit.last_of_kind("stream.allowed").unwrap_or_else(|| panic!("no stream.allowed:\n{}", audit.summary()));
    assert_eq!(allowed.actor.as_deref(), Some(alice.spiffe_id().as_str()), "{:?}", allowed);
    assert!(audit.of_kind("session.created").len() >= 2, "a session per sign-in:\n{}", audit.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_on_the_broker_and_a_kept_certificate_is_refused() {
    let env = TestEnv::new();
    let broker = broker_for_people(&env).await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let alice = broker.person("alice").login().await;
    let forward = alice.connect("echo").await;
    forward.assert_echoes(b"before logout").await;
    let backup = alice.copy_of_home("alice-backup");

    let out = alice.cli(&["logout"]).await;
    let stdout = out.expect_success();
    assert!(stdout.contains(&format!("Revoked {} on the broker.", alice.session_id())), "{out}");
    assert!(broker.active_sessions("alice").await.is_empty(), "the session is over on the broker");
    let status = alice.cli(&["status"]).await;
    assert!(!status.success() && status.all_output().contains("logged out"), "{status}");

    // The certificate kept elsewhere names the revoked session.
    let err = backup.tunnel_exchange("echo", b"still me?").await.expect_err("the session was revoked");
    assert_eq!(err.reject_code(), Some(RejectCode::Revoked), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    // And the `palisade connect` started before the logout holds it in memory.
    assert!(forward.exchange(b"after logout").await.unwrap_or_default().is_empty(), "a revoked session carried data");
    assert_eventually!(
        forward.process().stderr().contains("revoked"),
        "`palisade connect` should say the session was revoked; stderr:\n{}",
        forward.process().stderr()
    );
    assert_eq!(upstream.accepted(), 1, "nothing after the logout reaches the workload");
    assert!(broker.audit_events().await.has_kind("session.revoked"));
}
