//! The files in `deploy/` checked offline: the systemd units with
//! `systemd-analyze` (verify and the offline security score), the
//! Dockerfiles' stages and users, the compose file and the Kubernetes
//! manifests parsed as YAML with every reference followed, and every config
//! they carry parsed by the real broker and connector parsers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_broker::config::Config as BrokerConfig;
use palisade_connector::ConnectorConfig;
use palisade_tests::bin_path;
use serde::Deserialize as _;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn broker_config(text: &str, origin: &str) -> BrokerConfig {
    BrokerConfig::from_toml_str(text, Path::new("/etc/palisade"), &[])
        .unwrap_or_else(|e| panic!("{origin} is not a valid broker.toml: {e}"))
}

fn connector_config(text: &str, origin: &str) -> ConnectorConfig {
    ConnectorConfig::from_toml(text, origin).unwrap_or_else(|e| panic!("{origin} is not a valid connector.toml: {e}"))
}

// ---------------------------------------------------------------- systemd

const UNITS: [(&str, &str); 2] =
    [("palisade-broker.service", "palisade-broker"), ("palisade-connector.service", "palisade-connector")];

/// CI runs on Debian with systemd installed: a missing tool fails the test
/// rather than skipping the check (scripts/setup-test-deps installs it).
fn systemd_analyze() -> PathBuf {
    let path = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(path.is_file(), "systemd-analyze is missing: run scripts/setup-test-deps (apt-get install systemd)");
    path
}

/// The units with `ExecStart` pointing at the freshly built binaries, since
/// `verify` checks that the program exists and is executable.
fn units_with_built_binaries(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|(unit, bin)| {
            let text = read(&format!("systemd/{unit}"));
            let built = bin_path(bin);
            let text = text.replace(&format!("/usr/bin/{bin} "), &format!("{} ", built.display()));
            let path = dir.join(unit);
            std::fs::write(&path, text).expect("writing the unit copy");
            path
        })
        .collect()
}

fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new(systemd_analyze()).arg("verify").args(units).output().expect("running systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_without_a_single_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_built_binaries(dir.path());
    let (ok, said) = verify(&units);
    // verify exits 0 on unknown keys and only prints them: any output is a finding.
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify found problems:\n{said}");
}

#[test]
fn systemd_analyze_verify_reports_a_misspelled_sandboxing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_built_binaries(dir.path());
    let text = std::fs::read_to_string(&units[0]).expect("unit");
    std::fs::write(&units[0], text.replace("ProtectSystem=strict", "ProtectSystm=strict")).expect("write");
    let (_, said) = verify(&units[..1]);
    assert!(said.contains("ProtectSystm"), "a typo in a sandboxing key went unnoticed:\n{said}");
}

#[test]
fn systemd_units_are_sandboxed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (unit, path) in UNITS.iter().zip(units_with_built_binaries(dir.path())) {
        let text = read(&format!("systemd/{}", unit.0));
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "CapabilityBoundingSet=\n",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(line), "{} lacks {line:?}", unit.0);
        }
        let user = directive(&text, "User").unwrap_or_else(|| panic!("{} has no User=", unit.0));
        assert!(!["root", "0", "nobody"].contains(&user.as_str()), "{} runs as {user}", unit.0);
        let state = directive(&text, "StateDirectory").expect("StateDirectory=");
        assert_eq!(directive(&text, "ReadWritePaths"), Some(format!("/var/lib/{state}")), "{}", unit.0);
        let sysusers = read("systemd/palisade.sysusers");
        assert!(sysusers.lines().any(|l| l.starts_with(&format!("u {user} "))), "sysusers does not create {user}");
        // systemd's own exposure score (0 = locked down, 10 = unprotected); fails above 2.5.
        let out = Command::new(systemd_analyze())
            .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
            .arg(&path)
            .output()
            .expect("running systemd-analyze security");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} is exposed above 2.5:\n{said}", unit.0);
    }
}

