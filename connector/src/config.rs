//! `connector.toml`: where the enrollment lives, which broker to dial and
//! which services this connector reaches.
//!
//! ```toml
//! state_dir = "/var/lib/palisade-connector"   # optional
//! broker = "broker.example.com:443"           # optional: default from identity.json
//! brokers = ["b1.internal:443", "b2.internal:443"]  # optional: link to every replica
//! connect_timeout = "10s"                     # optional
//! policy_dir = "/etc/palisade/guardrails"     # optional: local Cedar guardrails
//! bundle_max_age = "24h"                      # optional: enforce a saved bundle this long
//!
//! [metrics]
//! listen = "127.0.0.1:9465"                   # optional: /metrics, /healthz, /readyz
//!
//! [log]
//! format = "json"                             # optional: "text" (default) or "json"
//!
//! [[service]]
//! name = "llm-prod"
//! upstream = "127.0.0.1:11434"
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_proto::id::ServiceName;
use palisade_telemetry::LogFormat;
use serde::Deserialize;

/// Environment variable naming the state directory when neither a flag nor
/// the config file does.
pub const STATE_DIR_ENV: &str = "PALISADE_CONNECTOR_STATE_DIR";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long after signing a policy bundle is enforced without a fresher one.
pub const DEFAULT_BUNDLE_MAX_AGE: Duration = Duration::from_secs(24 * 3_600);

/// Everything `run` needs. Build it in code (public fields) or read it with
/// [`ConnectorConfig::load`].
#[derive(Clone, Debug)]
pub struct ConnectorConfig {
    /// Directory holding `key.pem`, `cert.pem`, `ca.pem` and `identity.json`.
    pub state_dir: PathBuf,
    /// The broker's QUIC address (`host:port`); `None` (and no
    /// [`ConnectorConfig::brokers`]) uses the `quic_addr` recorded at enrollment.
    pub broker: Option<String>,
    /// More broker replicas to link to (`host:port` each). The connector keeps
    /// a link to every address each of these and [`ConnectorConfig::broker`]
    /// resolves to, re-resolving periodically, so every replica reaches its
    /// services.
    pub brokers: Vec<String>,
    /// How long dialling an upstream may take.
    pub connect_timeout: Duration,
    /// The services this connector reaches.
    pub services: Vec<ServiceConfig>,
    /// Local guardrails: Cedar files this connector enforces in addition to
    /// the broker's bundle. Both must allow; the broker cannot loosen them.
    pub policy_dir: Option<PathBuf>,
    /// How long after the broker signed it a policy bundle is enforced. The
    /// last good bundle is saved and rides out a broker outage this long;
    /// after that the connector denies every stream until a fresh one arrives.
    pub bundle_max_age: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Text or JSON log lines on stderr (`--log-format` wins).
    pub log_format: LogFormat,
    /// Worker threads of the async runtime. Default: `TOKIO_WORKER_THREADS`,
    /// else one less than the CPUs the connector may use, at least one
    /// ([`palisade_telemetry::runtime`]).
    pub worker_threads: Option<NonZeroUsize>,
}

/// One service behind this connector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The catalog name clients ask for.
    pub name: ServiceName,
    /// The workload's TCP address, `host:port`, as seen from the connector.
    pub upstream: String,
}

/// The configuration could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not valid TOML for this schema (toml's message names the key and line).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// toml's message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: `{key}`: {reason}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The offending key, e.g. `service[1].upstream`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    broker: Option<String>,
    #[serde(default)]
    brokers: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    policy_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    bundle_max_age: Option<Duration>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
    worker_threads: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    upstream: String,
}

impl ConnectorConfig {
    /// The broker addresses to link to: `broker` and `brokers`, without
    /// repeats, or `enrolled` (the address recorded at enrollment) if neither is set.
    #[must_use]
    pub fn broker_addresses(&self, enrolled: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for addr in self.broker.iter().chain(&self.brokers) {
            if !out.contains(addr) {
                out.push(addr.clone());
            }
        }
        if out.is_empty() {
            out.push(enrolled.to_owned());
        }
        out
    }

