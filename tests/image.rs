//! sonded's image as a cluster runs it: built offline from scratch (`deploy/image.sh`, the debug
//! binaries here), run with podman exactly as `deploy/kubernetes/daemonset.yaml` specifies
//! (host network and PID namespace, read-only root, ALL capabilities dropped and the listed
//! ones added, no privilege escalation, the same mounts, environment and TLS Secret, the pod
//! watch against the fake API server; seccomp unconfined, Kubernetes' default when a pod names
//! no profile), then with each listed capability dropped in turn; and in a lab node's network
//! namespace (that node's host network) in place of the lab's daemon there, with a pod whose
//! workload runs as another user: it maps the pod through the pod's processes (the image sees
//! no /run/netns) and a run between Kubernetes pods through it has its kernel breakdown;
//! without SYS_PTRACE the pod is not found, without SYS_NICE the breakdown says its windows
//! kept an ordinary priority.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::DaemonSet;
use sonde_integration::{
    Killed,
    cluster::{lab_as_cluster, sondectl_k8s},
    fake_apiserver::{FakeApiServer, FakeCluster, FakeNode},
    free_port,
    lab::Lab,
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

/// The capabilities the DaemonSet adds.
fn listed_capabilities() -> Vec<String> {
    daemonset()
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].security_context.clone())
        .and_then(|s| s.capabilities)
        .and_then(|c| c.add)
        .expect("the listed capabilities")
}

/// A container run as the DaemonSet's pod spec says, removed on drop.
struct Container {
    name: String,
    /// Where its gRPC API answers (`--agents`).
    agent: String,
}

/// The node a container runs on: its network, what the daemon listens on, its name.
struct Node {
    /// podman's `--network` for the pod's host network: `host`, or a lab node's namespace
    /// (`ns:/run/netns/...`), which is that node's host network.
    network: String,
    /// SONDE_LISTEN (the Service's port on the host; a lab node's socket).
    listen: String,
    /// The downward API's node name.
    name: String,
    /// Host directories mounted at the same path (a lab's state: its socket goes there).
    shared: Vec<PathBuf>,
    /// A real-time budget for the container's cgroup (`--cpu-rt-runtime`, µs a second).
    rt_runtime_us: Option<u64>,
}

impl Node {
    /// This machine's host network, the daemon on a free loopback port.
    fn host() -> Self {
        Self {
            network: "host".to_owned(),
            listen: format!("127.0.0.1:{}", free_port()),
            name: "img".to_owned(),
            shared: Vec::new(),
            rt_runtime_us: None,
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "2", &self.name])
            .output();
    }
}

/// podman's arguments for the DaemonSet's container, with `capabilities` added (the
/// manifest's own, or fewer), the TLS Secret's files from `tls` and the kubeconfig of the
/// fake API server.
fn run_as_daemonset(
    name: &str,
    capabilities: &[String],
    tls: &Path,
    kubeconfig: &Path,
    node: &Node,
) -> Container {
    let daemonset = daemonset();
    let pod = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("securityContext");
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
        args.extend(["--network".into(), node.network.clone()]);
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
            ("SONDE_LISTEN", _) => node.listen.clone(),
            ("SONDE_METRICS_LISTEN", _) => format!("127.0.0.1:{}", free_port()),
            (_, Some(value)) => value,
            // The downward API's node name.
            (_, None) => node.name.clone(),
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
    for dir in &node.shared {
        args.extend(["-v".into(), format!("{}:{}", dir.display(), dir.display())]);
    }
    if let Some(budget) = node.rt_runtime_us {
        args.push(format!("--cpu-rt-runtime={budget}"));
    }
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
        agent: node.listen.clone(),
    };
    assert!(
        output.status.success(),
        "podman run {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    container
}

