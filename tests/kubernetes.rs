//! sondectl's Kubernetes code against a local fake API server that answers with real
//! Kubernetes JSON (built from k8s-openapi types), records every call and port-forwards as a
//! kubelet does:
//!
//! - discovery lists the daemons with their zones, and placement picks across zones or refuses;
//! - `deploy` sends the expected server-side applies in order and `undeploy` deletes them in
//!   reverse;
//! - runs between `pod/`, `node/` and `service/` endpoints are placed as asked or refused;
//! - in the lab (privileged), the fake describes the lab as a cluster and port-forwards to its
//!   real daemons: a run named in Kubernetes terms goes through the API server's port-forward,
//!   the daemons map the pods by IP, and the kernel breakdown has every stage;
//! - two monitors sharing a Lease (the fake keeps Leases with server-side apply's conflicts):
//!   one measures, the other waits, takes over when the first dies, and releases on SIGTERM.

use sonde_integration::{
    cluster::{
        lab_as_cluster, lab_as_cluster_with_endpoints, scenario_file, sondectl_k8s, tls_handshake,
    },
    fake_apiserver::{
        FakeApiServer, FakeCluster, FakeDaemon, FakeNode, FakePod, FakeService, tls_secret,
    },
    lab::{Lab, sondectl},
    require_root,
};

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Three nodes in two zones, a daemon on each (at 127.0.2.N, where none listens), a client
/// pod and two `web` pods behind Service `web`.
fn two_zones() -> FakeCluster {
    let node = |name: &str, zone: &str, agent: &str| FakeNode {
        name: name.to_owned(),
        zone: Some(zone.to_owned()),
        labels: strings(&[("agenttype", agent)]),
        // n3's CNI assigns pod addresses itself.
        pod_cidr: match name {
            "n1" => Some("10.244.1.0/24".to_owned()),
            "n2" => Some("10.244.2.0/24".to_owned()),
            _ => None,
        },
    };
    let daemon = |n: u8| FakeDaemon {
        pod: format!("sonded-x{n}"),
        node: format!("n{n}"),
        ip: format!("127.0.2.{n}"),
        ready: true,
        forward: None,
    };
    let pod = |name: &str, node: &str, ip: &str| FakePod {
        name: name.to_owned(),
        node: node.to_owned(),
        ip: ip.to_owned(),
    };
    FakeCluster {
        nodes: vec![
            node("n1", "zone-a", "client"),
            node("n2", "zone-a", "server"),
            node("n3", "zone-b", "server"),
        ],
        daemons: (1..=3).map(daemon).collect(),
        pods: vec![
            pod("client", "n1", "127.0.1.1"),
            pod("web-a", "n2", "127.0.1.2"),
            pod("web-b", "n3", "127.0.1.3"),
        ],
        services: vec![FakeService {
            name: "web".to_owned(),
            cluster_ip: "127.0.3.10".to_owned(),
            port: 80,
            target_port: 8080,
            pods: vec!["web-a".to_owned(), "web-b".to_owned()],
        }],
        endpoints: Vec::new(),
        service_cidrs: vec!["10.96.0.0/12".to_owned()],
        secrets: vec![client_secret_of_its_own_ca()],
    }
}

