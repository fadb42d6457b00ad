//! `[alerts]`: what the broker does when an extraction or abuse alert fires.
//!
//! ```toml
//! [alerts]
//! throttle_after_alert = true        # default false: alerts are only audited
//! throttle_requests_per_minute = 6   # the alerted identity's rate on that service (1 .. 10000)
//! ```
//!
//! Both can be set from the environment (`PALISADE_ALERTS__THROTTLE_AFTER_ALERT=true`,
//! `PALISADE_ALERTS__THROTTLE_REQUESTS_PER_MINUTE=6`). A throttle holds until an admin clears it (`palisade-broker alerts clear`);
//! see `crate::control::throttle`.

use serde::Deserialize;
use toml::Value;

use super::{ConfigError, invalid};

/// The highest throttle rate accepted; above it a throttle would not slow anybody.
const MAX_PER_MINUTE: u32 = 10_000;

/// `[alerts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Whether an `alert.model_extraction` throttles the identity on the
    /// service until an admin clears it. Default off.
    pub throttle_after_alert: bool,
    /// Requests per minute a throttled identity may make to the service. Default 6.
    pub throttle_requests_per_minute: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { throttle_after_alert: false, throttle_requests_per_minute: 6 }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    throttle_after_alert: Option<Value>,
    throttle_requests_per_minute: Option<Value>,
}

/// Parses the `[alerts]` table (values from the environment are strings).
pub(super) fn alerts(v: Option<Value>) -> Result<AlertsConfig, ConfigError> {
    let raw: RawAlerts = match v {
        None => RawAlerts::default(),
        Some(v @ Value::Table(_)) => v.try_into().map_err(|e: toml::de::Error| invalid("alerts", e.message()))?,
        Some(_) => return Err(invalid("alerts", "must be a table")),
    };
    let mut config = AlertsConfig::default();
    if let Some(on) = raw.throttle_after_alert {
        config.throttle_after_alert = match on {
            Value::Boolean(on) => on,
            Value::String(s) if s == "true" || s == "false" => s == "true",
            other => return Err(invalid("alerts.throttle_after_alert", format!("{other}: expected true or false"))),
        };
    }
    if let Some(rate) = raw.throttle_requests_per_minute {
        let number = match &rate {
            Value::Integer(n) => Some(*n),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        config.throttle_requests_per_minute = number
            .and_then(|n| u32::try_from(n).ok())
            .filter(|r| (1..=MAX_PER_MINUTE).contains(r))
            .ok_or_else(|| {
                invalid(
                    "alerts.throttle_requests_per_minute",
                    format!("{rate}: must be between 1 and {MAX_PER_MINUTE}"),
                )
            })?;
    }
    Ok(config)
}
