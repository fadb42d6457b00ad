//! `[consistency]`: how far behind the shared database a broker may fall.
//!
//! ```toml
//! [consistency]
//! max_staleness = "3s"   # longest a broker may go without confirming it is current
//! mode = "strict"        # "strict" (default): refuse new streams while stale;
//!                        # "best-effort": keep deciding on the last state, and say so
//! ```
//!
//! "Current" means the broker has read the revocation feed and the active
//! policy and catalog versions from the database recently; see `crate::sync`.

use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::{ConfigError, invalid};

/// The smallest bound accepted: below the resync interval every broker
/// would be stale half of the time.
const MIN_STALENESS: Duration = Duration::from_secs(1);
const MAX_STALENESS: Duration = Duration::from_secs(3600);

/// `[consistency]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyConfig {
    /// How long the broker's view of revocations and policy may go
    /// unconfirmed before it counts as stale. Default 3 s.
    pub max_staleness: Duration,
    /// What a stale broker does with new streams.
    pub mode: StaleMode,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self { max_staleness: Duration::from_secs(3), mode: StaleMode::Strict }
    }
}

/// `consistency.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleMode {
    /// Refuse new streams while stale (a revocation is never missed).
    Strict,
    /// Keep deciding on the last known state, log it, and report it in
    /// `/readyz` and `palisade_broker_stale` (availability first).
    BestEffort,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsistency {
    max_staleness: Option<String>,
    mode: Option<String>,
}

/// Parses the `[consistency]` table.
pub(super) fn consistency(v: Option<Value>) -> Result<ConsistencyConfig, ConfigError> {
    let raw: RawConsistency = match v {
        None => RawConsistency::default(),
        Some(v @ Value::Table(_)) => v.try_into().map_err(|e: toml::de::Error| invalid("consistency", e.message()))?,
        Some(_) => return Err(invalid("consistency", "must be a table")),
    };
    let mut config = ConsistencyConfig::default();
    if let Some(s) = raw.max_staleness {
        let d = humantime::parse_duration(&s)
            .map_err(|e| invalid("consistency.max_staleness", format!("{s:?}: {e} (write e.g. \"3s\")")))?;
        if !(MIN_STALENESS..=MAX_STALENESS).contains(&d) {
            return Err(invalid("consistency.max_staleness", "must be between 1s and 1h"));
        }
        config.max_staleness = d;
    }
    if let Some(s) = raw.mode {
        config.mode = match s.as_str() {
            "strict" => StaleMode::Strict,
            "best-effort" => StaleMode::BestEffort,
            _ => return Err(invalid("consistency.mode", format!("{s:?}: expected \"strict\" or \"best-effort\""))),
        };
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<Value> {
        Some(toml::from_str(text).expect("toml"))
    }

    #[test]
    fn defaults_to_strict_three_seconds() {
        assert_eq!(consistency(None).expect("default"), ConsistencyConfig::default());
        let c = consistency(parse("max_staleness = \"10s\"\nmode = \"best-effort\"")).expect("valid");
        assert_eq!(c, ConsistencyConfig { max_staleness: Duration::from_secs(10), mode: StaleMode::BestEffort });
    }

    #[test]
    fn bad_values_name_their_key_and_change_nothing() {
        for (text, key) in [
            ("max_staleness = \"100ms\"", "consistency.max_staleness"),
            ("max_staleness = \"soon\"", "consistency.max_staleness"),
            ("mode = \"lenient\"", "consistency.mode"),
            ("timeout = \"1s\"", "consistency"),
        ] {
            let err = consistency(parse(text)).expect_err(text).to_string();
            assert!(err.starts_with(key), "{err:?} does not name {key}");
        }
    }
}
