//! The embedded eBPF object: loaded once per daemon, holding every program and map sonde uses.
//!
//! Loading creates the maps; each program is loaded into the kernel when first needed. Whatever
//! is attached is held as a link owned by this process, so the kernel detaches it when the
//! daemon exits, however it exits (TCX and perf links are not pinned).

use aya::{Btf, Ebpf, EbpfLoader, programs::Program};
use sonde_common::{maps, stages::runs};

use crate::{Error, Result};

/// sonde's compiled eBPF object, built by `build.rs` from the `sonde-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));

/// The loaded object, owned by one place in the daemon (behind a mutex when shared).
#[derive(Debug)]
pub struct EbpfObject {
    /// Programs and maps; dropping it unloads everything and releases every link.
    ebpf: Ebpf,
}

/// One program the daemon holds loaded in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProgram {
    /// Name in sonde's object.
    pub name: String,
    /// The kernel's program type, in bpftool's spelling where sonde uses it.
    pub program_type: String,
    /// The kernel's program ID.
    pub kernel_id: u32,
}

impl EbpfObject {
    /// Loads the embedded object: creates its maps, loads no program yet. Reads the kernel's
    /// BTF itself; use [`EbpfObject::load_with_btf`] when the caller has it already.
    pub fn load() -> Result<Self> {
        Self::load_with_btf(Btf::from_sys_fs().ok().as_ref())
    }

    /// As [`EbpfObject::load`], with the kernel's BTF already parsed (it is large: parse it once).
    pub fn load_with_btf(btf: Option<&Btf>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.btf(btf);
        // The run counters hold every CPU the kernel may bring up (see `stages::runs`); where
        // that cannot be read, the object's default size stands.
        if let Some(entries) = aya::util::nr_cpus()
            .ok()
            .and_then(|cpus| u32::try_from(cpus).ok())
            .and_then(|cpus| cpus.checked_mul(runs::SLOTS))
        {
            loader.map_max_entries(maps::PROGRAM_RUNS, entries);
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|source| Error::LoadObject { source })?;
        Ok(Self { ebpf })
    }

    /// The programs currently loaded in the kernel, in name order.
    pub fn loaded_programs(&self) -> Vec<LoadedProgram> {
        let mut programs: Vec<LoadedProgram> = self
            .ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(LoadedProgram {
                    name: name.to_owned(),
                    program_type: type_name(program).to_owned(),
                    kernel_id: info.id(),
                })
            })
            .collect();
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        programs
    }

    /// Mutable access to a program by name, for the modules that load and attach them.
    pub(crate) fn program_mut(&mut self, name: &'static str) -> Result<&mut Program> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })
    }

    /// A program by name, for reading its kernel info.
    pub(crate) fn program(&self, name: &str) -> Option<&Program> {
        self.ebpf.program(name)
    }

    /// Takes a map out of the object, for a module that owns it from then on.
    pub(crate) fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// The object itself, for the modules that read its maps.
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// The kernel's name for a program's type, as `bpftool prog show` prints it.
fn type_name(program: &Program) -> &'static str {
    match program {
        Program::SchedClassifier(_) => "sched_cls",
        Program::TracePoint(_) => "tracepoint",
        Program::BtfTracePoint(_) | Program::FEntry(_) | Program::FExit(_) => "tracing",
        Program::SockOps(_) => "sock_ops",
        Program::KProbe(_) => "kprobe",
        Program::CgroupSkb(_) => "cgroup_skb",
        Program::RawTracePoint(_) => "raw_tracepoint",
        _ => "other",
    }
}
