//! Mutual TLS to the daemons. A daemon serves only callers with a certificate from sonde's
//! CA, and sondectl checks the daemon's certificate for one fixed name ([`DAEMON_NAME`])
//! whatever address it dials (pod IP, node IP, Unix socket, port-forward).
//!
//! Which certificate sondectl presents, first that applies: `--tls-cert/--tls-key/--tls-ca`
//! (or `--insecure` for daemons serving plaintext); for a lab's daemon, the lab's own client
//! certificate; for a cluster's, its `sonde-client-tls` Secret, read through the kubeconfig
//! (who may measure is who may read that Secret).

pub mod issue;

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use k8s_openapi::api::core::v1::Secret;
use rustls::{ClientConfig, RootCertStore, crypto::ring};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use crate::{
    agent::AgentAddr,
    error::{Context as _, refuse},
};

/// The name every daemon's certificate carries and sondectl checks.
pub const DAEMON_NAME: &str = "sonded.sonde.svc";

/// A certificate's file (and Secret key), as `kubernetes.io/tls` Secrets name it.
pub const CERT_FILE: &str = "tls.crt";
/// Its key's.
pub const KEY_FILE: &str = "tls.key";
/// The CA's (as cert-manager adds it).
pub const CA_FILE: &str = "ca.crt";

/// The Secret holding the daemons' certificate, key and CA (mounted by the DaemonSet).
pub const DAEMON_SECRET: &str = "sonde-daemon-tls";
/// The Secret holding the client certificate sondectl presents, its key and the CA.
pub const CLIENT_SECRET: &str = "sonde-client-tls";
/// The Secret holding the in-cluster jobs' own client certificate (`deploy --job`).
pub const JOB_SECRET: &str = "sonde-job-tls";
/// The Secret holding the CA's certificate and key (`deploy` issues from it).
pub const CA_SECRET: &str = "sonde-ca";

/// How sondectl talks to a daemon.
#[derive(Clone)]
pub enum Credentials {
    /// Mutual TLS with this client configuration.
    MutualTls(Arc<ClientConfig>),
    /// Plaintext (`--insecure`).
    Plaintext,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MutualTls(_) => "MutualTls",
            Self::Plaintext => "Plaintext",
        })
    }
}

/// A client certificate, its key and the CA that signed the daemons', PEM.
#[derive(Clone)]
pub struct Material {
    /// The client certificate chain.
    pub cert: Vec<u8>,
    /// Its key.
    pub key: Vec<u8>,
    /// The CA daemons' certificates must chain to.
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material { .. }")
    }
}

impl Material {
    /// Reads the three files.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> crate::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            cert: read(cert)?,
            key: read(key)?,
            ca: read(ca)?,
        })
    }

    /// Reads a directory laid out as a mounted `kubernetes.io/tls` Secret with its CA.
    pub fn from_dir(dir: &Path) -> crate::Result<Self> {
        Self::from_files(
            &dir.join(CERT_FILE),
            &dir.join(KEY_FILE),
            &dir.join(CA_FILE),
        )
    }

    /// The client configuration: this certificate, daemons checked against the CA, HTTP/2.
    pub fn client_config(&self) -> crate::Result<Arc<ClientConfig>> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .context("the client certificate is not PEM")?;
        if chain.is_empty() {
            refuse!("the client certificate file holds no certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .context("the client key is not a PEM private key")?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            roots
                .add(ca.context("the CA file is not PEM")?)
                .context("the CA certificate is not usable")?;
        }
        if roots.is_empty() {
            refuse!("the CA file holds no certificate");
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the client certificate does not go with its key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The credentials the command line chose, if it did.
static CHOSEN: OnceLock<Credentials> = OnceLock::new();

/// Makes `credentials` the ones used for every daemon (the command line's choice wins over
/// a lab's or a cluster's own certificate). The first choice in a process stays.
pub fn choose(credentials: Credentials) {
    let _ = CHOSEN.set(credentials);
}

/// The cluster whose client Secret is used, and the credentials read from it once.
static CLUSTER: OnceLock<(kube::Client, String)> = OnceLock::new();
static CLUSTER_CREDENTIALS: tokio::sync::OnceCell<Credentials> = tokio::sync::OnceCell::const_new();

/// Makes the `sonde-client-tls` Secret in `namespace` the client certificate for this
/// cluster's daemons (read when the first daemon is dialled).
pub fn use_cluster(client: &kube::Client, namespace: &str) {
    let _ = CLUSTER.set((client.clone(), namespace.to_owned()));
}

/// The directory of a lab's client certificate, for a daemon socket of that lab.
pub fn lab_client_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("tls").join("client")
}

/// The directory of a lab's CA: its certificate and key (`tls.crt`, `tls.key`).
pub fn lab_ca_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("tls").join("ca")
}

