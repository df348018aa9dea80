//! sonded's image as a cluster runs it: built offline from scratch (`deploy/image.sh`, the debug
//! binaries here), run with podman exactly as `deploy/kubernetes/daemonset.yaml` specifies
//! (host network and PID namespace, read-only root, ALL capabilities dropped and the listed
//! ones added, no privilege escalation, the same mounts, environment and TLS Secret, the pod
//! watch against the fake API server; seccomp unconfined, Kubernetes' default when a pod names
//! no profile), then with each listed capability dropped in turn.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::DaemonSet;
use sonde_integration::{
    fake_apiserver::{FakeApiServer, FakeCluster, FakeNode},
    require_root, workspace_bin,
};

const IMAGE: &str = "localhost/sonde/sonded:test";

/// The DaemonSet as shipped.
fn daemonset() -> DaemonSet {
    let objects = sonde_ctl::cluster::manifests::shipped(false).expect("the manifests");
    let object = objects
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "DaemonSet"))
        .expect("a DaemonSet");
    serde_json::from_value(serde_json::to_value(object).expect("json")).expect("a DaemonSet")
}

/// A container run as the DaemonSet's pod spec says, removed on drop.
struct Container {
    name: String,
    port: u16,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "2", &self.name])
            .output();
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// podman's arguments for the DaemonSet's container, with `capabilities` added (the
/// manifest's own, or fewer), the TLS Secret's files from `tls` and the kubeconfig of the
/// fake API server.
fn run_as_daemonset(
    name: &str,
    capabilities: &[String],
    tls: &Path,
    kubeconfig: &Path,
) -> Container {
    let daemonset = daemonset();
    let pod = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("securityContext");
    let port = free_port();
    let mut args: Vec<String> = vec!["--runtime".into(), "runc".into(), "run".into(), "-d".into()];
    args.extend(["--name".into(), name.to_owned()]);
    // This process's limits, as a kubelet leaves a container the node's (podman would raise
    // them, which this machine does not allow).
    for (name, resource) in [
        ("nofile", nix::sys::resource::Resource::RLIMIT_NOFILE),
        ("nproc", nix::sys::resource::Resource::RLIMIT_NPROC),
    ] {
        // At most 16384: raising to the hard limit itself is refused here for processes.
        let (_, hard) = nix::sys::resource::getrlimit(resource).expect("getrlimit");
        let limit = hard.min(16384);
        args.extend(["--ulimit".into(), format!("{name}={limit}:{limit}")]);
    }
    if pod.host_network == Some(true) {
        args.extend(["--network".into(), "host".into()]);
    }
    if pod.host_pid == Some(true) {
        args.extend(["--pid".into(), "host".into()]);
    }
    if security.read_only_root_filesystem == Some(true) {
        args.push("--read-only".into());
    }
    assert_ne!(security.privileged, Some(true));
    if security.allow_privilege_escalation == Some(false) {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
    if let Some(user) = security.run_as_user {
        args.extend(["--user".into(), user.to_string()]);
    }
    let declared = security.capabilities.expect("capabilities");
    for dropped in declared.drop.unwrap_or_default() {
        args.extend(["--cap-drop".into(), dropped]);
    }
    for added in capabilities {
        args.extend(["--cap-add".into(), added.clone()]);
    }
    let volumes = pod.volumes.clone().unwrap_or_default();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("a mounted volume");
        let ro = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        if let Some(host) = &volume.host_path {
            args.extend([
                "-v".into(),
                format!("{}:{}{ro}", host.path, mount.mount_path),
            ]);
        } else if volume.empty_dir.is_some() {
            args.extend(["--tmpfs".into(), mount.mount_path.clone()]);
        } else if volume.secret.is_some() {
            args.extend([
                "-v".into(),
                format!("{}:{}{ro}", tls.display(), mount.mount_path),
            ]);
        } else {
            panic!("a volume of a kind this test does not run: {volume:?}");
        }
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&*var.name, var.value) {
            ("SONDE_LISTEN", _) => format!("127.0.0.1:{port}"),
            ("SONDE_METRICS_LISTEN", _) => format!("127.0.0.1:{}", free_port()),
            (_, Some(value)) => value,
            // The downward API's node name.
            (_, None) => "img".to_owned(),
        };
        args.extend(["-e".into(), format!("{}={value}", var.name)]);
    }
    // The pod's service account, as the fake API server's kubeconfig.
    args.extend([
        "-v".into(),
        format!("{}:/etc/sonde/kubeconfig:ro", kubeconfig.display()),
        "-e".into(),
        "KUBECONFIG=/etc/sonde/kubeconfig".into(),
    ]);
    args.push(IMAGE.to_owned());
    args.extend(container.args.clone().unwrap_or_default());
    // One left by a run of this test that did not finish.
    let _ = Command::new("podman").args(["rm", "-f", name]).output();
    let output = Command::new("podman")
        .args(&args)
        .output()
        .expect("podman runs");
    let container = Container {
        name: name.to_owned(),
        port,
    };
    assert!(
        output.status.success(),
        "podman run {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    container
}

