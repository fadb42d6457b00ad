//! Several broker replicas on one PostgreSQL database, two connectors each
//! linked to all of them: any replica reaches the service, a revocation or a policy written
//! through one replica is enforced by the others within 2 s, a replica asked
//! to stop drains (its streams finish, its clients move), a replica's death
//! leaves tunnels through the others alone while its clients fail over
//! within 3 s, and the audit chain they all wrote to stays one verifiable
//! chain.

use std::time::{Duration, Instant};

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, DEFAULT_TIMEOUT, EchoUpstream, Flow, TestEnv, store, wait_for, within};

/// How soon a change written through one replica holds on another.
const ACROSS_REPLICAS: Duration = Duration::from_secs(2);
/// How soon a client's next connection works through another replica once its own died.
const FAIL_OVER_WITHIN: Duration = Duration::from_secs(3);

const FORBID_ML_AGENTS: &str = "@id(\"freeze\")\nforbid (principal in Group::\"ml-agents\", action, resource);\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_revocations_policy_and_one_audit_chain_and_clients_fail_over() {
    if !store::runs_only_on(store::Store::Postgres, "broker replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let mut a = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let b =
        env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).replica_of(&a).spawn().await;
    let mut c =
        env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).replica_of(&a).spawn().await;
    // Two connectors serve the service, each linked to every replica.
    let (upstream, upstream_2) = (EchoUpstream::spawn().await, EchoUpstream::spawn().await);
    let _connector =
        a.connector("rack-1").service("echo", upstream.addr()).also_linked_to(&b).also_linked_to(&c).spawn().await;
    let _connector_2 =
        b.connector("rack-2").service("echo", upstream_2.addr()).also_linked_to(&a).also_linked_to(&c).spawn().await;
    let via_a = a.machine("agent-a").group("ml-agents").enroll().await;
    let via_b = b.machine("agent-b").group("ml-agents").enroll().await;
    wait_for("replica B to reach the service over the connector's second link", DEFAULT_TIMEOUT, || async {
        via_b.tunnel_exchange("echo", b"via b").await.is_ok_and(|r| r == b"via b")
    })
    .await;
    assert_eq!(via_a.tunnel_exchange("echo", b"via a").await.expect("replica A reaches it too"), b"via a");
    // Any replica lists each connector's links to all three.
    wait_for("rack-1 listed as linked to all three replicas", DEFAULT_TIMEOUT, || async {
        let listed = c.cli(&["connector", "list"]).await.expect_success();
        listed.lines().any(|l| {
            l.starts_with("rack-1 ") && [&a, &b, &c].iter().all(|r| l.contains(&format!(":{}", r.quic_addr().port())))
        })
    })
    .await;

    // A policy applied through A is enforced by B, and lifted again.
    a.write_policy("freeze.cedar", FORBID_ML_AGENTS);
    a.reload_policies().await.expect_success();
    let applied = Instant::now();
    wait_for("B to enforce the policy applied through A", ACROSS_REPLICAS, || async {
        via_b.tunnel_exchange("echo", b"frozen?").await.is_err_and(|e| e.reject_code() == Some(RejectCode::Forbidden))
    })
    .await;
    eprintln!("policy applied through A enforced on B after {:?}", applied.elapsed());
    a.remove_policy("freeze.cedar");
    a.reload_policies().await.expect_success();
    wait_for("B to lift it again", ACROSS_REPLICAS, || async {
        via_b.tunnel_exchange("echo", b"thawed").await.is_ok()
    })
    .await;

    // Disabling a machine through A cuts its live tunnel through B.
    let forward = via_b.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;
    let id = via_b.spiffe_id().rsplit('/').next().expect("a SPIFFE id has segments").to_owned();
    let asked = Instant::now();
    a.cli(&["identity", "disable", "--id", &id]).await.expect_success();
    let end = within("B to cut the tunnel of the machine disabled through A", ACROSS_REPLICAS, flow.ended()).await;
    assert!(end.at >= asked, "the tunnel broke before the revocation: {}", end.how);
    eprintln!("revocation through A cut the tunnel through B after {:?}", end.at.saturating_duration_since(asked));
    let refused = via_b.tunnel_exchange("echo", b"again?").await.expect_err("the machine is disabled");
    assert_eq!(refused.reject_code(), Some(RejectCode::Revoked), "{refused}");

    // C is asked to stop (SIGTERM): a stream in progress through C goes on,
    // new connections of C's clients go to another replica meanwhile, and C
    // exits once that stream has ended.
    let via_c = c.machine("agent-c").group("ml-agents").enroll().await;
    let forward_c = via_c.connect("echo").await;
    let flow = Flow::start(forward_c.addr()).await;
    wait_for("the flow through C to carry bytes", DEFAULT_TIMEOUT, || async { flow.echoed() > 0 }).await;
    c.terminate().await;
    let asked = Instant::now();
    let moved = loop {
        if forward_c
            .exchange_within(b"while C drains", Duration::from_millis(500))
            .await
            .is_ok_and(|r| r == b"while C drains")
        {
            break asked.elapsed();
        }
        assert!(asked.elapsed() < Duration::from_secs(10), "no new connection while C drained");
    };
    eprintln!("a new connection went elsewhere {moved:?} after C was asked to stop");
    assert!(moved <= FAIL_OVER_WITHIN, "moving off the draining replica took {moved:?}");
    let elsewhere = Flow::start(forward_c.addr()).await;
    wait_for("a flow opened during the drain to carry bytes", DEFAULT_TIMEOUT, || async { elsewhere.echoed() > 0 })
        .await;
    let before = flow.echoed();
    wait_for("the stream through C to go on while C drains", DEFAULT_TIMEOUT, || async {
        flow.echoed() > before + 4096
    })
    .await;
    assert!(flow.end().is_none(), "the drain cut the stream in progress: {:?}", flow.end().map(|e| e.how));
    drop(flow);
    let status = c.wait_exit().await;
    assert!(status.success(), "C exits cleanly once drained: {status}");
    // The flow opened during the drain outlives C: it went to another replica.
    let before = elsewhere.echoed();
    wait_for("the flow opened during the drain to go on after C exited", DEFAULT_TIMEOUT, || async {
        elsewhere.echoed() > before + 4096
    })
    .await;
    assert!(elsewhere.end().is_none(), "{:?}", elsewhere.end().map(|e| e.how));
    drop(elsewhere);
    drop(forward_c);

    // A dies (SIGKILL). A tunnel through B does not notice; a `palisade
    // connect` that was using A gets its next connection through B within
    // 3 s, since A's answer at enrollment named B as a replica.
    let via_b2 = b.machine("agent-b2").group("ml-agents").enroll().await;
    let forward_b = via_b2.connect("echo").await;
    let flow = Flow::start(forward_b.addr()).await;
    wait_for("the flow through B to carry bytes", DEFAULT_TIMEOUT, || async { flow.echoed() > 0 }).await;
    let forward_a = via_a.connect("echo").await;
    forward_a.assert_echoes(b"through A while it lives").await;
    let verify_before = a.cli(&["audit", "verify"]).await;
    assert!(verify_before.expect_success().starts_with("audit chain intact"), "{verify_before}");
    a.kill().await;
    let killed = Instant::now();
    let before = flow.echoed();
    let failed_over = loop {
        if forward_a
            .exchange_within(b"after A died", Duration::from_millis(500))
            .await
            .is_ok_and(|r| r == b"after A died")
        {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "the client never failed over to B");
    };
    eprintln!("a new connection went through B {failed_over:?} after A was killed");
    assert!(failed_over <= FAIL_OVER_WITHIN, "failing over took {failed_over:?}");
    wait_for("the flow through B to go on after A died", DEFAULT_TIMEOUT, || async { flow.echoed() > before + 4096 })
        .await;
    assert!(flow.end().is_none(), "the tunnel through B ended when A died: {:?}", flow.end().map(|e| e.how));
    drop(forward_b);

    // Both replicas appended to one chain: it verifies, nothing forked.
    let verify = b.cli(&["audit", "verify"]).await;
    assert!(verify.expect_success().starts_with("audit chain intact"), "{verify}");
    let audit = b.audit_events().await;
    let seqs: Vec<i64> = audit.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "one gapless chain: {seqs:?}");
    let online = audit.of_kind("connector.online").len();
    assert!(online >= 2, "the connector linked to both replicas:\n{}", audit.summary());
}

