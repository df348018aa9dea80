//! What this kernel lets sonde do, tried for real once at daemon start.
//!
//! Each capability is tried by doing the real thing at its smallest: load a program of the
//! type and, where attaching is cheap and harmless, attach it and detach it at once. A missing
//! capability keeps the kernel's own error text, because "fentry: unavailable" helps nobody and
//! "bpf_prog_load: Operation not permitted" tells an operator what to look at.
//!
//! Real clusters differ: kprobes and fentry are common there and missing on some VMs, TCX needs
//! Linux 6.6. Later measurements choose their hooks from this report.

use std::path::PathBuf;

use aya::{
    Btf, BtfError,
    maps::MapType,
    programs::{
        BtfTracePoint, CgroupAttachMode, FEntry, KProbe, LinkOrder, Program, ProgramError,
        SchedClassifier, SockOps, TcAttachType, TracePoint, tc::TcAttachOptions,
    },
};

use crate::{error::chain, object::EbpfObject, tc_counter};

/// A kernel feature sonde can use, and whether this kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Stable short name (see [`NAMES`]).
    pub name: &'static str,
    /// True when the attempt worked for real.
    pub available: bool,
    /// What was done when available; the kernel's error when not.
    pub detail: String,
}

/// Every capability sonde tries, in the order they are reported.
pub const NAMES: [&str; 8] = [
    "btf",
    "tcx",
    "tracepoint",
    "tp_btf",
    "sock_ops",
    "ringbuf",
    "fentry",
    "kprobe",
];

/// The tracepoint every tracing attempt hooks: it exists on every kernel sonde supports.
const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");
/// A kernel function that exists on every kernel sonde supports, for fentry and kprobe.
const KERNEL_FUNCTION: &str = "tcp_rcv_established";

/// Tries every capability in [`NAMES`] order, given the outcome of reading the kernel's BTF
/// (`Btf::from_sys_fs()`). Capability programs other than the TC counter are unloaded again
/// afterwards: they exist to be tried, not kept.
pub fn detect(object: &mut EbpfObject, btf: &Result<Btf, BtfError>) -> Vec<Capability> {
    let btf_result = match btf {
        Ok(_) => Ok("vmlinux BTF read from /sys/kernel/btf/vmlinux".to_owned()),
        Err(err) => Err(chain(err)),
    };
    let btf = btf.as_ref().ok();
    let results: [Result<String, String>; 8] = [
        btf_result,
        try_tcx(object),
        try_tracepoint(object),
        with_btf(btf, |btf| try_tp_btf(object, btf)),
        try_sock_ops(object),
        try_ringbuf(),
        with_btf(btf, |btf| try_fentry(object, btf)),
        try_kprobe(object),
    ];
    NAMES
        .into_iter()
        .zip(results)
        .map(|(name, result)| {
            let capability = match result {
                Ok(detail) => Capability {
                    name,
                    available: true,
                    detail,
                },
                Err(detail) => Capability {
                    name,
                    available: false,
                    detail,
                },
            };
            tracing::info!(
                capability = capability.name,
                available = capability.available,
                detail = %capability.detail,
                "kernel capability tried"
            );
            capability
        })
        .collect()
}

fn with_btf(
    btf: Option<&Btf>,
    attempt: impl FnOnce(&Btf) -> Result<String, String>,
) -> Result<String, String> {
    match btf {
        Some(btf) => attempt(btf),
        None => Err("needs kernel BTF, which is unavailable".to_owned()),
    }
}

/// A step of an attempt: what was attempted and the error it gave.
fn step<T>(action: &str, result: Result<T, ProgramError>) -> Result<T, String> {
    result.map_err(|err| format!("{action}: {}", shorten(&chain(&err))))
}

/// Verifier logs can be pages long: keep the first lines, which carry the reason.
fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // aya appends the verifier's log even when the kernel wrote none.
    let one_line = one_line
        .strip_suffix(" Verifier output:")
        .map(str::to_owned)
        .unwrap_or(one_line);
    match one_line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

fn program<'a, T>(object: &'a mut EbpfObject, name: &'static str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = object.program_mut(name).map_err(|err| chain(&err))?;
    step("program type", program.try_into())
}

fn try_tcx(object: &mut EbpfObject) -> Result<String, String> {
    tc_counter::load(object).map_err(|err| chain(&err))?;
    let classifier: &mut SchedClassifier = program(object, tc_counter::INGRESS_PROGRAM)?;
    let link = step(
        "attach TCX ingress on lo",
        classifier.attach_with_options(
            "lo",
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ),
    )?;
    step("detach TCX link", classifier.detach(link))?;
    Ok("attached and detached a TCX ingress link on lo".to_owned())
}

