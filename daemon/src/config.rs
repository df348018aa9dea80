//! sonded's configuration: flags, each also settable as a `SONDE_*` environment variable (the
//! DaemonSet sets them from the downward API).

use std::net::SocketAddr;

/// The port sonded serves gRPC on unless told otherwise.
pub const DEFAULT_GRPC_PORT: u16 = 7470;

/// sonded's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sonded", version, about = "sonde's per-node measurement agent")]
pub struct Config {
    /// Address to serve the sonde.v1 gRPC API (and gRPC health) on.
    #[arg(long, env = "SONDE_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_GRPC_PORT)))]
    pub listen: SocketAddr,

    /// This node's name as reported to sondectl (Kubernetes node name, lab node name); the host
    /// name when not set.
    #[arg(long, env = "SONDE_NODE_NAME")]
    pub node_name: Option<String>,

    /// How long to wait for in-flight calls when asked to stop, in seconds.
    #[arg(long, env = "SONDE_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `sonde_daemon=debug`).
    #[arg(long, env = "SONDE_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The node name to report: the configured one, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "unknown".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_override_defaults() {
        let config =
            Config::try_parse_from(["sonded", "--listen", "127.0.0.1:9", "--node-name", "n1"])
                .expect("valid flags");
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(config.node_name(), "n1");
    }

    #[test]
    fn bad_listen_address_is_refused() {
        let err = Config::try_parse_from(["sonded", "--listen", "nowhere"])
            .expect_err("not a socket address");
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
