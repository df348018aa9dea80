//! A local fake Kubernetes API server: it answers with real Kubernetes JSON (built from
//! k8s-openapi types), records every call, and port-forwards like a kubelet (the WebSocket
//! `v4.channel.k8s.io` protocol) to wherever a test says a daemon's pod really listens.
//!
//! It serves what sondectl asks: the daemons' pods (by label) and the nodes (by label
//! selector), workload pods, Services and their EndpointSlices, server-side applies (echoed),
//! deletes, port-forwards of the daemons' pods, and Leases ([`crate::fake_leases`]).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{
        core::v1::{
            Node, ObjectReference, Pod, PodCondition, PodSpec, PodStatus, Service, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

/// The namespace the fake's sonde daemons run in.
pub const SONDE_NAMESPACE: &str = "sonde";
/// The namespace of its workload pods and Services.
pub const WORKLOAD_NAMESPACE: &str = "perf";

/// One request the fake server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// GET, PATCH, DELETE, ...
    pub method: String,
    /// The URI's path.
    pub path: String,
    /// The URI's query, undecoded.
    pub query: String,
    /// The Content-Type header.
    pub content_type: String,
    /// The body, as text.
    pub body: String,
}

/// A node: its name, zone and labels.
#[derive(Debug, Clone)]
pub struct FakeNode {
    /// Its name.
    pub name: String,
    /// `topology.kubernetes.io/zone`, if labelled.
    pub zone: Option<String>,
    /// Its other labels.
    pub labels: Vec<(String, String)>,
    /// `spec.podCIDRs` (none: the CNI assigns pods' addresses itself).
    pub pod_cidr: Option<String>,
}

