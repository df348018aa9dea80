//! sonded's configuration: flags, each also settable as a `SONDE_*` environment variable (the
//! DaemonSet sets them from the downward API).

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

/// The port sonded serves gRPC on unless told otherwise.
pub const DEFAULT_GRPC_PORT: u16 = 7470;

/// sonded's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sonded", version, about = "sonde's per-node measurement agent")]
pub struct Config {
    /// Where to serve the sonde.v1 gRPC API (and gRPC health): HOST:PORT, or unix:PATH for a
    /// Unix socket (the lab's daemons, which live in namespaces the host cannot route to).
    #[arg(
        long,
        env = "SONDE_LISTEN",
        default_value_t = ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], DEFAULT_GRPC_PORT)))
    )]
    pub listen: ListenAddr,

    /// The daemon's TLS certificate (PEM, leaf first): the API is served over mutual TLS.
    /// Read again when it changes (a rotated Secret is served from the next connection on).
    #[arg(long, env = "SONDE_TLS_CERT", requires_all = ["tls_key", "tls_ca"], conflicts_with = "insecure")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SONDE_TLS_KEY", requires_all = ["tls_cert", "tls_ca"], conflicts_with = "insecure")]
    pub tls_key: Option<PathBuf>,

    /// The CA a client's certificate must be signed by (PEM): who holds a certificate from it
    /// may run measurements from this node.
    #[arg(long, env = "SONDE_TLS_CA", requires_all = ["tls_cert", "tls_key"], conflicts_with = "insecure")]
    pub tls_ca: Option<PathBuf>,

    /// Serve the API in plaintext, to anyone who can reach it (a warning is logged at start).
    #[arg(long, env = "SONDE_INSECURE")]
    pub insecure: bool,

    /// Where to serve Prometheus metrics (`GET /metrics`): HOST:PORT or unix:PATH; not served
    /// when unset (the DaemonSet sets it).
    #[arg(long, env = "SONDE_METRICS_LISTEN")]
    pub metrics_listen: Option<ListenAddr>,

    /// This node's name as reported to sondectl (Kubernetes node name, lab node name); the host
    /// name when not set.
    #[arg(long, env = "SONDE_NODE_NAME")]
    pub node_name: Option<String>,

    /// Name the node's pods by watching them on the Kubernetes API server (the pod's service
    /// account in a cluster, else $KUBECONFIG); needs the node's name.
    #[arg(long, env = "SONDE_KUBERNETES", requires = "node_name")]
    pub kubernetes: bool,

    /// How long to wait for in-flight calls when asked to stop, in seconds.
    #[arg(long, env = "SONDE_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,

    /// Address ranges this daemon may send generated traffic to, besides loopback (comma
    /// separated or repeated): the cluster's pod, node and Service ranges.
    #[arg(
        long = "allow-target",
        env = "SONDE_ALLOW_TARGETS",
        value_delimiter = ','
    )]
    pub allow_targets: Vec<ipnet::IpNet>,

    /// Most runs this daemon holds at once (a run's server and client sides here count once);
    /// more are refused naming this cap.
    #[arg(long, env = "SONDE_MAX_RUNS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_runs: u16,

    /// The longest run (warm-up and duration) this daemon accepts, in seconds.
    #[arg(long, env = "SONDE_MAX_RUN_SECONDS", default_value_t = 4200, value_parser = clap::value_parser!(u64).range(1..=4200))]
    pub max_run_seconds: u64,

    /// Payload bytes this daemon's generators may move over the network per minute (a token
    /// bucket holding a minute's worth; K, M, G, T suffixes are powers of 1000; 0: no cap). A
    /// run is refused while it is dry, and stopped, keeping what it measured, if it dries it.
    #[arg(long, env = "SONDE_MAX_BYTES_PER_MINUTE", default_value = "600G", value_parser = parse_amount)]
    pub max_bytes_per_minute: u64,

    /// Connections this daemon's generators may open per minute (a token bucket, as
    /// --max-bytes-per-minute; 0: no cap).
    #[arg(long, env = "SONDE_MAX_CONNECTIONS_PER_MINUTE", default_value = "3M", value_parser = parse_amount)]
    pub max_connections_per_minute: u64,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `sonde_daemon=debug`).
    #[arg(long, env = "SONDE_LOG", default_value = "info")]
    pub log: String,

    /// Something to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// sonded's one-off commands: they load the probes, do their job and exit.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Measures what each stage probe costs per packet on this kernel, with packets no run
    /// traces and with a traced run's packets (BPF_PROG_TEST_RUN: no traffic is sent).
    ProbeCost {
        /// Rounds to average over (each: 100 000 foreign and 4096 traced packets per probe).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Holds a measurement endpoint pod open and does nothing else until SIGTERM or SIGINT:
    /// the command of `sondectl deploy --endpoints`' unprivileged pods, so that the pod IP,
    /// Service and headless paths exist on every node (the node's daemon runs the generators
    /// inside the pod's network namespace). No second image to pull.
    Sleep,
    /// The lab's delay line, run by `sondectl lab delay` in the lab's underlay namespace:
    /// IP frames arriving on one port for one MAC are held, then sent out of another port.
    #[command(hide = true)]
    DelayLine {
        /// The port the frames arrive on.
        #[arg(long)]
        from_port: String,
        /// The port they leave by.
        #[arg(long)]
        to_port: String,
        /// Only frames to this MAC (aa:bb:cc:dd:ee:ff) are delayed.
        #[arg(long, value_parser = parse_mac)]
        to_mac: [u8; 6],
        /// The added one-way delay, µs (up to 10 s).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
        delay_us: u64,
        /// How long the line stays up, s (1 to 3600).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
    },
}

