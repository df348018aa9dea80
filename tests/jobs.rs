//! In-cluster jobs (`sondectl deploy --job SCENARIO`) against the fake API server:
//!
//! - what deploy applies, read back as k8s-openapi objects: the job's own ServiceAccount and
//!   binding, the results claim, the scenario's ConfigMap owned by its Job, the Job with its
//!   TTL, its own client certificate (a Secret issued from sonde's CA) and the Pushgateway;
//!   bad input refused before anything is applied; undeploy removes the job's identity;
//! - in the lab (privileged): the Job's pod run as its spec says (its command, arguments and
//!   environment, its ConfigMap, Secret and claim as directories, the fake API server standing
//!   for the service account), measuring the lab's daemons with the job's certificate, leaving
//!   its run-set and store on the claim and its figures in a real Pushgateway.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use sonde_integration::{
    Killed,
    cluster::{lab_as_cluster_with_endpoints, scenario_file, sondectl_k8s, tls_handshake},
    fake_apiserver::{Call, FakeApiServer, FakeCluster, tls_secret, uid_of},
    free_port,
    lab::Lab,
    require_root, workspace_bin,
};

const SCENARIO: &str = "name: nightly-mesh\nnodes: all\ntopology: mesh\npaths: [pod-ip]\n\
                        tests: [{kind: tcp-rr, duration: 1s, warmup: 0s}]\n";

/// The objects deploy applied (Secrets aside), in order.
fn applied(server: &FakeApiServer) -> Vec<Call> {
    server
        .calls()
        .into_iter()
        .filter(|call| call.method == "PATCH" && !call.path.contains("/secrets/"))
        .collect()
}

/// The Job and ConfigMap of a `deploy --job`, and the second apply of the ConfigMap (its
/// owner reference).
fn job_objects(calls: &[Call]) -> (Job, ConfigMap, ConfigMap, String) {
    let job = calls
        .iter()
        .find(|c| c.path.contains("/jobs/"))
        .expect("a Job applied");
    let configmaps: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.contains("/configmaps/"))
        .collect();
    assert_eq!(configmaps.len(), 2, "the ConfigMap, then its owner");
    (
        serde_json::from_str(&job.body).expect("a Job"),
        serde_json::from_str(&configmaps[0].body).expect("a ConfigMap"),
        serde_json::from_str(&configmaps[1].body).expect("a ConfigMap"),
        job.path.clone(),
    )
}

