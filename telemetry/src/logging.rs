//! Logs on stderr, as text for people or as JSON lines for a log pipeline.
//!
//! The filter comes from `PALISADE_LOG` (e.g. `info,palisade_broker=debug`),
//! else the default the program passes. In JSON each line is one object with
//! `timestamp`, `level`, `fields` (the message and the event's fields) and
//! `span`/`spans` (the enclosing spans' fields, e.g. a stream's `decision_id`).

use std::fmt;
use std::str::FromStr;

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

/// Installs the global subscriber writing to stderr. Call once, early in `main`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_back() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        let err = "yaml".parse::<LogFormat>().expect_err("not a format");
        assert!(err.contains("\"text\" or \"json\""), "{err}");
    }
}