fn directive(unit: &str, key: &str) -> Option<String> {
    unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(|v| v.trim().to_owned()))
}

// ---------------------------------------------------------------- Docker

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

// ---------------------------------------------------------------- Kubernetes

struct Manifests {
    docs: Vec<Value>,
}

impl Manifests {
    fn load() -> Self {
        let mut docs = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))
            .expect("deploy/k8s")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("manifest");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                for key in ["apiVersion", "kind", "metadata"] {
                    assert!(value.get(key).is_some(), "{}: a document without {key}", file.display());
                }
                docs.push(value);
            }
        }
        Self { docs }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d.get("kind").and_then(Value::as_str) == Some(kind))
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .find(|d| str_at(d, &["metadata", "name"]) == Some(name))
    }
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(*k))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn seq<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path).and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

fn workloads(m: &Manifests) -> Vec<&Value> {
    m.of_kind("Deployment").chain(m.of_kind("Job")).collect()
}

#[test]
fn kubernetes_manifests_reference_only_objects_they_define() {
    let m = Manifests::load();
    assert!(m.get("Namespace", "palisade").is_some(), "the namespace is defined");
    for doc in &m.docs {
        let kind = str_at(doc, &["kind"]).expect("kind");
        if kind != "Namespace" {
            assert_eq!(str_at(doc, &["metadata", "namespace"]), Some("palisade"), "{kind} outside the namespace");
        }
    }
    for workload in workloads(&m) {
        let name = str_at(workload, &["metadata", "name"]).expect("name");
        let pod = at(workload, &["spec", "template", "spec"]).expect("pod spec");
        for volume in seq(pod, &["volumes"]) {
            if let Some(secret) = str_at(volume, &["secret", "secretName"]) {
                assert!(m.get("Secret", secret).is_some(), "{name} mounts missing Secret {secret}");
            }
            if let Some(config) = str_at(volume, &["configMap", "name"]) {
                assert!(m.get("ConfigMap", config).is_some(), "{name} mounts missing ConfigMap {config}");
            }
            if let Some(claim) = str_at(volume, &["persistentVolumeClaim", "claimName"]) {
                assert!(m.get("PersistentVolumeClaim", claim).is_some(), "{name} claims missing PVC {claim}");
            }
        }
        let volumes: BTreeSet<&str> = seq(pod, &["volumes"]).iter().filter_map(|v| str_at(v, &["name"])).collect();
        for container in seq(pod, &["containers"]).iter().chain(seq(pod, &["initContainers"])) {
            for mount in seq(container, &["volumeMounts"]) {
                let volume = str_at(mount, &["name"]).expect("mount name");
                assert!(volumes.contains(volume), "{name} mounts undeclared volume {volume}");
            }
            for env in seq(container, &["env"]) {
                let Some(reference) = at(env, &["valueFrom", "secretKeyRef"]) else { continue };
                let secret = str_at(reference, &["name"]).expect("secret name");
                let key = str_at(reference, &["key"]).expect("secret key");
                let object = m.get("Secret", secret).unwrap_or_else(|| panic!("{name} reads missing Secret {secret}"));
                let has = ["stringData", "data"].iter().any(|d| at(object, &[d, key]).is_some());
                assert!(has, "{name} reads key {key} that Secret {secret} does not have");
            }
        }
        let selector = at(workload, &["spec", "selector", "matchLabels"]);
        if let Some(Value::Mapping(selector)) = selector {
            let labels = at(workload, &["spec", "template", "metadata", "labels"]).expect("pod labels");
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{name}: selector does not match its pods");
            }
        }
    }
}

