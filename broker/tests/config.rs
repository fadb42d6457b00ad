//! `broker.toml`: defaults, environment overrides, and errors that name the key.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use palisade_broker::config::{Config, ConfigError};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/palisade"), &[])
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Config::from_toml_str(text, Path::new("/etc/palisade"), &env)
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.data_dir, Path::new("/etc/palisade"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.server_names, ["localhost", "127.0.0.1"]);
    assert_eq!(c.policy_dir, Path::new("/etc/palisade/policies"));
    assert_eq!(c.database_url(), "sqlite:///etc/palisade/palisade.db");
    assert_eq!(c.quic_public_addr(), "127.0.0.1:8443");
    assert_eq!(c.certificates.machine_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(c.certificates.connector_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.relay.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.relay.udp_buffer_bytes, 4 << 20);
    assert_eq!(c.relay.retry_token_lifetime, Duration::from_secs(15));
    assert!(c.services.is_empty() && c.ca.kek_file.is_none());
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let c = parse("data_dir = \"data\"\npolicy_dir = \"../pol\"\n[ca]\nkek_file = \"/run/secrets/kek\"").unwrap();
    assert_eq!(c.data_dir, Path::new("/etc/palisade/data"));
    assert_eq!(c.policy_dir, Path::new("/etc/palisade/../pol"));
    assert_eq!(c.ca.kek_file.as_deref(), Some(Path::new("/run/secrets/kek")));
}

#[test]
fn errors_name_the_key_and_the_reason() {
    assert_eq!(
        error("[certificates]\nmachine_ttl = \"8x\""),
        "certificates.machine_ttl: invalid duration \"8x\": expected a number with a unit such as 15m or 8h"
    );
    assert!(error("listen = \"localhost\"").starts_with("listen: invalid address \"localhost\""));
    assert!(error("[certificates]\nconnector_ttl = \"31days\"").starts_with("certificates.connector_ttl:"));
    assert!(error("[certificates]\nconnector_ttl = \"0s\"").starts_with("certificates.connector_ttl:"));
    assert!(error("[relay]\nconnect_timeout = \"0s\"").starts_with("relay.connect_timeout:"));
    assert!(error("[relay]\nudp_buffer_bytes = \"lots\"").starts_with("relay.udp_buffer_bytes:"));
    assert_eq!(
        error("[relay]\nretry_token_lifetime = \"0s\""),
        "relay.retry_token_lifetime: must be between 1s and 1m"
    );
    assert!(error("[relay]\nretry_token_lifetime = \"2m\"").starts_with("relay.retry_token_lifetime:"));
    assert!(error("public_addr = \"no-port\"").starts_with("public_addr:"));
    assert!(error("server_names = [\"bad name\"]").starts_with("server_names:"));
    assert!(error("listen = 8443").contains("listen: expected a string, found integer"));
}

#[test]
fn unknown_keys_are_refused() {
    assert!(error("listn = \"127.0.0.1:1\"").contains("unknown field `listn`"));
    let nested = error("[certificates]\nmachine_tl = \"1h\"");
    assert!(nested.starts_with("certificates:") && nested.contains("machine_tl"), "{nested}");
    assert!(error("[[services]]\nname = \"a\"\nsegment = \"b\"\nport = 1").starts_with("services[0]:"));
}

#[test]
fn syntax_errors_say_so() {
    assert!(matches!(parse("listen = "), Err(ConfigError::Syntax { .. })));
}

#[test]
fn services_are_checked() {
    let ok = parse("[[services]]\nname = \"llm-prod\"\nsegment = \"inference\"\nprotocol = \"http\"\nlabels = [\"gpu\"]\n[[services]]\nname = \"vec\"\nsegment = \"db\"").unwrap();
    assert_eq!(ok.services.len(), 2);
    assert_eq!(ok.services[1].protocol, "tcp");
    assert_eq!(ok.services[0].labels, ["gpu"]);
    let dup = error("[[services]]\nname = \"a\"\nsegment = \"s\"\n[[services]]\nname = \"a\"\nsegment = \"s\"");
    assert!(dup.starts_with("services[1].name:") && dup.contains("twice"), "{dup}");
    assert!(error("[[services]]\nname = \"a b\"\nsegment = \"s\"").starts_with("services[0].name:"));
    assert!(error("[[services]]\nname = \"a\"\nsegment = \"s/t\"").starts_with("services[0].segment:"));
    assert!(
        error("[[services]]\nname = \"a\"\nsegment = \"s\"\nprotocol = \"udp\"").starts_with("services[0].protocol:")
    );
}