/// A `sonde-client-tls` Secret from a CA of its own: sondectl reads it before dialling a
/// daemon of the cluster (daemons this fake's kubelet cannot reach anyway).
fn client_secret_of_its_own_ca() -> k8s_openapi::api::core::v1::Secret {
    use sonde_ctl::tls::issue::{Authority, Role};
    let dir = std::env::temp_dir().join(format!("sonde-k8s-client-{}", std::process::id()));
    let ca = Authority::generate("fake cluster CA").expect("CA");
    let client = ca.issue(Role::Client, "sondectl").expect("client");
    ca.write_dir(&dir, &client).expect("client files");
    let secret = tls_secret(sonde_ctl::tls::CLIENT_SECRET, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    secret
}

#[tokio::test]
async fn nodes_lists_the_daemons_with_their_zones() {
    let server = FakeApiServer::start(two_zones()).await;
    let (code, stdout, stderr) = sondectl_k8s("nodes -o json", &server).await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let daemons = report["daemons"].as_array().expect("daemons");
    let seen: Vec<(String, String, String, bool)> = daemons
        .iter()
        .map(|d| {
            (
                d["node"].as_str().unwrap_or_default().to_owned(),
                d["zone"].as_str().unwrap_or_default().to_owned(),
                d["pod_ip"].as_str().unwrap_or_default().to_owned(),
                d["ready"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("n1".into(), "zone-a".into(), "127.0.2.1".into(), true),
            ("n2".into(), "zone-a".into(), "127.0.2.2".into(), true),
            ("n3".into(), "zone-b".into(), "127.0.2.3".into(), true),
        ]
    );
    assert_eq!(daemons[0]["node_labels"]["agenttype"], "client");
    assert_eq!(
        server.paths(),
        ["/api/v1/namespaces/sonde/pods", "/api/v1/nodes"]
    );

    // Restricted to labelled nodes (the selector goes to the API server).
    let (code, stdout, stderr) =
        sondectl_k8s("nodes -o json --node-selector agenttype=server", &server).await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let nodes: Vec<&str> = report["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .filter_map(|d| d["node"].as_str())
        .collect();
    assert_eq!(nodes, ["n2", "n3"]);
}

#[tokio::test]
async fn cross_zone_picks_two_zones_and_refuses_one() {
    let server = FakeApiServer::start(two_zones()).await;
    let (code, stdout, stderr) = sondectl_k8s("nodes -o json --pick cross-zone", &server).await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["pick"]["client"], "n1");
    assert_eq!(
        report["pick"]["server"], "n3",
        "the first node in another zone"
    );

    let mut one_zone = two_zones();
    one_zone.nodes.pop();
    one_zone.daemons.pop();
    let server = FakeApiServer::start(one_zone).await;
    let (code, _stdout, stderr) = sondectl_k8s("nodes --pick cross-zone", &server).await;
    assert_eq!(code, 1, "refused: {stderr}");
    assert!(
        stderr.contains("--cross-zone needs ready daemons in two zones; found 1 (zone-a)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn deploy_applies_every_object_in_order_and_undeploy_deletes_them() {
    let server = FakeApiServer::start(FakeCluster {
        secrets: Vec::new(),
        ..two_zones()
    })
    .await;
    let (code, stdout, stderr) = sondectl_k8s(
        "deploy --image registry.example/sonded:t --node-selector agenttype=server",
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 9, "{stdout}");
    for secret in ["sonde-ca", "sonde-daemon-tls", "sonde-client-tls"] {
        assert!(
            stdout.contains(&format!("Secret sonde/{secret} created")),
            "{stdout}"
        );
    }
    let applied: Vec<_> = server
        .calls()
        .into_iter()
        // What was applied (the reads of the cluster's ranges and Secrets aside).
        .filter(|call| call.method == "PATCH" && !call.path.contains("/secrets/"))
        .collect();
    let expected = [
        "/api/v1/namespaces/sonde",
        "/api/v1/namespaces/sonde/serviceaccounts/sonded",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/sonde-reader",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-reader",
        "/apis/apps/v1/namespaces/sonde/daemonsets/sonded",
        "/api/v1/namespaces/sonde/services/sonded",
    ];
    let paths: Vec<String> = applied.iter().map(|call| call.path.clone()).collect();
    assert_eq!(paths, expected);
    for call in &applied {
        assert_eq!(call.method, "PATCH");
        assert_eq!(
            call.content_type, "application/apply-patch+yaml",
            "server-side apply"
        );
        assert!(
            call.query.contains("fieldManager=sondectl"),
            "{}",
            call.query
        );
        assert!(call.query.contains("force=true"), "{}", call.query);
    }
    let daemonset: k8s_openapi::api::apps::v1::DaemonSet =
        serde_json::from_str(&applied[4].body).expect("a DaemonSet");
    let pod = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/sonded:t")
    );
    assert_eq!(
        pod.node_selector
            .and_then(|s| s.get("agenttype").cloned())
            .as_deref(),
        Some("server")
    );
    // Generated traffic may go to the cluster's own ranges, read from it: the nodes'
    // podCIDRs, the pods' addresses where a node has none (said on stderr), the nodes'
    // addresses, the ServiceCIDR; not to the rest of 10.0.0.0/8.
    let allowed: Vec<ipnet::IpNet> = pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .iter()
        .find(|var| var.name == "SONDE_ALLOW_TARGETS")
        .and_then(|var| var.value.clone())
        .expect("SONDE_ALLOW_TARGETS")
        .split(',')
        .map(|cidr| cidr.parse().expect("a CIDR"))
        .collect();
    let allows = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        allowed.iter().any(|net| net.contains(&ip))
    };
    for ip in [
        "10.244.1.7",
        "10.244.2.200",
        "127.0.1.3",
        "127.0.2.2",
        "10.100.0.1",
    ] {
        assert!(allows(ip), "{ip} not in {allowed:?}");
    }
    for ip in ["10.0.0.1", "10.244.3.1", "127.0.1.9", "192.168.1.1"] {
        assert!(!allows(ip), "{ip} in {allowed:?}");
    }
    assert!(stderr.contains("1 nodes have no podCIDR"), "{stderr}");
    // The Secrets deploy issued make a mutual TLS connection: the daemons' certificate with
    // the client's CA, the client's with the daemons'.
    let daemon_secret = server.secret("sonde-daemon-tls").expect("daemon Secret");
    tls_handshake(
        &daemon_secret,
        &server.secret("sonde-client-tls").expect("client"),
    )
    .await
    .expect("deploy's certificates work together");
    // A second deploy keeps them; --rotate-certs issues new ones from the same CA.
    let (code, stdout, stderr) = sondectl_k8s("deploy", &server).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches(" kept").count(), 3, "{stdout}");
    assert_eq!(
        server.secret("sonde-daemon-tls"),
        Some(daemon_secret.clone())
    );
    let old_client = server.secret("sonde-client-tls").expect("client");
    let (code, stdout, stderr) = sondectl_k8s("deploy --rotate-certs", &server).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Secret sonde/sonde-daemon-tls rotated"),
        "{stdout}"
    );
    let rotated = server.secret("sonde-daemon-tls").expect("daemon Secret");
    assert_ne!(rotated, daemon_secret);
    // The CA stayed: the old client certificate is still accepted by the rotated daemons.
    tls_handshake(&rotated, &old_client)
        .await
        .expect("rotation keeps the CA");

    server.clear_calls();
    let (code, _stdout, stderr) = sondectl_k8s("undeploy", &server).await;
    assert_eq!(code, 0, "{stderr}");
    // The monitor's objects too (`deploy --monitor`), whether deployed or not, and the jobs'
    // identity (`deploy --job`) just before the namespace.
    let mut reversed: Vec<&str> = expected[..1]
        .iter()
        .chain(&[
            "/api/v1/namespaces/sonde/serviceaccounts/sonde-job",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-job-reader",
        ])
        .chain(&expected[1..])
        .chain(&MONITOR_PATHS)
        .copied()
        .collect();
    reversed.reverse();
    assert_eq!(server.paths(), reversed);
    assert!(server.calls().iter().all(|c| c.method == "DELETE"));
}

/// What `deploy --monitor` applies after the daemons' objects, in order.
const MONITOR_PATHS: [&str; 7] = [
    "/api/v1/namespaces/sonde/configmaps/sonde-monitor-scenario",
    "/api/v1/namespaces/sonde/serviceaccounts/sonde-monitor",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-monitor-reader",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/sonde/roles/sonde-monitor-lease",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/sonde/rolebindings/sonde-monitor-lease",
    "/apis/apps/v1/namespaces/sonde/deployments/sonde-monitor",
    "/api/v1/namespaces/sonde/services/sonde-monitor",
];

#[tokio::test]
async fn deploy_monitor_puts_the_scenario_in_a_configmap_and_runs_it_under_a_lease() {
    let server = FakeApiServer::start(two_zones()).await;
    let text = "name: watched\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, duration: 1s}]\n";
    let file = scenario_file("deploy-monitor", text);
    let (code, stdout, stderr) = sondectl_k8s(
        &format!(
            "deploy --namespace perf-sonde --monitor {} --monitor-replicas 3 --monitor-every 30s --monitor-peers 2",
            file.display()
        ),
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    // The objects, then the three TLS Secrets (the monitor mounts the client's).
    assert_eq!(
        stdout.lines().count(),
        6 + MONITOR_PATHS.len() + 3,
        "{stdout}"
    );
    assert!(
        stdout.contains("Secret perf-sonde/sonde-client-tls created"),
        "{stdout}"
    );
    let calls: Vec<_> = server
        .calls()
        .into_iter()
        // What was applied (the reads of the cluster's ranges and Secrets aside).
        .filter(|call| call.method == "PATCH" && !call.path.contains("/secrets/"))
        .collect();
    let monitor: Vec<&sonde_integration::fake_apiserver::Call> = calls[6..].iter().collect();
    let paths: Vec<String> = monitor.iter().map(|c| c.path.clone()).collect();
    let wanted: Vec<String> = MONITOR_PATHS
        .iter()
        .map(|p| p.replace("/sonde/", "/perf-sonde/"))
        .collect();
    assert_eq!(paths, wanted);
    let configmap: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_str(&monitor[0].body).expect("a ConfigMap");
    assert_eq!(
        configmap
            .data
            .and_then(|d| d.get("scenario.yaml").cloned())
            .as_deref(),
        Some(text),
        "the scenario as the user wrote it"
    );
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_str(&monitor[4].body).expect("a RoleBinding");
    assert_eq!(
        binding.subjects.expect("subjects")[0].namespace.as_deref(),
        Some("perf-sonde")
    );
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_str(&monitor[5].body).expect("a Deployment");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let hash = spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("sonde.dev/scenario-hash").cloned())
        .unwrap_or_default();
    assert_eq!(hash.len(), 16, "{hash:?}");
    let container = &spec.template.spec.expect("pod").containers[0];
    let args = container.args.clone().unwrap_or_default().join(" ");
    for wanted in [
        "monitor --in-cluster --scenario /etc/sonde/scenario/scenario.yaml --lease sonde-monitor",
        "--every 30000ms",
        "--peers 2",
    ] {
        assert!(args.contains(wanted), "{wanted:?} in {args:?}");
    }

    // A scenario with a mistake is refused before anything is applied.
    server.clear_calls();
    let bad = scenario_file(
        "deploy-bad",
        "name: bad\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-nope}]\n",
    );
    let (code, _stdout, stderr) =
        sondectl_k8s(&format!("deploy --monitor {}", bad.display()), &server).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a valid scenario"), "{stderr}");
    assert!(server.calls().is_empty(), "{:?}", server.paths());
}

#[tokio::test]
async fn runs_between_kubernetes_endpoints_are_placed_as_asked_or_refused() {
    let server = FakeApiServer::start(two_zones()).await;
    // client on n1 (zone-a), web-a on n2 (zone-a): not across zones, and not on one node.
    for (flag, expected) in [
        (
            "--cross-zone",
            "--cross-zone: both ends are in zone zone-a (n1 and n2)",
        ),
        (
            "--same-node",
            "--same-node: the client is on n1 and the server on n2",
        ),
        (
            "--node-selector agenttype=server",
            "no sonde daemon on node n1 among the nodes matching --node-selector agenttype=server",
        ),
    ] {
        let (code, _stdout, stderr) = sondectl_k8s(
            &format!("run tcp-rr --from pod/perf/client --to pod/perf/web-a {flag}"),
            &server,
        )
        .await;
        assert_eq!(code, 1, "{flag}: {stderr}");
        assert!(stderr.contains(expected), "{flag}: {stderr}");
    }
    // Through the Service: web-b (n3, zone-b) passes --cross-zone, web-a (n2) does not.
    let (code, _stdout, stderr) = sondectl_k8s(
        "run tcp-rr --from pod/perf/client --to service/perf/web --cross-zone",
        &server,
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("(n1 and n2)"), "{stderr}");
    // Placed as asked and reached at pod IPs, the run goes to the daemons there: none
    // listens here, so it fails there, after resolving the pods through the API.
    server.clear_calls();
    let (code, _stdout, stderr) = sondectl_k8s(
        "run tcp-rr --from pod/perf/client --to service/perf/web --cross-node --duration 1s \
         --timeout 1s --reach pod-ip",
        &server,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("127.0.2.2:7470") || stderr.contains("127.0.2.3:7470"),
        "{stderr}"
    );
    let paths = server.paths();
    for path in [
        "/api/v1/namespaces/perf/pods/client",
        "/api/v1/namespaces/perf/services/web",
        "/apis/discovery.k8s.io/v1/namespaces/perf/endpointslices",
        "/api/v1/namespaces/perf/pods/web-a",
        "/api/v1/namespaces/perf/pods/web-b",
    ] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} not asked: {paths:?}"
        );
    }
    // `trace` and `conntrack ramp` take the same cluster and placement.
    for command in ["trace", "conntrack ramp --ceiling 1000"] {
        let (code, _stdout, stderr) = sondectl_k8s(
            &format!("{command} --from pod/perf/client --to pod/perf/web-a --cross-zone"),
            &server,
        )
        .await;
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(
            stderr.contains("--cross-zone: both ends are in zone zone-a"),
            "{command}: {stderr}"
        );
    }
    // Without a namespace, a Kubernetes pod is refused with what to write.
    let (code, _stdout, stderr) =
        sondectl_k8s("run tcp-rr --from pod/client --to pod/perf/web-a", &server).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("pod/NAMESPACE/NAME"), "{stderr}");
}

