//! `[audit]` keys other than `[[audit.sinks]]`: retention, checkpoints and
//! alert thresholds of the audit trail.
//!
//! ```toml
//! [audit]
//! retention = "400d"                 # prune events older than this (default: keep everything)
//! archive = "audit-archive.jsonl"    # append what a prune removes to this file first
//! prune_interval = "1h"              # how often the broker prunes (default 1h)
//! checkpoint_interval = "60s"        # sign the chain head this often if it moved (default 60s)
//! checkpoint_events = 1000           # and after this many events (default 1000)
//! connector_offline_alert = "5m"     # alert when a connector stays offline this long (default 5m)
//! when_unavailable = "refuse"        # a decision whose event cannot be written: "refuse" (default) or "allow"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::{ConfigError, invalid};

/// The `[audit]` settings of the trail itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTrailConfig {
    /// Events older than this are pruned (archived first if `archive` is set). `None`: kept forever.
    pub retention: Option<Duration>,
    /// JSON lines file the pruned events are appended to before they are deleted.
    pub archive: Option<PathBuf>,
    /// How often the broker looks for events past `retention`. Default 1 h.
    pub prune_interval: Duration,
    /// The chain head is signed this often if it moved. Default 60 s.
    pub checkpoint_interval: Duration,
    /// …and after this many events written by the broker. Default 1000.
    pub checkpoint_events: u64,
    /// A connector offline for longer than this raises `alert.connector_offline`. Default 5 min.
    pub connector_offline_alert: Duration,
    /// What a decision does when its audit event cannot be written. Default: refuse.
    pub when_unavailable: WhenUnavailable,
}

/// `audit.when_unavailable`: fail closed (the default) or keep serving unaudited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// No durable event, no access: connections and streams are refused.
    #[default]
    Refuse,
    /// Connections and streams the policy allows go ahead without their event;
    /// each one is logged at error level. For deployments that value
    /// availability over a complete trail, knowingly.
    Allow,
}

impl Default for AuditTrailConfig {
    fn default() -> Self {
        Self {
            retention: None,
            archive: None,
            prune_interval: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_events: 1000,
            connector_offline_alert: Duration::from_secs(300),
            when_unavailable: WhenUnavailable::Refuse,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrail {
    retention: Option<String>,
    archive: Option<String>,
    prune_interval: Option<String>,
    checkpoint_interval: Option<String>,
    checkpoint_events: Option<i64>,
    connector_offline_alert: Option<String>,
    when_unavailable: Option<String>,
}

/// Splits the `[audit]` table into its `sinks` entries (parsed by the caller)
/// and the trail settings, resolving `archive` against `base`.
pub(super) fn build(v: Option<Value>, base: &Path) -> Result<(Vec<Value>, AuditTrailConfig), ConfigError> {
    let mut table = match v {
        None => return Ok((Vec::new(), AuditTrailConfig::default())),
        Some(Value::Table(t)) => t,
        Some(_) => return Err(invalid("audit", "must be a table")),
    };
    let sinks = match table.remove("sinks") {
        None => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("audit.sinks", "must be a list of tables ([[audit.sinks]])")),
    };
    let raw: RawTrail = Value::Table(table).try_into().map_err(|e: toml::de::Error| invalid("audit", e.message()))?;
    Ok((sinks, trail(raw, base)?))
}

fn trail(raw: RawTrail, base: &Path) -> Result<AuditTrailConfig, ConfigError> {
    let d = AuditTrailConfig::default();
    let retention = raw.retention.map(|t| duration("audit.retention", &t)).transpose()?;
    let archive = match raw.archive {
        Some(p) if p.is_empty() => return Err(invalid("audit.archive", "must not be empty")),
        Some(p) => Some(base.join(p)),
        None => None,
    };
    if archive.is_some() && retention.is_none() {
        return Err(invalid("audit.archive", "only used when pruning: set audit.retention too"));
    }
    let checkpoint_events = match raw.checkpoint_events {
        None => d.checkpoint_events,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| invalid("audit.checkpoint_events", "must be between 1 and 1000000"))?,
    };
    Ok(AuditTrailConfig {
        retention,
        archive,
        prune_interval: opt_duration("audit.prune_interval", raw.prune_interval)?.unwrap_or(d.prune_interval),
        checkpoint_interval: opt_duration("audit.checkpoint_interval", raw.checkpoint_interval)?
            .unwrap_or(d.checkpoint_interval),
        checkpoint_events,
        connector_offline_alert: opt_duration("audit.connector_offline_alert", raw.connector_offline_alert)?
            .unwrap_or(d.connector_offline_alert),
        when_unavailable: when_unavailable(raw.when_unavailable.as_deref())?,
    })
}

fn when_unavailable(text: Option<&str>) -> Result<WhenUnavailable, ConfigError> {
    match text {
        None | Some("refuse") => Ok(WhenUnavailable::Refuse),
        Some("allow") => Ok(WhenUnavailable::Allow),
        Some(other) => Err(invalid("audit.when_unavailable", format!("{other:?}: use \"refuse\" or \"allow\""))),
    }
}

fn opt_duration(key: &str, text: Option<String>) -> Result<Option<Duration>, ConfigError> {
    text.map(|t| duration(key, &t)).transpose()
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text)
        .map_err(|_| invalid(key, format!("invalid duration {text:?}: expected a number with a unit such as 90d")))?;
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuditTrailConfig, ConfigError> {
        let table: toml::Table = text.parse().unwrap();
        build(table.get("audit").cloned(), Path::new("/etc/palisade")).map(|(_, t)| t)
    }

    #[test]
    fn defaults_keep_everything() {
        assert_eq!(parse("").unwrap(), AuditTrailConfig::default());
        assert_eq!(parse("[audit]\n").unwrap().retention, None);
    }

    #[test]
    fn every_key_parses_and_archive_is_relative_to_the_config() {
        let t = parse(
            "[audit]\nretention = \"30d\"\narchive = \"old.jsonl\"\nprune_interval = \"10m\"\n\
             checkpoint_interval = \"5s\"\ncheckpoint_events = 50\nconnector_offline_alert = \"2m\"\n\
             [[audit.sinks]]\nname = \"x\"\n",
        )
        .unwrap();
        assert_eq!(t.retention, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(t.archive.as_deref(), Some(Path::new("/etc/palisade/old.jsonl")));
        assert_eq!(t.prune_interval, Duration::from_secs(600));
        assert_eq!(t.checkpoint_interval, Duration::from_secs(5));
        assert_eq!(t.checkpoint_events, 50);
        assert_eq!(t.connector_offline_alert, Duration::from_secs(120));
    }

    #[test]
    fn when_unavailable_defaults_to_refuse_and_takes_only_refuse_or_allow() {
        assert_eq!(parse("").unwrap().when_unavailable, WhenUnavailable::Refuse);
        assert_eq!(parse("[audit]\nwhen_unavailable = \"allow\"").unwrap().when_unavailable, WhenUnavailable::Allow);
        let err = parse("[audit]\nwhen_unavailable = \"open\"").unwrap_err().to_string();
        assert!(err.contains("audit.when_unavailable") && err.contains("refuse"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("retention = \"soon\"", "audit.retention"),
            ("retention = \"0s\"", "audit.retention"),
            ("archive = \"a.jsonl\"", "audit.archive"),
            ("checkpoint_events = 0", "audit.checkpoint_events"),
            ("connector_offline_alert = \"5\"", "audit.connector_offline_alert"),
            ("retain = \"1d\"", "audit"),
        ] {
            let err = parse(&format!("[audit]\n{text}\n")).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}:")), "{text}: {err}");
        }
    }
}