#[test]
fn kubernetes_pods_run_as_non_root_without_privileges() {
    let m = Manifests::load();
    let restricted = str_at(
        m.get("Namespace", "palisade").expect("ns"),
        &["metadata", "labels", "pod-security.kubernetes.io/enforce"],
    );
    assert_eq!(restricted, Some("restricted"));
    for workload in workloads(&m) {
        let name = str_at(workload, &["metadata", "name"]).expect("name");
        let pod = at(workload, &["spec", "template", "spec"]).expect("pod spec");
        assert_eq!(at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool), Some(true), "{name}");
        let uid = at(pod, &["securityContext", "runAsUser"]).and_then(Value::as_u64).expect("runAsUser");
        assert_ne!(uid, 0, "{name} runs as root");
        assert_eq!(str_at(pod, &["securityContext", "seccompProfile", "type"]), Some("RuntimeDefault"), "{name}");
        assert_eq!(at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool), Some(false), "{name}");
        for container in seq(pod, &["containers"]).iter().chain(seq(pod, &["initContainers"])) {
            let ctx = at(container, &["securityContext"]).unwrap_or_else(|| panic!("{name}: no securityContext"));
            assert_eq!(at(ctx, &["allowPrivilegeEscalation"]).and_then(Value::as_bool), Some(false), "{name}");
            assert_eq!(seq(ctx, &["capabilities", "drop"]), [Value::from("ALL")], "{name}");
            let image = str_at(container, &["image"]).expect("image");
            if image.starts_with("palisade-") {
                assert_eq!(at(ctx, &["readOnlyRootFilesystem"]).and_then(Value::as_bool), Some(true), "{name}");
            }
        }
    }
}

#[test]
fn kubernetes_broker_has_two_replicas_behind_one_tcp_and_udp_port_and_says_ha_waits_for_issue_9() {
    let m = Manifests::load();
    let broker = m.get("Deployment", "palisade-broker").expect("broker Deployment");
    assert_eq!(at(broker, &["spec", "replicas"]).and_then(Value::as_u64), Some(2));
    assert!(read("k8s/broker.yaml").contains("issue #9 and is NOT built yet"), "the HA caveat is stated");
    let service = m.get("Service", "palisade-broker").expect("broker Service");
    let ports = seq(service, &["spec", "ports"]);
    let by_proto = |p: &str| ports.iter().find(|x| str_at(x, &["protocol"]) == Some(p)).expect("port");
    let (tcp, udp) = (by_proto("TCP"), by_proto("UDP"));
    assert_eq!(at(tcp, &["port"]), at(udp, &["port"]), "HTTPS and QUIC share the port number");
    let container = &seq(broker, &["spec", "template", "spec", "containers"])[0];
    let container_ports = seq(container, &["ports"]);
    for port in [tcp, udp] {
        let target = str_at(port, &["targetPort"]).expect("named targetPort");
        let found = container_ports.iter().find(|p| str_at(p, &["name"]) == Some(target)).expect("container port");
        assert_eq!(str_at(found, &["protocol"]), str_at(port, &["protocol"]), "{target}");
    }
    let toml = str_at(m.get("ConfigMap", "palisade-broker-config").expect("cm"), &["data", "broker.toml"]);
    let env = container_env(&m, container);
    let config = BrokerConfig::from_toml_str(toml.expect("broker.toml"), Path::new("/etc/palisade"), &env)
        .unwrap_or_else(|e| panic!("the k8s broker ConfigMap with the Deployment's environment is invalid: {e}"));
    let listen_port = config.listen.port();
    let port_of = |name: &str| {
        let port = container_ports.iter().find(|p| str_at(p, &["name"]) == Some(name)).expect("container port");
        at(port, &["containerPort"]).and_then(Value::as_u64)
    };
    assert!(["https", "quic"].iter().all(|name| port_of(name) == Some(listen_port.into())));
    let metrics = config.metrics.listen.expect("[metrics] listen in the ConfigMap");
    assert_eq!(port_of("metrics"), Some(metrics.port().into()), "the metrics container port is [metrics] listen");
    let kek_file = config.ca.kek_file.expect("kek_file");
    let mounts = seq(container, &["volumeMounts"]);
    assert!(
        mounts.iter().any(|mnt| str_at(mnt, &["name"]) == Some("ca-kek")
            && str_at(mnt, &["mountPath"]).is_some_and(|p| kek_file.starts_with(p))),
        "the KEK file {} is on the ca-kek Secret mount",
        kek_file.display()
    );
}