/// An amount with an optional K, M, G or T suffix (powers of 1000): `600G`, `1.5M`, `4096`.
fn parse_amount(text: &str) -> Result<u64, String> {
    let (number, scale) = match text.trim().char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let scale = match unit.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => return Err(format!("{text:?}: the suffix must be K, M, G or T")),
            };
            (&text.trim()[..at], scale)
        }
        _ => (text.trim(), 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an amount (e.g. 600G, 3M, 4096)"))?;
    if !(value.is_finite() && value >= 0.0) || value * scale > u64::MAX as f64 {
        return Err(format!("{text:?} is not an amount from 0 up"));
    }
    Ok((value * scale).round() as u64)
}

/// A MAC address in its usual colon-separated form.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not a MAC address (six bytes)"))
}

/// Where sonded listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix socket path (a stale socket file there is replaced).
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path, e.g. unix:/run/sonde/sonded.sock".to_owned()),
            Some(path) => Ok(Self::Unix(PathBuf::from(path))),
            None => text.parse().map(Self::Tcp).map_err(|_| {
                format!("{text:?} is neither HOST:PORT (an IP address and port) nor unix:PATH")
            }),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Config {
    /// A per-minute cap as the budget takes it (0 is none).
    pub fn budget(&self, per_minute: u64) -> Option<u64> {
        (per_minute > 0).then_some(per_minute)
    }

    /// The TLS files, when the API is to be served over mutual TLS.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => None,
        }
    }

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
        assert_eq!(
            config.listen,
            ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
        assert_eq!(config.node_name(), "n1");
    }

    #[test]
    fn unix_listen_addresses_round_trip() {
        let listen: ListenAddr = "unix:/run/sonde/a.sock".parse().expect("unix path");
        assert_eq!(listen, ListenAddr::Unix(PathBuf::from("/run/sonde/a.sock")));
        assert_eq!(listen.to_string(), "unix:/run/sonde/a.sock");
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn tls_files_come_together_and_never_with_insecure() {
        let tls = [
            "sonded",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--tls-ca",
            "/ca.pem",
        ];
        let config = Config::try_parse_from(tls).expect("all three");
        assert_eq!(
            config.tls_files().map(|files| files.ca),
            Some(PathBuf::from("/ca.pem"))
        );
        let err = Config::try_parse_from(&tls[..3]).expect_err("a certificate alone");
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let err = Config::try_parse_from([&tls[..], &["--insecure"]].concat())
            .expect_err("TLS and plaintext at once");
        assert!(err.to_string().contains("--insecure"), "{err}");
    }

    #[test]
    fn budgets_take_suffixes_and_zero_is_no_cap() {
        let config = Config::try_parse_from(["sonded"]).expect("defaults");
        assert_eq!(config.max_bytes_per_minute, 600_000_000_000);
        assert_eq!(config.max_connections_per_minute, 3_000_000);
        let config = Config::try_parse_from([
            "sonded",
            "--max-bytes-per-minute",
            "1.5k",
            "--max-connections-per-minute",
            "0",
        ])
        .expect("flags");
        assert_eq!(config.budget(config.max_bytes_per_minute), Some(1500));
        assert_eq!(config.budget(config.max_connections_per_minute), None);
        for bad in ["lots", "5X", "-1"] {
            // `=`: a value starting with '-' would be taken for a flag.
            let flag = format!("--max-bytes-per-minute={bad}");
            let err = Config::try_parse_from(["sonded", flag.as_str()]).expect_err(bad);
            assert!(err.to_string().contains("--max-bytes-per-minute"), "{err}");
        }
    }

    #[test]
    fn bad_listen_address_is_refused() {
        let err = Config::try_parse_from(["sonded", "--listen", "nowhere"])
            .expect_err("not a socket address");
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
