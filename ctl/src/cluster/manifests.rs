//! The manifests of `deploy/kubernetes`, compiled in, so that `sondectl deploy` applies exactly
//! what the repository ships (and the manifest test checks).

use kube::api::DynamicObject;
use serde::Deserialize as _;

use crate::error::{Context as _, refuse};

/// The files, in the order they are applied (the namespace first).
pub const FILES: [(&str, &str); 5] = [
    (
        "namespace.yaml",
        include_str!("../../../deploy/kubernetes/namespace.yaml"),
    ),
    (
        "serviceaccount.yaml",
        include_str!("../../../deploy/kubernetes/serviceaccount.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../deploy/kubernetes/rbac.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../../deploy/kubernetes/daemonset.yaml"),
    ),
    (
        "service.yaml",
        include_str!("../../../deploy/kubernetes/service.yaml"),
    ),
];

/// The measurement endpoints (`deploy --endpoints`): applied after [`FILES`] when asked for.
pub const ENDPOINT_FILES: [(&str, &str); 1] = [(
    "endpoints.yaml",
    include_str!("../../../deploy/kubernetes/endpoints.yaml"),
)];

/// The continuous monitor (`deploy --monitor`): applied after the scenario's ConfigMap.
pub const MONITOR_FILES: [(&str, &str); 1] = [(
    "monitor.yaml",
    include_str!("../../../deploy/kubernetes/monitor.yaml"),
)];

/// The ConfigMap holding the monitor's scenario, and its key (the Deployment mounts it).
pub const MONITOR_CONFIGMAP: (&str, &str) = ("sonde-monitor-scenario", "scenario.yaml");

/// The label every endpoint pod carries (scenarios find them by it).
pub const ENDPOINT_SELECTOR: &str =
    "app.kubernetes.io/name=sonde,app.kubernetes.io/component=endpoint";

/// The namespace the manifests name.
pub const DEFAULT_NAMESPACE: &str = "sonde";

/// The label every daemon pod carries (`sondectl nodes` finds them by it).
pub const DAEMON_SELECTOR: &str = "app.kubernetes.io/name=sonde,app.kubernetes.io/component=agent";

/// What a user may change when deploying.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The namespace (default `sonde`).
    pub namespace: Option<String>,
    /// The image of the daemon's container.
    pub image: Option<String>,
    /// Run only on nodes with these labels.
    pub node_selector: Vec<(String, String)>,
    /// Add the measurement endpoints (a pod on every node, a ClusterIP and a headless
    /// Service).
    pub endpoints: bool,
    /// Add the continuous monitor.
    pub monitor: Option<Monitor>,
    /// Where the daemons may send generated traffic (the manifest's 10.0.0.0/8 when `None`).
    pub allow_targets: Option<Vec<ipnet::IpNet>>,
}

/// The continuous monitor a user deploys: a scenario and how to measure it.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    /// The scenario file's text, as the user wrote it (validated before).
    pub scenario: String,
    /// Replicas of the Deployment (one leads, the others wait).
    pub replicas: u32,
    /// Arguments added to `sondectl monitor` (`--every 60s`, ...).
    pub args: Vec<String>,
}

/// Every object of the manifests, as shipped (with the endpoints' when `endpoints`).
pub fn shipped(endpoints: bool) -> crate::Result<Vec<DynamicObject>> {
    let extra: &[(&str, &str)] = if endpoints { &ENDPOINT_FILES } else { &[] };
    parse(FILES.iter().chain(extra))
}

/// The monitor's objects as shipped, after a ConfigMap holding `scenario`.
pub fn shipped_monitor(scenario: &str) -> crate::Result<Vec<DynamicObject>> {
    let (name, key) = MONITOR_CONFIGMAP;
    let configmap = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": DEFAULT_NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "sonde",
                "app.kubernetes.io/component": "monitor",
            },
        },
        "data": { key: scenario },
    });
    let mut objects = vec![serde_json::from_value(configmap).context("the monitor's ConfigMap")?];
    objects.extend(parse(MONITOR_FILES.iter())?);
    Ok(objects)
}

