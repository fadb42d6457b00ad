use super::*;

mod login_tests {
    use super::*;

    pub(super) fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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

mod relay_tests {
    use super::login_tests::parse;
    use super::*;

    #[test]
    fn worker_threads_are_sized_from_the_host_unless_set() {
        assert_eq!(parse("", &[]).unwrap().relay.worker_threads, None);
        let set = parse("[relay]\nworker_threads = 4\n", &[]).unwrap();
        assert_eq!(set.relay.worker_threads, NonZeroUsize::new(4));
        let from_env = parse("[relay]\nworker_threads = 4\n", &[("PALISADE_RELAY__WORKER_THREADS", "2")]).unwrap();
        assert_eq!(from_env.relay.worker_threads, NonZeroUsize::new(2));
    }

    #[test]
    fn a_worker_count_that_is_not_one_or_more_names_its_key() {
        for text in
            ["[relay]\nworker_threads = 0\n", "[relay]\nworker_threads = -1\n", "[relay]\nworker_threads = 1.5\n"]
        {
            let err = parse(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with("relay.worker_threads") && err.contains("at least 1"), "{text}: {err}");
        }
        let err = parse("", &[("PALISADE_RELAY__WORKER_THREADS", "all")]).unwrap_err().to_string();
        assert!(err.starts_with("relay.worker_threads"), "{err}");
    }
}