fn logs(container: &Container) -> String {
    let output = Command::new("podman")
        .args(["logs", &container.name])
        .output()
        .expect("podman logs");
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

/// `sondectl nodes -o json` against the container, once it answers (20 s at most).
fn nodes(container: &Container, client: &Path) -> serde_json::Value {
    let agent = format!("127.0.0.1:{}", container.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = Command::new(workspace_bin("sondectl"))
            .args(["nodes", "--agents", &agent, "-o", "json"])
            .arg("--tls-cert")
            .arg(client.join("tls.crt"))
            .arg("--tls-key")
            .arg(client.join("tls.key"))
            .arg("--tls-ca")
            .arg(client.join("ca.crt"))
            .output()
            .expect("sondectl runs");
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).expect("json");
        }
        assert!(
            Instant::now() < deadline,
            "the container did not answer: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            logs(container)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn unavailable(report: &serde_json::Value) -> Vec<String> {
    report["nodes"][0]["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["available"] == false)
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .filter(|name| name != "fentry" && name != "kprobe")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn the_image_runs_as_the_daemonset_specifies_and_each_capability_is_needed_for_its_reason() {
    require_root();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new(root.join("deploy/image.sh"))
        .args(["debug", IMAGE])
        .output()
        .expect("deploy/image.sh runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    println!("image: {}", String::from_utf8_lossy(&built.stdout).trim());
    // The TLS Secrets as deploy issues them.
    let dir = std::env::temp_dir().join(format!("sonde-image-{}", std::process::id()));
    let ca = sonde_ctl::tls::issue::Authority::generate("image test CA").expect("CA");
    use sonde_ctl::tls::issue::Role;
    let daemon = ca
        .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
        .expect("daemon");
    ca.write_dir(&dir.join("daemon"), &daemon)
        .expect("daemon files");
    let client = ca.issue(Role::Client, "sondectl").expect("client");
    ca.write_dir(&dir.join("client"), &client)
        .expect("client files");
    let server = FakeApiServer::start(FakeCluster {
        nodes: vec![FakeNode {
            name: "img".to_owned(),
            zone: None,
            labels: Vec::new(),
            pod_cidr: None,
        }],
        ..FakeCluster::default()
    })
    .await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let listed: Vec<String> = daemonset()
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].security_context.clone())
        .and_then(|s| s.capabilities)
        .and_then(|c| c.add)
        .expect("the listed capabilities");

    let (daemon_tls, client_tls) = (dir.join("daemon"), dir.join("client"));
    let outcome = tokio::task::spawn_blocking(move || {
        let full = run_as_daemonset("sonde-image-test", &listed, &daemon_tls, &kubeconfig);
        let report = nodes(&full, &client_tls);
        let programs = report["nodes"][0]["programs"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(programs >= 10, "probes loaded: {report}");
        assert_eq!(unavailable(&report), Vec::<String>::new(), "{report}");
        let log = logs(&full);
        assert!(log.contains("over mutual TLS"), "{log}");
        assert!(log.contains("naming pods from the API server"), "{log}");
        drop(full);
        let mut table = Vec::new();
        for dropped in &listed {
            let fewer: Vec<String> = listed.iter().filter(|c| *c != dropped).cloned().collect();
            let name = format!("sonde-image-test-no-{}", dropped.to_lowercase());
            let container = run_as_daemonset(&name, &fewer, &daemon_tls, &kubeconfig);
            let report = nodes(&container, &client_tls);
            let warnings: Vec<String> = logs(&container)
                .lines()
                .filter(|line| line.contains("WARN") && !line.contains("PLAINTEXT"))
                .map(|line| {
                    line.split_once("WARN")
                        .map_or(line, |(_, w)| w)
                        .trim()
                        .to_owned()
                })
                .collect();
            table.push((dropped.clone(), unavailable(&report), warnings));
        }
        table
    })
    .await
    .expect("the runs");
    let _ = std::fs::remove_dir_all(&dir);
    println!("without          unavailable       warnings at start");
    for (dropped, missing, warnings) in &outcome {
        println!(
            "{dropped:<16} {:<17} {}",
            missing.join(","),
            warnings.join(" | ")
        );
    }
    let row = |cap: &str| {
        outcome
            .iter()
            .find(|(dropped, _, _)| dropped == cap)
            .unwrap_or_else(|| panic!("{cap} is listed"))
    };
    // The README's table, as far as a daemon at rest shows it.
    let (_, missing, _) = row("SYS_ADMIN");
    assert_eq!(missing, &["tracepoint"], "tracefs is mounted privately");
    let (_, _, warnings) = row("NET_ADMIN");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("conntrack cannot be watched")),
        "{warnings:?}"
    );
}
