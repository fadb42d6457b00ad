//! Logs on stderr, as text for people or as JSON lines for a log pipeline.
//!
//! The filter comes from `PALISADE_LOG` (e.g. `info,palisade_broker=debug`),
//! else the default the program passes. In JSON each line is one object with
//! `timestamp`, `level`, `fields` (the message and the event's fields) and
//! `span`/`spans` (the enclosing spans' fields, e.g. a stream's `decision_id`).
//! Informational lines under a steady stream of them share writes ([`batch`]);
//! warnings and errors are written at once.

pub mod batch;

use std::fmt;
use std::io::{self, IsTerminal as _, Write};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use self::batch::Batcher;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "PALISADE_LOG";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format: use \"text\" or \"json\"")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the global subscriber writing to stderr, and a panic hook that
/// writes the kept lines before the panic message. Call once, early in
/// `main`, and [`flush`] before `main` returns.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR");
    let ansi = colours(io::stderr().is_terminal(), no_color.as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
    let panic_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        STDERR.flush_unless_busy();
        panic_hook(info);
    }));
}

/// Colours only on a terminal, and not when `NO_COLOR` is set (no-color.org):
/// journald, a container runtime or a file gets plain text.
fn colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Writes the log lines still kept for a shared write. Call before exiting
/// and before printing anything that must come after them on stderr.
pub fn flush() {
    // Nowhere to report a failed write to stderr.
    let _ = STDERR.flush();
}

static STDERR: LazyLock<Arc<Batcher<io::Stderr>>> = LazyLock::new(|| Batcher::new(io::stderr()));

/// The subscriber's writer: one formatted line per [`StderrLine`].
struct Stderr;

/// A line on its way to stderr, through [`STDERR`].
struct StderrLine {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        StderrLine { urgent: is_urgent(*meta.level()) }
    }
}

/// Warnings and errors are written at once.
fn is_urgent(level: Level) -> bool {
    level <= Level::WARN
}

impl Write for StderrLine {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        STDERR.line(line, self.urgent)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None), "a pipe or a file gets plain text");
    }

    #[test]
    fn warnings_and_errors_are_urgent_and_nothing_else() {
        assert!(is_urgent(Level::ERROR) && is_urgent(Level::WARN));
        assert!(![Level::INFO, Level::DEBUG, Level::TRACE].into_iter().any(is_urgent));
    }

    #[test]
    fn formats_parse_and_print_back() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        let err = "yaml".parse::<LogFormat>().expect_err("not a format");
        assert!(err.contains("\"text\" or \"json\""), "{err}");
    }
}