#[tokio::test]
async fn deploy_job_applies_a_job_with_its_own_identity_ttl_claim_and_scenario() {
    let server = FakeApiServer::start(FakeCluster::default()).await;
    let file = scenario_file("job", SCENARIO);
    let (code, stdout, stderr) = sondectl_k8s(
        &format!(
            "deploy --job {} --job-ttl 1h --job-push-gateway http://pgw.monitoring:9091 \
             --job-storage 5Gi --job-storage-class fast --image registry.example/sonded:t",
            file.display()
        ),
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    // Its own client certificate, issued from the CA (made here: nothing was deployed).
    for secret in [
        "sonde-ca",
        "sonde-daemon-tls",
        "sonde-client-tls",
        "sonde-job-tls",
    ] {
        assert!(
            stdout.contains(&format!("Secret sonde/{secret} created")),
            "{stdout}"
        );
    }
    let job_secret = server.secret("sonde-job-tls").expect("the job's Secret");
    assert_ne!(
        Some(&job_secret),
        server.secret("sonde-client-tls").as_ref()
    );
    tls_handshake(
        &server.secret("sonde-daemon-tls").expect("daemon"),
        &job_secret,
    )
    .await
    .expect("the daemons accept the job's certificate");

    let calls = applied(&server);
    let (job, configmap, owned, job_path) = job_objects(&calls);
    let name = job.metadata.name.clone().expect("a name");
    assert!(
        name.starts_with("sonde-job-nightly-mesh-") && name.len() <= 63,
        "{name}"
    );
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/sonde/serviceaccounts/sonde-job",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-job-reader",
            "/api/v1/namespaces/sonde/persistentvolumeclaims/sonde-results",
            &format!("/api/v1/namespaces/sonde/configmaps/{name}"),
            &format!("/apis/batch/v1/namespaces/sonde/jobs/{name}"),
            &format!("/api/v1/namespaces/sonde/configmaps/{name}"),
        ]
    );
    assert!(
        stdout.contains(&format!("kubectl -n sonde logs -f job/{name}")),
        "{stdout}"
    );
    // The scenario as written, in a ConfigMap the Job owns (removed with it).
    assert_eq!(
        configmap
            .data
            .and_then(|d| d.get("scenario.yaml").cloned())
            .as_deref(),
        Some(SCENARIO)
    );
    let owner = &owned.metadata.owner_references.expect("owner references")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Job", name.as_str())
    );
    assert_eq!(owner.uid, uid_of(&job_path));
    assert!(
        owned.data.is_none(),
        "the owner's apply touches nothing else"
    );

    let spec = job.spec.expect("a Job spec");
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    assert_eq!(spec.backoff_limit, Some(0));
    let pod = spec.template.spec.expect("a pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("sonde-job"));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/sonded:t")
    );
    assert_eq!(
        container.args.clone().unwrap_or_default().join(" "),
        "scenario run /etc/sonde/scenario/scenario.yaml --in-cluster --namespace sonde \
         --save /results/ --push-gateway http://pgw.monitoring:9091"
    );
    let volumes = pod.volumes.expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(
        volume("scenario")
            .config_map
            .as_ref()
            .map(|c| c.name.clone()),
        Some(name.clone())
    );
    assert_eq!(
        volume("tls")
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone()),
        Some("sonde-job-tls".to_owned())
    );
    let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim =
        serde_json::from_str(&calls[2].body).expect("a claim");
    let claim_name = volume("results")
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone());
    assert_eq!(claim_name, claim.metadata.name);
    let claim_spec = claim.spec.expect("a claim spec");
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0),
        Some("5Gi".to_owned())
    );
    // The reader the README points to mounts that claim where the job writes its store.
    let reader: k8s_openapi::api::core::v1::Pod = serde_json::from_value(
        serde_json::to_value(sonde_ctl::cluster::manifests::results_reader().expect("reader"))
            .expect("json"),
    )
    .expect("a Pod");
    let reader = reader.spec.expect("a pod spec");
    let reader_claim = reader.volumes.expect("volumes")[0]
        .persistent_volume_claim
        .clone()
        .map(|c| c.claim_name);
    assert_eq!(reader_claim, claim_name);
    let store = |env: Option<Vec<k8s_openapi::api::core::v1::EnvVar>>| {
        env.unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "SONDE_STORE")
            .and_then(|v| v.value)
    };
    assert_eq!(
        store(reader.containers[0].env.clone()),
        store(container.env.clone())
    );

    // A second job keeps the Secrets.
    server.clear_calls();
    let (code, stdout, stderr) =
        sondectl_k8s(&format!("deploy --job {}", file.display()), &server).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches(" kept").count(), 4, "{stdout}");
    assert_eq!(server.secret("sonde-job-tls"), Some(job_secret));

    // Undeploy removes the job's identity (its Jobs and claim go with the namespace).
    server.clear_calls();
    let (code, _stdout, stderr) = sondectl_k8s("undeploy", &server).await;
    assert_eq!(code, 0, "{stderr}");
    let deleted = server.paths();
    for path in [
        "/api/v1/namespaces/sonde/serviceaccounts/sonde-job",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-job-reader",
    ] {
        assert!(deleted.iter().any(|p| p == path), "{path}: {deleted:?}");
    }
    assert_eq!(
        deleted.last().map(String::as_str),
        Some("/api/v1/namespaces/sonde"),
        "the namespace last"
    );
}

