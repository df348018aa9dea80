//! Mutual TLS on the control plane: whoever can reach a daemon's port can make its node send
//! traffic, so a caller must present a certificate signed by sonde's CA. The certificate, key
//! and CA are files (a mounted Secret in a cluster) read again when they change, so that a
//! rotated certificate is served from the next connection on, without a restart.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use rustls::{RootCertStore, ServerConfig, crypto::ring, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::Connected;

/// A client that has not finished its handshake by then is dropped (and its place in the
/// handshakes in flight freed).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once; more connections wait in the listen backlog.
const HANDSHAKES_IN_FLIGHT: usize = 64;

/// Where the daemon's certificate, its key and the CA that signs clients are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The daemon's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates a client's certificate must chain to (PEM).
    pub ca: PathBuf,
}

/// The server side of mutual TLS, from files that may change while the daemon runs.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    state: Mutex<Loaded>,
}

/// What a file looked like when it was read: a Secret volume swaps a symlink, an operator
/// rewrites in place; both change one of these.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

#[derive(Debug)]
struct Loaded {
    stamps: [Stamp; 3],
    config: Arc<ServerConfig>,
    /// The stamps of the last files that could not be loaded: said once, not per connection.
    failed: Option<[Stamp; 3]>,
}

impl ServerTls {
    /// Reads the files; fails, saying which and why, if they do not make a server config.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let stamps = stamps(&files);
        let config = server_config(&files)?;
        Ok(Self {
            files,
            state: Mutex::new(Loaded {
                stamps,
                config: Arc::new(config),
                failed: None,
            }),
        })
    }

    /// The acceptor for the next connection: from the files as they are now if they changed
    /// and load; else from the last files that did (a half-written rotation is not served).
    pub fn acceptor(&self) -> TlsAcceptor {
        let now = stamps(&self.files);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now != state.stamps && state.failed != Some(now) {
            match server_config(&self.files) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    state.stamps = now;
                    state.config = Arc::new(config);
                    state.failed = None;
                }
                Err(reason) => {
                    tracing::warn!(%reason, "TLS files changed but do not load; serving the previous ones");
                    state.failed = Some(now);
                }
            }
        }
        TlsAcceptor::from(Arc::clone(&state.config))
    }
}

fn stamps(files: &TlsFiles) -> [Stamp; 3] {
    let stamp = |path: &Path| {
        std::fs::metadata(path).ok().map(|meta| {
            (
                meta.dev(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.size(),
            )
        })
    };
    [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)]
}

/// A server config that asks every client for a certificate chaining to the CA, and speaks
/// HTTP/2 only (gRPC clients such as grpcio require the `h2` protocol to be negotiated).
fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let read = |what: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| format!("{what} {}: {err}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{what} {}: no certificate in it", path.display()));
        }
        Ok(certs)
    };
    let chain = read("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| format!("--tls-key {}: {err}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read("--tls-ca", &files.ca)? {
        roots
            .add(ca)
            .map_err(|err| format!("--tls-ca {}: {err}", files.ca.display()))?;
    }
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| format!("--tls-ca {}: {err}", files.ca.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| {
            format!(
                "--tls-cert {} with --tls-key {}: {err}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Who is on the other end of an accepted connection, for the log of refused handshakes.
pub trait Peer {
    /// The peer's address, as the log shows it.
    fn peer(&self) -> String;
}

impl Peer for tokio::net::TcpStream {
    fn peer(&self) -> String {
        self.peer_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_else(|_| "?".to_owned())
    }
}

impl Peer for tokio::net::UnixStream {
    fn peer(&self) -> String {
        "unix socket".to_owned()
    }
}

/// The accepted connections of `accepted` whose clients completed the handshake with a
/// certificate the CA signed; the others are logged and closed (the client sees the TLS
/// alert). Handshakes run concurrently, each bounded in time.
pub fn secured<IO>(
    accepted: impl Stream<Item = io::Result<IO>> + Send + 'static,
    tls: Arc<ServerTls>,
) -> impl Stream<Item = io::Result<Secured<IO>>> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Peer + Unpin + Send + 'static,
{
    accepted
        .map(move |conn| {
            let acceptor = tls.acceptor();
            async move {
                let io = conn?;
                let peer = io.peer();
                let refused = |reason: String| {
                    tracing::info!(%peer, %reason, "refused a client at the TLS handshake");
                    io::Error::new(io::ErrorKind::PermissionDenied, reason)
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => Ok(Secured(stream)),
                    Ok(Err(err)) => Err(refused(err.to_string())),
                    Err(_) => Err(refused(format!(
                        "no handshake within {HANDSHAKE_TIMEOUT:?}"
                    ))),
                }
            }
        })
        .buffer_unordered(HANDSHAKES_IN_FLIGHT)
}

/// A connection after its handshake.
#[derive(Debug)]
pub struct Secured<IO>(TlsStream<IO>);

impl<IO: Connected + AsyncRead + AsyncWrite + Unpin> Connected for Secured<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Secured<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Secured<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
