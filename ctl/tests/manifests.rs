//! The manifests in deploy/kubernetes, parsed into k8s-openapi types, checked for what matters:
//! no privileged container, every capability listed with a reason, resources set, probes on
//! the gRPC health service, tolerations for every taint, and RBAC that only reads. The dry run
//! of `sondectl deploy` must print the same objects, with the user's options.

use std::process::Command;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize as _;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

fn text(file: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{file}")).expect("manifest")
}

/// The YAML documents of `text`, each as a JSON value.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde_json::Value::deserialize(document).expect("YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone()).expect("a valid Kubernetes object of its kind")
}

/// What the daemon's container may do, checked on any rendering of the DaemonSet.
fn check_daemonset(daemonset: &DaemonSet) {
    let spec = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(
        spec.host_network,
        Some(true),
        "the node's network namespace"
    );
    assert_eq!(spec.host_pid, Some(true), "pods' namespaces through /proc");
    assert!(spec.termination_grace_period_seconds >= Some(15));
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    let container = &spec.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_ne!(security.privileged, Some(true), "never privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut added = capabilities.add.clone().expect("added capabilities");
    added.sort();
    assert_eq!(
        added,
        [
            "BPF",
            "NET_ADMIN",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_NICE",
            "SYS_PTRACE"
        ]
    );
    let resources = container.resources.as_ref().expect("resources");
    for set in [&resources.requests, &resources.limits] {
        let set = set.as_ref().expect("requests and limits");
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "{set:?}"
        );
    }
    // The kubelet's gRPC probe cannot present a certificate: the probes ask the plain
    // metrics endpoint of the same process.
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(
            http.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9470)
        );
    }
    // The daemon knows its node (from the downward API) and names its pods from a watch.
    let env = container.env.as_deref().unwrap_or_default();
    let node_from = env
        .iter()
        .find(|var| var.name == "SONDE_NODE_NAME")
        .and_then(|var| var.value_from.as_ref())
        .and_then(|from| from.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(node_from, Some("spec.nodeName"));
    let kubernetes = env.iter().find(|var| var.name == "SONDE_KUBERNETES");
    assert_eq!(
        kubernetes.and_then(|var| var.value.as_deref()),
        Some("true")
    );
    // Mutual TLS, from the daemon's Secret.
    check_tls_files(spec, container, sonde_ctl::tls::DAEMON_SECRET);
    assert!(env.iter().all(|var| var.name != "SONDE_INSECURE"));
}

/// `container` is given SONDE_TLS_CERT/KEY/CA naming the files of `secret`, mounted read-only.
fn check_tls_files(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &k8s_openapi::api::core::v1::Container,
    secret: &str,
) {
    let volume = spec
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
        .unwrap_or_else(|| panic!("a volume of Secret {secret}"));
    let mount = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.name == volume.name)
        .expect("the Secret mounted");
    assert_eq!(mount.read_only, Some(true));
    let env = container.env.as_deref().unwrap_or_default();
    for (var, file) in [
        ("SONDE_TLS_CERT", "tls.crt"),
        ("SONDE_TLS_KEY", "tls.key"),
        ("SONDE_TLS_CA", "ca.crt"),
    ] {
        let value = env
            .iter()
            .find(|v| v.name == var)
            .and_then(|v| v.value.clone());
        assert_eq!(value, Some(format!("{}/{file}", mount.mount_path)), "{var}");
    }
}

#[test]
fn every_file_is_a_valid_object_and_the_daemonset_is_least_privilege() {
    let namespace: Namespace = typed(&documents(&text("namespace.yaml"))[0]);
    assert_eq!(namespace.metadata.name.as_deref(), Some("sonde"));
    let _: ServiceAccount = typed(&documents(&text("serviceaccount.yaml"))[0]);
    let service: Service = typed(&documents(&text("service.yaml"))[0]);
    assert_eq!(
        service.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("None"),
        "headless"
    );
    check_daemonset(&typed(&documents(&text("daemonset.yaml"))[0]));
    // Every added capability has a comment on the line above saying why.
    let raw = text("daemonset.yaml");
    let lines: Vec<&str> = raw.lines().collect();
    for capability in [
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "SYS_NICE",
    ] {
        let at = lines
            .iter()
            .position(|line| line.trim() == format!("- {capability}"))
            .unwrap_or_else(|| panic!("{capability} not listed"));
        assert!(
            lines[at - 1].trim().starts_with('#'),
            "{capability} has no reason"
        );
    }
}

#[test]
fn rbac_only_reads_pods_nodes_services_and_endpointslices() {
    let rbac = documents(&text("rbac.yaml"));
    let role: ClusterRole = typed(&rbac[0]);
    let binding: ClusterRoleBinding = typed(&rbac[1]);
    assert_eq!(binding.role_ref.name, "sonde-reader");
    let mut granted = Vec::new();
    for rule in role.rules.expect("rules") {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "reads only");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.expect("groups") {
            for resource in rule.resources.clone().expect("resources") {
                granted.push(format!("{group}/{resource}"));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/nodes",
            "/pods",
            "/services",
            "discovery.k8s.io/endpointslices"
        ]
    );
}

