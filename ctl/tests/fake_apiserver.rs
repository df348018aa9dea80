//! sondectl's Kubernetes code against a local fake API server that answers with real
//! Kubernetes JSON (built from k8s-openapi types) and records every call: discovery lists the
//! daemons with their zones, placement picks across zones or refuses, `deploy` sends the
//! expected server-side applies in order and `undeploy` deletes them in reverse.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodSpec, PodStatus};
use kube::api::ObjectMeta;

/// One request the fake server received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: String,
}

/// A node: name, zone, labels.
type NodeSpec = (String, Option<String>, Vec<(String, String)>);

/// The cluster the fake server describes.
#[derive(Debug, Clone)]
struct Cluster {
    /// Every node.
    nodes: Vec<NodeSpec>,
    /// (pod, node, ready) of every sonde daemon.
    daemons: Vec<(String, String, bool)>,
    /// (name, node, ip) of the workload pods in namespace `perf`; the `web-*` ones are behind
    /// Service `web`.
    workloads: Vec<(String, String, String)>,
}

fn node(name: &str, zone: Option<&str>, labels: &[(&str, &str)]) -> Node {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
    if let Some(zone) = zone {
        all.insert("topology.kubernetes.io/zone".to_owned(), zone.to_owned());
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

fn daemon_pod(name: &str, node: &str, ip: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("sonde".to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", "sonde"),
                    ("app.kubernetes.io/component", "agent"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            host_network: Some(true),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.to_owned()),
            phase: Some("Running".to_owned()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn list<T: serde::Serialize>(kind: &str, items: &[T]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": { "resourceVersion": "1" },
        "items": items,
    })
}

/// A query value with its %XX escapes decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers like an API server: lists of pods and nodes (with label selectors), applies that
/// echo the object, deletes that report success.
fn answer(cluster: &Cluster, call: &Call) -> (u16, serde_json::Value) {
    let selector = call
        .query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))
        .map(percent_decoded)
        .unwrap_or_default();
    match (call.method.as_str(), call.path.as_str()) {
        ("GET", "/api/v1/namespaces/sonde/pods") => {
            assert!(
                selector.contains("app.kubernetes.io/name=sonde"),
                "{selector}"
            );
            let pods: Vec<Pod> = cluster
                .daemons
                .iter()
                .enumerate()
                .map(|(i, (name, node, ready))| {
                    daemon_pod(name, node, &format!("127.0.2.{}", i + 1), *ready)
                })
                .collect();
            (200, list("PodList", &pods))
        }
        ("GET", "/api/v1/nodes") => {
            let wanted: Vec<(&str, &str)> = selector
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .collect();
            let nodes: Vec<Node> = cluster
                .nodes
                .iter()
                .filter(|(_, _, labels)| {
                    wanted
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(name, zone, labels)| {
                    let labels: Vec<(&str, &str)> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    node(name, zone.as_deref(), &labels)
                })
                .collect();
            (200, list("NodeList", &nodes))
        }
        ("GET", path) if path.starts_with("/api/v1/namespaces/perf/pods/") => {
            let name = path.rsplit('/').next().unwrap_or_default();
            match cluster.workloads.iter().find(|(pod, _, _)| pod == name) {
                Some((pod, node, ip)) => {
                    let mut found = daemon_pod(pod, node, ip, true);
                    found.metadata.namespace = Some("perf".to_owned());
                    found.metadata.labels = None;
                    if let Some(spec) = found.spec.as_mut() {
                        spec.host_network = None;
                    }
                    (200, serde_json::to_value(found).expect("pod JSON"))
                }
                None => not_found(),
            }
        }
        ("GET", "/api/v1/namespaces/perf/services/web") => {
            let service = k8s_openapi::api::core::v1::Service {
                metadata: ObjectMeta {
                    name: Some("web".to_owned()),
                    namespace: Some("perf".to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                    cluster_ip: Some("10.96.0.10".to_owned()),
                    ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                        port: 80,
                        target_port: Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080),
                        ),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (200, serde_json::to_value(service).expect("service JSON"))
        }
        ("GET", "/apis/discovery.k8s.io/v1/namespaces/perf/endpointslices") => {
            use k8s_openapi::api::{
                core::v1::ObjectReference,
                discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
            };
            assert!(
                selector.contains("kubernetes.io/service-name=web"),
                "{selector}"
            );
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some("web-abc".to_owned()),
                    namespace: Some("perf".to_owned()),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".to_owned(),
                endpoints: cluster
                    .workloads
                    .iter()
                    .filter(|(pod, _, _)| pod.starts_with("web-"))
                    .map(|(pod, node, ip)| Endpoint {
                        addresses: vec![ip.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            ..Default::default()
                        }),
                        node_name: Some(node.clone()),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".to_owned()),
                            name: Some(pod.clone()),
                            namespace: Some("perf".to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ports: None,
            };
            (200, list("EndpointSliceList", &[slice]))
        }
        ("PATCH", _) => (
            200,
            serde_json::from_str(&call.body).expect("an applied object is JSON"),
        ),
        ("DELETE", _) => (
            200,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "metadata": {},
                "status": "Success", "code": 200,
            }),
        ),
        _ => not_found(),
    }
}

fn not_found() -> (u16, serde_json::Value) {
    (
        404,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not served by the fake",
        }),
    )
}