/// The container's environment as the kubelet would set it: literal values,
/// and secretKeyRef values read from the Secret in these manifests.
fn container_env(m: &Manifests, container: &Value) -> Vec<(String, String)> {
    seq(container, &["env"])
        .iter()
        .map(|env| {
            let name = str_at(env, &["name"]).expect("env name").to_owned();
            let value = match at(env, &["valueFrom", "secretKeyRef"]) {
                Some(r) => {
                    let secret = m.get("Secret", str_at(r, &["name"]).expect("name")).expect("Secret");
                    str_at(secret, &["stringData", str_at(r, &["key"]).expect("key")]).expect("value")
                }
                None => str_at(env, &["value"]).expect("env value"),
            };
            (name, value.to_owned())
        })
        .collect()
}

#[test]
fn kubernetes_workload_accepts_traffic_only_from_the_connector() {
    let m = Manifests::load();
    let policies: Vec<&Value> = m.of_kind("NetworkPolicy").collect();
    let labels = |kind: &str, name: &str| {
        at(m.get(kind, name).expect(name), &["spec", "template", "metadata", "labels"]).cloned().expect("labels")
    };
    let (workload, connector) = (labels("Deployment", "model-server"), labels("Deployment", "palisade-connector"));
    let policy = policies
        .iter()
        .find(|p| at(p, &["spec", "podSelector", "matchLabels"]) == Some(&workload))
        .expect("a NetworkPolicy selecting the model server");
    assert_eq!(seq(policy, &["spec", "policyTypes"]), [Value::from("Ingress")]);
    let rules = seq(policy, &["spec", "ingress"]);
    assert_eq!(rules.len(), 1, "one ingress rule");
    let from = seq(&rules[0], &["from"]);
    assert_eq!(from.len(), 1, "one peer");
    assert_eq!(at(&from[0], &["podSelector", "matchLabels"]), Some(&connector), "the peer is the connector");
    assert!(at(&from[0], &["namespaceSelector"]).is_none() && at(&from[0], &["ipBlock"]).is_none());
    let port = at(&seq(&rules[0], &["ports"])[0], &["port"]).and_then(Value::as_u64).expect("port");
    let cm = m.get("ConfigMap", "palisade-connector-config").expect("connector ConfigMap");
    let config = connector_config(str_at(cm, &["data", "connector.toml"]).expect("toml"), "k8s connector ConfigMap");
    for service in &config.services {
        let (host, upstream_port) = service.upstream.rsplit_once(':').expect("host:port");
        assert!(host.starts_with("model-server."), "{host} is the model-server Service");
        assert_eq!(upstream_port.parse::<u64>().ok(), Some(port), "the policy opens the port the connector dials");
    }
}

// ---------------------------------------------------------------- Grafana

