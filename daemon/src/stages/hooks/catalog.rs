//! The stage programs by name: which hook each serves, which of them a role on the path
//! needs, and how a socket program is loaded and attached, a classifier flushed.

use aya::programs::{
    Program, RawTracePointRunOptions, TcAttachType, TestRun as _, tp_btf::BtfTracePointLink,
    trace_point::TracePointLink,
};

use crate::{error::chain, object::EbpfObject, tc_counter};

/// What a traced interface is on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host side of a pod's veth.
    Pod,
    /// The node's uplink.
    Uplink,
}

impl Role {
    /// The role's name in hook descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Uplink => "uplink",
        }
    }

    /// (program, attach point) pairs for this role: the one that stamps packets leaving the
    /// node, then the one for packets arriving.
    pub(super) fn programs(self) -> [(&'static str, TcAttachType); 2] {
        match self {
            Self::Pod => [
                ("sonde_pod_out", TcAttachType::Ingress),
                ("sonde_pod_in", TcAttachType::Egress),
            ],
            Self::Uplink => [
                ("sonde_node_out", TcAttachType::Egress),
                ("sonde_node_in", TcAttachType::Ingress),
            ],
        }
    }
}

/// Which of a node's two directions a run's followed packets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    /// Packets leaving the node (its pod's veth ingress, its uplink's egress).
    pub leaving: bool,
    /// Packets arriving (its uplink's ingress, its pod's veth egress).
    pub arriving: bool,
}

impl Passes {
    /// How an uplink classifying only these directions is described in the hook list.
    pub fn uplink_note(self) -> &'static str {
        match (self.leaving, self.arriving) {
            (true, false) => " (egress only: the run's packets leave here)",
            (false, true) => " (ingress only: the run's packets arrive here)",
            _ => "",
        }
    }
}

/// A socket hook: program name and where it attaches.
#[derive(Debug, Clone, Copy)]
pub(super) enum SocketHook {
    /// A classic tracepoint (category, name).
    Tracepoint(&'static str, &'static str),
    /// A BTF tracepoint on this kernel function's tracepoint.
    Btf(&'static str),
}

/// The hook that stamps a socket's sends. Only runs that follow every packet use it (a
/// sampled stream's send time is socket-buffer queueing), and a stream pays for it on every
/// send: it is attached only while such a run is traced (`bench probes` measured a stream at
/// 0.83 of its untraced throughput with it attached, 0.93 without).
pub(super) const SEND_HOOK: &str = "sonde_sock_send";

/// The socket hooks, each with the programs that can serve it, best first: a BTF tracepoint
/// runs its program straight from the kernel's tracepoint call, where a classic tracepoint
/// first fills its record (tens of ns on `consume_skb` and `kfree_skb`, which see every skb
/// the node frees). The classic ones serve kernels without BTF.
pub(super) const SOCKET_HOOKS: [&[(&str, SocketHook)]; 6] = [
    &[(SEND_HOOK, SocketHook::Btf("tcp_sendmsg_locked"))],
    &[
        ("sonde_read", SocketHook::Btf("skb_copy_datagram_iovec")),
        (
            "sonde_read_tp",
            SocketHook::Tracepoint("skb", "skb_copy_datagram_iovec"),
        ),
    ],
    &[(
        "sonde_connect",
        SocketHook::Tracepoint("sock", "inet_sock_set_state"),
    )],
    &[(
        "sonde_retransmit",
        SocketHook::Tracepoint("tcp", "tcp_retransmit_skb"),
    )],
    &[
        ("sonde_drop", SocketHook::Btf("kfree_skb")),
        ("sonde_drop_tp", SocketHook::Tracepoint("skb", "kfree_skb")),
    ],
    &[
        ("sonde_free", SocketHook::Btf("consume_skb")),
        (
            "sonde_free_tp",
            SocketHook::Tracepoint("skb", "consume_skb"),
        ),
    ],
];

/// The socket hooks that follow packets (an application's read, a drop, a free): detached
/// between stamping windows with the classifiers. Connects and retransmits are followed
/// throughout.
pub(super) const WINDOWED_SOCKET_PROGRAMS: [&str; 6] = [
    "sonde_read",
    "sonde_read_tp",
    "sonde_drop",
    "sonde_drop_tp",
    "sonde_free",
    "sonde_free_tp",
];

/// The drop hook's classic variant, which reads the drop reason at the offset the
/// tracepoint's format gives.
pub const CLASSIC_DROP_HOOK: &str = "sonde_drop_tp";

/// The stage classifiers, in path order.
pub const TC_PROGRAMS: [&str; 4] = [
    "sonde_pod_out",
    "sonde_pod_in",
    "sonde_node_out",
    "sonde_node_in",
];

/// Every stage classifier: those attached on their own, and those a pod's counter runs.
pub(super) fn stage_classifiers() -> impl Iterator<Item = &'static str> {
    TC_PROGRAMS
        .into_iter()
        .chain(tc_counter::COUNTED_STAGE_PROGRAMS)
}