/// Where a port-forward to a daemon's pod really goes.
#[derive(Debug, Clone)]
pub enum Forward {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket (the lab's daemons).
    Unix(PathBuf),
}

/// A sonde daemon's pod.
#[derive(Debug, Clone)]
pub struct FakeDaemon {
    /// The pod's name.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Its IP (the node's: host networking).
    pub ip: String,
    /// Whether it is Ready.
    pub ready: bool,
    /// Where its port-forward connects; `None` answers like a kubelet whose connection to
    /// the pod's port is refused.
    pub forward: Option<Forward>,
}

/// A workload pod in namespace [`WORKLOAD_NAMESPACE`].
#[derive(Debug, Clone)]
pub struct FakePod {
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its IP.
    pub ip: String,
}

/// A ClusterIP Service in namespace [`WORKLOAD_NAMESPACE`].
#[derive(Debug, Clone)]
pub struct FakeService {
    /// Its name.
    pub name: String,
    /// Its ClusterIP.
    pub cluster_ip: String,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on the pods.
    pub target_port: u16,
    /// The pods behind it (ready endpoints).
    pub pods: Vec<String>,
}

/// The cluster the fake server describes.
#[derive(Debug, Clone, Default)]
pub struct FakeCluster {
    /// Every node.
    pub nodes: Vec<FakeNode>,
    /// Every sonde daemon.
    pub daemons: Vec<FakeDaemon>,
    /// The workload pods.
    pub pods: Vec<FakePod>,
    /// The Services.
    pub services: Vec<FakeService>,
    /// sonde's measurement endpoint pods (`deploy --endpoints`), in [`SONDE_NAMESPACE`].
    pub endpoints: Vec<FakePod>,
    /// The cluster's ServiceCIDRs (none: an API server without that API, which answers 404).
    pub service_cidrs: Vec<String>,
    /// Secrets in [`SONDE_NAMESPACE`] (the client certificate sondectl reads; what deploy
    /// applies is added).
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
}

/// A `kubernetes.io/tls` Secret named `name` of the files in `dir` (`tls.crt`, `tls.key`,
/// `ca.crt`), as a lab writes its client certificate.
pub fn tls_secret(name: &str, dir: &std::path::Path) -> k8s_openapi::api::core::v1::Secret {
    let data = ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(dir.join(file)).expect("a certificate file");
            (file.to_owned(), k8s_openapi::ByteString(bytes))
        })
        .collect();
    k8s_openapi::api::core::v1::Secret {
        metadata: meta(name, Some(SONDE_NAMESPACE)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// The fake's state, shared by its connections.
#[derive(Debug)]
struct State {
    cluster: Mutex<FakeCluster>,
    calls: Mutex<Vec<Call>>,
    /// Changes to workload pods, for watches: (node, `{"type", "object"}` line).
    events: tokio::sync::broadcast::Sender<(String, String)>,
    /// Changes to EndpointSlices, for watches: (Service, `{"type", "object"}` line).
    slice_events: tokio::sync::broadcast::Sender<(String, String)>,
    /// The latest resource version (lists are at 1).
    version: std::sync::atomic::AtomicU64,
    /// coordination.k8s.io Leases.
    leases: crate::fake_leases::Leases,
    /// Secrets as last applied, by path.
    secrets: Mutex<BTreeMap<String, serde_json::Value>>,
}

/// A running fake API server.
#[derive(Debug)]
pub struct FakeApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    kubeconfig: PathBuf,
}

impl FakeApiServer {
    /// Serves `cluster` on a loopback port, on the current tokio runtime.
    pub async fn start(cluster: FakeCluster) -> Self {
        Self::start_in(cluster, None).await
    }

    /// Serves `cluster` on a loopback port of the network namespace `netns` (a lab node's, for
    /// a daemon there to reach), or of the test's own.
    pub async fn start_in(cluster: FakeCluster, netns: Option<&std::path::Path>) -> Self {
        let netns = netns.map(std::path::Path::to_path_buf);
        let listener = std::thread::spawn(move || {
            if let Some(netns) = netns {
                let file = std::fs::File::open(&netns).expect("the namespace");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        })
        .join()
        .expect("binding thread");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let addr = listener.local_addr().expect("addr");
        let secrets = cluster
            .secrets
            .iter()
            .map(|secret| {
                let name = secret.metadata.name.clone().expect("a Secret's name");
                let mut json = serde_json::to_value(secret).expect("a Secret as JSON");
                json["apiVersion"] = "v1".into();
                json["kind"] = "Secret".into();
                (secret_path(&name), json)
            })
            .collect();
        let state = Arc::new(State {
            secrets: Mutex::new(secrets),
            cluster: Mutex::new(cluster),
            calls: Mutex::new(Vec::new()),
            events: tokio::sync::broadcast::channel(64).0,
            slice_events: tokio::sync::broadcast::channel(64).0,
            version: std::sync::atomic::AtomicU64::new(1),
            leases: crate::fake_leases::Leases::default(),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        handle(Arc::clone(&state), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let kubeconfig = std::env::temp_dir().join(format!(
            "sonde-kubeconfig-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n"
        );
        std::fs::write(&kubeconfig, text).expect("write kubeconfig");
        Self {
            addr,
            state,
            kubeconfig,
        }
    }

    /// Secret `name` of sonde's namespace, as last applied.
    pub fn secret(&self, name: &str) -> Option<k8s_openapi::api::core::v1::Secret> {
        let secrets = self.state.secrets.lock().expect("secrets");
        secrets
            .get(&secret_path(name))
            .map(|json| serde_json::from_value(json.clone()).expect("a Secret"))
    }

    /// Adds a workload pod, as the scheduler and kubelet would (running, with its IP), and
    /// tells the watches of its node.
    pub fn add_pod(&self, pod: FakePod) {
        let mut object = workload_pod(&pod);
        object.metadata.resource_version = Some(self.next_version());
        let object = serde_json::to_value(object).expect("pod JSON");
        let event = serde_json::json!({ "type": "ADDED", "object": object }).to_string();
        self.state
            .cluster
            .lock()
            .expect("cluster")
            .pods
            .push(pod.clone());
        let _ = self.state.events.send((pod.node, event));
    }

    /// Puts `pods` behind Service `service` (ready), as the EndpointSlice controller would
    /// after a rollout step, and tells the watches of its EndpointSlices.
    pub fn set_service_pods(&self, service: &str, pods: &[&str]) {
        let mut cluster = self.state.cluster.lock().expect("cluster");
        let found = cluster
            .services
            .iter_mut()
            .find(|s| s.name == service)
            .expect("a Service of the fake cluster");
        found.pods = pods.iter().map(|pod| (*pod).to_owned()).collect();
        let found = found.clone();
        let mut object = slice(&cluster, &found);
        object.metadata.resource_version = Some(self.next_version());
        let object = serde_json::to_value(object).expect("slice JSON");
        let event = serde_json::json!({ "type": "MODIFIED", "object": object }).to_string();
        let _ = self.state.slice_events.send((service.to_owned(), event));
    }

    /// A newer resource version than any before: every change has one, and a watch resumes
    /// from the last it saw.
    fn next_version(&self) -> String {
        let previous = self
            .state
            .version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (previous + 1).to_string()
    }

    /// A kubeconfig file pointing at the server (removed with it).
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("calls").clone()
    }

    /// Forgets the calls received so far.
    pub fn clear_calls(&self) {
        self.state.calls.lock().expect("calls").clear();
    }

    /// The spec of Lease `namespace/name`, if it was made.
    pub fn lease(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.state.leases.spec(namespace, name)
    }

    /// The paths asked so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.calls().into_iter().map(|call| call.path).collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A response body: whole, or a watch's stream of events.
type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<State>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let upgrade = hyper::upgrade::on(&mut request);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let call = Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    state.calls.lock().expect("calls").push(call.clone());
    let cluster = state.cluster.lock().expect("cluster").clone();
    let key = header("sec-websocket-key");
    if call.path.ends_with("/portforward")
        && !key.is_empty()
        && let Some(response) = port_forward(&cluster, &call, &key, &header, upgrade)
    {
        return Ok(response);
    }
    if call.path == "/api/v1/pods" && query(&call, "watch").as_deref() == Some("true") {
        return Ok(stream(state.events.subscribe(), node_asked(&call)));
    }
    if call.path.ends_with("/endpointslices") && query(&call, "watch").as_deref() == Some("true") {
        let service = query(&call, "labelSelector").and_then(|s| {
            s.strip_prefix("kubernetes.io/service-name=")
                .map(str::to_owned)
        });
        return Ok(stream(state.slice_events.subscribe(), service));
    }
    let (status, json) = state
        .leases
        .answer(&call)
        .or_else(|| secret_answer(&state, &call))
        .unwrap_or_else(|| answer(&cluster, &call));
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    Ok(response)
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{SONDE_NAMESPACE}/secrets/{name}")
}

/// Secrets in sonde's namespace: read, and applied (server-side apply stores the object).
fn secret_answer(state: &State, call: &Call) -> Option<(u16, serde_json::Value)> {
    if !call.path.starts_with(&secret_path("")) {
        return None;
    }
    let mut secrets = state.secrets.lock().expect("secrets");
    Some(match call.method.as_str() {
        "GET" => match secrets.get(&call.path) {
            Some(secret) => (200, secret.clone()),
            None => not_found(),
        },
        "PATCH" => {
            let secret: serde_json::Value =
                serde_json::from_str(&call.body).expect("an applied Secret is JSON");
            secrets.insert(call.path.clone(), secret.clone());
            (200, secret)
        }
        _ => not_found(),
    })
}

/// Accepts a port-forward of a daemon's pod as the API server and kubelet do, and carries its
/// bytes to the daemon's real address. `None` when the pod or port is not one to forward.
fn port_forward(
    cluster: &FakeCluster,
    call: &Call,
    key: &str,
    header: &dyn Fn(&str) -> String,
    upgrade: hyper::upgrade::OnUpgrade,
) -> Option<Response<Body>> {
    let pod = call
        .path
        .strip_prefix(&format!("/api/v1/namespaces/{SONDE_NAMESPACE}/pods/"))?
        .strip_suffix("/portforward")?;
    let daemon = cluster.daemons.iter().find(|d| d.pod == pod)?.clone();
    let ports = call
        .query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ports="))
        .map(percent_decoded)?;
    let port: u16 = ports.parse().ok()?;
    assert!(
        header("sec-websocket-protocol").contains("v4.channel.k8s.io"),
        "a port-forward speaks the v4 channel protocol"
    );
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        carry(socket, daemon, port).await;
    });
    Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::new(Bytes::new()).boxed())
        .ok()
}

/// A query parameter, decoded.
fn query(call: &Call, name: &str) -> Option<String> {
    call.query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .map(percent_decoded)
}

/// The node a `fieldSelector=spec.nodeName=NODE` asks for.
fn node_asked(call: &Call) -> Option<String> {
    query(call, "fieldSelector")?
        .strip_prefix("spec.nodeName=")
        .map(str::to_owned)
}

/// A watch: the changes made after it started (of the pods on a node, of a Service's
/// EndpointSlices: those whose key is `key`), one JSON event a line, for as long as the client
/// stays.
fn stream(
    events: tokio::sync::broadcast::Receiver<(String, String)>,
    key: Option<String>,
) -> Response<Body> {
    let lines = futures::stream::unfold(events, move |mut events| {
        let key = key.clone();
        async move {
            loop {
                match events.recv().await {
                    Ok((on, line)) if key.as_ref().is_none_or(|key| *key == on) => {
                        let frame = Frame::data(Bytes::from(format!("{line}\n")));
                        return Some((Ok::<_, Infallible>(frame), events));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(lines)));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

/// The kubelet's side of one port-forward: channel 0 carries data, channel 1 errors, and each
/// opens with the port number (2 bytes, little-endian).
async fn carry<S>(mut socket: WebSocketStream<S>, daemon: FakeDaemon, port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let [low, high] = port.to_le_bytes();
    for channel in [0u8, 1] {
        if socket
            .send(Message::binary(vec![channel, low, high]))
            .await
            .is_err()
        {
            return;
        }
    }
    let target: Result<Box<dyn Duplex>, std::io::Error> = match &daemon.forward {
        Some(Forward::Tcp(addr)) => tokio::net::TcpStream::connect(addr)
            .await
            .map(|s| Box::new(s) as Box<dyn Duplex>),
        Some(Forward::Unix(path)) => tokio::net::UnixStream::connect(path)
            .await
            .map(|s| Box::new(s) as Box<dyn Duplex>),
        None => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
    };
    let mut target = match target {
        Ok(target) => target,
        Err(err) => {
            let mut message = vec![1u8];
            message.extend_from_slice(
                format!(
                    "error forwarding port {port} to pod {}: dial tcp4 127.0.0.1:{port}: {err}",
                    daemon.pod
                )
                .as_bytes(),
            );
            let _ = socket.send(Message::binary(message)).await;
            // Close once the client has spoken or closed (2 s at most): a client that sent
            // its first bytes before the reason arrived must not find the socket closed
            // under them before it reads the reason.
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.next()).await;
            let _ = socket.close(None).await;
            return;
        }
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.first() == Some(&0) => {
                    if target.write_all(&bytes[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = target.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut message = Vec::with_capacity(n + 1);
                    message.push(0);
                    message.extend_from_slice(&buffer[..n]);
                    if socket.send(Message::binary(message)).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = socket.close(None).await;
}

/// A byte stream both ways.
trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Duplex for T {}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        resource_version: Some("1".to_owned()),
        ..ObjectMeta::default()
    }
}

fn node(spec: &FakeNode, cluster: &FakeCluster) -> Node {
    let mut labels: BTreeMap<String, String> = spec.labels.iter().cloned().collect();
    labels.insert("kubernetes.io/hostname".to_owned(), spec.name.clone());
    if let Some(zone) = &spec.zone {
        labels.insert("topology.kubernetes.io/zone".to_owned(), zone.clone());
    }
    // The node's address: its daemon's (host networking).
    let addresses = cluster
        .daemons
        .iter()
        .filter(|daemon| daemon.node == spec.name)
        .map(|daemon| k8s_openapi::api::core::v1::NodeAddress {
            address: daemon.ip.clone(),
            type_: "InternalIP".to_owned(),
        })
        .collect();
    Node {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(&spec.name, None)
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidrs: spec.pod_cidr.clone().map(|cidr| vec![cidr]),
            ..Default::default()
        }),
        status: Some(k8s_openapi::api::core::v1::NodeStatus {
            addresses: Some(addresses),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, namespace: &str, node: &str, ip: &str, ready: bool) -> Pod {
    Pod {
        metadata: meta(name, Some(namespace)),
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
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

fn workload_pod(found: &FakePod) -> Pod {
    pod(
        &found.name,
        WORKLOAD_NAMESPACE,
        &found.node,
        &found.ip,
        true,
    )
}

fn endpoint_pod(found: &FakePod) -> Pod {
    let mut pod = pod(&found.name, SONDE_NAMESPACE, &found.node, &found.ip, true);
    pod.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "sonde"),
            ("app.kubernetes.io/component", "endpoint"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    pod
}

fn daemon_pod(daemon: &FakeDaemon) -> Pod {
    let mut found = pod(
        &daemon.pod,
        SONDE_NAMESPACE,
        &daemon.node,
        &daemon.ip,
        daemon.ready,
    );
    found.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "sonde"),
            ("app.kubernetes.io/component", "agent"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    if let Some(spec) = found.spec.as_mut() {
        spec.host_network = Some(true);
    }
    found
}

/// The one EndpointSlice of `service`: its pods, ready.
fn slice(cluster: &FakeCluster, service: &FakeService) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(&format!("{}-abc", service.name), Some(WORKLOAD_NAMESPACE)),
        address_type: "IPv4".to_owned(),
        endpoints: cluster
            .pods
            .iter()
            .filter(|p| service.pods.contains(&p.name))
            .map(|p| Endpoint {
                addresses: vec![p.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                node_name: Some(p.node.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_owned()),
                    name: Some(p.name.clone()),
                    namespace: Some(WORKLOAD_NAMESPACE.to_owned()),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
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

fn json<T: serde::Serialize>(object: &T) -> (u16, serde_json::Value) {
    (200, serde_json::to_value(object).expect("JSON"))
}

/// Answers like an API server.
fn answer(cluster: &FakeCluster, call: &Call) -> (u16, serde_json::Value) {
    let selector = call
        .query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))
        .map(percent_decoded)
        .unwrap_or_default();
    let wanted: Vec<(&str, &str)> = selector
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let sonde_pods = format!("/api/v1/namespaces/{SONDE_NAMESPACE}/pods");
    let one_pod = format!("/api/v1/namespaces/{WORKLOAD_NAMESPACE}/pods/");
    let service = format!("/api/v1/namespaces/{WORKLOAD_NAMESPACE}/services/");
    let slices =
        format!("/apis/discovery.k8s.io/v1/namespaces/{WORKLOAD_NAMESPACE}/endpointslices");
    let sonde_pod = format!("/api/v1/namespaces/{SONDE_NAMESPACE}/pods/");
    match (call.method.as_str(), call.path.as_str()) {
        ("GET", path) if path == sonde_pods && selector.contains("component=endpoint") => {
            let pods: Vec<Pod> = cluster.endpoints.iter().map(endpoint_pod).collect();
            (200, list("PodList", &pods))
        }
        ("GET", path) if path.starts_with(&sonde_pod) && !path.ends_with("/portforward") => {
            let name = &path[sonde_pod.len()..];
            match cluster.endpoints.iter().find(|p| p.name == name) {
                Some(found) => json(&endpoint_pod(found)),
                None => not_found(),
            }
        }
        ("GET", path) if path == sonde_pods => {
            assert!(
                selector.contains("app.kubernetes.io/name=sonde"),
                "{selector}"
            );
            let pods: Vec<Pod> = cluster.daemons.iter().map(daemon_pod).collect();
            (200, list("PodList", &pods))
        }
        ("GET", "/api/v1/pods") => {
            // Every pod on a node (the daemons' own watch): workloads and daemons.
            let node = node_asked(call);
            let on_node = |on: &str| node.as_deref().is_none_or(|node| node == on);
            let mut pods: Vec<Pod> = cluster
                .pods
                .iter()
                .filter(|p| on_node(&p.node))
                .map(workload_pod)
                .collect();
            pods.extend(
                cluster
                    .daemons
                    .iter()
                    .filter(|d| on_node(&d.node))
                    .map(daemon_pod),
            );
            pods.extend(
                cluster
                    .endpoints
                    .iter()
                    .filter(|p| on_node(&p.node))
                    .map(endpoint_pod),
            );
            (200, list("PodList", &pods))
        }
        ("GET", "/api/v1/nodes") => {
            let nodes: Vec<Node> = cluster
                .nodes
                .iter()
                .map(|spec| node(spec, cluster))
                .filter(|node| {
                    let labels = node.metadata.labels.clone().unwrap_or_default();
                    wanted
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect();
            (200, list("NodeList", &nodes))
        }
        ("GET", "/apis/networking.k8s.io/v1/servicecidrs") if !cluster.service_cidrs.is_empty() => {
            let cidrs = vec![k8s_openapi::api::networking::v1::ServiceCIDR {
                metadata: meta("kubernetes", None),
                spec: Some(k8s_openapi::api::networking::v1::ServiceCIDRSpec {
                    cidrs: Some(cluster.service_cidrs.clone()),
                }),
                status: None,
            }];
            (200, list("ServiceCIDRList", &cidrs))
        }
        ("GET", "/api/v1/services") => {
            let services: Vec<Service> = cluster
                .services
                .iter()
                .map(|found| Service {
                    metadata: meta(&found.name, Some(WORKLOAD_NAMESPACE)),
                    spec: Some(ServiceSpec {
                        cluster_ips: Some(vec![found.cluster_ip.clone()]),
                        ..ServiceSpec::default()
                    }),
                    ..Service::default()
                })
                .collect();
            (200, list("ServiceList", &services))
        }
        ("GET", path) if path.starts_with(&one_pod) => {
            let name = &path[one_pod.len()..];
            match cluster.pods.iter().find(|p| p.name == name) {
                Some(found) => json(&workload_pod(found)),
                None => not_found(),
            }
        }
        ("GET", path) if path.starts_with(&service) => {
            let name = &path[service.len()..];
            match cluster.services.iter().find(|s| s.name == name) {
                Some(found) => json(&Service {
                    metadata: meta(&found.name, Some(WORKLOAD_NAMESPACE)),
                    spec: Some(ServiceSpec {
                        cluster_ip: Some(found.cluster_ip.clone()),
                        ports: Some(vec![ServicePort {
                            port: i32::from(found.port),
                            target_port: Some(IntOrString::Int(i32::from(found.target_port))),
                            ..ServicePort::default()
                        }]),
                        ..ServiceSpec::default()
                    }),
                    ..Service::default()
                }),
                None => not_found(),
            }
        }
        ("GET", path) if path == slices => {
            let name = selector
                .strip_prefix("kubernetes.io/service-name=")
                .unwrap_or_else(|| panic!("EndpointSlices by Service: {selector}"));
            let items: Vec<EndpointSlice> = cluster
                .services
                .iter()
                .filter(|s| s.name == name)
                .map(|found| slice(cluster, found))
                .collect();
            (200, list("EndpointSliceList", &items))
        }
        ("PATCH", _) => {
            let mut object: serde_json::Value =
                serde_json::from_str(&call.body).expect("an applied object is JSON");
            // An API server gives every object a UID (owner references name it); the fake's
            // is the path's, stable across applies as a real object's is.
            if object["metadata"]["uid"].is_null() {
                object["metadata"]["uid"] = uid_of(&call.path).into();
            }
            (200, object)
        }
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

/// The UID the fake gives the object at `path`.
pub fn uid_of(path: &str) -> String {
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("00000000-0000-4000-8000-{:012x}", hash & 0xffff_ffff_ffff)
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
