//! Child processes: spawned with captured output, killed on drop, and waited
//! on by the lines they print rather than by sleeping.

use std::fmt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::bins::bin_path;
use crate::wait::DEFAULT_TIMEOUT;

/// How long a one-shot command (`init`, `token create`, `enroll`…) may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of each process's output is printed when a test fails.
const DUMP_TAIL: usize = 12 * 1024;

/// Output of every process a test started, printed if the test fails.
#[derive(Clone, Default)]
pub(crate) struct LogBook(Arc<Mutex<Vec<LogEntry>>>);

struct LogEntry {
    name: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl LogBook {
    fn register(&self, name: &str) -> (Arc<Mutex<String>>, Arc<Mutex<String>>) {
        let entry = LogEntry { name: name.to_owned(), stdout: Arc::default(), stderr: Arc::default() };
        let handles = (entry.stdout.clone(), entry.stderr.clone());
        self.0.lock().unwrap().push(entry);
        handles
    }

    pub(crate) fn record(&self, output: &CliOutput) {
        let (stdout, stderr) = self.register(&output.program);
        stdout.lock().unwrap().push_str(&output.stdout);
        let mut err = stderr.lock().unwrap();
        err.push_str(&output.stderr);
        err.push_str(&format!("[{}]\n", output.status));
    }

    pub(crate) fn dump(&self) {
        for entry in self.0.lock().unwrap().iter() {
            for (stream, text) in [("stdout", &entry.stdout), ("stderr", &entry.stderr)] {
                let text = text.lock().unwrap();
                if !text.trim().is_empty() {
                    eprintln!("----- {} ({stream}) -----\n{}", entry.name, tail(&text, DUMP_TAIL));
                }
            }
        }
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A command for one of our binaries, with no `PALISADE_*` variable
/// inherited from the environment the tests run in.
pub fn command(bin: &str) -> Command {
    let mut cmd = Command::new(bin_path(bin));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PALISADE_") {
            cmd.env_remove(key);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("NO_COLOR", "1");
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// What a one-shot command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub program: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, if it exited rather than being killed.
    #[must_use]
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout and stderr together, for matching messages wherever they went.
    #[must_use]
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics (printing everything) unless it exited 0; returns stdout, trimmed.
    pub fn expect_success(&self) -> String {
        assert!(self.success(), "expected success:\n{self}");
        self.stdout.trim().to_owned()
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n[{}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.program, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a one-shot command to completion (bounded by a timeout) and records its output.
pub(crate) async fn run_cli(mut cmd: Command, logs: &LogBook) -> CliOutput {
    let program = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let output = match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {program}: {e}")),
        Err(_) => panic!("{program} did not finish within {CLI_TIMEOUT:?}"),
    };
    let out = CliOutput {
        program,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    logs.record(&out);
    out
}

fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let program = Path::new(std.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
    let args: Vec<_> = std.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{program} {}", args.join(" "))
}

#[derive(Default)]
struct Stdout {
    lines: Vec<String>,
    closed: bool,
}

/// A long-running child process (broker, connector, `palisade connect`…).
/// Killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: watch::Receiver<Stdout>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, logs: &LogBook) -> Self {
        let name = format!("{name}: {}", describe(&cmd));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (stdout_log, stderr_log) = logs.register(&name);
        let (tx, rx) = watch::channel(Stdout::default());
        let out = child.stdout.take().expect("stdout is piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                stdout_log.lock().unwrap().push_str(&format!("{line}\n"));
                tx.send_modify(|s| s.lines.push(line));
            }
            tx.send_modify(|s| s.closed = true);
        });
        let err = child.stderr.take().expect("stderr is piped");
        tokio::spawn(collect(err, stderr_log.clone()));
        Self { name, child, stdout: rx, stderr: stderr_log }
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the process prints a stdout line matching `pred` and
    /// returns it. Fails the test if the process exits first or the line
    /// does not come within [`DEFAULT_TIMEOUT`].
    pub async fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut rx = self.stdout.clone();
        let waited = tokio::time::timeout(DEFAULT_TIMEOUT, async {
            let state = rx.wait_for(|s| s.closed || s.lines.iter().any(|l| pred(l))).await.expect("stdout reader");
            state.lines.iter().find(|l| pred(l)).cloned()
        })
        .await;
        match waited {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{} exited before printing {what}\nstderr:\n{}", self.name, self.stderr()),
            Err(_) => {
                panic!("{} did not print {what} within {DEFAULT_TIMEOUT:?}\nstderr:\n{}", self.name, self.stderr())
            }
        }
    }

    /// Every stdout line so far.
    #[must_use]
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.borrow().lines.clone()
    }

    /// Everything printed on stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the process has exited, and how.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit by itself; fails the test if it takes
    /// longer than [`CLI_TIMEOUT`].
    pub async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(CLI_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name)),
            Err(_) => panic!("{} did not exit within {CLI_TIMEOUT:?}\nstderr:\n{}", self.name, self.stderr()),
        }
    }

    /// Kills the process (SIGKILL: a crash, not a clean stop) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(DEFAULT_TIMEOUT, self.child.wait()).await;
    }

    /// Sends a signal by name (`HUP`, `TERM`…) with the system's `kill`.
    pub async fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process is still running").to_string();
        let status = Command::new("kill").args(["-s", signal, &pid]).status().await.expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid} failed");
    }
}

async fn collect(stream: impl AsyncRead + Unpin, sink: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut s = sink.lock().unwrap();
        s.push_str(&line);
        s.push('\n');
    }
}
