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

mod alerts;
mod audit;
mod consistency;
mod console;
mod observability;

pub use alerts::AlertsConfig;
pub use audit::{AuditTrailConfig, WhenUnavailable};
pub use consistency::{ConsistencyConfig, StaleMode};
pub use console::ConsoleConfig;
pub use observability::{LogConfig, MetricsConfig};

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_proto::id::{ServiceName, check_name};
use serde::Deserialize;
use toml::{Table, Value};
use url::Url;

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
    "certificates.issuances_per_hour",
    "ca.kek_file",
    "relay.connect_timeout",
    "relay.udp_buffer_bytes",
    "relay.max_connections",
    "relay.max_connections_per_identity",
    "relay.retry",
    "relay.retry_token_lifetime",
    "relay.drain_timeout",
    "relay.worker_threads",
    "consistency.max_staleness",
    "consistency.mode",
    "alerts.throttle_after_alert",
    "alerts.throttle_requests_per_minute",
    "oidc.issuer",
    "oidc.client_id",
    "oidc.client_secret",
    "oidc.scopes",
    "oidc.groups_claim",
    "oidc.allowed_email_domains",
    "login.session_ttl",
    "login.user_ttl",
    "login.trusted_proxies",
    "login.public_url",
    "login.ceremony_ttl",
    "login.device_code_ttl",
    "metrics.listen",
    "log.format",
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
    /// The organisation's OpenID provider; without it only local (invited, passkey-only) accounts sign in.
    pub oidc: Option<OidcConfig>,
    /// Sign-in sessions and the login pages.
    pub login: LoginConfig,
    /// `[audit]`: where the trail is streamed.
    pub audit: AuditConfig,
    /// `[console]`: web console admins and step-up.
    pub console: ConsoleConfig,
    /// `[metrics]`: the Prometheus, health and readiness listener.
    pub metrics: MetricsConfig,
    /// `[log]`: the log format.
    pub log: LogConfig,
    /// `[consistency]`: how stale a replica's view may get, and what it does then.
    pub consistency: ConsistencyConfig,
    /// `[alerts]`: whether an extraction alert throttles the identity, and to what rate.
    pub alerts: AlertsConfig,
}

/// `[audit]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuditConfig {
    /// `[[audit.sinks]]`: each streams every event, in seq order, at least once.
    pub sinks: Vec<AuditSinkConfig>,
    /// Retention, checkpoints and alert thresholds (`broker/src/config/audit.rs`).
    pub trail: AuditTrailConfig,
}

/// One `[[audit.sinks]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSinkConfig {
    /// Names the sink's delivery cursor; renaming a sink starts it from the first event.
    pub name: String,
    /// Where the events go.
    pub target: AuditSinkTarget,
    /// Extra CA certificates (PEM) to trust for `https://` and syslog TLS; required for them.
    pub ca_file: Option<PathBuf>,
    /// Events per webhook request / syslog write. Default 100.
    pub batch_size: usize,
    /// Longest wait between retries while the receiver is down. Default 1 min.
    pub max_backoff: Duration,
}

/// `type` of an `[[audit.sinks]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSinkTarget {
    /// `type = "webhook"`: POST JSON lines to `url`.
    Webhook {
        /// `https://`, or `http://` to localhost / 127.0.0.1 only.
        url: Url,
        /// Sent as `Authorization: Bearer …`.
        bearer_token: Option<Secret>,
    },
    /// `type = "syslog"`: RFC 5424 over TCP with octet counting (RFC 6587), optionally TLS.
    Syslog {
        /// `host:port` of the receiver.
        address: String,
        /// Wrap the connection in TLS (RFC 5425).
        tls: bool,
    },
}

/// `[oidc]`: the broker as an OpenID Connect relying party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the provider spells it; discovery must name exactly this issuer.
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// Our client secret (`client_secret_basic`); also `PALISADE_OIDC__CLIENT_SECRET`.
    pub client_secret: Secret,
    /// Scopes to request. Default `openid email profile`.
    pub scopes: Vec<String>,
    /// The claim (ID token or userinfo) that lists the person's groups. Default `groups`.
    pub groups_claim: String,
    /// If not empty, only people whose verified email is in one of these domains may sign in.
    pub allowed_email_domains: Vec<String>,
}

/// `[login]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginConfig {
    /// How long a sign-in lasts. Default 12 h.
    pub session_ttl: Duration,
    /// Lifetime of a person's certificate, clamped to the session's end. Default 8 h.
    pub user_ttl: Duration,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies in front of the broker).
    pub trusted_proxies: Vec<IpAddr>,
    /// The broker's external `https://` URL (WebAuthn origin; its host is the RP id).
    /// Default `https://<public_addr or listen>`, with a loopback address shown as `localhost`.
    pub public_url: Option<Url>,
    /// How long a WebAuthn ceremony may take. Default 2 min.
    pub ceremony_ttl: Duration,
    /// How long a device code stays usable. Default 10 min.
    pub device_code_ttl: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            user_ttl: Duration::from_secs(8 * 3600),
            trusted_proxies: Vec::new(),
            public_url: None,
            ceremony_ttl: Duration::from_secs(120),
            device_code_ttl: Duration::from_secs(600),
        }
    }
}

