//! The node's identity and what the daemon found on it: the answer to `GetNodeFacts`.

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    Result,
    capabilities::{self, Capability},
    config::Config,
    object::{EbpfObject, LoadedProgram},
    stages::Tracer,
    tc_counter,
};

/// Everything `GetNodeFacts` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name.
    pub node_name: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// This daemon's version.
    pub daemon_version: String,
    /// When the daemon started, ns since the Unix epoch.
    pub started_at_unix_ns: u64,
    /// The daemon's process ID.
    pub pid: u32,
    /// What the kernel allows, in [`capabilities::NAMES`] order.
    pub capabilities: Vec<Capability>,
    /// What the daemon holds loaded now.
    pub programs: Vec<LoadedProgram>,
    /// The pods behind the node's veths, with what their counters saw.
    pub pod_interfaces: Vec<(crate::pods::PodInterface, tc_counter::IfaceCounts)>,
}

/// Where the gRPC layer gets node facts from: the real [`Node`], or a fixed value in tests of
/// the API that must not need root.
pub trait FactsSource: Send + Sync + 'static {
    /// The facts as of now.
    fn node_facts(&self) -> NodeFacts;

    /// The pods mapped on this node, without their counters (cheaper than `node_facts`).
    fn pod_interfaces(&self) -> Vec<crate::pods::PodInterface> {
        self.node_facts()
            .pod_interfaces
            .into_iter()
            .map(|(pod, _)| pod)
            .collect()
    }
}

/// The node as the daemon found it at start, and the eBPF object it keeps loaded.
#[derive(Debug)]
pub struct Node {
    /// Facts that do not change while the daemon runs (programs are read live).
    fixed: NodeFacts,
    /// The loaded eBPF object; a mutex because probing and attaching need `&mut`.
    object: Arc<Mutex<EbpfObject>>,
    /// Per-stage tracing of runs; `None` when the kernel refused its programs (the reason is
    /// logged, and runs asking for it are told).
    pub tracer: Option<Arc<Tracer>>,
    /// The pods' veths and their counters; `None` when they cannot be mapped (logged).
    pods: Option<Arc<crate::pods::PodMap>>,
    /// The pods' names, when the daemon watches the API server.
    pod_names: std::sync::OnceLock<Arc<crate::pods::names::PodNames>>,
}

impl Node {
    /// Loads sonde's eBPF object, probes the kernel's capabilities and loads the programs the
    /// daemon keeps (the TC counters) so that later attachments are cheap.
    pub fn start(config: &Config) -> Result<Self> {
        // The kernel's BTF is parsed once, for loading and for probing, then dropped: it is the
        // largest thing the daemon ever holds.
        let btf = aya::Btf::from_sys_fs();
        let mut object = EbpfObject::load_with_btf(btf.as_ref().ok())?;
        let capabilities = capabilities::detect(&mut object, &btf);
        tc_counter::load(&mut object)?;
        let object = Arc::new(Mutex::new(object));
        let tracer = match Tracer::new(Arc::clone(&object), btf.as_ref().ok()) {
            Ok(tracer) => Some(tracer),
            Err(err) => {
                tracing::warn!(reason = %crate::error::chain(&err), "per-stage tracing unavailable");
                None
            }
        };
        drop(btf);
        let fixed = NodeFacts {
            node_name: config.node_name(),
            kernel_release: kernel_release(),
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_unix_ns: now_unix_ns(),
            pid: std::process::id(),
            capabilities,
            programs: Vec::new(),
            pod_interfaces: Vec::new(),
        };
        let pods = match crate::pods::PodMap::start(Arc::clone(&object)) {
            Ok(pods) => Some(pods),
            Err(err) => {
                tracing::warn!(%err, "pods cannot be mapped to veths: no per-pod counters");
                None
            }
        };
        if let (Some(tracer), Some(pods)) = (&tracer, &pods) {
            tracer.use_pod_counters(Arc::clone(pods));
        }
        Ok(Self {
            fixed,
            object,
            tracer,
            pods,
            pod_names: std::sync::OnceLock::new(),
        })
    }

    /// Names the node's pods from a watch on the API server through `client` (on the current
    /// tokio runtime); each change to them also makes the veth mapping look again.
    pub fn name_pods(&self, client: kube::Client) {
        let pods = self.pods.clone();
        let names = crate::pods::names::PodNames::start(client, &self.fixed.node_name, move || {
            if let Some(pods) = pods.clone() {
                tokio::task::spawn_blocking(move || pods.refresh());
            }
        });
        let _ = self.pod_names.set(names);
    }
}

impl FactsSource for Node {
    fn pod_interfaces(&self) -> Vec<crate::pods::PodInterface> {
        self.pods
            .as_ref()
            .map(|pods| pods.interfaces())
            .unwrap_or_default()
    }

    fn node_facts(&self) -> NodeFacts {
        let mut pods = self.pod_interfaces();
        if let Some(names) = self.pod_names.get() {
            for pod in &mut pods {
                pod.pod = pod.ips.iter().find_map(|ip| names.name_of(*ip));
            }
        }
        // A panic while holding the lock left the object as it was; reading is still safe.
        let object = self
            .object
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pod_interfaces = pods
            .into_iter()
            .map(|pod| {
                let counts = tc_counter::read(&object, pod.host_ifindex).unwrap_or_default();
                (pod, counts)
            })
            .collect();
        NodeFacts {
            programs: object.loaded_programs(),
            pod_interfaces,
            ..self.fixed.clone()
        }
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|uts| uts.release().to_string_lossy().into_owned())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