/// Every PromQL expression of the dashboard, from each panel's targets.
fn dashboard_queries() -> Vec<String> {
    let text = read("grafana/palisade.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("grafana/palisade.json is not JSON: {e}"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    assert!(!queries.is_empty(), "the dashboard queries nothing");
    queries
}

/// `palisade_…` names in a query, with a histogram's `_bucket`/`_sum`/`_count` as its base name.
fn metric_names(query: &str, histograms: &BTreeSet<&str>) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("palisade_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|b| histograms.contains(b)))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_dashboard_queries_only_series_the_programs_export_and_shows_them_all() {
    use palisade_telemetry::exposition::Series;
    let series: Vec<&Series> =
        palisade_broker::metrics::SERIES.iter().chain(palisade_connector::metrics::SERIES.iter()).collect();
    let exported: BTreeSet<&str> = series.iter().map(|s| s.name).collect();
    let histograms: BTreeSet<&str> = series.iter().filter(|s| s.metric.kind() == "histogram").map(|s| s.name).collect();
    let mut used = BTreeSet::new();
    for query in dashboard_queries() {
        let names = metric_names(&query, &histograms);
        assert!(!names.is_empty(), "{query:?} queries no palisade_ series");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "the dashboard queries {name}, which no program exports: {query}"
            );
            used.insert(name);
        }
    }
    let unused: Vec<&&str> = exported.iter().filter(|n| !used.contains(**n)).collect();
    assert!(unused.is_empty(), "exported but not on the dashboard: {unused:?}");
    let docs = std::fs::read_to_string(deploy_dir().join("../docs/operator-guide.md")).expect("operator guide");
    for name in &exported {
        assert!(docs.contains(&format!("`{name}`")), "docs/operator-guide.md does not document {name}");
    }
}

#[test]
fn metric_names_see_through_histogram_suffixes_only() {
    let histograms = BTreeSet::from(["palisade_x_seconds"]);
    let query = "histogram_quantile(0.9, rate(palisade_x_seconds_bucket[5m])) / palisade_y_count";
    assert_eq!(metric_names(query, &histograms), ["palisade_x_seconds", "palisade_y_count"]);
}

// ---------------------------------------------------------------- examples

#[test]
fn example_configs_parse_with_the_real_parsers() {
    let broker = broker_config(&read("broker.example.toml"), "deploy/broker.example.toml");
    assert!(!broker.services.is_empty());
    let connector = connector_config(&read("connector.example.toml"), "deploy/connector.example.toml");
    assert!(!connector.services.is_empty());
}

// ---------------------------------------------------------------- doctors against the real programs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doctors_report_ok_against_a_real_broker_connector_and_upstream() {
    use palisade_tests::{ALLOW_ML_AGENTS, EchoUpstream, TestEnv};

    let env = TestEnv::new();
    let broker = env.broker().service("echo", "inference").policy("allow.cedar", ALLOW_ML_AGENTS).spawn().await;
    let upstream = EchoUpstream::spawn().await;
    let connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;

    // The real broker's HTTPS answer carries a Date header, QUIC works, policy lets the agent reach `echo`.
    let text = agent.cli(&["doctor"]).await.expect_success();
    for check in ["enrollment", "certificate", "trust bundle", "https", "clock", "udp", "identity", "services"] {
        assert!(text.lines().any(|l| l.starts_with("[ ok ] ") && l[7..].starts_with(check)), "{check}:\n{text}");
    }
    assert!(text.contains("may reach echo"), "{text}");
    let json = agent.cli(&["doctor", "--json"]).await.expect_success();
    let report: serde_json::Value = serde_json::from_str(&json).expect("doctor --json");
    assert!(report["checks"].as_array().expect("checks").iter().all(|c| c["outcome"] == "ok"), "{json}");

    let config = connector.state_dir().parent().expect("connector dir").join("connector.toml");
    let out = Command::new(bin_path("palisade-connector")).arg("doctor").arg("--config").arg(&config).output();
    let out = out.expect("running palisade-connector doctor");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for check in ["config", "enrollment", "certificate", "broker https", "upstream echo"] {
        assert!(said.lines().any(|l| l.starts_with("[ ok ] ") && l[7..].starts_with(check)), "{check}:\n{said}");
    }

    // The upstream goes away: the connector's doctor says which one and fails.
    let upstream_addr = upstream.addr();
    drop(upstream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(upstream_addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the upstream kept listening after it was dropped");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = Command::new(bin_path("palisade-connector")).arg("doctor").arg("--config").arg(&config).output();
    let out = out.expect("running palisade-connector doctor");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.lines().any(|l| l.starts_with("[FAIL] upstream echo")), "{said}");
}
