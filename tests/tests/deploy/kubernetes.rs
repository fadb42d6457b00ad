//! The Kubernetes manifests: every reference followed, pods locked down, the
//! broker as replicas on PostgreSQL, the workload reachable only from the connector.

use super::*;

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
fn kubernetes_brokers_are_replicas_behind_one_tcp_and_udp_port() {
    let m = Manifests::load();
    let broker = m.get("Deployment", "palisade-broker").expect("broker Deployment");
    assert!(at(broker, &["spec", "replicas"]).and_then(Value::as_u64).is_some_and(|n| n >= 2), "two replicas or more");
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

/// High availability as the issue asks: replicas keep no state of their own
/// (PostgreSQL from a Secret, an emptyDir data directory), share one CA and
/// audit checkpoint key mounted from a Secret, drain before the kubelet
/// kills them, keep one running through voluntary disruptions, and connectors
/// reach every replica through a headless Service named in the certificate.
#[test]
fn kubernetes_broker_replicas_share_postgresql_and_one_ca_and_drain_before_they_are_killed() {
    let m = Manifests::load();
    let broker = m.get("Deployment", "palisade-broker").expect("broker Deployment");
    let pod = at(broker, &["spec", "template", "spec"]).expect("pod spec");
    let container = &seq(pod, &["containers"])[0];
    let toml = str_at(m.get("ConfigMap", "palisade-broker-config").expect("cm"), &["data", "broker.toml"]);
    let config =
        BrokerConfig::from_toml_str(toml.expect("toml"), Path::new("/etc/palisade"), &container_env(&m, container))
            .unwrap_or_else(|e| panic!("broker ConfigMap: {e}"));
    let url = config.database_url.as_deref().expect("database_url from the environment");
    assert!(url.starts_with("postgres://"), "replicas share PostgreSQL, not {url}");
    for volume in seq(pod, &["volumes"]) {
        assert!(at(volume, &["persistentVolumeClaim"]).is_none(), "a broker replica keeps no volume of its own");
    }
    let data_dir = config.data_dir.to_str().expect("utf-8");
    let shared: BTreeSet<&str> = seq(pod, &["volumes"])
        .iter()
        .filter(|v| str_at(v, &["secret", "secretName"]) == Some("palisade-ca"))
        .filter_map(|v| str_at(v, &["name"]))
        .collect();
    for c in seq(pod, &["containers"]).iter().chain(seq(pod, &["initContainers"])) {
        for file in ["ca.pem", "ca.key.enc", "audit-signing.key"] {
            let mounted = seq(c, &["volumeMounts"]).iter().any(|mnt| {
                str_at(mnt, &["name"]).is_some_and(|n| shared.contains(n))
                    && str_at(mnt, &["subPath"]) == Some(file)
                    && str_at(mnt, &["mountPath"]) == Some(&format!("{data_dir}/{file}"))
            });
            assert!(
                mounted,
                "{file} from the shared Secret palisade-ca is in {data_dir} of {:?}",
                str_at(c, &["name"])
            );
        }
    }
    let grace = at(pod, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64).expect("grace period");
    assert!(grace > config.relay.drain_timeout.as_secs(), "{grace} s must exceed the drain timeout");
    let budget = m.of_kind("PodDisruptionBudget").find(|p| {
        at(p, &["spec", "selector", "matchLabels"]) == at(broker, &["spec", "template", "metadata", "labels"])
    });
    let min = budget.and_then(|b| at(b, &["spec", "minAvailable"])).and_then(Value::as_u64);
    assert!(min.is_some_and(|n| n >= 1), "a PodDisruptionBudget keeps a broker running");

    // Connectors link to every replica through a headless Service.
    let cm = m.get("ConfigMap", "palisade-connector-config").expect("connector ConfigMap");
    let connector = connector_config(str_at(cm, &["data", "connector.toml"]).expect("toml"), "k8s connector ConfigMap");
    let addr = connector.broker.as_deref().expect("the connector names the broker replicas");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let service_name = host.split('.').next().expect("a service name");
    let headless = m.get("Service", service_name).unwrap_or_else(|| panic!("Service {service_name}"));
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), Some("None"), "one DNS record per replica");
    assert_eq!(at(headless, &["spec", "selector"]), at(broker, &["spec", "selector", "matchLabels"]));
    assert_eq!(port.parse::<u16>().ok(), Some(config.listen.port()), "the pods' QUIC port");
    assert!(config.server_names.iter().any(|n| n == host), "{host} is in server_names");
    let init = &seq(pod, &["initContainers"])[0];
    let args: Vec<&str> = seq(init, &["args"]).iter().filter_map(Value::as_str).collect();
    assert!(args.windows(2).any(|w| w == ["--server-name", host]), "init puts {host} in each pod's certificate");
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