fn parse<'a>(
    files: impl Iterator<Item = &'a (&'a str, &'a str)>,
) -> crate::Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for &(file, text) in files {
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(document)
                .with_context(|| format!("parsing deploy/kubernetes/{file}"))?;
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_yaml::from_value(value)
                .with_context(|| format!("deploy/kubernetes/{file} is not a Kubernetes object"))?;
            objects.push(object);
        }
    }
    Ok(objects)
}

/// The objects with the user's options applied.
pub fn objects(options: &Options) -> crate::Result<Vec<DynamicObject>> {
    let mut objects = shipped(options.endpoints)?;
    if let Some(monitor) = &options.monitor {
        objects.extend(shipped_monitor(&monitor.scenario)?);
    }
    let namespace = options.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    if namespace.is_empty()
        || namespace.len() > 63
        || !namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        refuse!(
            "--namespace {namespace:?} is not a valid namespace name (lower-case letters, digits, '-')"
        );
    }
    for object in &mut objects {
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        match kind.as_str() {
            "Namespace" => object.metadata.name = Some(namespace.to_owned()),
            "ClusterRole" => {}
            "ClusterRoleBinding" | "RoleBinding" => {
                if kind == "RoleBinding" {
                    object.metadata.namespace = Some(namespace.to_owned());
                }
                if let Some(subjects) = object.data["subjects"].as_array_mut() {
                    for subject in subjects {
                        subject["namespace"] = namespace.into();
                    }
                }
            }
            _ => object.metadata.namespace = Some(namespace.to_owned()),
        }
        if kind == "Deployment"
            && let Some(monitor) = &options.monitor
        {
            if monitor.replicas == 0 {
                refuse!("--monitor-replicas must be at least 1");
            }
            object.data["spec"]["replicas"] = monitor.replicas.into();
            let template = &mut object.data["spec"]["template"];
            template["metadata"]["annotations"]["sonde.dev/scenario-hash"] = format!(
                "{:016x}",
                crate::scenario::fnv1a(monitor.scenario.as_bytes())
            )
            .into();
            let container = &mut template["spec"]["containers"][0];
            if let Some(args) = container["args"].as_array_mut() {
                args.extend(monitor.args.iter().map(|arg| arg.as_str().into()));
            }
            if let Some(image) = &options.image {
                container["image"] = image.as_str().into();
            }
        }
        if kind == "DaemonSet" {
            let spec = &mut object.data["spec"]["template"]["spec"];
            if let Some(image) = &options.image {
                if image.trim().is_empty() {
                    refuse!("--image must name an image");
                }
                spec["containers"][0]["image"] = image.as_str().into();
            }
            if let Some(targets) = &options.allow_targets {
                let joined = targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let env = spec["containers"][0]["env"].as_array_mut();
                for var in env.into_iter().flatten() {
                    if var["name"] == "SONDE_ALLOW_TARGETS" {
                        var["value"] = joined.as_str().into();
                    }
                }
            }
            if !options.node_selector.is_empty() {
                let selector: serde_json::Map<String, serde_json::Value> = options
                    .node_selector
                    .iter()
                    .map(|(key, value)| (key.clone(), value.as_str().into()))
                    .collect();
                spec["nodeSelector"] = selector.into();
            }
        }
    }
    Ok(objects)
}

/// The objects as one YAML stream (`---` between documents), for `--dry-run -o yaml`.
pub fn to_yaml(objects: &[DynamicObject]) -> crate::Result<String> {
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(text)
}

/// Parses one `KEY=VALUE` label of a node selector.
pub fn parse_label(pair: &str) -> Result<(String, String), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{pair:?} has an empty key"));
    }
    Ok((key.to_owned(), value.to_owned()))
}
