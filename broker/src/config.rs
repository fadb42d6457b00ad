//! `broker.toml`, parsed once into types.
//!
//! Sources, later ones winning: built-in defaults, the TOML file, then
//! `PALISADE_*` environment variables. An environment variable names a key by
//! its path in upper case with `__` between levels: `listen` is
//! `PALISADE_LISTEN`, `certificates.machine_ttl` is
//! `PALISADE_CERTIFICATES__MACHINE_TTL`. Environment values are strings;
//! lists are comma-separated. `services` cannot be set from the environment.
//! Other `PALISADE_*` variables (`PALISADE_CA_KEK`, `PALISADE_LOG`, the
//! client's and connector's) are not configuration keys and are ignored here.
//!
//! Every error names the key and what is wrong with it. Relative paths are
//! resolved against the directory of the config file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_proto::id::{ServiceName, check_name};
use serde::Deserialize;
use toml::{Table, Value};

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const ENV_PREFIX: &str = "PALISADE_";
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "public_addr",
    "server_names",
    "policy_dir",
    "database_url",
    "certificates.machine_ttl",
    "certificates.connector_ttl",
    "ca.kek_file",
    "relay.connect_timeout",
    "relay.udp_buffer_bytes",
];

/// The broker's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the CA, the database and the admin socket live. Default: the config file's directory.
    pub data_dir: PathBuf,
    /// HTTPS on TCP and QUIC on UDP, same port. Default `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// `host:port` clients and connectors dial. Default: `listen`.
    pub public_addr: Option<String>,
    /// DNS names and IP addresses in the server certificate.
    pub server_names: Vec<String>,
    /// Cedar policy files. Default `<data_dir>/policies`.
    pub policy_dir: PathBuf,
    /// Database URL. Default `sqlite://<data_dir>/palisade.db` (see [`Config::database_url`]).
    pub database_url: Option<String>,
    /// Certificate lifetimes.
    pub certificates: CertificatesConfig,
    /// Where the CA key's encryption key comes from.
    pub ca: CaConfig,
    /// The private services connectors may serve.
    pub services: Vec<ServiceConfig>,
    /// QUIC relay tuning.
    pub relay: RelayConfig,
}

/// `[certificates]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatesConfig {
    /// Lifetime of machine certificates. Default 8 h.
    pub machine_ttl: Duration,
    /// Lifetime of connector certificates. Default 24 h.
    pub connector_ttl: Duration,
}

/// `[ca]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CaConfig {
    /// File holding the key-encryption key (base64 of 32 bytes). Without it the
    /// KEK comes from `PALISADE_CA_KEK`, else from `<data_dir>/kek`.
    pub kek_file: Option<PathBuf>,
}

/// One `[[services]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service's name, e.g. `llm-prod`.
    pub name: ServiceName,
    /// The segment it belongs to, e.g. `inference`.
    pub segment: String,
    /// `tcp` (default) or `http`.
    pub protocol: String,
    /// Free-form labels policies can test.
    pub labels: Vec<String>,
}

/// `[relay]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// How long to wait for a connector to accept a stream. Default 10 s.
    pub connect_timeout: Duration,
    /// UDP socket send and receive buffer size. Default 4 MiB.
    pub udp_buffer_bytes: usize,
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax {
        /// The file (or "config").
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a bad value or is unknown.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), reason: reason.into() }
}

