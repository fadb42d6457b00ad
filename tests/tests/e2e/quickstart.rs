//! The README's first command, followed as a new user would: run it, read
//! what it prints, run the printed steps in order, and check that the
//! request reached the sample model endpoint through the tunnel and that
//! the audit trail shows it.
//!
//! The only substitutions are the ones that keep a test fast and off the
//! user's files: `cargo run --release -p PKG --` runs the binary the test
//! suite already built, `curl URL` is an HTTP GET from the test, and HOME
//! is a fresh directory.

use std::path::Path;

use palisade_tests::scrape::http_get;
use palisade_tests::{DEFAULT_TIMEOUT, TestEnv, command, wait_for};
use tokio::process::Command;

const README: &str = include_str!("../../../README.md");

/// The first command of the README's "The two commands" block.
fn first_readme_command() -> String {
    let section = README.split("## The two commands").nth(1).expect("the README has \"## The two commands\"");
    let block = section.split("```").nth(1).expect("a code block under it");
    block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("sh"))
        .expect("a command in the block")
        .to_owned()
}

/// `cargo run --release -p PKG -- ARGS` as the already-built binary; `cwd`
/// and `home` as a user's shell would have them.
fn program(line: &str, cwd: &Path, home: &Path) -> Command {
    let rest = line.strip_prefix("cargo run --release -p ").unwrap_or_else(|| panic!("not a cargo run line: {line}"));
    let (package, args) = rest.split_once(" -- ").unwrap_or_else(|| panic!("no `--` in {line}"));
    let bin = match package {
        "palisade-broker" => "palisade-broker",
        "palisade-client" => "palisade",
        "palisade-connector" => "palisade-connector",
        other => panic!("unknown package {other} in {line}"),
    };
    let mut cmd = command(bin);
    cmd.args(args.split_whitespace()).current_dir(cwd).env("HOME", home);
    cmd
}

/// The indented command lines the quickstart printed, in order.
fn printed_steps(stdout: &[String]) -> Vec<String> {
    stdout
        .iter()
        .filter(|l| {
            l.starts_with("  ") && (l.trim_start().starts_with("cargo run") || l.trim_start().starts_with("curl "))
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_leads_to_a_tunneled_model_call_in_the_audit_trail() {
    if !palisade_tests::store::runs_only_on(palisade_tests::store::Store::Sqlite, "the embedded quickstart") {
        return;
    }
    let env = TestEnv::new();
    let (cwd, home) = (env.fresh_dir("user-checkout"), env.fresh_dir("user-home"));
    let first = first_readme_command();
    assert!(first.ends_with("quickstart"), "the README's first command starts the quickstart: {first}");
    let quickstart = env.spawn("quickstart", program(&first, &cwd, &home));
    quickstart.wait_for_line("the end of the instructions", |l| l.starts_with("Press Ctrl-C")).await;
    let steps = printed_steps(&quickstart.stdout_lines());
    eprintln!("the quickstart printed these steps:\n  {}", steps.join("\n  "));
    assert_eq!(steps.len(), 4, "enroll, connect, curl, audit query:\n{}", quickstart.stdout_lines().join("\n"));

    // Step 1: enroll (runs to completion).
    let mut enroll = env.spawn("enroll", program(&steps[0], &cwd, &home));
    let status = enroll.wait().await;
    assert!(status.success(), "{}: {}", steps[0], enroll.stderr());
    // Step 2: connect (keeps running, like the user's second terminal).
    let _connect = env.spawn("connect", program(&steps[1], &cwd, &home));
    // Step 3: curl the model through the tunnel.
    let url = steps[2].strip_prefix("curl ").expect("a curl line");
    let url = url::Url::parse(url).expect("a URL");
    let addr: std::net::SocketAddr =
        format!("{}:{}", url.host_str().expect("host"), url.port().expect("port")).parse().expect("addr");
    wait_for("the tunnel's local port to listen", DEFAULT_TIMEOUT, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let models = http_get(addr, url.path()).await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert!(models.body.contains("\"object\""), "an OpenAI-style model list: {}", models.body);
    // Step 4: the call is in the audit trail.
    let mut audit = env.spawn("audit", program(&steps[3], &cwd, &home));
    let status = audit.wait().await;
    assert!(status.success(), "{}: {}", steps[3], audit.stderr());
    let trail = audit.stdout_lines().join("\n");
    assert!(trail.contains("\"stream.allowed\""), "the tunneled call is audited:\n{trail}");
    assert!(trail.contains("llm-demo"), "{trail}");
    eprintln!("{} audit events for llm-demo", trail.lines().count());

    // Ctrl-C stops it cleanly.
    let mut quickstart = quickstart;
    quickstart.signal("INT").await;
    let status = tokio::time::timeout(DEFAULT_TIMEOUT, quickstart.wait()).await.expect("it stops on Ctrl-C");
    assert!(status.success(), "quickstart exits 0 on Ctrl-C: {status}");
}
