//! schemathesis (installed by `scripts/setup-test-deps`) over the document
//! against a real broker: as nobody, as a signed-in person who is not an
//! admin, as the admin over every GET (reads only: no write runs under a
//! fuzzer), and the metrics listener on its own. Checks: no 5xx, and every
//! status, content type and JSON body is one the document describes. A
//! fixed seed and a few examples per operation keep the run short and
//! repeatable.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use palisade_tests::{Broker, TestEnv};

use super::{ADMIN, SESSION_COOKIE, broker, document_path, session_of};

/// What every run checks.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// Examples generated per operation and phase (`$PALISADE_SCHEMATHESIS_EXAMPLES`
/// for a longer run by hand).
const EXAMPLES: &str = "12";
const SEED: &str = "20261203";
/// Longest a run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The schemathesis that `scripts/setup-test-deps` installs (or `$PALISADE_SCHEMATHESIS`).
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("PALISADE_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    let path = cache.join("palisade-tests/schemathesis/bin/schemathesis");
    assert!(path.exists(), "{} is missing: run scripts/setup-test-deps", path.display());
    path
}

/// One run of schemathesis: `base` is the API's origin, `args` select operations and add headers.
pub(crate) async fn run(broker: &Broker, label: &str, base: &str, args: &[&str]) {
    let mut cmd = tokio::process::Command::new(schemathesis());
    cmd.arg("run").arg(document_path()).args(["--url", base]);
    cmd.arg("--tls-verify").arg(broker.data_dir().join("ca.pem"));
    let examples = std::env::var("PALISADE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.to_owned());
    cmd.args(["--checks", CHECKS, "--max-examples", &examples, "--seed", SEED, "--workers", "1"]);
    // One retry of a request whose connection dropped: the broker closes a
    // keep-alive connection idle past its header timeout while schemathesis
    // generates cases. A request that kills its connection fails twice.
    cmd.args([
        "--request-timeout",
        "20",
        "--no-shrink",
        "--max-redirects",
        "0",
        "--suppress-health-check",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-retries",
        "1",
    ]);
    cmd.args(args).env("NO_COLOR", "1").env("SCHEMATHESIS_TELEMETRY", "false");
    cmd.current_dir(broker.env().fresh_dir(&format!("schemathesis-{label}")));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start schemathesis: {e} (run scripts/setup-test-deps)"));
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ({label}) ran longer than {RUN_TIMEOUT:?}"))
        .expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis ({label}) found problems ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("passed"), "schemathesis ({label}) ran no test:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
    let env = TestEnv::new();
    let broker = broker(&env).await;
    // Both sign in first: the fuzzing trips the per-address sign-in limits.
    let alice = session_of(&broker, "alice").await;
    let admin = session_of(&broker, ADMIN).await;
    let base = broker.public_url();

    run(&broker, "anonymous", &base, &["--exclude-tag", "metrics"]).await;
    let cookie = format!("Cookie: {SESSION_COOKIE}={alice}");
    run(&broker, "person", &base, &["--exclude-tag", "metrics", "--header", &cookie]).await;
    let still = super::http(&broker)
        .get(format!("{}/api/v1/me/credentials", base.trim_end_matches('/')))
        .header("cookie", format!("{SESSION_COOKIE}={alice}"))
        .send()
        .await
        .expect("the credential list answers");
    assert_eq!(still.status(), 200, "the person's session lasted the run (else it tested nobody)");
    let cookie = format!("Cookie: {SESSION_COOKIE}={admin}");
    run(&broker, "admin-reads", &base, &["--exclude-tag", "metrics", "--include-method", "GET", "--header", &cookie])
        .await;
    let metrics = format!("http://{}", broker.metrics_addr());
    run(&broker, "metrics", &metrics, &["--include-tag", "metrics"]).await;
}
