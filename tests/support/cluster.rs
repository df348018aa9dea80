//! The fake cluster's side of the Kubernetes tests: sondectl run against the fake API server,
//! the lab described as a cluster, and TLS handshakes between Secrets' certificates.

use crate::{
    fake_apiserver::{
        FakeApiServer, FakeCluster, FakeDaemon, FakeNode, FakePod, FakeService, Forward, tls_secret,
    },
    lab::{Lab, sondectl},
};

/// Runs sondectl with `words` and the fake's kubeconfig (off the runtime's threads) and
/// returns (exit code, stdout, stderr).
pub async fn sondectl_k8s(words: &str, server: &FakeApiServer) -> (i32, String, String) {
    let mut args: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
    args.push("--kubeconfig".to_owned());
    args.push(server.kubeconfig().display().to_string());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = sondectl(&args);
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// A TLS handshake between a daemon serving the files of `daemon` (as the DaemonSet mounts
/// them) and sondectl presenting `client`, over an in-memory pipe.
pub async fn tls_handshake(
    daemon: &k8s_openapi::api::core::v1::Secret,
    client: &k8s_openapi::api::core::v1::Secret,
) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("sonde-k8s-tls-{}-{}", std::process::id(), {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }));
    let write = |side: &str, secret: &k8s_openapi::api::core::v1::Secret| {
        let side = dir.join(side);
        std::fs::create_dir_all(&side).expect("dir");
        for (key, value) in secret.data.clone().unwrap_or_default() {
            std::fs::write(side.join(key), value.0).expect("a Secret's file");
        }
        side
    };
    let (daemon_dir, client_dir) = (write("daemon", daemon), write("client", client));
    let files = sonde_daemon::tls::TlsFiles {
        cert: daemon_dir.join("tls.crt"),
        key: daemon_dir.join("tls.key"),
        ca: daemon_dir.join("ca.crt"),
    };
    let server = sonde_daemon::tls::ServerTls::load(files).map_err(|err| err.to_string())?;
    let material = sonde_ctl::tls::Material::from_dir(&client_dir).map_err(|e| e.to_string())?;
    let credentials = sonde_ctl::tls::Credentials::MutualTls(
        material.client_config().map_err(|e| e.to_string())?,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let (near, far) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = server.acceptor().accept(far).await?;
        // The first word a server says (sondectl waits for it).
        stream.write_all(b"ok").await?;
        stream.flush().await?;
        Ok::<_, std::io::Error>(stream)
    });
    let dialled = sonde_ctl::tls::secure(&credentials, near).await;
    let served = serving.await.expect("join");
    served.map_err(|err| format!("daemon: {err}"))?;
    dialled.map(|_| ()).map_err(|err| format!("client: {err}"))
}

/// The lab as a Kubernetes cluster: its nodes in two zones, its daemons as pods whose
/// port-forwards reach their real sockets, its pods in namespace `perf`, Service `web`.
pub fn lab_as_cluster(lab: &Lab) -> FakeCluster {
    let inventory = &lab.inventory;
    FakeCluster {
        nodes: inventory
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| FakeNode {
                name: node.name.clone(),
                zone: Some(format!("zone-{}", i + 1)),
                labels: Vec::new(),
                pod_cidr: None,
            })
            .collect(),
        daemons: inventory
            .nodes
            .iter()
            .map(|node| FakeDaemon {
                pod: format!("sonded-{}", node.name),
                node: node.name.clone(),
                ip: node.ip.to_string(),
                ready: true,
                forward: Some(Forward::Unix(
                    node.agent
                        .strip_prefix("unix:")
                        .expect("the lab's daemons listen on Unix sockets")
                        .into(),
                )),
            })
            .collect(),
        pods: inventory
            .pods
            .iter()
            .map(|pod| FakePod {
                name: pod.name.clone(),
                node: pod.node.clone(),
                ip: pod.ip.to_string(),
            })
            .collect(),
        services: inventory
            .services
            .iter()
            .map(|service| FakeService {
                name: service.name.clone(),
                cluster_ip: service.cluster_ip.to_string(),
                port: service.port,
                target_port: service.target_port,
                pods: service.endpoints.clone(),
            })
            .collect(),
        endpoints: Vec::new(),
        service_cidrs: Vec::new(),
        // The lab's client certificate, as deploy would have put it in the cluster.
        secrets: vec![tls_secret(
            sonde_ctl::tls::CLIENT_SECRET,
            &sonde_ctl::tls::lab_client_dir(&inventory.state_dir),
        )],
    }
}

/// The lab as a cluster whose pods stand for the endpoint pods of `deploy --endpoints`.
pub fn lab_as_cluster_with_endpoints(lab: &Lab) -> FakeCluster {
    let mut cluster = lab_as_cluster(lab);
    cluster.endpoints = lab
        .inventory
        .pods
        .iter()
        .map(|pod| FakePod {
            name: format!("sonde-endpoint-{}", pod.node),
            node: pod.node.clone(),
            ip: pod.ip.to_string(),
        })
        .collect();
    cluster
}

/// A scenario file for one test.
pub fn scenario_file(name: &str, yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sonde-k8s-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("write scenario");
    path
}
