//! Faults (catalogue R-02): the broker's database on a disk that fills up.
//! Decisions whose audit event cannot be written are refused (fail closed,
//! with a reason the client can show), enrollment fails without leaving an
//! identity behind, tunnels already open keep carrying bytes, and once space
//! is back everything works again and the audit chain verifies.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_client::{Profile, Tunnel, TunnelError};
use palisade_proto::id::ServiceName;
use palisade_proto::reject::RejectCode;
use palisade_tests::{ALLOW_ML_AGENTS, DEFAULT_TIMEOUT, EchoUpstream, TestEnv, csr_pem};

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (the test runs as root on CI and here)");
        Self(at)
    }

    /// Writes a filler file until the disk refuses; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Moves the broker's SQLite files onto `disk` and points `database_url` there.
fn move_database(data_dir: &Path, disk: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let from = data_dir.join(format!("palisade.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, disk.join(format!("palisade.db{suffix}"))).expect("copy the database");
            std::fs::remove_file(&from).expect("remove the old database file");
        }
    }
    let path = data_dir.join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let url = format!("sqlite://{}", disk.join("palisade.db").display());
    config.insert("database_url".into(), url.into());
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
}

async fn echo_on(stream: &mut (quinn::SendStream, quinn::RecvStream), payload: &[u8]) -> Vec<u8> {
    stream.0.write_all(payload).await.expect("write on the held stream");
    let mut buf = vec![0u8; payload.len()];
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.1.read_exact(&mut buf))
        .await
        .expect("an echo within 5 s")
        .expect("read on the held stream");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_decisions_keeps_open_tunnels_and_recovers() {
    if !palisade_tests::store::runs_only_on(palisade_tests::store::Store::Sqlite, "a full disk under the SQLite file") {
        return;
    }
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let token = broker.machine_token("late-agent", &["ml-agents"], None).await;

    broker.kill().await;
    let disk = SmallDisk::mount(env.path().join("small-disk"), "8m");
    move_database(broker.data_dir(), &disk.0);
    broker.restart().await;
    let service: ServiceName = "echo".parse().expect("service name");
    let tunnel = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    palisade_tests::wait_for("the connector to be back after the restart", DEFAULT_TIMEOUT, || async {
        agent.tunnel_exchange("echo", b"ready?").await.is_ok_and(|r| r == b"ready?")
    })
    .await;
    let mut held = tunnel.open(&service).await.expect("open a stream to hold");
    assert_eq!(echo_on(&mut held, b"before").await, b"before");

    let filler = disk.fill();
    let refused = refused_for_want_of_room(&agent).await;
    assert_eq!(refused.reject_code(), Some(RejectCode::Internal), "{refused}");
    let key = rcgen::KeyPair::generate().expect("a key");
    let answer = broker.enroll_api(&token).enroll(&token, &csr_pem(&rcgen::CertificateParams::default(), &key)).await;
    assert!(answer.status >= 500, "enrollment cannot commit on a full disk: {answer:?}");
    assert_eq!(echo_on(&mut held, b"during").await, b"during", "an open tunnel keeps carrying bytes");

    std::fs::remove_file(filler).expect("free the disk");
    let reply = agent.tunnel_exchange("echo", b"room again").await.expect("new streams once there is space");
    assert_eq!(reply, b"room again");
    let answer = broker.enroll_api(&token).enroll(&token, &csr_pem(&rcgen::CertificateParams::default(), &key)).await;
    assert_eq!(answer.status, 200, "the token was not spent by the failed attempt: {answer:?}");
    drop(held);
    let verify = broker.cli(&["audit", "verify"]).await;
    assert!(verify.success(), "the chain verifies after the disk filled up:\n{verify}");
}

/// The first stream refused once the disk is full. SQLite reuses the space
/// of write-ahead log it has already copied into the database file, so a
/// few more events may still fit (each one committed, its stream served);
/// the log cannot grow, so a refusal must come soon.
async fn refused_for_want_of_room(agent: &palisade_tests::Agent) -> TunnelError {
    for _ in 0..200 {
        match agent.tunnel_exchange("echo", b"no room to audit?").await {
            Ok(reply) => assert_eq!(reply, b"no room to audit?", "a stream that was audited is served"),
            Err(refused) => return refused,
        }
    }
    panic!("200 streams were allowed on a full disk: no audit, no stream")
}