/// The directory of a lab's daemon certificate.
pub fn lab_daemon_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("tls").join("daemon")
}

/// The credentials to dial `addr` with.
pub async fn for_agent(addr: &AgentAddr) -> crate::Result<Credentials> {
    if let Some(chosen) = CHOSEN.get() {
        return Ok(chosen.clone());
    }
    if let AgentAddr::Unix(socket) = addr
        && let Some(lab) = socket.parent()
        && lab_client_dir(lab).is_dir()
    {
        let material = Material::from_dir(&lab_client_dir(lab))?;
        return Ok(Credentials::MutualTls(material.client_config()?));
    }
    if let Some((client, namespace)) = CLUSTER.get() {
        return CLUSTER_CREDENTIALS
            .get_or_try_init(|| cluster_credentials(client, namespace))
            .await
            .cloned();
    }
    refuse!(
        "no client certificate for {addr}: give --tls-cert, --tls-key and --tls-ca (or \
         SONDE_TLS_CERT, SONDE_TLS_KEY, SONDE_TLS_CA), name its cluster with --kubeconfig (its \
         {CLIENT_SECRET} Secret is used), or --insecure for a daemon serving plaintext"
    )
}

async fn cluster_credentials(client: &kube::Client, namespace: &str) -> crate::Result<Credentials> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(CLIENT_SECRET).await.with_context(|| {
        format!(
            "reading Secret {namespace}/{CLIENT_SECRET} (the client certificate; `sondectl deploy` \
             creates it, and who may read it may measure)"
        )
    })?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .map(|bytes| bytes.0.clone())
            .with_context(|| format!("Secret {namespace}/{CLIENT_SECRET} has no {key}"))
    };
    let material = Material {
        cert: field(CERT_FILE)?,
        key: field(KEY_FILE)?,
        ca: field(CA_FILE)?,
    };
    Ok(Credentials::MutualTls(material.client_config()?))
}

/// A stream to a daemon, plain or secured.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// `io` as `credentials` say: through the TLS handshake (the daemon's certificate checked for
/// [`DAEMON_NAME`]) and the daemon's verdict on ours, or as it is.
pub async fn secure<IO: Io + 'static>(
    credentials: &Credentials,
    io: IO,
) -> io::Result<Box<dyn Io>> {
    let handshake = |err: io::Error| io::Error::new(err.kind(), format!("TLS handshake: {err}"));
    match credentials {
        Credentials::Plaintext => Ok(Box::new(io)),
        Credentials::MutualTls(config) => {
            let name = ServerName::try_from(DAEMON_NAME).map_err(io::Error::other)?;
            let mut stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, io)
                .await
                .map_err(handshake)?;
            // In TLS 1.3 the client's side of the handshake ends before the daemon has judged
            // its certificate; the verdict is the first thing the daemon sends: an alert, or
            // its HTTP/2 settings (a server speaks first). Waiting for it names the refusal.
            let mut first = vec![0u8; 4096];
            let read = stream.read(&mut first).await.map_err(handshake)?;
            if read == 0 {
                return Err(handshake(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the daemon closed the connection",
                )));
            }
            first.truncate(read);
            Ok(Box::new(Replayed::new(first, stream)))
        }
    }
}

/// A stream whose first bytes were read ahead (to learn that the other end had spoken),
/// put back in front of the rest.
#[derive(Debug)]
pub struct Replayed<S> {
    first: Vec<u8>,
    stream: S,
}

impl<S> Replayed<S> {
    /// `stream`, with `first` read from it before.
    pub fn new(first: Vec<u8>, stream: S) -> Self {
        Self { first, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first[..n]);
        self.first.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
