//! Which host-side veth belongs to which pod, found in the kernel and kept current: every veth
//! of the node's namespace whose peer is in another namespace is matched to that namespace
//! (a pod's: `/run/netns/*` as CNIs and the lab name them, or `/proc/PID/ns/net` of the pod's
//! processes, with the host's PID namespace), and the pod's addresses are read there. Link
//! events (a pod's veth created or removed) trigger a new look, so the mapping follows pods as
//! they come and go, and the packet counters are attached to exactly those veths.
//!
//! - [`rtnl`]: the rtnetlink requests.
//! - [`names`]: the pods' names, from the API server, when the daemon runs in Kubernetes.
//! - [`resolve`]: a request's `pod-ip:` namespace and the uplink toward another node.

pub mod names;
pub mod resolve;
pub mod rtnl;

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{object::EbpfObject, tc_counter};

use self::rtnl::Rtnl;

/// A pod's interface as seen from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The host-side veth, in the node's namespace.
    pub host_interface: String,
    /// Its index there.
    pub host_ifindex: u32,
    /// A path to the pod's network namespace.
    pub netns: PathBuf,
    /// The addresses of the pod's end.
    pub ips: Vec<IpAddr>,
    /// The pod's `NAMESPACE/NAME`, when the daemon watches the API server.
    pub pod: Option<String>,
}

/// Finds the pods behind the calling thread's namespace's veths.
pub fn discover() -> io::Result<Vec<PodInterface>> {
    let mut here = Rtnl::open()?;
    let veths: Vec<rtnl::Link> = here
        .links()?
        .into_iter()
        .filter(|link| link.veth && link.peer_netnsid.is_some())
        .collect();
    if veths.is_empty() {
        return Ok(Vec::new());
    }
    let own = fs::metadata("/proc/thread-self/ns/net")?;
    let mut seen = HashSet::from([(own.dev(), own.ino())]);
    let mut found = Vec::new();
    for path in candidates() {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(Some(nsid)) = here.nsid_of(&file) else {
            continue;
        };
        for veth in veths.iter().filter(|v| v.peer_netnsid == Some(nsid)) {
            let Some(peer) = veth.peer_index else {
                continue;
            };
            let addresses = crate::netns::run_in(&path, || Rtnl::open()?.addresses());
            let ips: Vec<IpAddr> = match addresses {
                Ok(Ok(addresses)) => addresses
                    .into_iter()
                    .filter(|(index, ip)| *index == peer && !is_link_local(ip))
                    .map(|(_, ip)| ip)
                    .collect(),
                _ => continue,
            };
            // A peer without an address is not a pod (a node's uplink into the lab's underlay,
            // or a pod whose address is not set yet: the next look finds it).
            if !ips.is_empty() {
                found.push(PodInterface {
                    host_interface: veth.name.clone(),
                    host_ifindex: veth.index,
                    netns: path.clone(),
                    ips,
                    pod: None,
                });
            }
        }
        drop(file);
    }
    found.sort_by(|a, b| a.host_interface.cmp(&b.host_interface));
    Ok(found)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Namespace paths to look at: the named ones, then every process's.
fn candidates() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["/run/netns", "/var/run/netns"]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    if let Ok(processes) = fs::read_dir("/proc") {
        paths.extend(processes.filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            name.to_str()?.parse::<u32>().ok()?;
            Some(entry.path().join("ns/net"))
        }));
    }
    paths
}

/// The packet counters on every pod's veth, kept in step with the pods.
#[derive(Debug)]
pub struct PodMap {
    object: Arc<Mutex<EbpfObject>>,
    attached: Mutex<BTreeMap<u32, (PodInterface, tc_counter::CounterAttachment)>>,
}

impl PodMap {
    /// Maps the pods now, attaches the counters, and follows link events on a thread of its
    /// own (in the calling thread's namespace, the node's).
    pub fn start(object: Arc<Mutex<EbpfObject>>) -> io::Result<Arc<Self>> {
        let pods = Arc::new(Self {
            object,
            attached: Mutex::new(BTreeMap::new()),
        });
        let events = rtnl::link_events()?;
        pods.refresh();
        let follower = Arc::clone(&pods);
        std::thread::Builder::new()
            .name("pod-links".into())
            .spawn(move || follower.follow(&events))?;
        Ok(pods)
    }

    /// The pods' interfaces as mapped now, and whether their counters are attached.
    pub fn interfaces(&self) -> Vec<PodInterface> {
        self.attached
            .lock()
            .map(|attached| attached.values().map(|(pod, _)| pod.clone()).collect())
            .unwrap_or_default()
    }

