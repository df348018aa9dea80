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

/// An in-cluster job (`deploy --job`): applied after [`FILES`], its Job and ConfigMap named by
/// deploy.
pub const JOB_FILES: [(&str, &str); 1] = [(
    "job.yaml",
    include_str!("../../../deploy/kubernetes/job.yaml"),
)];

/// The pod that reads the jobs' results (applied by the user, README "In-cluster jobs").
pub const RESULTS_READER_FILE: (&str, &str) = (
    "results-reader.yaml",
    include_str!("../../../deploy/kubernetes/results-reader.yaml"),
);

/// The claim the jobs write their results to, and where their pods mount it.
pub const RESULTS_CLAIM: (&str, &str) = ("sonde-results", "/results");

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
    /// Add an in-cluster job running a scenario once.
    pub job: Option<Job>,
}

/// A scenario a user runs once inside the cluster: a Job of `sondectl scenario run`.
#[derive(Debug, Clone)]
pub struct Job {
    /// The Job's and its ConfigMap's name (unique: a Job's pod template cannot change).
    pub name: String,
    /// The scenario file's text, as the user wrote it (validated before).
    pub scenario: String,
    /// `ttlSecondsAfterFinished`: how long the finished Job and its pod stay.
    pub ttl_seconds: u32,
    /// Where the run-set is pushed besides the claim (`--push-gateway`).
    pub push_gateway: Option<String>,
    /// The results claim's size (e.g. `1Gi`), and its storage class (the cluster's default
    /// when `None`).
    pub storage: String,
    /// The storage class of the results claim.
    pub storage_class: Option<String>,
}

impl Job {
    /// A name for a job of scenario `scenario` started at `unix_seconds`: `sonde-job-`, the
    /// scenario's name made a DNS label, and the time (so that each deploy makes a new Job).
    pub fn name_for(scenario: &str, unix_seconds: u64) -> String {
        let mut label: String = scenario
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        label.truncate(30);
        let label = label.trim_matches('-');
        let time = jiff::Timestamp::from_second(i64::try_from(unix_seconds).unwrap_or(0))
            .map(|t| t.strftime("%Y%m%d-%H%M%S").to_string())
            .unwrap_or_else(|_| unix_seconds.to_string());
        if label.is_empty() {
            format!("sonde-job-{time}")
        } else {
            format!("sonde-job-{label}-{time}")
        }
    }
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
    let mut objects = vec![scenario_configmap(
        MONITOR_CONFIGMAP.0,
        "monitor",
        scenario,
    )?];
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

/// A ConfigMap of sonde's namespace holding `scenario` under `scenario.yaml`.
fn scenario_configmap(name: &str, component: &str, scenario: &str) -> crate::Result<DynamicObject> {
    let configmap = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": DEFAULT_NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "sonde",
                "app.kubernetes.io/component": component,
            },
        },
        "data": { MONITOR_CONFIGMAP.1: scenario },
    });
    serde_json::from_value(configmap).with_context(|| format!("the {component}'s ConfigMap"))
}

/// The job's objects as shipped, its ConfigMap (holding `scenario`) just before the Job.
pub fn shipped_job(scenario: &str) -> crate::Result<Vec<DynamicObject>> {
    let mut objects = parse(JOB_FILES.iter())?;
    let at = objects
        .iter()
        .position(|o| o.types.as_ref().is_some_and(|t| t.kind == "Job"))
        .unwrap_or(objects.len());
    objects.insert(at, scenario_configmap("sonde-job", "job", scenario)?);
    Ok(objects)
}

/// The results reader's Pod as shipped.
pub fn results_reader() -> crate::Result<DynamicObject> {
    parse(std::iter::once(&RESULTS_READER_FILE))?
        .pop()
        .context("deploy/kubernetes/results-reader.yaml holds no object")
}

/// The objects with the user's options applied (the job's aside: [`job_objects`]).
pub fn objects(options: &Options) -> crate::Result<Vec<DynamicObject>> {
    let mut objects = shipped(options.endpoints)?;
    if let Some(monitor) = &options.monitor {
        objects.extend(shipped_monitor(&monitor.scenario)?);
    }
    customize(&mut objects, options)?;
    Ok(objects)
}

/// The objects of `options.job` (none without one), applied on their own over an existing
/// deployment.
pub fn job_objects(options: &Options) -> crate::Result<Vec<DynamicObject>> {
    let Some(job) = &options.job else {
        return Ok(Vec::new());
    };
    let mut objects = shipped_job(&job.scenario)?;
    customize(&mut objects, options)?;
    Ok(objects)
}

/// The jobs' identity in `options`' namespace: their ServiceAccount and their binding to the
/// cluster's reader role (what `undeploy` removes besides the namespace, which holds the
/// rest: Jobs, ConfigMaps, the claim).
pub fn job_identity(options: &Options) -> crate::Result<Vec<DynamicObject>> {
    let mut objects: Vec<DynamicObject> = parse(JOB_FILES.iter())?
        .into_iter()
        .filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind == "ServiceAccount" || t.kind == "ClusterRoleBinding")
        })
        .collect();
    customize(&mut objects, options)?;
    Ok(objects)
}

/// Applies the user's options to shipped objects.
fn customize(objects: &mut [DynamicObject], options: &Options) -> crate::Result<()> {
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
    for object in objects.iter_mut() {
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
        if let Some(job) = &options.job {
            customize_job(object, &kind, job, namespace, options.image.as_deref())?;
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
    Ok(())
}

/// Applies a job's options to one of its objects (`kind`): the Job's and ConfigMap's names,
/// the TTL, the namespace the daemons are found in, the Pushgateway, the claim's size.
fn customize_job(
    object: &mut DynamicObject,
    kind: &str,
    job: &Job,
    namespace: &str,
    image: Option<&str>,
) -> crate::Result<()> {
    let component = object
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("app.kubernetes.io/component"))
        .map(String::as_str);
    if component != Some("job") {
        return Ok(());
    }
    match kind {
        "ConfigMap" => object.metadata.name = Some(job.name.clone()),
        "PersistentVolumeClaim" => {
            let spec = &mut object.data["spec"];
            spec["resources"]["requests"]["storage"] = job.storage.as_str().into();
            if let Some(class) = &job.storage_class {
                spec["storageClassName"] = class.as_str().into();
            }
        }
        "Job" => {
            object.metadata.name = Some(job.name.clone());
            object.data["spec"]["ttlSecondsAfterFinished"] = job.ttl_seconds.into();
            let pod = &mut object.data["spec"]["template"]["spec"];
            for volume in pod["volumes"].as_array_mut().into_iter().flatten() {
                if volume["configMap"].is_object() {
                    volume["configMap"]["name"] = job.name.as_str().into();
                }
            }
            let container = &mut pod["containers"][0];
            if let Some(image) = image {
                if image.trim().is_empty() {
                    refuse!("--image must name an image");
                }
                container["image"] = image.into();
            }
            let args = container["args"]
                .as_array_mut()
                .context("job.yaml's container has no args")?;
            if let Some(at) = args.iter().position(|arg| arg == "--namespace")
                && let Some(value) = args.get_mut(at + 1)
            {
                *value = namespace.into();
            }
            if let Some(gateway) = &job.push_gateway {
                args.extend(["--push-gateway".into(), gateway.as_str().into()]);
            }
        }
        _ => {}
    }
    Ok(())
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