#[test]
fn the_dry_run_prints_the_same_objects_with_the_options() {
    let output = Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args([
            "deploy",
            "--dry-run",
            "-o",
            "yaml",
            "--namespace",
            "perf",
            "--image",
            "registry.example/sonded:test",
            "--node-selector",
            "node-lifecycle=on-demand,agenttype=server",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("sondectl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = documents(&String::from_utf8(output.stdout).expect("UTF-8"));
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service"
        ]
    );
    let namespace: Namespace = typed(&objects[0]);
    assert_eq!(namespace.metadata.name.as_deref(), Some("perf"));
    let binding: ClusterRoleBinding = typed(&objects[3]);
    assert_eq!(
        binding.subjects.expect("subjects")[0].namespace.as_deref(),
        Some("perf")
    );
    let daemonset: DaemonSet = typed(&objects[4]);
    assert_eq!(daemonset.metadata.namespace.as_deref(), Some("perf"));
    check_daemonset(&daemonset);
    let spec = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.example/sonded:test")
    );
    let selector = spec.node_selector.expect("node selector");
    assert_eq!(
        selector.get("agenttype").map(String::as_str),
        Some("server")
    );
    assert_eq!(
        selector.get("node-lifecycle").map(String::as_str),
        Some("on-demand")
    );
    let _: Service = typed(&objects[5]);
}

#[test]
fn endpoints_are_an_unprivileged_daemonset_a_cluster_ip_and_a_headless_service() {
    let output = Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args([
            "deploy",
            "--dry-run",
            "-o",
            "yaml",
            "--endpoints",
            "--namespace",
            "perf",
            "--image",
            "registry.example/sonded:test",
            "--node-selector",
            "agenttype=server",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("sondectl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = documents(&String::from_utf8(output.stdout).expect("UTF-8"));
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service",
            "DaemonSet",
            "Service",
            "Service"
        ]
    );
    // The daemons are as without --endpoints.
    check_daemonset(&typed(&objects[4]));
    let endpoints: DaemonSet = typed(&objects[6]);
    assert_eq!(endpoints.metadata.namespace.as_deref(), Some("perf"));
    let spec = endpoints.spec.expect("spec");
    let labels = spec.selector.match_labels.clone().expect("selector");
    assert_eq!(
        labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("endpoint")
    );
    let pod = spec.template.spec.expect("pod spec");
    // An ordinary pod: its own network namespace, no host anything, no token, no privilege.
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert!(
        pod.tolerations
            .as_ref()
            .expect("tolerations")
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists"))
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("agenttype"))
            .map(String::as_str),
        Some("server"),
        "on the daemons' nodes"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/sonded:test")
    );
    assert_eq!(container.args.as_deref(), Some(&["sleep".to_owned()][..]));
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(capabilities.add.is_none());
    assert!(
        container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some()
    );
    // A ClusterIP Service and a headless one, both selecting the endpoint pods.
    let cluster_ip: Service = typed(&objects[7]);
    let headless: Service = typed(&objects[8]);
    for service in [&cluster_ip, &headless] {
        assert_eq!(service.metadata.namespace.as_deref(), Some("perf"));
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .expect("selector");
        assert_eq!(Some(&selector), spec.selector.match_labels.as_ref());
    }
    assert_eq!(
        cluster_ip
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref()),
        None,
        "a ClusterIP is assigned"
    );
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
}

#[test]
fn the_monitor_is_an_unprivileged_deployment_that_may_only_read_and_hold_its_lease() {
    let objects = documents(&text("monitor.yaml"));
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service"
        ]
    );
    let reader: ClusterRoleBinding = typed(&objects[1]);
    assert_eq!(
        reader.role_ref.name, "sonde-reader",
        "reads as the daemons do"
    );
    let role: k8s_openapi::api::rbac::v1::Role = typed(&objects[2]);
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["leases".to_owned()][..])
    );
    assert!(
        !rules[0].verbs.iter().any(|v| v == "delete" || v == "*"),
        "{:?}",
        rules[0].verbs
    );
    let deployment: k8s_openapi::api::apps::v1::Deployment = typed(&objects[4]);
    let spec = deployment.spec.expect("spec");
    assert!(spec.replicas >= Some(2), "a standby");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("sonde-monitor"));
    assert_ne!(pod.host_network, Some(true));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let container = &pod.containers[0];
    // It presents the client certificate of its Secret (no read of Secrets in its role).
    check_tls_files(&pod, container, sonde_ctl::tls::CLIENT_SECRET);
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(capabilities.add.is_none());
    let env = container.env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|var| var.name == "POD_NAME"),
        "the Lease identity"
    );
    // The arguments parse as sondectl's own: the Deployment runs what the CLI accepts.
    let args = container.args.clone().expect("args");
    let file = std::env::temp_dir().join(format!("sonde-monitor-args-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "name: x\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr}]\n",
    )
    .expect("scenario");
    let mut words: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "/etc/sonde/scenario/scenario.yaml" {
                file.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    words.push("--help".to_owned());
    let output = Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args(&words)
        .output()
        .expect("sondectl runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let volumes = pod.volumes.expect("volumes");
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some("sonde-monitor-scenario")
    );
}
