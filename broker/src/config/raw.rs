//! The TOML as written: every value still a `toml::Value`, turned into the
//! typed [`Config`] key by key so that each error names its key.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    console: Option<Value>,
    metrics: Option<Value>,
    log: Option<Value>,
    consistency: Option<Value>,
    alerts: Option<Value>,
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
    issuances_per_hour: Option<Value>,
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
    retry_token_lifetime: Option<Value>,
    drain_timeout: Option<Value>,
    worker_threads: Option<Value>,
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
    pub(super) fn build(self, base: &Path) -> Result<Config, ConfigError> {
        let data_dir = opt(self.data_dir, |v| path("data_dir", v, base))?.unwrap_or_else(|| base.to_owned());
        let certs: RawCertificates = section("certificates", self.certificates)?;
        let ca: RawCa = section("ca", self.ca)?;
        let relay: RawRelay = section("relay", self.relay)?;
        let oidc = match self.oidc {
            None => None,
            Some(v) => Some(oidc_section(section("oidc", Some(v))?)?),
        };
        let login = login_section(section("login", self.login)?)?;
        let (sinks, trail) = super::audit::build(self.audit, base)?;
        let sinks = sinks.into_iter().enumerate().map(|(i, v)| audit_sink(i, v, base));
        Ok(Config {
            console: super::console::build(self.console)?,
            metrics: super::observability::metrics(self.metrics)?,
            log: super::observability::log(self.log)?,
            consistency: super::consistency::consistency(self.consistency)?,
            alerts: super::alerts::alerts(self.alerts)?,
            oidc,
            login,
            audit: AuditConfig { sinks: sinks.collect::<Result<_, _>>()?, trail },
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
                issuances_per_hour: opt(certs.issuances_per_hour, |v| size("certificates.issuances_per_hour", v))?
                    .map_or(Ok(60), u32::try_from)
                    .map_err(|_| invalid("certificates.issuances_per_hour", "must be at most 4294967295"))?,
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
                retry_token_lifetime: opt(relay.retry_token_lifetime, |v| duration("relay.retry_token_lifetime", v))?
                    .unwrap_or(Duration::from_secs(15)),
                drain_timeout: opt(relay.drain_timeout, |v| duration("relay.drain_timeout", v))?
                    .unwrap_or(Duration::from_secs(30)),
                worker_threads: opt(relay.worker_threads, |v| threads("relay.worker_threads", v))?,
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

fn threads(key: &str, v: Value) -> Result<NonZeroUsize, ConfigError> {
    let bad =
        |shown: String| invalid(key, format!("invalid thread count {shown}: expected a whole number of at least 1"));
    match v {
        Value::Integer(n) => usize::try_from(n).ok().and_then(NonZeroUsize::new).ok_or_else(|| bad(n.to_string())),
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