fn try_tracepoint(object: &mut EbpfObject) -> Result<String, String> {
    let (category, name) = TRACEPOINT;
    let tracepoint: &mut TracePoint = program(object, "sonde_cap_tp")?;
    step("load", tracepoint.load())?;
    let outcome = step(
        &format!("attach to {category}:{name}"),
        tracepoint.attach(category, name),
    )
    .and_then(|link| step("detach", tracepoint.detach(link)));
    let _ = tracepoint.unload();
    outcome.map(|()| format!("attached and detached {category}:{name}"))
}

fn try_tp_btf(object: &mut EbpfObject, btf: &Btf) -> Result<String, String> {
    let (_, name) = TRACEPOINT;
    let tracepoint: &mut BtfTracePoint = program(object, "sonde_cap_tp_btf")?;
    step(&format!("load for {name}"), tracepoint.load(name, btf))?;
    let outcome = step("attach", tracepoint.attach())
        .and_then(|link| step("detach", tracepoint.detach(link)));
    let _ = tracepoint.unload();
    outcome.map(|()| format!("attached and detached tp_btf/{name}"))
}

fn try_sock_ops(object: &mut EbpfObject) -> Result<String, String> {
    let cgroup_path = own_cgroup().map_err(|err| format!("finding our cgroup v2: {err}"))?;
    let cgroup = std::fs::File::open(&cgroup_path)
        .map_err(|err| format!("opening cgroup {}: {err}", cgroup_path.display()))?;
    let sock_ops: &mut SockOps = program(object, "sonde_cap_sockops")?;
    step("load", sock_ops.load())?;
    let outcome = step(
        &format!("attach to cgroup {}", cgroup_path.display()),
        // Through bpf_link_create (Linux 5.7+), which is multi-attach by nature and takes no
        // flags: "Single" is how aya spells "no flags" there.
        sock_ops.attach(&cgroup, CgroupAttachMode::Single),
    )
    .and_then(|link| step("detach", sock_ops.detach(link)));
    let _ = sock_ops.unload();
    outcome.map(|()| {
        format!(
            "attached and detached on the daemon's own cgroup {}",
            cgroup_path.display()
        )
    })
}

fn try_ringbuf() -> Result<String, String> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Ok("created a BPF_MAP_TYPE_RINGBUF map".to_owned()),
        Ok(false) => Err("the kernel refused to create a BPF_MAP_TYPE_RINGBUF map".to_owned()),
        Err(err) => Err(format!("creating a ring buffer map: {}", chain(&err))),
    }
}

fn try_fentry(object: &mut EbpfObject, btf: &Btf) -> Result<String, String> {
    let fentry: &mut FEntry = program(object, "sonde_cap_fentry")?;
    step(
        &format!("load fentry/{KERNEL_FUNCTION}"),
        fentry.load(KERNEL_FUNCTION, btf),
    )?;
    let outcome =
        step("attach", fentry.attach()).and_then(|link| step("detach", fentry.detach(link)));
    let _ = fentry.unload();
    outcome.map(|()| format!("attached and detached fentry/{KERNEL_FUNCTION}"))
}

fn try_kprobe(object: &mut EbpfObject) -> Result<String, String> {
    let kprobe: &mut KProbe = program(object, "sonde_cap_kprobe")?;
    step("load", kprobe.load())?;
    let outcome = step(
        &format!("attach to {KERNEL_FUNCTION}"),
        kprobe.attach(KERNEL_FUNCTION, 0),
    )
    .and_then(|link| step("detach", kprobe.detach(link)));
    let _ = kprobe.unload();
    outcome.map(|()| format!("attached and detached a kprobe on {KERNEL_FUNCTION}"))
}

/// The cgroup v2 directory this process belongs to: its cgroup2 mount joined with the path in
/// `/proc/self/cgroup` (falling back to the mount's root when the two do not line up, as in a
/// container without a cgroup namespace of its own).
fn own_cgroup() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|err| format!("reading /proc/self/mountinfo: {err}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
    let membership = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|err| format!("reading /proc/self/cgroup: {err}"))?;
    let relative = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    let joined = mount.join(relative);
    Ok(if joined.is_dir() { joined } else { mount })
}

/// The mount point of the first cgroup2 file system in a `/proc/PID/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fs_type = rest.split_whitespace().next()?;
        if fs_type != "cgroup2" {
            return None;
        }
        fields.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_others() {
        let mountinfo = "\
24 29 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let mountinfo = "32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(mountinfo), None);
    }

    #[test]
    fn empty_verifier_output_is_dropped() {
        let text = "load: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). \
                    Verifier output:\n";
        assert_eq!(
            shorten(text),
            "load: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)."
        );
    }

    #[test]
    fn long_verifier_logs_are_cut_to_one_line() {
        let log = "line one\n".repeat(200);
        let short = shorten(&log);
        assert!(!short.contains('\n'));
        assert!(short.ends_with("..."));
        assert!(short.chars().count() <= 403);
    }
}
