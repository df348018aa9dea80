//! Mutual TLS between sondectl and a daemon served in process on loopback (real rustls, real
//! gRPC, no root): a client without a certificate, with one from another CA, with an expired
//! one, or in plaintext is refused at the TLS handshake, by sondectl's client and by an
//! independent one (Python's grpcio, C core); the right certificate is served; a rotated
//! certificate is picked up without a restart.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::pem::PemObject as _;
use sonde_ctl::{
    agent::{self, AgentAddr},
    tls::{
        Credentials, Material,
        issue::{Authority, Issued, Role},
    },
};
use sonde_daemon::{
    facts::{FactsSource, NodeFacts},
    grpc::AgentService,
    runs::{Runs, policy::TargetPolicy},
    server,
    tls::{ServerTls, TlsFiles},
};

struct Facts;

impl FactsSource for Facts {
    fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            node_name: "tls-node".to_owned(),
            kernel_release: String::new(),
            daemon_version: String::new(),
            started_at_unix_ns: 0,
            pid: 0,
            capabilities: Vec::new(),
            programs: Vec::new(),
            pod_interfaces: Vec::new(),
        }
    }
}

/// A directory of certificates, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: dir.join("ca.crt"),
    }
}

/// Serves a daemon over mutual TLS from the files in `dir`, on a loopback port.
async fn serve(dir: &Path) -> AgentAddr {
    let listener = server::Listener::bind(&"127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr: AgentAddr = listener.local_addr().parse().expect("agent address");
    let tls = ServerTls::load(files(dir)).expect("the daemon's TLS files load");
    let agent = AgentService::new(
        Arc::new(Facts),
        Arc::new(Runs::default()),
        TargetPolicy::default(),
    );
    tokio::spawn(server::run(
        listener,
        server::Security::MutualTls(Arc::new(tls)),
        agent,
        std::future::pending(),
        Duration::from_millis(100),
    ));
    addr
}

/// `GetNodeFacts` through sondectl's client with `credentials`: the node's name, or the
/// error as sondectl prints it.
async fn ask(addr: &AgentAddr, credentials: Credentials) -> Result<String, String> {
    let mut client = agent::connect_with(addr, Duration::from_secs(5), credentials)
        .await
        .map_err(|err| sonde_ctl::error::chain(&err))?;
    client
        .get_node_facts(sonde_proto::v1::GetNodeFactsRequest {})
        .await
        .map(|facts| {
            facts
                .into_inner()
                .facts
                .map(|f| f.node_name)
                .unwrap_or_default()
        })
        .map_err(|status| agent::status_text(&status))
}

fn credentials(dir: &Path) -> Credentials {
    let material = Material::from_dir(dir).expect("client files");
    Credentials::MutualTls(material.client_config().expect("client config"))
}

/// The certificates of one test: sonde's CA with a daemon and a client certificate, and the
/// clients it must refuse.
struct Pki {
    scratch: Scratch,
}

impl Pki {
    fn issue(name: &str) -> Self {
        let scratch = Scratch::new(name);
        let ca = Authority::generate("sonde test CA").expect("CA");
        let daemon = ca
            .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
            .expect("daemon");
        ca.write_dir(&scratch.dir("daemon"), &daemon)
            .expect("daemon files");
        let client = ca.issue(Role::Client, "sondectl").expect("client");
        ca.write_dir(&scratch.dir("client"), &client)
            .expect("client files");
        // Expired yesterday, from the right CA.
        let two_years_ago = time::OffsetDateTime::now_utc() - Duration::from_secs(730 * 86400);
        let expired = ca
            .issue_at(
                Role::Client,
                "expired",
                two_years_ago,
                Duration::from_secs(729 * 86400),
            )
            .expect("expired");
        ca.write_dir(&scratch.dir("expired"), &expired)
            .expect("expired files");
        // A client of another CA, which trusts sonde's CA for the daemon's certificate.
        let other = Authority::generate("another CA").expect("other CA");
        let stranger = other.issue(Role::Client, "stranger").expect("stranger");
        write_with_ca(&scratch.dir("stranger"), &stranger, &ca.issued);
        // The daemon's own certificate presented as a client's (server authentication only).
        write_with_ca(&scratch.dir("as-daemon"), &daemon, &ca.issued);
        Self { scratch }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.scratch.dir(name)
    }
}

/// `issued` with a CA file of `ca`'s certificate.
fn write_with_ca(dir: &Path, issued: &Issued, ca: &Issued) {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("tls.crt"), &issued.cert_pem).expect("cert");
    std::fs::write(dir.join("tls.key"), &issued.key_pem).expect("key");
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_with_a_certificate_from_sondes_ca_is_served() {
    let pki = Pki::issue("refusals");
    let addr = serve(&pki.dir("daemon")).await;
    assert_eq!(
        ask(&addr, credentials(&pki.dir("client"))).await,
        Ok("tls-node".to_owned())
    );
    for (client, alert) in [
        ("stranger", "UnknownCA"),
        ("expired", "CertificateExpired"),
        ("as-daemon", "Certificate"),
    ] {
        let err = ask(&addr, credentials(&pki.dir(client)))
            .await
            .expect_err(client);
        assert!(
            err.contains("received fatal alert") && err.contains(alert),
            "{client}: {err}"
        );
    }
    // No certificate at all (the daemon's CA trusted, nothing presented).
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(pki.dir("client").join("ca.crt")).expect("ca");
    for ca in rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(ca.expect("pem")).expect("root");
    }
    let mut anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let err = ask(&addr, Credentials::MutualTls(Arc::new(anonymous)))
        .await
        .expect_err("no certificate");
    assert!(err.contains("CertificateRequired"), "no certificate: {err}");
    // A plaintext HTTP/2 client gets the TLS alert record where it expects frames, or the
    // connection closed under it (which it sees first is a race).
    let err = ask(&addr, Credentials::Plaintext)
        .await
        .expect_err("plaintext");
    assert!(
        err.contains("cannot connect")
            || err.contains("connection error")
            || err.contains("connection closed"),
        "plaintext: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_certificate_sondectls_ca_did_not_sign_is_not_trusted() {
    let pki = Pki::issue("impostor");
    // A daemon with a certificate of its own CA, which trusts the client's CA: sondectl must
    // still refuse it (the daemon's name and CA are both checked).
    let impostor = Authority::generate("impostor CA").expect("CA");
    let cert = impostor
        .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
        .expect("impostor's certificate");
    let client_ca = std::fs::read_to_string(pki.dir("client").join("ca.crt")).expect("ca");
    let dir = pki.dir("impostor");
    write_with_ca(
        &dir,
        &cert,
        &Issued {
            cert_pem: client_ca,
            key_pem: String::new(),
        },
    );
    let addr = serve(&dir).await;
    let err = ask(&addr, credentials(&pki.dir("client")))
        .await
        .expect_err("an impostor daemon");
    assert!(
        err.contains("TLS handshake") && err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::issue("rotation");
    let addr = serve(&pki.dir("daemon")).await;
    let before = credentials(&pki.dir("client"));
    assert_eq!(ask(&addr, before.clone()).await, Ok("tls-node".to_owned()));
    // A new CA and certificates, written over the daemon's files as an operator would (a
    // Secret volume swaps a symlink instead: the next test).
    let ca = Authority::generate("sonde rotated CA").expect("CA");
    let daemon = ca
        .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
        .expect("daemon");
    ca.write_dir(&pki.dir("daemon"), &daemon)
        .expect("rotated daemon files");
    let client = ca.issue(Role::Client, "sondectl").expect("client");
    ca.write_dir(&pki.dir("rotated-client"), &client)
        .expect("rotated client files");
    assert_eq!(
        ask(&addr, credentials(&pki.dir("rotated-client"))).await,
        Ok("tls-node".to_owned()),
        "the new certificate is served and the new CA trusted"
    );
    let err = ask(&addr, before).await.expect_err("the old client");
    assert!(err.contains("TLS handshake"), "{err}");
}

/// Writes `issued` (and its CA) as the kubelet writes a Secret volume: the files in a new
/// timestamped directory, `..data` a symlink to it swapped in by rename, and each key a
/// symlink through `..data` (made once). The files the daemon opens keep their paths; only
/// `..data` changes.
fn kubelet_write(volume: &Path, generation: u32, issued: &Issued, ca: &Issued) {
    let data = format!("..2026_12_05_00_00_0{generation}.{generation}");
    write_with_ca(&volume.join(&data), issued, ca);
    let swap = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&swap);
    std::os::unix::fs::symlink(&data, &swap).expect("..data_tmp");
    std::fs::rename(&swap, volume.join("..data")).expect("..data swapped");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let link = volume.join(key);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link).expect("a key's link");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_updated_as_the_kubelet_does_is_served_without_a_restart() {
    let scratch = Scratch::new("kubelet");
    let volume = scratch.dir("volume");
    std::fs::create_dir_all(&volume).expect("volume");
    let ca = Authority::generate("sonde CA").expect("CA");
    let first = ca
        .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
        .expect("daemon");
    kubelet_write(&volume, 1, &first, &ca.issued);
    let client = ca.issue(Role::Client, "sondectl").expect("client");
    ca.write_dir(&scratch.dir("client"), &client)
        .expect("client files");
    let addr = serve(&volume).await;
    let before = credentials(&scratch.dir("client"));
    assert_eq!(ask(&addr, before.clone()).await, Ok("tls-node".to_owned()));
    // deploy --rotate-certs under a new CA: the kubelet's next sync swaps `..data`.
    let rotated_ca = Authority::generate("sonde CA").expect("rotated CA");
    let second = rotated_ca
        .issue(Role::Daemon, sonde_ctl::tls::DAEMON_NAME)
        .expect("daemon");
    kubelet_write(&volume, 2, &second, &rotated_ca.issued);
    let rotated_client = rotated_ca.issue(Role::Client, "sondectl").expect("client");
    rotated_ca
        .write_dir(&scratch.dir("rotated-client"), &rotated_client)
        .expect("rotated client files");
    assert_eq!(
        ask(&addr, credentials(&scratch.dir("rotated-client"))).await,
        Ok("tls-node".to_owned()),
        "the swapped files are served"
    );
    let err = ask(&addr, before).await.expect_err("the old client");
    assert!(err.contains("TLS handshake"), "{err}");
}

/// Python's grpcio (Debian's python3-grpcio): gRPC's C core, not rustls nor tonic.
const GRPCIO: &str = r#"
import sys, grpc
addr, case, d = sys.argv[1], sys.argv[2], sys.argv[3]
read = lambda name: open(f"{d}/{name}", "rb").read()
options = [("grpc.ssl_target_name_override", "sonded.sonde.svc")]
if case == "plaintext":
    channel = grpc.insecure_channel(addr)
else:
    kwargs = dict(root_certificates=read("daemon/ca.crt"))
    if case != "no-certificate":
        kwargs.update(private_key=read(f"{case}/tls.key"), certificate_chain=read(f"{case}/tls.crt"))
    channel = grpc.secure_channel(addr, grpc.ssl_channel_credentials(**kwargs), options)
check = channel.unary_unary("/grpc.health.v1.Health/Check")
try:
    # An empty HealthCheckRequest (the server as a whole); SERVING is field 1 = 1.
    answer = check(b"", timeout=5)
    print("SERVED" if answer == b"\x08\x01" else f"ANSWERED {answer!r}")
except grpc.RpcError as err:
    print(f"REFUSED {err.code().name} {err.details()}")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_grpc_client_is_refused_without_the_right_certificate() {
    let python = Path::new("/usr/bin/python3");
    let pki = Pki::issue("grpcio");
    let addr = serve(&pki.dir("daemon")).await;
    let mut outcomes = Vec::new();
    for case in [
        "client",
        "no-certificate",
        "stranger",
        "expired",
        "plaintext",
    ] {
        let output = tokio::process::Command::new(python)
            .args(["-c", GRPCIO, &addr.to_string(), case])
            .arg(&pki.scratch.0)
            .output()
            .await
            .expect("python3 runs (cargo xtask setup installs python3-grpcio)");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        outcomes.push((case, stdout));
    }
    println!("grpcio against sonded: {outcomes:#?}");
    for (case, outcome) in &outcomes {
        match *case {
            "client" => assert_eq!(outcome, "SERVED", "{outcomes:?}"),
            _ => assert!(
                outcome.starts_with("REFUSED UNAVAILABLE"),
                "{case}: {outcomes:?}"
            ),
        }
    }
}
