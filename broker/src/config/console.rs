//! `[console]`: who administers the broker from the web console, and how
//! fresh their second factor must be for a change.
//!
//! ```toml
//! [console]
//! admin_groups = ["palisade-admins"]   # IdP groups whose members are admins
//! admin_users = ["ops@example.com"]    # local admins, by email or name
//! step_up = "5m"                       # a write needs a WebAuthn proof this recent
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::{ConfigError, invalid};

/// Longest `console.step_up` accepted: a proof older than this is not "fresh".
const MAX_STEP_UP: Duration = Duration::from_secs(3600);

/// `[console]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Members of any of these groups are admins.
    pub admin_groups: Vec<String>,
    /// These people (email or identity name) are admins.
    pub admin_users: Vec<String>,
    /// How recent the WebAuthn proof behind an admin write must be. Default 5 min.
    pub step_up: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { admin_groups: Vec::new(), admin_users: Vec::new(), step_up: Duration::from_secs(300) }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    admin_groups: Option<Vec<String>>,
    admin_users: Option<Vec<String>>,
    step_up: Option<String>,
}

/// Parses the `[console]` table.
pub(super) fn build(v: Option<Value>) -> Result<ConsoleConfig, ConfigError> {
    let raw: RawConsole = match v {
        None => RawConsole::default(),
        Some(v @ Value::Table(_)) => v.try_into().map_err(|e: toml::de::Error| invalid("console", e.message()))?,
        Some(_) => return Err(invalid("console", "must be a table")),
    };
    let defaults = ConsoleConfig::default();
    let step_up = match raw.step_up {
        None => defaults.step_up,
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| invalid("console.step_up", format!("{e}; write e.g. \"5m\"")))?,
    };
    if step_up.is_zero() || step_up > MAX_STEP_UP {
        return Err(invalid("console.step_up", "must be between 1s and 1h"));
    }
    let clean = |key: &str, list: Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let list = list.unwrap_or_default();
        if list.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(key, "entries must not be empty"));
        }
        Ok(list)
    };
    Ok(ConsoleConfig {
        admin_groups: clean("console.admin_groups", raw.admin_groups)?,
        admin_users: clean("console.admin_users", raw.admin_users)?,
        step_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_section_parses_and_rejects_bad_values() {
        let table: Value = toml::from_str("admin_groups = [\"ops\"]\nstep_up = \"2m\"").expect("toml");
        let c = build(Some(table)).expect("valid");
        assert_eq!(c.admin_groups, vec!["ops".to_owned()]);
        assert_eq!(c.step_up, Duration::from_secs(120));
        assert_eq!(build(None).expect("default"), ConsoleConfig::default());
        for bad in ["step_up = \"2h\"", "admin_groups = [\"\"]", "unknown = 1", "step_up = \"soon\""] {
            let table: Value = toml::from_str(bad).expect("toml");
            assert!(build(Some(table)).is_err(), "{bad}");
        }
    }
}
