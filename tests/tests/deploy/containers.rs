//! The Dockerfiles (stages, users, base images) and the compose file.

use super::*;

struct Stage {
    from: String,
    lines: Vec<String>,
}

/// The stages of a Dockerfile, with continuation lines joined.
fn stages(text: &str) -> Vec<Stage> {
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(from) = line.strip_prefix("FROM ") {
            stages.push(Stage { from: from.trim().to_owned(), lines: Vec::new() });
        } else {
            stages.last_mut().expect("an instruction before FROM").lines.push(line.to_owned());
        }
    }
    stages
}

#[test]
fn dockerfiles_build_in_one_stage_and_run_as_non_root_on_a_minimal_base() {
    let workspace = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")).expect("ws");
    let rust_version = workspace.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version");
    for bin in ["palisade-broker", "palisade-connector"] {
        let name = bin.trim_start_matches("palisade-");
        let stages = stages(&read(&format!("docker/{name}.Dockerfile")));
        assert_eq!(stages.len(), 2, "{name}: a build stage and a runtime stage");
        assert!(stages[0].from.starts_with(&format!("rust:{}-", rust_version.trim_matches('"'))), "{}", stages[0].from);
        let build_alias = stages[0].from.rsplit(" AS ").next().expect("AS name");
        let runtime = &stages[1];
        assert!(runtime.from.starts_with("gcr.io/distroless/cc-debian12:nonroot"), "{name}: base {}", runtime.from);
        let user = runtime.lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("USER in the runtime stage");
        let uid = user.split(':').next().and_then(|u| u.parse::<u32>().ok()).expect("numeric USER");
        assert_ne!(uid, 0, "{name} runs as root");
        let installs = format!("COPY --from={build_alias} /out/{bin} /usr/bin/{bin}");
        assert!(runtime.lines.contains(&installs), "{name}: the binary comes from the build stage");
        let entry = format!("ENTRYPOINT [\"/usr/bin/{bin}\"]");
        assert!(runtime.lines.contains(&entry), "{name}: entrypoint is the copied binary");
        assert!(runtime.lines.iter().any(|l| l.contains("--chown=65532:65532")), "{name}: state dir owned by the user");
        let ignore = read(&format!("docker/{name}.Dockerfile.dockerignore"));
        assert!(ignore.lines().any(|l| l.trim() == "**/target"), "{name}: target/ stays out of the build context");
    }
}

// ---------------------------------------------------------------- compose

fn yaml(text: &str, origin: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{origin} is not valid YAML: {e}"))
}

fn names(list: Option<&Value>) -> Vec<String> {
    match list {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.split(':').next().expect("name").to_owned(),
                Value::Mapping(m) => m.get("source").and_then(Value::as_str).expect("source").to_owned(),
                other => panic!("unexpected list item {other:?}"),
            })
            .collect(),
        Some(Value::Mapping(m)) => m.keys().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn top_level(doc: &Value, key: &str) -> BTreeSet<String> {
    doc.get(key)
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn compose_file_references_only_what_it_defines_and_runs_palisade_locked_down() {
    let doc = yaml(&read("docker/compose.yaml"), "compose.yaml");
    let services = doc.get("services").and_then(Value::as_mapping).expect("services");
    let wanted = ["broker", "connector", "model", "postgres"];
    for name in wanted {
        assert!(services.contains_key(name), "compose.yaml has no {name} service");
    }
    let defined: BTreeMap<&str, BTreeSet<String>> =
        ["volumes", "secrets", "configs", "networks"].into_iter().map(|k| (k, top_level(&doc, k))).collect();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        for (kind, used) in ["volumes", "secrets", "configs", "networks"].map(|k| (k, names(service.get(k)))) {
            for used in used.iter().filter(|u| !u.starts_with('.') && !u.starts_with('/')) {
                assert!(defined[kind].contains(used), "service {name} uses {kind} {used}, which is not defined");
            }
        }
        if service.get("image").and_then(Value::as_str).is_some_and(|i| i.starts_with("palisade-")) {
            let user = service.get("user").and_then(Value::as_str).expect("user");
            assert_ne!(user.split(':').next(), Some("0"), "{name} runs as root");
            assert_eq!(service.get("read_only").and_then(Value::as_bool), Some(true), "{name}: read-only root");
            assert_eq!(names(service.get("cap_drop")), ["ALL"], "{name}: drops all capabilities");
        }
    }
    for file in doc.get("configs").and_then(Value::as_mapping).expect("configs").values() {
        let file = file.get("file").and_then(Value::as_str).expect("config file");
        assert!(deploy_dir().join("docker").join(file).is_file(), "config file {file} is missing");
    }
    let network = |n: &str| names(services.get(n).and_then(|s| s.get("networks")));
    assert_eq!(network("model"), ["workload"], "the model server is only on the workload network");
    assert!(network("connector").contains(&"workload".to_owned()), "the connector reaches the workload");
    assert!(!network("broker").contains(&"workload".to_owned()), "the broker does not reach the workload directly");
    let internal = doc.get("networks").and_then(|n| n.get("workload")).and_then(|w| w.get("internal"));
    assert_eq!(internal.and_then(Value::as_bool), Some(true), "the workload network is internal");
    assert!(services.get("model").and_then(|m| m.get("ports")).is_none(), "the model server publishes no port");
    let ports = names(services.get("broker").and_then(|b| b.get("ports")));
    assert_eq!(ports, ["8443", "8443"], "broker publishes one port number");
    let raw_ports = services.get("broker").and_then(|b| b.get("ports")).and_then(Value::as_sequence).expect("ports");
    for proto in ["/tcp", "/udp"] {
        assert!(raw_ports.iter().filter_map(Value::as_str).any(|p| p.ends_with(proto)), "broker port {proto}");
    }
    compose_configs_agree();
}

/// The broker and connector configs mounted by compose parse with the real
/// parsers and name the same services, and the upstream is the model server.
fn compose_configs_agree() {
    let broker = broker_config(&read("docker/broker.toml"), "docker/broker.toml");
    let connector = connector_config(&read("docker/connector.toml"), "docker/connector.toml");
    let broker_services: BTreeSet<String> = broker.services.iter().map(|s| s.name.to_string()).collect();
    for service in &connector.services {
        assert!(
            broker_services.contains(&service.name.to_string()),
            "connector serves {}, unknown to the broker",
            service.name
        );
        assert_eq!(service.upstream, "model:11434");
    }
    assert!(broker.server_names.iter().any(|n| n == "broker"), "the connector dials `broker`: it must be in the cert");
}