#[tokio::test]
async fn deploy_job_refuses_bad_input_before_applying_anything() {
    let server = FakeApiServer::start(FakeCluster::default()).await;
    let good = scenario_file("job-good", SCENARIO);
    let bad = scenario_file(
        "job-bad",
        "name: bad\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-nope}]\n",
    );
    for (words, code, wanted) in [
        (
            format!("deploy --job {}", bad.display()),
            1,
            "is not a valid scenario".to_owned(),
        ),
        (
            format!("deploy --job {} --job-storage lots", good.display()),
            1,
            "--job-storage \"lots\" is not a quantity".to_owned(),
        ),
        (
            format!(
                "deploy --job {} --job-push-gateway pgw:9091",
                good.display()
            ),
            1,
            "is not an http:// or https:// URL".to_owned(),
        ),
        (
            format!(
                "deploy --job {} --monitor {}",
                good.display(),
                good.display()
            ),
            2,
            "cannot be used with".to_owned(),
        ),
        (
            "deploy --job-ttl 1h".to_owned(),
            2,
            "--job <SCENARIO>".to_owned(),
        ),
    ] {
        let (got, _stdout, stderr) = sondectl_k8s(&words, &server).await;
        assert_eq!(got, code, "{words}: {stderr}");
        assert!(stderr.contains(&wanted), "{words}: {stderr}");
    }
    assert!(server.calls().is_empty(), "{:?}", server.paths());

    // --dry-run needs no cluster, and puts everything in the namespace asked for.
    let output = sonde_integration::lab::sondectl(&[
        "deploy",
        "--dry-run",
        "-o",
        "yaml",
        "--namespace",
        "perf-sonde",
        "--job",
        &good.display().to_string(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let documents: Vec<serde_json::Value> = text
        .split("---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_yaml::from_str(doc).expect("a YAML document"))
        .collect();
    let of_kind = |kind: &str| {
        documents
            .iter()
            .find(|doc| doc["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("a {kind} in {text}"))
    };
    let job: Job = serde_json::from_value(of_kind("Job")).expect("a Job");
    assert_eq!(job.metadata.namespace.as_deref(), Some("perf-sonde"));
    let args = job
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
        .join(" ");
    assert!(args.contains("--namespace perf-sonde"), "{args}");
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
        serde_json::from_value(of_kind("ClusterRoleBinding")).expect("a binding");
    assert_eq!(
        binding.subjects.expect("subjects")[0].namespace.as_deref(),
        Some("perf-sonde")
    );
}

/// An HTTP/1.0 GET of `path` on 127.0.0.1:`port`, once something answers (30 s at most).
fn get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "nothing listens on {port}: {err}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// The Job's pod as a kubelet would start it, here: each volume a directory (the ConfigMap's
/// and Secret's keys as files, the claim empty), the container's command, arguments and
/// environment with mount paths replaced by those directories, and the fake API server as
/// the pod's service account (its kubeconfig: kube's client reads one before the in-cluster
/// files). Returns the command and the claim's directory.
fn pod_of(
    job: &Job,
    configmap: &ConfigMap,
    secret: &k8s_openapi::api::core::v1::Secret,
    root: &Path,
    kubeconfig: &Path,
) -> (Command, PathBuf) {
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .expect("a pod spec");
    let container = &pod.containers[0];
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut claim = None;
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("a mounted volume");
        let dir = root.join(&mount.name);
        std::fs::create_dir_all(&dir).expect("a volume's directory");
        let files: BTreeMap<String, Vec<u8>> = if let Some(source) = &volume.config_map {
            assert_eq!(Some(&source.name), configmap.metadata.name.as_ref());
            configmap
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(source) = &volume.secret {
            assert_eq!(source.secret_name, secret.metadata.name);
            secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else if volume.persistent_volume_claim.is_some() {
            claim = Some(dir.clone());
            BTreeMap::new()
        } else {
            panic!("a volume of a kind this test does not mount: {volume:?}");
        };
        for (file, bytes) in files {
            std::fs::write(dir.join(file), bytes).expect("a volume's file");
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    let local = |value: &str| {
        mounts
            .iter()
            .find_map(|(path, dir)| {
                value
                    .strip_prefix(path.as_str())
                    .map(|rest| format!("{}{rest}", dir.display()))
            })
            .unwrap_or_else(|| value.to_owned())
    };
    let program = container.command.clone().unwrap_or_default();
    assert_eq!(program, ["/usr/local/bin/sondectl"]);
    let mut command = Command::new(workspace_bin("sondectl"));
    command.args(
        container
            .args
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|a| local(a)),
    );
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for var in container.env.clone().unwrap_or_default() {
        command.env(&var.name, local(&var.value.unwrap_or_default()));
    }
    command.env("KUBECONFIG", kubeconfig);
    (command, claim.expect("a claim mounted"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn a_job_run_as_its_pod_spec_says_leaves_its_run_set_on_the_claim_and_in_the_pushgateway() {
    require_root();
    let lab = tokio::task::spawn_blocking(|| Lab::up(&["--nodes", "2", "--pods-per-node", "1"]))
        .await
        .expect("lab up");
    let mut cluster = lab_as_cluster_with_endpoints(&lab);
    // The lab's CA as the cluster's sonde-ca: deploy issues the job's certificate from it, and
    // the lab's daemons know no other.
    cluster.secrets.push(tls_secret(
        "sonde-ca",
        &sonde_ctl::tls::lab_ca_dir(&lab.inventory.state_dir),
    ));
    let server = FakeApiServer::start(cluster).await;
    let gateway = free_port();
    let _gateway = Killed(
        Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{gateway}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway (cargo xtask setup installs it)"),
    );
    let file = scenario_file("job-lab", SCENARIO);
    let (code, stdout, stderr) = sondectl_k8s(
        &format!(
            "deploy --job {} --job-push-gateway http://127.0.0.1:{gateway}",
            file.display()
        ),
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Secret sonde/sonde-job-tls created"),
        "{stdout}"
    );
    let (job, configmap, _, _) = job_objects(&applied(&server));
    let secret = server.secret("sonde-job-tls").expect("the job's Secret");
    let root = std::env::temp_dir().join(format!("sonde-job-pod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (mut command, claim) = pod_of(&job, &configmap, &secret, &root, server.kubeconfig());
    server.clear_calls();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("sondectl runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // Its logs: the table, and where the run-set went.
    assert!(stdout.contains("tcp-rr over pod-ip"), "{stdout}");
    assert!(stderr.contains("run-set written to"), "{stderr}");
    // The daemons were found as the job's ServiceAccount finds them, and reached.
    assert!(
        server.paths().iter().any(|p| p.ends_with("/portforward")),
        "{:?}",
        server.paths()
    );

    // On the claim: the run-set document, complete, every measurement's breakdown in it ...
    let documents: Vec<PathBuf> = std::fs::read_dir(&claim)
        .expect("the claim")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(documents.len(), 1, "{documents:?}");
    let name = documents[0].file_name().expect("a name").to_string_lossy();
    assert!(name.starts_with("nightly-mesh-"), "{name}");
    let set: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&documents[0]).expect("read")).expect("JSON");
    assert_eq!(set["scenario"]["name"], "nightly-mesh");
    assert_eq!(set["complete"], true, "{}", set["errors"]);
    let measurements = set["measurements"].as_array().expect("measurements");
    assert_eq!(measurements.len(), 2);
    for measurement in measurements {
        let run = &measurement["results"][0]["measurements"][0];
        assert!(
            run["messages_per_second"].as_f64().unwrap_or(0.0) > 100.0,
            "{run}"
        );
    }
    // ... and the store, which `sondectl results` reads (as the results reader does).
    let store = claim.join("sonde.db");
    let listed = sonde_integration::lab::sondectl(&[
        "results",
        "list",
        "--store",
        &store.display().to_string(),
        "-o",
        "json",
    ]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let results = listed.as_array().expect("a list");
    assert_eq!(results.len(), 1, "{listed}");
    assert_eq!(results[0]["facts"]["scenario"], "nightly-mesh", "{listed}");
    assert_eq!(results[0]["facts"]["complete"], true, "{listed}");

    // In the Pushgateway: the scenario's group.
    let metrics = tokio::task::spawn_blocking(move || get(gateway, "/metrics"))
        .await
        .expect("join");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("sonde_") && line.contains("\"nightly-mesh\"")),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