/// A secret string: its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `[certificates]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatesConfig {
    /// Lifetime of machine certificates. Default 8 h.
    pub machine_ttl: Duration,
    /// Lifetime of connector certificates. Default 24 h.
    pub connector_ttl: Duration,
    /// Certificates one existing identity may be issued per hour, after a
    /// burst of 10 (renewals, a person's sign-ins). Default 60.
    pub issuances_per_hour: u32,
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
    /// QUIC connections accepted at once, all identities together; more are refused. Default 10000.
    pub max_connections: usize,
    /// QUIC connections one identity may hold at once. Default 64.
    pub max_connections_per_identity: usize,
    /// When to validate a client's address with a QUIC Retry before keeping any state for it.
    pub retry: RetryPolicy,
    /// How long the token in a QUIC Retry stays good; a client returns it one
    /// round trip later, and a token replayed after this is refused. Default 15 s.
    pub retry_token_lifetime: Duration,
    /// After SIGTERM, how long streams in progress may go on while clients
    /// move to other replicas; then the rest are closed. Default 30 s.
    pub drain_timeout: Duration,
    /// Worker threads of the async runtime, which relays the tunnels and
    /// serves everything else. Default: `TOKIO_WORKER_THREADS`, else one less
    /// than the CPUs the broker may use, at least one
    /// ([`palisade_telemetry::runtime`]).
    pub worker_threads: Option<NonZeroUsize>,
}

/// `relay.retry`: when the broker makes a new client prove its address (one
/// extra round trip) before it keeps state for the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Every new connection (strongest against spoofed floods; +1 RTT per connect).
    Always,
    /// Only while many handshakes are in progress (the default).
    UnderLoad,
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

    /// Opens (and migrates) the configured database; files that belong with
    /// it (the audit checkpoint key) live in the data directory unless it is
    /// a SQLite file, whose own directory holds them.
    ///
    /// # Errors
    /// As [`crate::db::Db::open`].
    pub async fn open_db(&self) -> Result<crate::db::Db, sqlx::Error> {
        Ok(crate::db::Db::open(&self.database_url()).await?.with_files_dir(&self.data_dir))
    }

    /// The `host:port` clients and connectors dial for QUIC.
    #[must_use]
    pub fn quic_public_addr(&self) -> String {
        self.public_addr.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The broker's external HTTPS URL: `login.public_url`, else `https://<public_addr or listen>`
    /// with a loopback or unspecified address written as `localhost` (WebAuthn needs a domain).
    #[must_use]
    pub fn public_url(&self) -> Url {
        if let Some(url) = &self.login.public_url {
            return url.clone();
        }
        let addr = self.quic_public_addr();
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "443"));
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() => "localhost".to_owned(),
            _ => host.to_owned(),
        };
        Url::parse(&format!("https://{host}:{port}/"))
            .unwrap_or_else(|_| Url::parse("https://localhost/").expect("a constant URL parses"))
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
        if self.relay.drain_timeout > Duration::from_secs(3600) {
            return Err(invalid("relay.drain_timeout", "must be at most 1h"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.relay.retry_token_lifetime) {
            return Err(invalid("relay.retry_token_lifetime", "must be between 1s and 1m"));
        }
        if self.relay.max_connections == 0 || self.relay.max_connections_per_identity == 0 {
            return Err(invalid("relay.max_connections", "connection limits must be at least 1"));
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
        check_login(&self.login)?;
        if let Some(oidc) = &self.oidc {
            check_oidc(oidc)?;
        }
        check_services(&self.services)?;
        let mut sinks = HashSet::new();
        for (i, sink) in self.audit.sinks.iter().enumerate() {
            if !sinks.insert(sink.name.as_str()) {
                return Err(invalid(
                    &format!("audit.sinks[{i}].name"),
                    format!("sink {:?} is defined twice", sink.name),
                ));
            }
        }
        Ok(())
    }
}

fn check_login(login: &LoginConfig) -> Result<(), ConfigError> {
    check_ttl("login.session_ttl", login.session_ttl)?;
    check_ttl("login.user_ttl", login.user_ttl)?;
    if login.ceremony_ttl.is_zero() || login.ceremony_ttl > Duration::from_secs(600) {
        return Err(invalid("login.ceremony_ttl", "must be more than 0 and at most 10m"));
    }
    if login.device_code_ttl.is_zero() || login.device_code_ttl > Duration::from_secs(3600) {
        return Err(invalid("login.device_code_ttl", "must be more than 0 and at most 1h"));
    }
    if let Some(url) = &login.public_url
        && (url.scheme() != "https" || url.host_str().is_none() || url.path() != "/" || url.query().is_some())
    {
        return Err(invalid(
            "login.public_url",
            format!("{url} is not an https:// origin such as https://broker.example.com:8443"),
        ));
    }
    Ok(())
}

fn check_oidc(oidc: &OidcConfig) -> Result<(), ConfigError> {
    let issuer =
        Url::parse(&oidc.issuer).map_err(|e| invalid("oidc.issuer", format!("invalid URL {:?}: {e}", oidc.issuer)))?;
    if issuer.query().is_some() || issuer.fragment().is_some() {
        return Err(invalid("oidc.issuer", "must not have a query or fragment"));
    }
    let local = issuer.host().is_some_and(|h| match h {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    });
    if issuer.scheme() != "https" && !(issuer.scheme() == "http" && local) {
        return Err(invalid("oidc.issuer", format!("{} must be an https:// URL", oidc.issuer)));
    }
    if oidc.client_id.is_empty() {
        return Err(invalid("oidc.client_id", "must not be empty"));
    }
    if oidc.client_secret.expose().is_empty() {
        return Err(invalid("oidc.client_secret", "must not be empty (or set PALISADE_OIDC__CLIENT_SECRET)"));
    }
    if !oidc.scopes.iter().any(|s| s == "openid") {
        return Err(invalid("oidc.scopes", "must include \"openid\""));
    }
    if oidc.groups_claim.is_empty() {
        return Err(invalid("oidc.groups_claim", "must not be empty"));
    }
    Ok(())
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

mod raw;
#[cfg(test)]
mod tests;

use raw::RawConfig;
