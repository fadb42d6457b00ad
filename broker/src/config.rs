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
use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
    "ca.kek_file",
    "relay.connect_timeout",
    "relay.udp_buffer_bytes",
    "relay.max_connections",
    "relay.max_connections_per_identity",
    "relay.retry",
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
}

/// `[audit]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuditConfig {
    /// `[[audit.sinks]]`: each streams every event, in seq order, at least once.
    pub sinks: Vec<AuditSinkConfig>,
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
    oidc: Option<Value>,
    login: Option<Value>,
    audit: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    sinks: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: Option<Value>,
    r#type: Option<Value>,
    url: Option<Value>,
    bearer_token: Option<Value>,
    address: Option<Value>,
    tls: Option<Value>,
    ca_file: Option<Value>,
    batch_size: Option<Value>,
    max_backoff: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Option<Value>,
    client_id: Option<Value>,
    client_secret: Option<Value>,
    scopes: Option<Value>,
    groups_claim: Option<Value>,
    allowed_email_domains: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    session_ttl: Option<Value>,
    user_ttl: Option<Value>,
    trusted_proxies: Option<Value>,
    public_url: Option<Value>,
    ceremony_ttl: Option<Value>,
    device_code_ttl: Option<Value>,
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
    max_connections: Option<Value>,
    max_connections_per_identity: Option<Value>,
    retry: Option<Value>,
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
        let oidc = match self.oidc {
            None => None,
            Some(v) => Some(oidc_section(section("oidc", Some(v))?)?),
        };
        let login = login_section(section("login", self.login)?)?;
        let audit: RawAudit = section("audit", self.audit)?;
        let sinks = audit.sinks.unwrap_or_default().into_iter().enumerate().map(|(i, v)| audit_sink(i, v, base));
        Ok(Config {
            oidc,
            login,
            audit: AuditConfig { sinks: sinks.collect::<Result<_, _>>()? },
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
                max_connections: opt(relay.max_connections, |v| size("relay.max_connections", v))?.unwrap_or(10_000),
                max_connections_per_identity: opt(relay.max_connections_per_identity, |v| {
                    size("relay.max_connections_per_identity", v)
                })?
                .unwrap_or(64),
                retry: opt(relay.retry, retry_policy)?.unwrap_or(RetryPolicy::UnderLoad),
            },
            data_dir,
        })
    }
}

fn oidc_section(raw: RawOidc) -> Result<OidcConfig, ConfigError> {
    let required = |key: &str, v: Option<Value>| {
        v.ok_or_else(|| invalid(key, "missing: [oidc] needs issuer, client_id and client_secret"))
    };
    let issuer = string("oidc.issuer", required("oidc.issuer", raw.issuer)?)?;
    let client_id = string("oidc.client_id", required("oidc.client_id", raw.client_id)?)?;
    let client_secret = Secret::new(string("oidc.client_secret", required("oidc.client_secret", raw.client_secret)?)?);
    let scopes = opt(raw.scopes, |v| word_list("oidc.scopes", v))?
        .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
    let groups_claim = opt(raw.groups_claim, |v| string("oidc.groups_claim", v))?.unwrap_or_else(|| "groups".into());
    let allowed_email_domains = opt(raw.allowed_email_domains, |v| string_list("oidc.allowed_email_domains", v))?
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
        .collect();
    Ok(OidcConfig { issuer, client_id, client_secret, scopes, groups_claim, allowed_email_domains })
}

fn login_section(raw: RawLogin) -> Result<LoginConfig, ConfigError> {
    let d = LoginConfig::default();
    Ok(LoginConfig {
        session_ttl: opt(raw.session_ttl, |v| duration("login.session_ttl", v))?.unwrap_or(d.session_ttl),
        user_ttl: opt(raw.user_ttl, |v| duration("login.user_ttl", v))?.unwrap_or(d.user_ttl),
        trusted_proxies: opt(raw.trusted_proxies, |v| ip_list("login.trusted_proxies", v))?.unwrap_or_default(),
        public_url: opt(raw.public_url, |v| url("login.public_url", v))?,
        ceremony_ttl: opt(raw.ceremony_ttl, |v| duration("login.ceremony_ttl", v))?.unwrap_or(d.ceremony_ttl),
        device_code_ttl: opt(raw.device_code_ttl, |v| duration("login.device_code_ttl", v))?
            .unwrap_or(d.device_code_ttl),
    })
}

fn url(key: &str, v: Value) -> Result<Url, ConfigError> {
    let s = string(key, v)?;
    Url::parse(&s).map_err(|e| invalid(key, format!("invalid URL {s:?}: {e}")))
}