/// A person's session revoked through replica A: their live tunnel through
/// replica C closes within 2 s and C refuses the session from then on; a
/// portal session signed in through A is served by C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_replica_is_cut_on_another_and_any_replica_serves_the_portal() {
    if !store::runs_only_on(store::Store::Postgres, "broker replicas on one database") {
        return;
    }
    let env = TestEnv::new();
    let provider = palisade_tests::OidcProvider::shared().await;
    let people = |b: palisade_tests::BrokerBuilder| {
        b.oidc(&provider).service("echo", "inference").policy("ml-team.cedar", palisade_tests::ALLOW_ML_TEAM_WITH_MFA)
    };
    let a = people(env.broker()).spawn().await;
    let c = people(env.broker()).replica_of(&a).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = a.connector("rack-1").service("echo", upstream.addr()).also_linked_to(&c).spawn().await;
    let alice = c.person("alice").login().await;
    wait_for("C to reach the service", DEFAULT_TIMEOUT, || async {
        alice.tunnel_exchange("echo", b"via c").await.is_ok_and(|r| r == b"via c")
    })
    .await;
    let forward = alice.connect("echo").await;
    let flow = Flow::start(forward.addr()).await;
    wait_for("the flow through C to carry bytes", DEFAULT_TIMEOUT, || async { flow.echoed() > 0 }).await;

    let asked = Instant::now();
    a.cli(&["session", "revoke", alice.session_id()]).await.expect_success();
    let end = within("C to cut the tunnel of the session revoked through A", ACROSS_REPLICAS, flow.ended()).await;
    assert!(end.at >= asked, "the tunnel broke before the revocation: {}", end.how);
    eprintln!("a session revoked through A was cut on C after {:?}", end.at.saturating_duration_since(asked));
    let refused = alice.tunnel_exchange("echo", b"again?").await.expect_err("the session is revoked");
    assert_eq!(refused.reject_code(), Some(RejectCode::Revoked), "{refused}");

    // The web portal: signed in through A, served by C with the same cookie.
    let browser = palisade_tests::Browser::new(&a.ca_der());
    let mfa = browser.sign_in(&format!("{}/login", a.public_url()), "bob").await;
    let landing = browser.second_factor(&mfa, &mut palisade_tests::Passkey::new()).await;
    let on_a = browser.get(&landing).await;
    assert_eq!(on_a.status, 200, "{}", on_a.body);
    let on_c_url = url::Url::parse(&format!("{}{}", c.public_url(), landing.path())).expect("url");
    browser.share_cookies(&landing, &on_c_url);
    let on_c = browser.get(&on_c_url).await;
    assert_eq!(on_c.status, 200, "C serves the portal to a session signed in through A: {}", on_c.body);
    assert!(on_c.body.contains("bob"), "C shows bob's portal: {}", on_c.body);
}