    /// Reads and checks a TOML config file.
    ///
    /// # Errors
    /// An unreadable file, a TOML or schema error, or an invalid value; the
    /// message names the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` names it in error messages.
    ///
    /// # Errors
    /// As [`ConnectorConfig::load`], without the IO.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })?;
        let invalid = |key: String, reason: String| ConfigError::Invalid { origin: origin.to_owned(), key, reason };
        if let Some(broker) = &raw.broker {
            split_host_port(broker).map_err(|reason| invalid("broker".into(), reason))?;
        }
        for (i, broker) in raw.brokers.iter().enumerate() {
            split_host_port(broker).map_err(|reason| invalid(format!("brokers[{i}]"), reason))?;
        }
        let connect_timeout = raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() || connect_timeout > MAX_CONNECT_TIMEOUT {
            return Err(invalid("connect_timeout".into(), "must be between 1ms and 5m".into()));
        }
        let bundle_max_age = raw.bundle_max_age.unwrap_or(DEFAULT_BUNDLE_MAX_AGE);
        if bundle_max_age.as_secs() == 0 {
            return Err(invalid("bundle_max_age".into(), "must be at least 1s".into()));
        }
        if raw.services.is_empty() {
            return Err(invalid("service".into(), "at least one [[service]] with name and upstream is needed".into()));
        }
        let mut seen = HashSet::new();
        let mut services = Vec::with_capacity(raw.services.len());
        for (i, svc) in raw.services.into_iter().enumerate() {
            let name: ServiceName = svc
                .name
                .parse()
                .map_err(|e: palisade_proto::id::IdError| invalid(format!("service[{i}].name"), e.to_string()))?;
            if !seen.insert(name.clone()) {
                return Err(invalid(format!("service[{i}].name"), format!("service {name} is listed twice")));
            }
            split_host_port(&svc.upstream).map_err(|reason| invalid(format!("service[{i}].upstream"), reason))?;
            services.push(ServiceConfig { name, upstream: svc.upstream });
        }
        let metrics_listen = match &raw.metrics.listen {
            Some(s) => Some(s.parse().map_err(|_| {
                invalid("metrics.listen".into(), format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:9465)"))
            })?),
            None => None,
        };
        let log_format =
            raw.log.format.as_deref().map(str::parse).transpose().map_err(|e| invalid("log.format".into(), e))?;
        let worker_threads = raw
            .worker_threads
            .map(|n| usize::try_from(n).ok().and_then(NonZeroUsize::new))
            .map(|n| n.ok_or_else(|| invalid("worker_threads".into(), "must be a whole number of at least 1".into())))
            .transpose()?;
        let state_dir = raw.state_dir.unwrap_or_else(default_state_dir);
        Ok(Self {
            worker_threads,
            metrics_listen,
            log_format: log_format.unwrap_or_default(),
            state_dir,
            broker: raw.broker,
            brokers: raw.brokers,
            connect_timeout,
            services,
            policy_dir: raw.policy_dir,
            bundle_max_age,
        })
    }
}

/// The state directory when none is configured: `$PALISADE_CONNECTOR_STATE_DIR`,
/// else `/var/lib/palisade-connector` for root, else
/// `$HOME/.local/state/palisade-connector`.
#[must_use]
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let system = PathBuf::from("/var/lib/palisade-connector");
    if running_as_root() {
        return system;
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/palisade-connector"),
        None => system,
    }
}

