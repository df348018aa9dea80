//! Agent addresses, and connections to a daemon with a deadline on every step.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use sonde_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::Context as _;

/// A daemon's gRPC address: `HOST:PORT` (`[v6]:PORT` for IPv6 literals), `unix:PATH` for a
/// daemon listening on a Unix socket (the lab's), or `port-forward:NAMESPACE/POD:PORT` for a
/// daemon in a cluster reached through the API server. Checked when parsed, so that a typo is
/// refused before anything is dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// Over TCP.
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Over a Unix socket.
    Unix(PathBuf),
    /// Through the Kubernetes API server's port-forward of a daemon's pod.
    PortForward {
        /// The pod's namespace.
        namespace: String,
        /// The daemon's pod.
        pod: String,
        /// The daemon's gRPC port inside the pod.
        port: u16,
    },
}

impl FromStr for AgentAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid agent address {text:?}: {why} (expected HOST:PORT, unix:PATH or port-forward:NAMESPACE/POD:PORT)"
            )
        };
        let valid_port = |port: &str| match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("port must be a number from 1 to 65535")),
            Ok(port) => Ok(port),
        };
        if let Some(target) = text.strip_prefix("port-forward:") {
            let (pod, port) = target.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            let (namespace, pod) = pod
                .split_once('/')
                .ok_or_else(|| bad("a port-forward names NAMESPACE/POD"))?;
            let valid_name = |name: &str| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
            };
            if !valid_name(namespace) || !valid_name(pod) {
                return Err(bad("namespace and pod must be Kubernetes names"));
            }
            return Ok(Self::PortForward {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                port: valid_port(port)?,
            });
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad("a Unix socket path must be absolute"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if text.contains("://") {
            return Err(bad("no scheme, just the address"));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '['"))?
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [...]"))?
                .to_string(),
            None if host.contains(':') => return Err(bad("IPv6 addresses go in brackets")),
            None => host.to_owned(),
        };
        let valid_host_char = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
        if host.is_empty() || !host.chars().all(valid_host_char) {
            return Err(bad("bad host"));
        }
        Ok(Self::Tcp {
            host,
            port: valid_port(port)?,
        })
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::PortForward {
                namespace,
                pod,
                port,
            } => write!(f, "port-forward:{namespace}/{pod}:{port}"),
        }
    }
}

/// Connects to the daemon at `addr` with the credentials [`crate::tls::for_agent`] picks:
/// the connection (TCP or Unix socket or port-forward, then TLS and HTTP/2) must be up within
/// `timeout`, and so must every call made on the returned client.
pub async fn connect(addr: &AgentAddr, timeout: Duration) -> crate::Result<AgentClient<Channel>> {
    let credentials = crate::tls::for_agent(addr).await?;
    connect_with(addr, timeout, credentials).await
}

/// As [`connect`], with these credentials.
pub async fn connect_with(
    addr: &AgentAddr,
    timeout: Duration,
    credentials: crate::tls::Credentials,
) -> crate::Result<AgentClient<Channel>> {
    // The URI is required by HTTP/2 but unused: the connectors dial the daemon themselves.
    let endpoint = Endpoint::from_static("http://sonded.sonde.svc")
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match addr {
        AgentAddr::Tcp { host, port } => {
            let (host, port) = (host.clone(), *port);
            endpoint
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let (host, credentials) = (host.clone(), credentials.clone());
                    async move {
                        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                            .await
                            .map_err(|err| say("tcp connect", err))?;
                        stream.set_nodelay(true)?;
                        let stream = crate::tls::secure(&credentials, stream).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        }
        AgentAddr::Unix(path) => {
            let path = path.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let (path, credentials) = (path.clone(), credentials.clone());
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path)
                            .await
                            .map_err(|err| say("unix socket connect", err))?;
                        let stream = crate::tls::secure(&credentials, stream).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        }
        AgentAddr::PortForward {
            namespace,
            pod,
            port,
        } => {
            let channel =
                crate::cluster::portforward::channel(namespace, pod, *port, timeout, credentials)
                    .await?;
            return Ok(AgentClient::new(channel));
        }
    }
    .context("cannot connect")?;
    Ok(AgentClient::new(channel))
}

/// `err` with what was being done, as the one line sondectl prints says it.
fn say(what: &str, err: std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// A failed call on one line: the daemon's own message, followed, when the connection itself
/// failed (tonic then says only "transport error"), by what broke it.
pub fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => {
            let causes = crate::error::chain(cause);
            if causes.contains(status.message()) {
                causes
            } else {
                format!("{}: {causes}", status.message())
            }
        }
        None => status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        for text in [
            "127.0.0.1:7470",
            "node-a.example:1",
            "[::1]:7470",
            "unix:/run/sonde/lab/node1.sock",
            "port-forward:sonde/sonded-x1:7470",
        ] {
            let addr: AgentAddr = text.parse().expect(text);
            assert_eq!(addr.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        for (text, why) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "port must be"),
            ("127.0.0.1:http", "port must be"),
            (":7470", "bad host"),
            ("::1:7470", "brackets"),
            ("[::1:7470", "unclosed"),
            ("a b:7470", "bad host"),
            ("http://x:7470", "no scheme"),
            ("unix:relative.sock", "absolute"),
            ("port-forward:sonded-x1:7470", "NAMESPACE/POD"),
            ("port-forward:sonde/Sonded:7470", "Kubernetes names"),
            ("port-forward:sonde/sonded-x1:0", "port must be"),
        ] {
            let err = text.parse::<AgentAddr>().expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
            assert!(
                err.contains("HOST:PORT, unix:PATH or port-forward:"),
                "{text}: {err}"
            );
        }
    }
}