impl Config {
    /// Reads `path`, applies `PALISADE_*` environment overrides and validates.
    ///
    /// # Errors
    /// The file cannot be read, or [`Config::from_toml_str`] fails.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        Self::from_toml_str(&text, &base, &env).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax { origin: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parses TOML text with the given environment, resolving relative paths against `base_dir`.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or a value that does not validate.
    pub fn from_toml_str(text: &str, base_dir: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax { origin: "config".into(), message: e.to_string() })?;
        apply_env(&mut table, env)?;
        let raw = RawConfig::deserialize(table).map_err(|e| invalid("config", e.message().to_owned()))?;
        let config = raw.build(base_dir)?;
        config.validate()?;
        Ok(config)
    }

    /// The database URL, explicit or the default SQLite file in the data directory.
    #[must_use]
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| crate::db::sqlite_url(&self.data_dir.join("palisade.db")))
    }

    /// The `host:port` clients and connectors dial for QUIC.
    #[must_use]
    pub fn quic_public_addr(&self) -> String {
        self.public_addr.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The lifetime of a certificate for this role.
    #[must_use]
    pub fn ttl_for(&self, role: palisade_proto::identity::PeerRole) -> Duration {
        match role {
            palisade_proto::identity::PeerRole::Connector => self.certificates.connector_ttl,
            _ => self.certificates.machine_ttl,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_ttl("certificates.machine_ttl", self.certificates.machine_ttl)?;
        check_ttl("certificates.connector_ttl", self.certificates.connector_ttl)?;
        if self.relay.connect_timeout.is_zero() {
            return Err(invalid("relay.connect_timeout", "must be greater than zero"));
        }
        if !(64 * 1024..=1 << 30).contains(&self.relay.udp_buffer_bytes) {
            return Err(invalid("relay.udp_buffer_bytes", "must be between 65536 (64 KiB) and 1073741824 (1 GiB)"));
        }
        if self.server_names.is_empty() {
            return Err(invalid("server_names", "must name at least one DNS name or IP address"));
        }
        for name in &self.server_names {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(invalid("server_names", format!("{name:?} is not a DNS name or IP address")));
            }
        }
        if let Some(addr) = &self.public_addr {
            check_host_port("public_addr", addr)?;
        }
        check_services(&self.services)
    }
}

fn check_ttl(key: &str, ttl: Duration) -> Result<(), ConfigError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(
            key,
            format!("{} is out of range: must be more than 0 and at most 30 days", humantime::format_duration(ttl)),
        ));
    }
    Ok(())
}

fn check_host_port(key: &str, addr: &str) -> Result<(), ConfigError> {
    let bad = || invalid(key, format!("{addr:?} is not host:port, e.g. broker.example.com:8443"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !host.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

fn check_services(services: &[ServiceConfig]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, s) in services.iter().enumerate() {
        if !seen.insert(s.name.as_str()) {
            return Err(invalid(
                &format!("services[{i}].name"),
                format!("service {:?} is defined twice", s.name.as_str()),
            ));
        }
    }
    Ok(())
}

fn apply_env(table: &mut Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let path = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        if !ENV_KEYS.contains(&path.as_str()) {
            continue;
        }
        let mut node = &mut *table;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.insert(part.to_owned(), Value::String(value.clone()));
                break;
            }
            let entry = node.entry(part.to_owned()).or_insert_with(|| Value::Table(Table::new()));
            node = entry.as_table_mut().ok_or_else(|| invalid(part, format!("must be a table (set by {name})")))?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Value>,
    listen: Option<Value>,
    public_addr: Option<Value>,
    server_names: Option<Value>,
    policy_dir: Option<Value>,
    database_url: Option<Value>,
    certificates: Option<Value>,
    ca: Option<Value>,
    services: Option<Vec<Value>>,
    relay: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCertificates {
    machine_ttl: Option<Value>,
    connector_ttl: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCa {
    kek_file: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    connect_timeout: Option<Value>,
    udp_buffer_bytes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Value,
    segment: Value,
    protocol: Option<Value>,
    labels: Option<Value>,
}

fn section<T: for<'de> Deserialize<'de> + Default>(key: &str, v: Option<Value>) -> Result<T, ConfigError> {
    match v {
        None => Ok(T::default()),
        Some(v @ Value::Table(_)) => T::deserialize(v).map_err(|e| invalid(key, e.message().to_owned())),
        Some(_) => Err(invalid(key, "must be a table")),
    }
}

impl RawConfig {
    fn build(self, base: &Path) -> Result<Config, ConfigError> {
        let data_dir = opt(self.data_dir, |v| path("data_dir", v, base))?.unwrap_or_else(|| base.to_owned());
        let certs: RawCertificates = section("certificates", self.certificates)?;
        let ca: RawCa = section("ca", self.ca)?;
        let relay: RawRelay = section("relay", self.relay)?;
        Ok(Config {
            listen: opt(self.listen, |v| socket_addr("listen", v))?.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            public_addr: opt(self.public_addr, |v| string("public_addr", v))?,
            server_names: opt(self.server_names, |v| string_list("server_names", v))?
                .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]),
            policy_dir: opt(self.policy_dir, |v| path("policy_dir", v, base))?
                .unwrap_or_else(|| data_dir.join("policies")),
            database_url: opt(self.database_url, |v| string("database_url", v))?,
            certificates: CertificatesConfig {
                machine_ttl: opt(certs.machine_ttl, |v| duration("certificates.machine_ttl", v))?
                    .unwrap_or(Duration::from_secs(8 * 3600)),
                connector_ttl: opt(certs.connector_ttl, |v| duration("certificates.connector_ttl", v))?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            },
            ca: CaConfig { kek_file: opt(ca.kek_file, |v| path("ca.kek_file", v, base))? },
            services: self
                .services
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, v)| service(i, v))
                .collect::<Result<_, _>>()?,
            relay: RelayConfig {
                connect_timeout: opt(relay.connect_timeout, |v| duration("relay.connect_timeout", v))?
                    .unwrap_or(Duration::from_secs(10)),
                udp_buffer_bytes: opt(relay.udp_buffer_bytes, |v| size("relay.udp_buffer_bytes", v))?
                    .unwrap_or(4 << 20),
            },
            data_dir,
        })
    }
}