#[test]
fn environment_overrides_the_file() {
    let env = [
        ("PALISADE_LISTEN", "0.0.0.0:9443"),
        ("PALISADE_CERTIFICATES__MACHINE_TTL", "15m"),
        ("PALISADE_RELAY__UDP_BUFFER_BYTES", "8388608"),
        ("PALISADE_RELAY__RETRY_TOKEN_LIFETIME", "3s"),
        ("PALISADE_SERVER_NAMES", "broker.example.com, 10.0.0.5"),
        ("PALISADE_PUBLIC_ADDR", "broker.example.com:443"),
        ("PALISADE_DATA_DIR", "state"),
        ("PALISADE_CA_KEK", "not-a-config-key"),
        ("PALISADE_LOG", "debug"),
    ];
    let c = parse_env("listen = \"127.0.0.1:1\"\n[certificates]\nmachine_ttl = \"1h\"", &env).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:9443");
    assert_eq!(c.certificates.machine_ttl, Duration::from_secs(900));
    assert_eq!(c.relay.udp_buffer_bytes, 8 << 20);
    assert_eq!(c.relay.retry_token_lifetime, Duration::from_secs(3));
    assert_eq!(c.server_names, ["broker.example.com", "10.0.0.5"]);
    assert_eq!(c.quic_public_addr(), "broker.example.com:443");
    assert_eq!(c.data_dir, Path::new("/etc/palisade/state"));
}

#[test]
fn a_bad_environment_value_names_the_key() {
    let err = parse_env("", &[("PALISADE_CERTIFICATES__CONNECTOR_TTL", "soon")]).unwrap_err().to_string();
    assert!(err.starts_with("certificates.connector_ttl: invalid duration \"soon\""), "{err}");
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../deploy/broker.example.toml");
    let c = parse(text).unwrap();
    assert!(!c.services.is_empty());
    assert!(!c.alerts.throttle_after_alert, "the example keeps throttling off, as the default");
}

#[test]
fn alerts_throttle_is_off_by_default_and_checked() {
    let c = parse("").unwrap();
    assert!(!c.alerts.throttle_after_alert);
    assert_eq!(c.alerts.throttle_requests_per_minute, 6);
    let c = parse("[alerts]\nthrottle_after_alert = true\nthrottle_requests_per_minute = 2").unwrap();
    assert!(c.alerts.throttle_after_alert);
    assert_eq!(c.alerts.throttle_requests_per_minute, 2);
    for (text, key) in [
        ("[alerts]\nthrottle_requests_per_minute = 0", "alerts.throttle_requests_per_minute:"),
        ("[alerts]\nthrottle_requests_per_minute = -3", "alerts.throttle_requests_per_minute:"),
        ("[alerts]\nthrottle_requests_per_minute = 10001", "alerts.throttle_requests_per_minute:"),
        ("[alerts]\nthrottle_after_alert = \"yes\"", "alerts.throttle_after_alert:"),
        ("[alerts]\nthrottle_requests_per_minute = \"many\"", "alerts.throttle_requests_per_minute:"),
        ("[alerts]\nthrottle_rate = 5", "alerts:"),
        ("alerts = 5", "alerts: must be a table"),
    ] {
        let err = error(text);
        assert!(err.starts_with(key), "{text:?}: {err:?} does not name {key}");
    }
    let env =
        [("PALISADE_ALERTS__THROTTLE_AFTER_ALERT", "true"), ("PALISADE_ALERTS__THROTTLE_REQUESTS_PER_MINUTE", "3")];
    let c = parse_env("", &env).unwrap();
    assert!(c.alerts.throttle_after_alert);
    assert_eq!(c.alerts.throttle_requests_per_minute, 3);
    let err = parse_env("", &[("PALISADE_ALERTS__THROTTLE_AFTER_ALERT", "on")]).unwrap_err().to_string();
    assert!(err.starts_with("alerts.throttle_after_alert:"), "{err}");
}