fn ip_list(key: &str, v: Value) -> Result<Vec<IpAddr>, ConfigError> {
    string_list(key, v)?
        .into_iter()
        .map(|s| s.parse().map_err(|_| invalid(key, format!("{s:?} is not an IP address"))))
        .collect()
}

/// A list given as a TOML array, or a string split on commas or spaces (`openid email profile`).
fn word_list(key: &str, v: Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::String(s) => {
            Ok(s.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        }
        other => string_list(key, other),
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

fn audit_sink(i: usize, v: Value, base: &Path) -> Result<AuditSinkConfig, ConfigError> {
    let key = format!("audit.sinks[{i}]");
    if !v.is_table() {
        return Err(invalid(&key, "must be a table with name and type"));
    }
    let raw = RawSink::deserialize(v).map_err(|e| invalid(&key, e.message().to_owned()))?;
    let k = |field: &str| format!("{key}.{field}");
    let name = string(&k("name"), raw.name.ok_or_else(|| invalid(&k("name"), "missing"))?)?;
    check_name("sink name", &name).map_err(|e| invalid(&k("name"), e.to_string()))?;
    let kind =
        string(&k("type"), raw.r#type.ok_or_else(|| invalid(&k("type"), "missing: \"webhook\" or \"syslog\""))?)?;
    let (webhook_only, syslog_only) =
        (raw.url.is_some() || raw.bearer_token.is_some(), raw.address.is_some() || raw.tls.is_some());
    let target = match kind.as_str() {
        "webhook" if !syslog_only => {
            let url = url(&k("url"), raw.url.ok_or_else(|| invalid(&k("url"), "missing"))?)?;
            let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if url.scheme() != "https" && !(url.scheme() == "http" && local) {
                return Err(invalid(&k("url"), format!("{url} must be https:// (http:// only to localhost)")));
            }
            let bearer_token = opt(raw.bearer_token, |v| string(&k("bearer_token"), v).map(Secret::new))?;
            AuditSinkTarget::Webhook { url, bearer_token }
        }
        "syslog" if !webhook_only => {
            let address = string(&k("address"), raw.address.ok_or_else(|| invalid(&k("address"), "missing"))?)?;
            check_host_port(&k("address"), &address)?;
            let tls = opt(raw.tls, |v| v.as_bool().ok_or_else(|| invalid(&k("tls"), "expected true or false")))?;
            AuditSinkTarget::Syslog { address, tls: tls.unwrap_or(false) }
        }
        "webhook" | "syslog" => {
            return Err(invalid(
                &key,
                format!(
                    "a {kind} sink takes {}",
                    if kind == "webhook" {
                        "url and bearer_token, not address or tls"
                    } else {
                        "address and tls, not url or bearer_token"
                    }
                ),
            ));
        }
        other => return Err(invalid(&k("type"), format!("{other:?} is not one of \"webhook\", \"syslog\""))),
    };
    let ca_file = opt(raw.ca_file, |v| path(&k("ca_file"), v, base))?;
    let needs_ca = match &target {
        AuditSinkTarget::Webhook { url, .. } => url.scheme() == "https",
        AuditSinkTarget::Syslog { tls, .. } => *tls,
    };
    if needs_ca && ca_file.is_none() {
        return Err(invalid(&k("ca_file"), "missing: TLS to the receiver needs the CA that signed its certificate"));
    }
    let batch_size = opt(raw.batch_size, |v| size(&k("batch_size"), v))?.unwrap_or(100);
    if !(1..=10_000).contains(&batch_size) {
        return Err(invalid(&k("batch_size"), "must be between 1 and 10000"));
    }
    let max_backoff = opt(raw.max_backoff, |v| duration(&k("max_backoff"), v))?.unwrap_or(Duration::from_secs(60));
    if max_backoff < Duration::from_millis(100) || max_backoff > Duration::from_secs(3600) {
        return Err(invalid(&k("max_backoff"), "must be between 100ms and 1h"));
    }
    Ok(AuditSinkConfig { name, target, ca_file, batch_size, max_backoff })
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

fn retry_policy(v: Value) -> Result<RetryPolicy, ConfigError> {
    match string("relay.retry", v)?.as_str() {
        "always" => Ok(RetryPolicy::Always),
        "under_load" => Ok(RetryPolicy::UnderLoad),
        other => Err(invalid("relay.retry", format!("{other:?} is not one of \"always\", \"under_load\""))),
    }
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

#[cfg(test)]
mod login_tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_toml_str(text, Path::new("/data"), &env)
    }

    #[test]
    fn oidc_and_login_sections_parse_with_defaults_and_env() {
        let text = "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"palisade\"\n\
                    allowed_email_domains = [\"@Example.com\"]\n[login]\ntrusted_proxies = [\"10.0.0.1\"]\n";
        let config =
            parse(text, &[("PALISADE_OIDC__CLIENT_SECRET", "s3cret"), ("PALISADE_LOGIN__USER_TTL", "1h")]).unwrap();
        let oidc = config.oidc.clone().unwrap();
        assert_eq!(oidc.client_secret.expose(), "s3cret");
        assert_eq!(format!("{oidc:?}").matches("s3cret").count(), 0, "Debug hides the secret");
        assert_eq!(oidc.scopes, ["openid", "email", "profile"]);
        assert_eq!(oidc.groups_claim, "groups");
        assert_eq!(oidc.allowed_email_domains, ["example.com"]);
        assert_eq!(config.login.user_ttl, Duration::from_secs(3600));
        assert_eq!(config.login.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.login.trusted_proxies, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(config.public_url().as_str(), "https://localhost:8443/");
        assert!(parse("", &[]).unwrap().oidc.is_none());
    }

    #[test]
    fn bad_login_settings_name_their_key() {
        let cases = [
            ("[oidc]\nclient_id = \"x\"\nclient_secret = \"y\"\n", "oidc.issuer"),
            ("[oidc]\nissuer = \"http://idp.example.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\n", "oidc.issuer"),
            (
                "[oidc]\nissuer = \"https://i\"\nclient_id = \"x\"\nclient_secret = \"y\"\nscopes = \"email\"\n",
                "oidc.scopes",
            ),
            ("[oidc]\nissuer = \"https://i\"\nclient_id = \"x\"\nclient_secret = \"y\"\nbogus = 1\n", "oidc"),
            ("[login]\npublic_url = \"http://broker.example.com\"\n", "login.public_url"),
            ("[login]\ntrusted_proxies = [\"proxy\"]\n", "login.trusted_proxies"),
            ("[login]\nsession_ttl = \"0s\"\n", "login.session_ttl"),
        ];
        for (text, key) in cases {
            let err = parse(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }
}

#[cfg(test)]
mod audit_sink_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/data"), &[])
    }

    #[test]
    fn audit_sinks_parse_with_defaults() {
        let text = "[[audit.sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"https://siem.example.com/in\"\n\
                    bearer_token = \"tok3n\"\nca_file = \"siem-ca.pem\"\n\
                    [[audit.sinks]]\nname = \"syslog\"\ntype = \"syslog\"\naddress = \"127.0.0.1:514\"\n";
        let config = parse(text).unwrap();
        let [siem, syslog] = config.audit.sinks.as_slice() else { panic!("two sinks") };
        assert!(!format!("{siem:?}").contains("tok3n"), "Debug hides the token");
        assert_eq!(siem.ca_file.as_deref(), Some(Path::new("/data/siem-ca.pem")));
        assert_eq!((siem.batch_size, siem.max_backoff), (100, Duration::from_secs(60)));
        assert_eq!(syslog.target, AuditSinkTarget::Syslog { address: "127.0.0.1:514".into(), tls: false });
        assert!(parse("").unwrap().audit.sinks.is_empty());
    }

    #[test]
    fn bad_audit_sinks_name_their_key() {
        let hook = "[[audit.sinks]]\nname = \"s\"\ntype = \"webhook\"\n";
        let cases = [
            (format!("{hook}url = \"http://siem.example.com/\"\n"), "audit.sinks[0].url"),
            (format!("{hook}url = \"https://siem.example.com/\"\n"), "audit.sinks[0].ca_file"),
            (format!("{hook}url = \"http://127.0.0.1:9/\"\nbatch_size = 0\n"), "audit.sinks[0].batch_size"),
            (format!("{hook}url = \"http://127.0.0.1:9/\"\naddress = \"a:1\"\n"), "audit.sinks[0]"),
            (format!("{hook}url = \"http://127.0.0.1:9/\"\nbogus = 1\n"), "audit.sinks[0]"),
            ("[[audit.sinks]]\nname = \"s\"\ntype = \"kafka\"\n".to_owned(), "audit.sinks[0].type"),
            (
                "[[audit.sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"nope\"\n".to_owned(),
                "audit.sinks[0].address",
            ),
            (
                "[[audit.sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"h:1\"\ntls = true\n".to_owned(),
                "audit.sinks[0].ca_file",
            ),
            (format!("{hook}url = \"http://localhost/\"\n{hook}url = \"http://localhost/\"\n"), "audit.sinks[1].name"),
            ("[audit]\nsinkz = []\n".to_owned(), "audit"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }
}