/// Builds the image from the debug binaries, once for the tests of this file.
fn build_image() {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *built {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(root.join("deploy/image.sh"))
        .args(["debug", IMAGE])
        .output()
        .expect("deploy/image.sh runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("image: {}", String::from_utf8_lossy(&output.stdout).trim());
    *built = true;
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
    let agent = &container.agent;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = Command::new(workspace_bin("sondectl"))
            .args(["nodes", "--agents", agent, "-o", "json"])
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
    build_image();
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
    let listed = listed_capabilities();

    let (daemon_tls, client_tls) = (dir.join("daemon"), dir.join("client"));
    let outcome = tokio::task::spawn_blocking(move || {
        let full = run_as_daemonset(
            "sonde-image-test",
            &listed,
            &daemon_tls,
            &kubeconfig,
            &Node::host(),
        );
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
            let container =
                run_as_daemonset(&name, &fewer, &daemon_tls, &kubeconfig, &Node::host());
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

/// The pod IPs a daemon has mapped to its node's veths (`sondectl nodes -o json`).
fn pod_ips(report: &serde_json::Value) -> Vec<String> {
    report["nodes"][0]["pod_interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|pod| {
            pod["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn the_image_in_a_lab_node_maps_its_pods_through_their_processes_and_traces_a_run() {
    require_root();
    tokio::task::spawn_blocking(build_image)
        .await
        .expect("the image");
    let lab = tokio::task::spawn_blocking(|| Lab::up(&[]))
        .await
        .expect("lab up");
    let node1 = lab.inventory.node("node1").expect("node1").clone();
    // The lab's daemon of node1 makes room for the image's.
    let pid = node1.daemon_pid.expect("node1's daemon");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("stop node1's daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(Instant::now() < deadline, "node1's daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    // pod1's workload, as another user: only /proc/PID/ns/net leads to its namespace.
    let pod1 = lab.inventory.pod("pod1").expect("pod1").clone();
    assert_eq!(pod1.node, "node1");
    let _workload = Killed(
        Command::new("ip")
            .args(["netns", "exec", &pod1.netns])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .args(["sleep", "600"])
            .spawn()
            .expect("a workload in pod1"),
    );
    // The cluster as sondectl sees it, and as the daemon's pod watch does from node1.
    let cluster = lab_as_cluster(&lab);
    let server = FakeApiServer::start(cluster.clone()).await;
    let node1_netns = lab.netns_path("node1");
    let in_node = FakeApiServer::start_in(cluster, Some(&node1_netns)).await;
    let node = |rt_runtime_us| Node {
        network: format!("ns:{}", node1_netns.display()),
        listen: node1.agent.clone(),
        name: "node1".to_owned(),
        shared: vec![lab.inventory.state_dir.clone()],
        rt_runtime_us,
    };
    let daemon_tls = sonde_ctl::tls::lab_daemon_dir(&lab.inventory.state_dir);
    let client_tls = sonde_ctl::tls::lab_client_dir(&lab.inventory.state_dir);
    let listed = listed_capabilities();
    let kubeconfig = in_node.kubeconfig().to_path_buf();
    let start = |name: &str, without: Option<&str>, rt_runtime_us: Option<u64>| {
        let capabilities: Vec<String> = listed
            .iter()
            .filter(|c| Some(c.as_str()) != without)
            .cloned()
            .collect();
        let container = run_as_daemonset(
            name,
            &capabilities,
            &daemon_tls,
            &kubeconfig,
            &node(rt_runtime_us),
        );
        let report = nodes(&container, &client_tls);
        (container, report)
    };
    let run = || {
        sondectl_k8s(
            "run tcp-rr --from pod/perf/pod1 --to pod/perf/pod3 --duration 1500ms --warmup 300ms \
             -o json",
            &server,
        )
    };

    // The priority note of a traced run's breakdown, if any.
    let priority_note = |stdout: &str| -> Option<String> {
        let doc: serde_json::Value = serde_json::from_str(stdout).expect("JSON");
        doc["measurements"][0]["kernel"]["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .find(|n| n.contains("ordinary priority"))
            .map(str::to_owned)
    };

    // As the DaemonSet specifies: pod1 mapped, and a traced run through it.
    let (container, report) = tokio::task::block_in_place(|| start("sonde-image-lab", None, None));
    assert!(pod_ips(&report).contains(&pod1.ip.to_string()), "{report}");
    let (code, stdout, stderr) = run().await;
    assert_eq!(code, 0, "{stderr}\n{}", logs(&container));
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    sonde_integration::assert_full_breakdown(&doc["measurements"][0]["kernel"]);
    // Where cgroup v1 schedules real-time tasks by group (this kernel: RT_GROUP_SCHED), a
    // container's group has no real-time budget unless given one, and SYS_NICE alone cannot
    // raise the windows' thread: the breakdown says so. Elsewhere SYS_NICE is enough.
    let note = priority_note(&stdout);
    let budget = rt_group_budget();
    println!("as specified: {note:?}");
    assert_eq!(note.is_some(), budget.is_some(), "{note:?}");
    drop(container);

    // Without SYS_PTRACE: pod1's namespace cannot be opened through its process.
    let (container, report) = tokio::task::block_in_place(|| {
        start("sonde-image-lab-no-sys_ptrace", Some("SYS_PTRACE"), None)
    });
    assert!(!pod_ips(&report).contains(&pod1.ip.to_string()), "{report}");
    let (code, _stdout, stderr) = run().await;
    assert_ne!(code, 0);
    println!("without SYS_PTRACE: {}", stderr.trim());
    assert!(stderr.contains(&pod1.ip.to_string()), "{stderr}");
    drop(container);

    // With a real-time budget where one is needed: SYS_NICE raises the windows' thread, and
    // without it the breakdown says they kept an ordinary priority.
    let _budget = budget.as_ref().map(|parent| RtBudget::grant(parent));
    let granted = budget.as_ref().map(|_| CONTAINER_RT_RUNTIME_US);
    for (name, without, noted) in [
        ("sonde-image-lab-rt", None, false),
        ("sonde-image-lab-no-sys_nice", Some("SYS_NICE"), true),
    ] {
        let (container, _report) = tokio::task::block_in_place(|| start(name, without, granted));
        let (code, stdout, stderr) = run().await;
        assert_eq!(code, 0, "{stderr}\n{}", logs(&container));
        let note = priority_note(&stdout);
        println!("{name}: {note:?}");
        assert_eq!(note.is_some(), noted, "{name}: {note:?}");
        drop(container);
    }
}

/// The real-time budget given to a container's cgroup where groups need one (µs a second).
const CONTAINER_RT_RUNTIME_US: u64 = 50_000;

/// podman's parent cgroup of the cpu controller, where cgroup v1 schedules real-time tasks by
/// group (`None`: they are not, and SYS_NICE suffices).
fn rt_group_budget() -> Option<PathBuf> {
    let parent = PathBuf::from("/sys/fs/cgroup/cpu/libpod_parent");
    parent.join("cpu.rt_runtime_us").exists().then_some(parent)
}

/// A real-time budget granted to podman's parent cgroup for the test, put back on drop.
struct RtBudget {
    file: PathBuf,
    before: String,
}

impl RtBudget {
    fn grant(parent: &Path) -> Self {
        let file = parent.join("cpu.rt_runtime_us");
        let before = std::fs::read_to_string(&file).expect("the parent's budget");
        std::fs::write(&file, (2 * CONTAINER_RT_RUNTIME_US).to_string())
            .expect("a real-time budget for podman's containers");
        Self { file, before }
    }
}

impl Drop for RtBudget {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, self.before.trim());
    }
}