#[tokio::test]
async fn outside_the_cluster_daemons_are_reached_through_port_forward() {
    let server = FakeApiServer::start(two_zones()).await;
    // Outside a pod, auto means port-forward. The fake's kubelet finds nothing listening in
    // the daemons' pods: the run fails naming the port-forward, after asking for it.
    let (code, _stdout, stderr) = sondectl_k8s(
        "run tcp-rr --from pod/perf/client --to pod/perf/web-a --duration 1s --timeout 2s",
        &server,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("sonde/sonded-x1:7470") || stderr.contains("sonde/sonded-x2:7470"),
        "{stderr}"
    );
    assert!(!stderr.contains("127.0.2."), "no pod IP dialled: {stderr}");
    // The kubelet's reason, from the port's error channel.
    assert!(
        stderr.contains("kubelet: error forwarding port 7470") && stderr.contains("refused"),
        "{stderr}"
    );
    let forwards: Vec<_> = server
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/portforward"))
        .collect();
    assert!(!forwards.is_empty(), "{:?}", server.paths());
    for call in &forwards {
        assert_eq!(call.method, "GET");
        assert!(call.query.contains("ports=7470"), "{}", call.query);
        assert!(
            call.path
                .starts_with("/api/v1/namespaces/sonde/pods/sonded-x"),
            "{}",
            call.path
        );
    }
    // `conntrack watch` watches every ready daemon of the cluster, the same way.
    server.clear_calls();
    let (code, _stdout, stderr) =
        sondectl_k8s("conntrack watch --count 1 --timeout 2s", &server).await;
    assert_ne!(code, 0);
    for node in ["n1", "n2", "n3"] {
        assert!(stderr.contains(&format!("sondectl: {node}: ")), "{stderr}");
    }
    let forwarded = server
        .paths()
        .into_iter()
        .filter(|path| path.ends_with("/portforward"))
        .count();
    assert!(forwarded >= 3, "{:?}", server.paths());
    // --reach needs a cluster to reach.
    let output = tokio::task::spawn_blocking(|| {
        sondectl(&[
            "run",
            "tcp-rr",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod2",
            "--reach",
            "port-forward",
        ])
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--kubeconfig"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn a_run_named_in_kubernetes_terms_goes_through_port_forward_to_the_lab() {
    require_root();
    let lab = tokio::task::spawn_blocking(|| Lab::up(&["--service", "web=80:8080"]))
        .await
        .expect("lab up");
    let server = FakeApiServer::start(lab_as_cluster(&lab)).await;

    // Across nodes and zones, pod to pod, with the kernel breakdown.
    let (code, stdout, stderr) = sondectl_k8s(
        "run tcp-rr --from pod/perf/pod1 --to pod/perf/pod3 --cross-zone --duration 1500ms \
         --warmup 300ms -o json",
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let measurement = &doc["measurements"][0];
    assert!(
        measurement["messages_per_second"].as_f64().unwrap_or(0.0) > 100.0,
        "{measurement}"
    );
    // The client ran inside pod1, named to its daemon by the pod's IP.
    assert_eq!(measurement["client"]["local_ip"], lab.ip("pod1"));
    let forwarded: Vec<String> = server
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/portforward"))
        .map(|c| c.path)
        .collect();
    for pod in ["sonded-node1", "sonded-node2"] {
        let path = format!("/api/v1/namespaces/sonde/pods/{pod}/portforward");
        assert!(forwarded.contains(&path), "{path}: {forwarded:?}");
    }
    // Every stage of both directions, as in a lab run: the daemons found the pods' veths and
    // their uplinks themselves.
    sonde_integration::assert_full_breakdown(&measurement["kernel"]);

    // Through the Service's ClusterIP, to its pods.
    let (code, stdout, stderr) = sondectl_k8s(
        "run tcp-crr --from pod/perf/pod1 --to service/perf/web --duration 1s --warmup 200ms \
         -o json",
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(doc["path"], "service", "{doc}");
    assert!(
        doc["measurements"][0]["messages_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 10.0,
        "{doc}"
    );

    // An EndpointSlice change during a run through the Service is on the run's timeline.
    let pods = lab_as_cluster(&lab).services[0].pods.clone();
    let (ran, ()) = tokio::join!(
        sondectl_k8s(
            "run tcp-rr --from pod/perf/pod1 --to service/perf/web --duration 3s --warmup 200ms \
             --no-trace -o json",
            &server,
        ),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
            let fewer: Vec<&str> = pods.iter().skip(1).map(String::as_str).collect();
            server.set_service_pods("web", &fewer);
        }
    );
    let (code, stdout, stderr) = ran;
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let events = doc["measurements"][0]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline events: {doc}"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["source"], "endpoint-slice");
    let what = events[0]["what"].as_str().expect("what");
    assert_eq!(
        what,
        format!("EndpointSlice web-abc: ready {}", pods[1..].join(", "))
    );
    let at = events[0]["at_seconds"].as_f64().expect("at");
    assert!((0.5..3.0).contains(&at), "{at}");
    println!("seen on the timeline at {at:.2}s: {what}");

    // Every node's conntrack table, watched through the port-forwards.
    let (code, stdout, stderr) = sondectl_k8s(
        "conntrack watch --count 1 --interval 200ms --no-census -o json",
        &server,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let mut nodes: Vec<String> = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .inspect(|sample| assert!(sample["max"].as_u64().unwrap_or(0) > 0, "{sample}"))
        .filter_map(|sample| sample["node"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2"]);
}

/// A lab of `nodes` nodes with two pods each, and the fake API server serving it as a cluster
/// in node1's namespace, for a `--kubernetes` daemon there to watch.
async fn lab_watched_from_node1(nodes: &'static str) -> (std::sync::Arc<Lab>, FakeApiServer) {
    let lab =
        tokio::task::spawn_blocking(move || Lab::up(&["--nodes", nodes, "--pods-per-node", "2"]))
            .await
            .expect("lab up");
    let node1 = lab.netns_path("node1");
    let server = FakeApiServer::start_in(lab_as_cluster(&lab), Some(&node1)).await;
    (std::sync::Arc::new(lab), server)
}

/// `cargo xtask bench idle`: sonded at rest in a lab node, the lab's own daemon (no pod watch)
/// and one naming the node's pods from a watch on the fake API server, side by side for a
/// minute (`SONDE_BENCH_IDLE_SECONDS`): resident memory and CPU of each. A measurement, not a
/// test (`cargo xtask test` skips `bench_`); built in release by the bench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by cargo xtask bench idle"]
async fn bench_idle_daemon_with_and_without_the_pod_watch() {
    require_root();
    let seconds: u64 = std::env::var("SONDE_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(60);
    let (lab, server) = lab_watched_from_node1("1").await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let shared = std::sync::Arc::clone(&lab);
    let watching = tokio::task::spawn_blocking(move || {
        let daemon = NamingDaemon::start(&shared, "node1", &kubeconfig);
        // At rest means after the watch has named the pods.
        daemon.named_pods(|named| named.len() == 2 && named.iter().all(|(_, pod)| pod != "-"));
        daemon
    })
    .await
    .expect("the watching daemon");
    let shared = std::sync::Arc::clone(&lab);
    let plaintext = tokio::task::spawn_blocking(move || {
        let daemon = NamingDaemon::start_with(&shared, "node1", None, false);
        daemon.named_pods(|named| !named.is_empty());
        daemon
    })
    .await
    .expect("the plaintext daemon");
    let lab_daemon = lab
        .inventory
        .node("node1")
        .and_then(|node| node.daemon_pid)
        .expect("the lab's daemon");
    let pids = [
        ("no watch, TLS", lab_daemon),
        ("watch, TLS", watching.child.id()),
        ("no watch, plaintext", plaintext.child.id()),
    ];
    // Both settled (the last one started its release 2 s after its first calls).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    println!(
        "sonded at rest, {seconds} s (target: <= 16 MiB and <= 0.1% of a core with the watch)"
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>12}",
        "", "RSS MiB", "anon MiB", "file MiB", "CPU % core"
    );
    for ((name, pid), before) in pids.iter().zip(before) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse::<f64>().ok())
                .expect("a field of /proc/PID/status")
        };
        let cpu = (cpu_ticks(*pid) - before) as f64 / ticks_per_s / seconds as f64 * 100.0;
        println!(
            "{name:<20} {:>10.1} {:>10.1} {:>10.1} {:>12.3}",
            kib("VmRSS:") / 1024.0,
            kib("RssAnon:") / 1024.0,
            kib("RssFile:") / 1024.0,
            cpu
        );
    }
    drop(watching);
    drop(plaintext);
}

/// User and system CPU ticks of process `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A `sonded` in a lab node's namespace, beside the lab's own daemon: `--kubernetes`
/// watching the fake API server for that node's pods when given a kubeconfig; serving over TLS
/// with the lab's certificates, or in plaintext; killed on drop.
struct NamingDaemon {
    child: std::process::Child,
    socket: std::path::PathBuf,
    /// sondectl's flags to reach it: the lab's client certificate, or --insecure.
    credentials: Vec<String>,
}

impl NamingDaemon {
    fn start(lab: &Lab, node: &str, kubeconfig: &std::path::Path) -> Self {
        Self::start_with(lab, node, Some(kubeconfig), true)
    }

    fn start_with(lab: &Lab, node: &str, kubeconfig: Option<&std::path::Path>, tls: bool) -> Self {
        let socket = std::env::temp_dir().join(format!(
            "sonde-t{}-k8s-{node}-{}.sock",
            std::process::id(),
            if tls { "tls" } else { "plain" }
        ));
        let _ = std::fs::remove_file(&socket);
        let netns = &lab.inventory.node(node).expect("node").netns;
        let side = |dir: std::path::PathBuf| {
            ["cert", "key", "ca"]
                .into_iter()
                .zip(["tls.crt", "tls.key", "ca.crt"])
                .flat_map(|(flag, file)| {
                    [
                        format!("--tls-{flag}"),
                        dir.join(file).display().to_string(),
                    ]
                })
                .collect::<Vec<_>>()
        };
        let (serving, credentials) = if tls {
            (
                side(sonde_ctl::tls::lab_daemon_dir(&lab.inventory.state_dir)),
                side(sonde_ctl::tls::lab_client_dir(&lab.inventory.state_dir)),
            )
        } else {
            (vec!["--insecure".to_owned()], vec!["--insecure".to_owned()])
        };
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(sonde_integration::workspace_bin("sonded"))
            .args(["--node-name", node, "--log", "warn"])
            .args(&serving)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .stdout(std::process::Stdio::null());
        if let Some(kubeconfig) = kubeconfig {
            command.arg("--kubernetes").env("KUBECONFIG", kubeconfig);
        }
        let child = command.spawn().expect("sonded starts");
        Self {
            child,
            socket,
            credentials,
        }
    }

    /// (veth, pod name) of each pod it maps, once `wanted` holds of them (10 s at most).
    fn named_pods(&self, wanted: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
        let agent = format!("unix:{}", self.socket.display());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut words = vec!["nodes", "--agents", &agent, "-o", "json"];
            words.extend(self.credentials.iter().map(String::as_str));
            let output = sondectl(&words);
            let named: Vec<(String, String)> =
                serde_json::from_slice::<serde_json::Value>(&output.stdout)
                    .ok()
                    .and_then(|report| report["nodes"][0]["pod_interfaces"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        (
                            p["host_interface"].as_str().unwrap_or_default().to_owned(),
                            p["pod"].as_str().unwrap_or("-").to_owned(),
                        )
                    })
                    .collect();
            if wanted(&named) {
                return named;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon names {named:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for NamingDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn a_daemon_names_its_pods_from_a_watch_and_follows_new_ones() {
    require_root();
    let (lab, server) = lab_watched_from_node1("2").await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let shared = std::sync::Arc::clone(&lab);
    let (daemon, named) = tokio::task::spawn_blocking(move || {
        let daemon = NamingDaemon::start(&shared, "node1", &kubeconfig);
        let named = daemon.named_pods(|named| {
            named.len() == 2 && named.iter().all(|(_, pod)| pod.starts_with("perf/"))
        });
        (daemon, named)
    })
    .await
    .expect("named");
    // Exactly node1's pods, each veth with its own pod's name.
    let mut expected: Vec<(String, String)> = lab
        .inventory
        .pods
        .iter()
        .filter(|pod| pod.node == "node1")
        .map(|pod| (pod.host_veth.clone(), format!("perf/{}", pod.name)))
        .collect();
    let mut named = named;
    named.sort();
    expected.sort();
    assert_eq!(named, expected);
    // It listed and watched the pods of its node, and only those.
    let asked: Vec<_> = server
        .calls()
        .into_iter()
        .filter(|c| c.path == "/api/v1/pods")
        .collect();
    assert!(
        asked
            .iter()
            .all(|c| c.query.contains("fieldSelector=spec.nodeName%3Dnode1")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|c| c.query.contains("watch=true")),
        "{asked:?}"
    );

    // A pod that comes later: its veth appears in the kernel, then the API reports it running.
    let (_, late_ip) = lab.add_pod("late", "node1", 98);
    server.add_pod(FakePod {
        name: "late".to_owned(),
        node: "node1".to_owned(),
        ip: late_ip.to_string(),
    });
    let named = tokio::task::spawn_blocking(move || {
        daemon.named_pods(|named| {
            named
                .iter()
                .any(|(veth, pod)| veth == "vethlate" && pod == "perf/late")
        })
    })
    .await
    .expect("late pod named");
    assert_eq!(named.len(), 3, "{named:?}");
    // The watch delivered it: the pods were listed once, and never again.
    let lists = server
        .calls()
        .into_iter()
        .filter(|c| c.path == "/api/v1/pods" && !c.query.contains("watch=true"))
        .count();
    assert_eq!(lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_nodes_in_three_zones_are_planned_with_three_peers_each() {
    let zones = ["zone-a", "zone-b", "zone-c"];
    let name = |i: usize| format!("node-{i:04}");
    let cluster = FakeCluster {
        nodes: (0..1000)
            .map(|i| FakeNode {
                name: name(i),
                zone: Some(zones[i % 3].to_owned()),
                labels: Vec::new(),
                pod_cidr: None,
            })
            .collect(),
        daemons: (0..1000)
            .map(|i| FakeDaemon {
                pod: format!("sonded-{i:04}"),
                node: name(i),
                ip: format!("127.0.{}.{}", 10 + i / 250, 1 + i % 250),
                ready: true,
                forward: None,
            })
            .collect(),
        endpoints: (0..1000)
            .map(|i| FakePod {
                name: format!("sonde-endpoint-{i:04}"),
                node: name(i),
                ip: format!("127.1.{}.{}", 10 + i / 250, 1 + i % 250),
            })
            .collect(),
        ..FakeCluster::default()
    };
    let server = FakeApiServer::start(cluster).await;
    let file = scenario_file(
        "k3",
        "name: peers\nnodes: all\ntopology: {mesh: {peers: 3}}\n\
         placement: [cross-node]\npaths: [pod-ip, service]\ntests: [{kind: tcp-rr, duration: 1s}]\n",
    );
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = sondectl_k8s(
        &format!("scenario plan {} -o json", file.display()),
        &server,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let measurements = plan["expansion"]["measurements"]
        .as_array()
        .expect("measurements");
    assert_eq!(measurements.len(), 3000);
    let mut measured_by: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
        std::collections::HashMap::new();
    for m in measurements {
        let (from, to) = (
            m["from_node"].as_str().expect("from"),
            m["to_node"].as_str().expect("to"),
        );
        assert_ne!(from, to);
        measured_by.entry(to).or_default().insert(from);
        // Between the endpoint pods on the two nodes.
        let ends = &m["ends"][0];
        assert!(
            ends["from"]
                .as_str()
                .is_some_and(|e| e.starts_with("pod/sonde/sonde-endpoint-")),
            "{ends}"
        );
    }
    assert_eq!(measured_by.len(), 1000);
    assert!(measured_by.values().all(|peers| peers.len() == 3));
    // Every round loads a node once at most: 3000 pairs of 1000 nodes need at least 6.
    let rounds = plan["expansion"]["rounds"].as_array().expect("rounds");
    assert!(rounds.len() >= 6, "{} rounds", rounds.len());
    // The Service path is not measured per pair in a cluster yet: skipped, with why.
    let skipped = plan["expansion"]["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 3000);
    assert!(
        skipped[0]["why"]
            .as_str()
            .unwrap_or_default()
            .contains("spreads over every node")
    );
    // Two list calls: the daemons' pods and the nodes, then the endpoint pods.
    let lists = server
        .paths()
        .into_iter()
        .filter(|p| p.ends_with("/pods") || p.ends_with("/nodes"))
        .count();
    assert_eq!(lists, 3, "{:?}", server.paths());
    println!(
        "1000 nodes in 3 zones, mesh with 3 peers: discovery and plan in {:.2} s ({} rounds)",
        took.as_secs_f64(),
        rounds.len()
    );
}

#[tokio::test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn a_mesh_of_the_lab_as_a_cluster_runs_through_port_forwards() {
    require_root();
    let lab = tokio::task::spawn_blocking(|| Lab::up(&["--nodes", "3", "--pods-per-node", "1"]))
        .await
        .expect("lab up");
    let server = FakeApiServer::start(lab_as_cluster_with_endpoints(&lab)).await;
    let file = scenario_file(
        "pf-mesh",
        "name: pf-mesh\nnodes: all\ntopology: mesh\npaths: [pod-ip]\n\
         tests: [{kind: tcp-rr, duration: 1s, warmup: 0s}]\n",
    );
    let (code, stdout, stderr) =
        sondectl_k8s(&format!("scenario run {} -o json", file.display()), &server).await;
    assert_eq!(code, 0, "{stderr}");
    let set: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(set["origin"], "cluster");
    let measurements = set["measurements"].as_array().expect("measurements");
    assert_eq!(measurements.len(), 6);
    for m in measurements {
        assert_eq!(m["status"], "complete", "{}", m["errors"]);
        let result = &m["results"][0];
        assert_eq!(result["path"], "pod-ip");
        // The client ran in the endpoint pod of its node, named to its daemon by the pod IP.
        let node = m["from_node"].as_str().expect("node");
        let pod = lab
            .inventory
            .pods
            .iter()
            .find(|p| p.node == node)
            .expect("pod");
        assert_eq!(
            result["measurements"][0]["client"]["local_ip"],
            pod.ip.to_string()
        );
    }
    let forwarded: Vec<String> = server
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/portforward"))
        .map(|c| c.path)
        .collect();
    for node in &lab.inventory.nodes {
        let path = format!(
            "/api/v1/namespaces/sonde/pods/sonded-{}/portforward",
            node.name
        );
        assert!(forwarded.contains(&path), "{path}: {forwarded:?}");
    }
}

/// The run-sets a monitor's `--log` holds so far: (started, ended) in ms since the epoch, and
/// whether every measurement of the round was complete.
fn logged_rounds(path: &std::path::Path) -> Vec<(u64, u64, bool)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| {
            let set = &line["set"];
            (
                set["started_at_unix_ms"].as_u64().unwrap_or_default(),
                set["ended_at_unix_ms"].as_u64().unwrap_or_default(),
                set["complete"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Waits (polling, off the runtime's threads) until `ready` holds, failing after `seconds`.
async fn eventually(what: &str, seconds: u64, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {seconds} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run by cargo xtask test"]
async fn monitors_sharing_a_lease_measure_one_at_a_time_and_a_standby_takes_over() {
    require_root();
    let lab = tokio::task::spawn_blocking(|| Lab::up(&["--nodes", "2", "--pods-per-node", "1"]))
        .await
        .expect("lab up");
    let server = FakeApiServer::start(lab_as_cluster_with_endpoints(&lab)).await;
    let file = scenario_file(
        "leased",
        "name: leased\nnodes: all\ntopology: mesh\npaths: [pod-ip]\n\
         tests: [{kind: tcp-rr, duration: 500ms, warmup: 0s, trace: false}]\n",
    );
    let dir = std::env::temp_dir().join(format!("sonde-t-lease-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = server.kubeconfig().display().to_string();
    let scenario = file.display().to_string();
    let monitor = |identity: &str| {
        let log = dir.join(format!("{identity}.jsonl"));
        let child = std::process::Command::new(sonde_integration::workspace_bin("sondectl"))
            .args([
                "monitor",
                "--kubeconfig",
                &kubeconfig,
                "--scenario",
                &scenario,
                "--every",
                "2s",
                "--peers",
                "1",
                "--lease",
                "sonde-monitor",
                "--lease-identity",
                identity,
                "--lease-duration",
                "3s",
                "--log",
                &log.to_string_lossy(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sondectl monitor");
        (child, log)
    };
    let holder = || {
        server
            .lease("sonde", "sonde-monitor")
            .and_then(|spec| spec.get("holderIdentity").cloned())
    };

    // The first monitor takes the Lease and measures.
    let (mut first, first_log) = monitor("first");
    eventually("the first monitor's first round", 30, || {
        !logged_rounds(&first_log).is_empty()
    })
    .await;
    assert_eq!(holder(), Some("first".into()));
    // The second waits while the first renews the Lease, over twice its duration.
    let (second, second_log) = monitor("second");
    let before = logged_rounds(&first_log).len();
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert!(
        logged_rounds(&second_log).is_empty(),
        "the standby measured while the leader held the Lease"
    );
    assert!(
        logged_rounds(&first_log).len() > before,
        "the leader kept measuring"
    );
    assert_eq!(holder(), Some("first".into()));

    // The leader dies without releasing: the standby takes over once the Lease expires.
    first.kill().expect("kill the leader");
    let _ = first.wait();
    let killed = unix_ms();
    eventually("the standby's first round", 30, || {
        !logged_rounds(&second_log).is_empty()
    })
    .await;
    assert_eq!(holder(), Some("second".into()));
    let rounds = logged_rounds(&second_log);
    assert!(rounds[0].0 >= killed, "{rounds:?} began before {killed}");
    assert!(rounds.iter().all(|round| round.2), "{rounds:?}");
    let last_of_first = logged_rounds(&first_log)
        .iter()
        .map(|round| round.1)
        .max()
        .expect("rounds");
    assert!(last_of_first <= rounds[0].0, "the monitors' rounds overlap");

    // Stopped (as a pod is, SIGTERM), the standby releases the Lease on its way out.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(second.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let output = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .expect("join")
        .expect("the standby exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("second waits: another monitor holds Lease sonde/sonde-monitor"),
        "{stderr}"
    );
    assert_eq!(holder(), None, "the Lease was not released");
    let _ = std::fs::remove_dir_all(&dir);
}
