//! SIGKILL under load (issue #6): tunnels that are allowed and denied and
//! people signing in, all at once against a real broker, which is killed with
//! SIGKILL in the middle. After a restart `audit verify` passes and every
//! decision a client observed (an allowed stream that carried bytes, a denied
//! stream's reject, a completed sign-in) has its event in the chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, OidcProvider, TestEnv, assert_eventually};
use tokio::sync::Mutex;

#[derive(Default)]
struct Observed {
    allowed: usize,
    denied: usize,
    /// Streams that failed without a policy answer (the broker was gone).
    cut: usize,
    /// The intruder got bytes through.
    breached: bool,
    sessions: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_burst_keeps_every_decision_its_clients_saw_and_a_verifiable_chain() {
    let env = TestEnv::new();
    let provider = OidcProvider::shared().await;
    let mut broker =
        env.broker().oidc(&provider).service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = Arc::new(broker.machine("agent-1").group("ml-agents").enroll().await);
    let intruder = Arc::new(broker.machine("intruder").group("web").enroll().await);
    assert_eventually!(agent.tunnel_exchange("echo", b"warm-up").await.is_ok());

    let seen = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..3 {
        let (agent, seen, stop) = (agent.clone(), seen.clone(), stop.clone());
        workers.spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let payload = format!("worker {worker} stream {i}").into_bytes();
                match agent.tunnel_exchange("echo", &payload).await {
                    Ok(reply) if reply == payload => seen.lock().await.allowed += 1,
                    _ => {
                        seen.lock().await.cut += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    for _ in 0..2 {
        let (intruder, seen, stop) = (intruder.clone(), seen.clone(), stop.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match intruder.tunnel_exchange("echo", b"let me in").await {
                    Err(e) if e.reject_code() == Some(RejectCode::Forbidden) => seen.lock().await.denied += 1,
                    Ok(_) => seen.lock().await.breached = true,
                    Err(_) => {
                        seen.lock().await.cut += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    let sign_ins = {
        let people = ["alice", "bob"].map(|name| broker.person(name));
        let seen = seen.clone();
        // Each sign-in runs in its own task: one cut short by the kill panics
        // inside the harness, which only loses that attempt.
        tokio::spawn(async move {
            for person in people {
                let signed_in = tokio::spawn(person.login()).await;
                if let Ok(person) = signed_in {
                    seen.lock().await.sessions.push(person.session_id().to_owned());
                }
            }
        })
    };

    // Kill mid-burst: once every kind of decision has been seen at least a few times.
    assert_eventually!({
        let s = seen.lock().await;
        s.allowed >= 15 && s.denied >= 8 && !s.sessions.is_empty()
    });
    broker.kill().await;
    let at_kill = {
        let s = seen.lock().await;
        (s.allowed, s.denied, s.sessions.len())
    };
    // The workers keep going a moment, so every one of them meets the dead broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    // A stream caught by the kill can hang until the harness gives up on it
    // (it panics after its timeout): that worker saw a cut, not a decision.
    let mut hung = 0;
    while let Some(ended) = workers.join_next().await {
        hung += usize::from(ended.is_err());
    }
    let _ = sign_ins.await;
    let seen = Arc::try_unwrap(seen).ok().expect("workers are done").into_inner();
    assert!(seen.allowed >= at_kill.0 && seen.denied >= at_kill.1 && seen.sessions.len() >= at_kill.2);
    assert!(!seen.breached, "the intruder got through");
    assert!(seen.cut + hung > 0, "the kill must land while streams are being opened");

    broker.restart().await;
    let out = broker.cli(&["audit", "verify"]).await;
    assert!(out.success(), "the chain must verify after SIGKILL:\n{out}");

    let audit = broker.audit_events().await;
    let count =
        |kind: &str, actor: &str| audit.of_kind(kind).iter().filter(|r| r.actor.as_deref() == Some(actor)).count();
    let allowed = count("stream.allowed", &agent.spiffe_id());
    let denied = count("stream.denied", &intruder.spiffe_id());
    assert!(
        allowed > seen.allowed,
        "{} streams carried bytes (plus the warm-up) but only {allowed} stream.allowed events survived",
        seen.allowed
    );
    assert!(denied >= seen.denied, "{} denies were seen but only {denied} stream.denied events survived", seen.denied);
    for session in &seen.sessions {
        assert!(
            audit.of_kind("session.created").iter().any(|r| r.subject.as_deref() == Some(session)),
            "the sign-in that created session {session} has no session.created event:\n{}",
            audit.summary()
        );
    }
    // Every stream.allowed names a decision; each one is distinct.
    let mut decisions: Vec<_> = audit.of_kind("stream.allowed").iter().map(|r| r.decision_id.clone()).collect();
    let total = decisions.len();
    decisions.sort();
    decisions.dedup();
    assert_eq!(decisions.len(), total, "decision ids are unique");
    assert!(decisions.iter().all(Option::is_some));
}
