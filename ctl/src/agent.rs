//! Agent addresses, and connections to a daemon with a deadline on every step.

use std::{fmt, str::FromStr, time::Duration};

use sonde_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

/// A daemon's gRPC address, `HOST:PORT` (`[v6]:PORT` for IPv6 literals), checked when parsed so
/// that a typo is refused before anything is dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddr {
    /// Host name or IP literal (IPv6 without brackets).
    host: String,
    /// TCP port.
    port: u16,
}

impl FromStr for AgentAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid agent address {text:?}: {why} (expected HOST:PORT)");
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
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("port must be a number from 1 to 65535")),
            Ok(port) => port,
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Connects to the daemon at `addr`: the TCP/HTTP2 connection must be up within `timeout`,
/// and so must every call made on the returned client.
pub async fn connect(addr: &AgentAddr, timeout: Duration) -> anyhow::Result<AgentClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| anyhow::anyhow!("cannot connect: {}", error_chain(&err)))?;
    Ok(AgentClient::new(channel))
}

/// A transport or call error with its causes on one line (tonic's top-level message alone is
/// just "transport error").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        for text in ["127.0.0.1:7470", "node-a.example:1", "[::1]:7470"] {
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
        ] {
            let err = text.parse::<AgentAddr>().expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("HOST:PORT"), "{text}: {err}");
        }
    }
}