    /// Looks again: attaches to new pods' veths, detaches from gone ones.
    pub fn refresh(&self) {
        let pods = match discover() {
            Ok(pods) => pods,
            Err(err) => {
                tracing::warn!(%err, "pods: mapping veths to pods failed");
                return;
            }
        };
        let Ok(mut attached) = self.attached.lock() else {
            return;
        };
        let current: BTreeMap<u32, PodInterface> = pods
            .into_iter()
            .map(|pod| (pod.host_ifindex, pod))
            .collect();
        attached.retain(|index, (pod, _)| {
            let keep = current
                .get(index)
                .is_some_and(|now| now.host_interface == pod.host_interface);
            if !keep {
                tracing::info!(veth = pod.host_interface, "pod gone: counters detached");
            }
            keep
        });
        for (index, pod) in current {
            if let Some((known, _)) = attached.get_mut(&index) {
                *known = pod;
                continue;
            }
            let attachment = match self.object.lock() {
                Ok(mut object) => tc_counter::attach(&mut object, &pod.host_interface),
                Err(_) => return,
            };
            match attachment {
                Ok(attachment) => {
                    tracing::info!(veth = pod.host_interface, ips = ?pod.ips, netns = %pod.netns.display(), "pod found: counters attached");
                    attached.insert(index, (pod, attachment));
                }
                Err(err) => {
                    tracing::warn!(veth = pod.host_interface, %err, "pod found, counters not attached")
                }
            }
        }
    }

    /// Makes the counter on `iface` (a pod's host-side veth) stamp a traced run's packets as
    /// well, until the returned guard is dropped: one program per packet on that hook instead
    /// of the counter and the stage classifier one after the other. `None` when no counter is
    /// attached there, or the swap failed (logged; the counter is then attached anew): the
    /// caller attaches the stage classifiers on their own.
    pub fn stage(self: &Arc<Self>, iface: &str) -> Option<CounterStage> {
        let swapped = self.with_counter(iface, |attachment, object| {
            attachment.run(object, tc_counter::COUNTED_STAGE_PROGRAMS)
        })?;
        swapped.then(|| CounterStage {
            pods: Arc::clone(self),
            iface: iface.to_owned(),
        })
    }

    /// Whether a counter is attached to `iface` (which [`PodMap::stage`] could swap).
    pub fn counts(&self, iface: &str) -> bool {
        self.attached.lock().is_ok_and(|attached| {
            attached
                .values()
                .any(|(pod, _)| pod.host_interface == iface)
        })
    }

    /// Runs `change` on the counter attached to `iface`: `None` if there is none, else
    /// whether it succeeded. A counter whose change failed (it may have lost a link, or run
    /// one program of the pair) is detached and attached anew, plain.
    fn with_counter(
        &self,
        iface: &str,
        change: impl FnOnce(&mut tc_counter::CounterAttachment, &mut EbpfObject) -> crate::Result<()>,
    ) -> Option<bool> {
        let outcome = {
            let mut attached = self.attached.lock().ok()?;
            let (&index, (_, attachment)) = attached
                .iter_mut()
                .find(|(_, (pod, _))| pod.host_interface == iface)?;
            let outcome = {
                let mut object = self.object.lock().ok()?;
                change(attachment, &mut object)
            };
            if let Err(err) = &outcome {
                tracing::warn!(veth = iface, %err, "swapping the counter's program failed");
                attached.remove(&index);
            }
            outcome
        };
        if outcome.is_err() {
            // Detached above; whatever it ran, the counter comes back plain.
            self.refresh();
        }
        Some(outcome.is_ok())
    }

    /// Waits for link events; after each burst, looks again at once and once more a second
    /// later (a new pod's address is set after its veth appears).
    fn follow(&self, events: &netlink_sys::Socket) {
        let mut buffer = vec![0_u8; 1 << 16];
        loop {
            if let Err(err) = events.recv(&mut &mut buffer[..], 0) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.raw_os_error() != Some(libc::ENOBUFS) {
                    tracing::warn!(%err, "pods: link events stopped; the mapping no longer follows pods");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            drain(events, &mut buffer);
            self.refresh();
            if !wait_readable(events, Duration::from_secs(1)) {
                self.refresh();
            }
        }
    }
}

/// A pod's counter that stamps a traced run's packets too (see [`PodMap::stage`]); dropping
/// it puts the plain counter back.
#[derive(Debug)]
pub struct CounterStage {
    pods: Arc<PodMap>,
    iface: String,
}

impl Drop for CounterStage {
    fn drop(&mut self) {
        self.pods.with_counter(&self.iface, |attachment, object| {
            attachment.count_only(object)
        });
    }
}

/// Reads every queued event without blocking.
fn drain(events: &netlink_sys::Socket, buffer: &mut [u8]) {
    while wait_readable(events, Duration::ZERO) {
        if events.recv(&mut &mut buffer[..], 0).is_err() {
            return;
        }
    }
}

/// Whether the socket has something to read within `timeout`.
fn wait_readable(socket: &netlink_sys::Socket, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // SAFETY: the descriptor belongs to `socket`, alive for this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}