fn service(i: usize, v: Value) -> Result<ServiceConfig, ConfigError> {
    let key = format!("services[{i}]");
    if !v.is_table() {
        return Err(invalid(&key, "must be a table with name, segment and protocol"));
    }
    let raw = RawService::deserialize(v).map_err(|e| invalid(&key, e.message().to_owned()))?;
    let name_key = format!("{key}.name");
    let name: ServiceName = string(&name_key, raw.name)?.parse().map_err(|e| invalid(&name_key, format!("{e}")))?;
    let segment_key = format!("{key}.segment");
    let segment = string(&segment_key, raw.segment)?;
    check_name("segment name", &segment).map_err(|e| invalid(&segment_key, e.to_string()))?;
    let protocol_key = format!("{key}.protocol");
    let protocol = opt(raw.protocol, |v| string(&protocol_key, v))?.unwrap_or_else(|| "tcp".into());
    if protocol != "tcp" && protocol != "http" {
        return Err(invalid(&protocol_key, format!("{protocol:?} is not a protocol: use \"tcp\" or \"http\"")));
    }
    let labels = opt(raw.labels, |v| string_list(&format!("{key}.labels"), v))?.unwrap_or_default();
    Ok(ServiceConfig { name, segment, protocol, labels })
}

fn opt<T>(v: Option<Value>, f: impl FnOnce(Value) -> Result<T, ConfigError>) -> Result<Option<T>, ConfigError> {
    v.map(f).transpose()
}

fn string(key: &str, v: Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(invalid(key, format!("expected a string, found {}", other.type_str()))),
    }
}

fn path(key: &str, v: Value, base: &Path) -> Result<PathBuf, ConfigError> {
    let s = string(key, v)?;
    if s.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(base.join(s))
}

fn socket_addr(key: &str, v: Value) -> Result<SocketAddr, ConfigError> {
    let s = string(key, v)?;
    s.parse().map_err(|_| {
        invalid(key, format!("invalid address {s:?}: expected IP:PORT such as 127.0.0.1:8443 or [::]:8443"))
    })
}

fn duration(key: &str, v: Value) -> Result<Duration, ConfigError> {
    let s = string(key, v)?;
    humantime::parse_duration(&s)
        .map_err(|_| invalid(key, format!("invalid duration {s:?}: expected a number with a unit such as 15m or 8h")))
}

fn size(key: &str, v: Value) -> Result<usize, ConfigError> {
    let bad = |shown: String| invalid(key, format!("invalid size {shown}: expected a number of bytes such as 4194304"));
    match v {
        Value::Integer(n) => usize::try_from(n).map_err(|_| bad(n.to_string())),
        Value::String(s) => s.trim().parse().map_err(|_| bad(format!("{s:?}"))),
        other => Err(bad(other.type_str().to_owned())),
    }
}

fn string_list(key: &str, v: Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::String(s) => Ok(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()),
        Value::Array(items) => {
            items.into_iter().enumerate().map(|(i, item)| string(&format!("{key}[{i}]"), item)).collect()
        }
        other => Err(invalid(key, format!("expected a list of strings, found {}", other.type_str()))),
    }
}
