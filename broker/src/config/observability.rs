//! `[metrics]` and `[log]`: how the broker is watched.
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9464"   # /metrics, /healthz, /readyz; off unless set
//!
//! [log]
//! format = "json"             # "text" (default) or "json"; --log-format wins
//! ```

use std::net::SocketAddr;

use palisade_telemetry::LogFormat;
use serde::Deserialize;
use toml::Value;

use super::{ConfigError, invalid};

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (plain HTTP). `None`: not served.
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// Text or JSON lines on stderr.
    pub format: LogFormat,
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

fn table<T: for<'de> Deserialize<'de> + Default>(key: &str, v: Option<Value>) -> Result<T, ConfigError> {
    match v {
        None => Ok(T::default()),
        Some(v @ Value::Table(_)) => v.try_into().map_err(|e: toml::de::Error| invalid(key, e.message())),
        Some(_) => Err(invalid(key, "must be a table")),
    }
}

/// Parses the `[metrics]` table.
pub(super) fn metrics(v: Option<Value>) -> Result<MetricsConfig, ConfigError> {
    let raw: RawMetrics = table("metrics", v)?;
    let listen = raw
        .listen
        .map(|s| {
            s.parse().map_err(|_| {
                invalid("metrics.listen", format!("invalid address {s:?}: expected IP:PORT such as 127.0.0.1:9464"))
            })
        })
        .transpose()?;
    Ok(MetricsConfig { listen })
}

/// Parses the `[log]` table.
pub(super) fn log(v: Option<Value>) -> Result<LogConfig, ConfigError> {
    let raw: RawLog = table("log", v)?;
    let format = raw.format.map(|s| s.parse().map_err(|e: String| invalid("log.format", e))).transpose()?;
    Ok(LogConfig { format: format.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Value {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn sections_parse_and_default_to_off_and_text() {
        assert_eq!(metrics(None).expect("default"), MetricsConfig::default());
        assert_eq!(log(None).expect("default").format, LogFormat::Text);
        let m = metrics(Some(parse("listen = \"127.0.0.1:9464\""))).expect("valid");
        assert_eq!(m.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
        assert_eq!(log(Some(parse("format = \"json\""))).expect("valid").format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (metrics(Some(parse("listen = \"localhost\""))).map(|_| ()), "metrics.listen"),
            (metrics(Some(parse("port = 1"))).map(|_| ()), "metrics"),
            (log(Some(parse("format = \"xml\""))).map(|_| ()), "log.format"),
        ];
        for (result, key) in cases {
            let err = result.expect_err(key).to_string();
            assert!(err.starts_with(key), "{err:?} does not name {key}");
        }
    }
}