/// A fake API server on loopback; returns its address and the calls it records.
async fn serve(cluster: Cluster) -> (SocketAddr, Arc<Mutex<Vec<Call>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&calls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (cluster, recorded) = (cluster.clone(), Arc::clone(&recorded));
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (cluster, recorded) = (cluster.clone(), Arc::clone(&recorded));
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let call = Call {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            query: parts.uri.query().unwrap_or_default().to_owned(),
                            content_type: parts
                                .headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        let (status, json) = answer(&cluster, &call);
                        recorded.lock().expect("calls").push(call);
                        let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
                        *response.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("status");
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().expect("header"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// A kubeconfig pointing at the fake server.
fn kubeconfig(addr: SocketAddr) -> tempfile_path::Path {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n"
    );
    tempfile_path::Path::with(&text)
}

/// A file removed when dropped (no tempfile crate for one file).
mod tempfile_path {
    use std::path::PathBuf;

    #[derive(Debug)]
    pub struct Path(pub PathBuf);

    impl Path {
        pub fn with(text: &str) -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "sonde-kubeconfig-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::write(&path, text).expect("write kubeconfig");
            Self(path)
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Runs sondectl (blocking, off the runtime's threads) and returns (exit code, stdout, stderr).
async fn sondectl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sondectl"))
            .args(&args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("sondectl runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn args(words: &str, kubeconfig: &tempfile_path::Path) -> Vec<String> {
    let mut args: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
    args.push("--kubeconfig".to_owned());
    args.push(kubeconfig.0.display().to_string());
    args
}

fn two_zones() -> Cluster {
    let labels = |agent: &str| vec![("agenttype".to_owned(), agent.to_owned())];
    Cluster {
        nodes: vec![
            ("n1".to_owned(), Some("zone-a".to_owned()), labels("client")),
            ("n2".to_owned(), Some("zone-a".to_owned()), labels("server")),
            ("n3".to_owned(), Some("zone-b".to_owned()), labels("server")),
        ],
        daemons: vec![
            ("sonded-x1".to_owned(), "n1".to_owned(), true),
            ("sonded-x2".to_owned(), "n2".to_owned(), true),
            ("sonded-x3".to_owned(), "n3".to_owned(), true),
        ],
        workloads: vec![
            ("client".to_owned(), "n1".to_owned(), "127.0.1.1".to_owned()),
            ("web-a".to_owned(), "n2".to_owned(), "127.0.1.2".to_owned()),
            ("web-b".to_owned(), "n3".to_owned(), "127.0.1.3".to_owned()),
        ],
    }
}

#[tokio::test]
async fn nodes_lists_the_daemons_with_their_zones() {
    let (addr, calls) = serve(two_zones()).await;
    let config = kubeconfig(addr);
    let (code, stdout, stderr) = sondectl(args("nodes -o json", &config)).await;
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
    let calls = calls.lock().expect("calls").clone();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["/api/v1/namespaces/sonde/pods", "/api/v1/nodes"]);

    // Restricted to labelled nodes (the selector goes to the API server).
    let (code, stdout, stderr) = sondectl(args(
        "nodes -o json --node-selector agenttype=server",
        &config,
    ))
    .await;
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
    let (addr, _calls) = serve(two_zones()).await;
    let config = kubeconfig(addr);
    let (code, stdout, stderr) = sondectl(args("nodes -o json --pick cross-zone", &config)).await;
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
    let (addr, _calls) = serve(one_zone).await;
    let config = kubeconfig(addr);
    let (code, _stdout, stderr) = sondectl(args("nodes --pick cross-zone", &config)).await;
    assert_eq!(code, 1, "refused: {stderr}");
    assert!(
        stderr.contains("--cross-zone needs ready daemons in two zones; found 1 (zone-a)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn deploy_applies_every_object_in_order_and_undeploy_deletes_them() {
    let (addr, calls) = serve(two_zones()).await;
    let config = kubeconfig(addr);
    let (code, stdout, stderr) = sondectl(args(
        "deploy --image registry.example/sonded:t --node-selector agenttype=server",
        &config,
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    let applied = calls.lock().expect("calls").clone();
    let expected = [
        "/api/v1/namespaces/sonde",
        "/api/v1/namespaces/sonde/serviceaccounts/sonded",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/sonde-reader",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sonde-reader",
        "/apis/apps/v1/namespaces/sonde/daemonsets/sonded",
        "/api/v1/namespaces/sonde/services/sonded",
    ];
    let paths: Vec<&str> = applied.iter().map(|c| c.path.as_str()).collect();
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

    calls.lock().expect("calls").clear();
    let (code, _stdout, stderr) = sondectl(args("undeploy", &config)).await;
    assert_eq!(code, 0, "{stderr}");
    let deleted = calls.lock().expect("calls").clone();
    let paths: Vec<&str> = deleted.iter().map(|c| c.path.as_str()).collect();
    let mut reversed = expected.to_vec();
    reversed.reverse();
    assert_eq!(paths, reversed);
    assert!(deleted.iter().all(|c| c.method == "DELETE"));
}

#[tokio::test]
async fn runs_between_kubernetes_endpoints_are_placed_as_asked_or_refused() {
    let (addr, calls) = serve(two_zones()).await;
    let config = kubeconfig(addr);
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
    ] {
        let (code, _stdout, stderr) = sondectl(args(
            &format!("run tcp-rr --from pod/perf/client --to pod/perf/web-a {flag}"),
            &config,
        ))
        .await;
        assert_eq!(code, 1, "{flag}: {stderr}");
        assert!(stderr.contains(expected), "{flag}: {stderr}");
    }
    // Through the Service: web-b (n3, zone-b) passes --cross-zone, web-a (n2) does not.
    let (code, _stdout, stderr) = sondectl(args(
        "run tcp-rr --from pod/perf/client --to service/perf/web --cross-zone",
        &config,
    ))
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("(n1 and n2)"), "{stderr}");
    // Placed as asked, the run goes to the daemons at their pod IPs: none listens here, so it
    // fails there, after resolving the pods through the API.
    calls.lock().expect("calls").clear();
    let (code, _stdout, stderr) = sondectl(args(
        "run tcp-rr --from pod/perf/client --to service/perf/web --cross-node --duration 1s \
         --timeout 1s",
        &config,
    ))
    .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("127.0.2.2:7470") || stderr.contains("127.0.2.3:7470"),
        "{stderr}"
    );
    let paths: Vec<String> = calls
        .lock()
        .expect("calls")
        .iter()
        .map(|c| c.path.clone())
        .collect();
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
        let (code, _stdout, stderr) = sondectl(args(
            &format!("{command} --from pod/perf/client --to pod/perf/web-a --cross-zone"),
            &config,
        ))
        .await;
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(
            stderr.contains("--cross-zone: both ends are in zone zone-a"),
            "{command}: {stderr}"
        );
    }
    // Without a namespace, a Kubernetes pod is refused with what to write.
    let (code, _stdout, stderr) = sondectl(args(
        "run tcp-rr --from pod/client --to pod/perf/web-a",
        &config,
    ))
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("pod/NAMESPACE/NAME"), "{stderr}");
}