/// `[audit] when_unavailable = "allow"`: an operator who values availability
/// over a complete trail keeps serving what the policy allows while the
/// trail cannot be written — and only that: a denied identity stays denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_when_unavailable_allow_a_full_disk_keeps_serving_what_the_policy_allows() {
    if !palisade_tests::store::runs_only_on(palisade_tests::store::Store::Sqlite, "a full disk under the SQLite file") {
        return;
    }
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let outsider = broker.machine("outsider").group("visitors").enroll().await;

    broker.kill().await;
    let disk = SmallDisk::mount(env.path().join("small-disk"), "8m");
    move_database(broker.data_dir(), &disk.0);
    let path = broker.data_dir().join("broker.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).expect("broker.toml").parse().expect("toml");
    let audit = config.entry("audit").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    audit.as_table_mut().expect("[audit] is a table").insert("when_unavailable".into(), "allow".into());
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write broker.toml");
    broker.restart().await;
    palisade_tests::wait_for("the connector to be back after the restart", DEFAULT_TIMEOUT, || async {
        agent.tunnel_exchange("echo", b"ready?").await.is_ok_and(|r| r == b"ready?")
    })
    .await;

    let _filler = disk.fill();
    let reply = agent.tunnel_exchange("echo", b"served unaudited").await.expect("allowed without its event");
    assert_eq!(reply, b"served unaudited");
    let refused = outsider.tunnel_exchange("echo", b"still no").await.expect_err("policy still decides");
    assert_eq!(refused.reject_code(), Some(RejectCode::Forbidden), "{refused}");
}

/// CA-12: the CA key file goes bad under a running broker. The key was
/// read and decrypted at start, so the running broker keeps its tunnels
/// and keeps issuing; a broker started on the bad file refuses to start,
/// saying which file and what to do, rather than run without its CA; with
/// the file restored it starts and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_ca_key_file_stops_only_the_next_start_with_a_clear_error() {
    let env = TestEnv::new();
    let mut broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;
    let service: ServiceName = "echo".parse().expect("service name");
    let tunnel = Tunnel::new(Profile::load(agent.home()).expect("profile")).expect("tunnel");
    let mut held = tunnel.open(&service).await.expect("open a stream to hold");
    assert_eq!(echo_on(&mut held, b"before").await, b"before");

    let key_file = broker.data_dir().join("ca.key.enc");
    let good = std::fs::read(&key_file).expect("the encrypted CA key");
    std::fs::write(&key_file, b"not a sealed key at all").expect("corrupt the key file");
    assert_eq!(echo_on(&mut held, b"running").await, b"running", "an open tunnel is unaffected");
    assert_eq!(agent.tunnel_exchange("echo", b"new").await.expect("an echo"), b"new", "new tunnels too");
    let late = broker.machine("agent-2").group("ml-agents").enroll().await;
    assert_eq!(late.tunnel_exchange("echo", b"issued").await.expect("an echo"), b"issued", "issuance goes on");

    broker.kill().await;
    let start = tokio::time::timeout(std::time::Duration::from_secs(30), broker.cli(&["run"])).await;
    let out = start.expect("a broker with a corrupt CA key file must exit, not run");
    assert!(!out.success(), "it refused to start: {}", out.all_output());
    let said = out.all_output();
    assert!(said.contains("ca.key.enc") || said.contains("KEK"), "names the key file or the KEK: {said}");

    std::fs::write(&key_file, good).expect("restore the key file");
    broker.restart().await;
    palisade_tests::wait_for("the restarted broker to serve once its connector is back", DEFAULT_TIMEOUT, || async {
        agent.tunnel_exchange("echo", b"after").await.is_ok_and(|reply| reply == b"after")
    })
    .await;
}