/// `/proc/self` belongs to the process's effective user; no libc call needed.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Splits `host:port` (IPv6 literals in brackets) into host and port.
pub(crate) fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{addr:?} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConnectorConfig, ConfigError> {
        ConnectorConfig::from_toml(text, "connector.toml")
    }

    const SERVICE: &str = "[[service]]\nname = \"llm-prod\"\nupstream = \"127.0.0.1:11434\"\n";

    #[test]
    fn a_full_config_parses() {
        let text = format!(
            "state_dir = \"/tmp/x\"\nbroker = \"[::1]:4433\"\nconnect_timeout = \"3s\"\nbundle_max_age = \"2h\"\n{SERVICE}"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.broker.as_deref(), Some("[::1]:4433"));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.bundle_max_age, Duration::from_secs(7_200));
        assert_eq!(config.services[0].name.as_str(), "llm-prod");
    }

    #[test]
    fn defaults_apply() {
        let config = parse(SERVICE).expect("valid");
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.bundle_max_age, DEFAULT_BUNDLE_MAX_AGE);
        assert_eq!(config.broker, None);
        assert_eq!((config.metrics_listen, config.log_format), (None, LogFormat::Text));
        let observed = parse(&format!("{SERVICE}[metrics]\nlisten = \"127.0.0.1:9465\"\n[log]\nformat = \"json\"\n"));
        let observed = observed.expect("valid");
        assert_eq!(observed.metrics_listen, Some(SocketAddr::from(([127, 0, 0, 1], 9465))));
        assert_eq!(observed.log_format, LogFormat::Json);
        assert_eq!(config.worker_threads, None, "sized from the host at start");
        let sized = parse(&format!("worker_threads = 3\n{SERVICE}")).expect("valid");
        assert_eq!(sized.worker_threads, NonZeroUsize::new(3));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (format!("conect_timeout = \"1s\"\n{SERVICE}"), "conect_timeout"),
            (format!("connect_timeout = \"soon\"\n{SERVICE}"), "connect_timeout"),
            (format!("connect_timeout = \"0s\"\n{SERVICE}"), "connect_timeout"),
            (format!("bundle_max_age = \"0s\"\n{SERVICE}"), "bundle_max_age"),
            (format!("bundle_max_age = \"a while\"\n{SERVICE}"), "bundle_max_age"),
            (format!("broker = \"broker.example.com\"\n{SERVICE}"), "broker"),
            ("[[service]]\nname = \"llm prod\"\nupstream = \"127.0.0.1:1\"\n".to_owned(), "service[0].name"),
            ("[[service]]\nname = \"llm\"\nupstream = \"localhost\"\n".to_owned(), "service[0].upstream"),
            ("[[service]]\nname = \"llm\"\n".to_owned(), "upstream"),
            ("[[service]]\nname = \"llm\"\nupstream = \"a:1\"\nport = 3\n".to_owned(), "port"),
            (format!("{SERVICE}{SERVICE}"), "service[1].name"),
            (String::new(), "service"),
            (format!("{SERVICE}[metrics]\nlisten = \"localhost\"\n"), "metrics.listen"),
            (format!("{SERVICE}[metrics]\nport = 1\n"), "port"),
            (format!("{SERVICE}[log]\nformat = \"xml\"\n"), "log.format"),
            (format!("worker_threads = 0\n{SERVICE}"), "worker_threads"),
            (format!("worker_threads = -2\n{SERVICE}"), "worker_threads"),
            (format!("worker_threads = \"many\"\n{SERVICE}"), "worker_threads"),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(key), "{err:?} does not name {key:?}");
            assert!(err.starts_with("connector.toml"), "{err:?} does not name the file");
        }
    }

    #[test]
    fn host_port_splits() {
        assert_eq!(split_host_port("127.0.0.1:443"), Ok(("127.0.0.1", 443)));
        assert_eq!(split_host_port("[::1]:443"), Ok(("::1", 443)));
        assert_eq!(split_host_port("broker.example.com:443"), Ok(("broker.example.com", 443)));
        for bad in ["::1:443", "host", ":443", "host:0", "host:http", "[::1:443"] {
            assert!(split_host_port(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn every_broker_replica_is_linked_once_and_the_enrolled_address_is_the_fallback() {
        let text = format!("state_dir = \"/tmp/x\"\nbroker = \"a:1\"\nbrokers = [\"b:2\", \"a:1\"]\n{SERVICE}");
        let config = ConnectorConfig::from_toml(&text, "t").expect("valid");
        assert_eq!(config.broker_addresses("enrolled:9"), vec!["a:1".to_owned(), "b:2".to_owned()]);
        let config = ConnectorConfig::from_toml(&format!("state_dir = \"/tmp/x\"\n{SERVICE}"), "t").expect("valid");
        assert_eq!(config.broker_addresses("enrolled:9"), vec!["enrolled:9".to_owned()]);
        let err = ConnectorConfig::from_toml(&format!("brokers = [\"b:2\", \"no-port\"]\n{SERVICE}"), "t")
            .expect_err("a replica without a port");
        assert!(err.to_string().contains("brokers[1]"), "{err}");
    }
}