/// A classifier that does nothing: what any classifier costs, the floor probe costs are read
/// against.
pub const FLOOR_PROGRAM: &str = "sonde_tc_nop";

/// The program that writes a CPU's gathered events to the ring buffer, run on each CPU before
/// the buffer is read (see `sonde_common::stages::Batch`).
pub(super) const FLUSH_PROGRAM: &str = "sonde_flush";

/// Tries at flushing a CPU whose batch is in use (a program on it is filling it): each try is
/// an interrupt that lands at another moment.
pub(super) const FLUSH_TRIES: u32 = 3;

pub(super) enum SocketLink {
    Tracepoint(#[expect(dead_code, reason = "held for its drop, which detaches")] TracePointLink),
    Btf(#[expect(dead_code, reason = "held for its drop, which detaches")] BtfTracePointLink),
}

impl std::fmt::Debug for SocketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketLink")
    }
}

pub(super) fn describe(hook: SocketHook) -> String {
    match hook {
        SocketHook::Tracepoint(category, name) => format!("tracepoint:{category}:{name}"),
        SocketHook::Btf(name) => format!("tp_btf:{name}"),
    }
}

pub(super) fn load_socket(
    object: &mut EbpfObject,
    name: &'static str,
    hook: SocketHook,
    btf: Option<&aya::Btf>,
) -> Result<(), String> {
    let program = object.program_mut(name).map_err(|err| chain(&err))?;
    let outcome = match (hook, program) {
        (SocketHook::Tracepoint(..), Program::TracePoint(tp)) => tp.load(),
        (SocketHook::Btf(function), Program::BtfTracePoint(tp)) => {
            let btf = btf.ok_or("the kernel has no BTF")?;
            tp.load(function, btf)
        }
        _ => return Err(format!("{name} has an unexpected program type")),
    };
    outcome.map_err(|err| chain(&err))
}

/// Loads the flush program and checks it runs here (`BPF_PROG_TEST_RUN` of raw tracepoint
/// programs on a chosen CPU came with Linux 5.10): the CPUs to flush.
pub(super) fn load_flush(object: &mut EbpfObject) -> Result<Vec<u32>, String> {
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| format!("{what}: {err}"))?;
    let cpus: Vec<u32> = (0..u32::try_from(cpus).map_err(|err| err.to_string())?).collect();
    let program = object
        .program_mut(FLUSH_PROGRAM)
        .map_err(|err| chain(&err))?;
    let Program::RawTracePoint(program) = program else {
        return Err(format!("{FLUSH_PROGRAM} has an unexpected program type"));
    };
    program.load().map_err(|err| chain(&err))?;
    // CPU 0 is online whenever the machine runs.
    flush_on(program, 0).map_err(|err| err.to_string())?;
    Ok(cpus)
}

/// Runs the flush program on `cpu`: whether the batch was free (and is now written out).
pub(super) fn flush_on(program: &aya::programs::RawTracePoint, cpu: u32) -> std::io::Result<bool> {
    let options = RawTracePointRunOptions {
        cpu: Some(cpu),
        ..RawTracePointRunOptions::default()
    };
    match program.test_run(options) {
        // 0: the batch was in use.
        Ok(result) => Ok(result.return_value != 0),
        Err(aya::programs::ProgramError::SyscallError(err)) => Err(err.io_error),
        Err(err) => Err(std::io::Error::other(chain(&err))),
    }
}

pub(super) fn attach_socket(
    object: &mut EbpfObject,
    name: &'static str,
    hook: SocketHook,
) -> Result<SocketLink, String> {
    let program = object.program_mut(name).map_err(|err| chain(&err))?;
    match (hook, program) {
        (SocketHook::Tracepoint(category, event), Program::TracePoint(tp)) => {
            let id = tp.attach(category, event).map_err(|err| chain(&err))?;
            tp.take_link(id)
                .map(SocketLink::Tracepoint)
                .map_err(|err| chain(&err))
        }
        (SocketHook::Btf(_), Program::BtfTracePoint(tp)) => {
            let id = tp.attach().map_err(|err| chain(&err))?;
            tp.take_link(id)
                .map(SocketLink::Btf)
                .map_err(|err| chain(&err))
        }
        _ => Err(format!("{name} has an unexpected program type")),
    }
}
