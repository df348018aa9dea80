//! Per-interface packet counters: the `sonde_tc_ingress`/`sonde_tc_egress` classifiers attached
//! as TCX links, and the per-CPU map they fill.
//!
//! An attachment is an owned value: dropping a [`CounterAttachment`] detaches both links, and if
//! the daemon dies the kernel does the same when it closes the link file descriptors.
//!
//! Interfaces are keyed by ifindex, which is unique only within one network namespace; callers
//! that count in several namespaces must not mix interfaces with the same index.

use aya::{
    maps::{MapError, PerCpuHashMap},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, tc::SchedClassifierLink,
        tc::TcAttachOptions,
    },
};
use sonde_common::{
    counters::{IfaceKey, PacketCount, direction},
    maps::IFACE_COUNTERS,
};

use crate::{Error, Result, object::EbpfObject};

/// Name of the ingress counting program in sonde's object.
pub const INGRESS_PROGRAM: &str = "sonde_tc_ingress";
/// Name of the egress counting program in sonde's object.
pub const EGRESS_PROGRAM: &str = "sonde_tc_egress";

/// Both counter programs attached to one interface; dropping it detaches them.
#[derive(Debug)]
pub struct CounterAttachment {
    /// The interface's name, as asked for.
    pub iface: String,
    /// The interface's index in the namespace it was attached in (the map key).
    pub ifindex: u32,
    /// The ingress link (`None` only if a program swap failed and the kernel dropped it).
    ingress: Option<SchedClassifierLink>,
    /// The egress link, likewise.
    egress: Option<SchedClassifierLink>,
}

/// The programs that count and also stamp a traced pod's packets (see `stages::hooks`): in
/// the counter's links while a run is traced through the pod.
pub const COUNTED_STAGE_PROGRAMS: [&str; 2] = ["sonde_pod_out_counted", "sonde_pod_in_counted"];

impl CounterAttachment {
    /// Puts `programs` ([ingress, egress]) in the counter's links, in one atomic update each:
    /// no packet goes uncounted or is counted twice. Both programs must count as the
    /// counters do. After an error the attachment may have lost a link, or run one program
    /// of each pair: drop it and attach anew.
    pub fn run(
        &mut self,
        object: &mut EbpfObject,
        [ingress, egress]: [&'static str; 2],
    ) -> Result<()> {
        load_classifiers(object, &[ingress, egress])?;
        self.ingress = Some(swap(object, ingress, self.ingress.take(), &self.iface)?);
        self.egress = Some(swap(object, egress, self.egress.take(), &self.iface)?);
        Ok(())
    }

    /// Puts the plain counters back in the links.
    pub fn count_only(&mut self, object: &mut EbpfObject) -> Result<()> {
        self.run(object, [INGRESS_PROGRAM, EGRESS_PROGRAM])
    }
}

/// Moves `link` to the program `name` (`BPF_LINK_UPDATE`: the kernel swaps the program in
/// place, keeping the link's position among the interface's programs).
fn swap(
    object: &mut EbpfObject,
    name: &'static str,
    link: Option<SchedClassifierLink>,
    iface: &str,
) -> Result<SchedClassifierLink> {
    let link = link.ok_or_else(|| Error::NotAttached {
        name: iface.to_owned(),
    })?;
    let classifier = classifier(object, name)?;
    let id = classifier.attach_to_link(link).map_err(program_error(
        name,
        format!("swap into the counter link on {iface}"),
    ))?;
    classifier
        .take_link(id)
        .map_err(program_error(name, "take link of".to_owned()))
}

/// The error of `action` on the program `name`.
fn program_error(name: &'static str, action: String) -> impl FnOnce(ProgramError) -> Error {
    move |source| Error::Program {
        action,
        program: name,
        source,
    }
}

/// Packets and bytes counted on one interface since the counter was first attached to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceCounts {
    /// What arrived on the interface.
    pub ingress: PacketCount,
    /// What left through the interface.
    pub egress: PacketCount,
}

/// Loads both counter programs into the kernel (once; later calls do nothing).
pub fn load(object: &mut EbpfObject) -> Result<()> {
    load_classifiers(object, &[INGRESS_PROGRAM, EGRESS_PROGRAM])
}

/// Loads TC classifiers of sonde's object into the kernel (those loaded already are skipped).
pub(crate) fn load_classifiers(object: &mut EbpfObject, names: &[&'static str]) -> Result<()> {
    for &name in names {
        let classifier = classifier(object, name)?;
        match classifier.load() {
            Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
            Err(source) => {
                return Err(Error::Program {
                    action: "load".to_owned(),
                    program: name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Attaches the counters to `iface` in the calling thread's network namespace, as TCX links
/// placed after any program already there (a CNI's programs keep running first).
pub fn attach(object: &mut EbpfObject, iface: &str) -> Result<CounterAttachment> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|_| Error::NoSuchInterface {
        name: iface.to_owned(),
    })?;
    load(object)?;
    let ingress = attach_tcx(object, INGRESS_PROGRAM, iface, TcAttachType::Ingress)?;
    let egress = attach_tcx(object, EGRESS_PROGRAM, iface, TcAttachType::Egress)?;
    tracing::info!(iface, ifindex, "packet counter attached");
    Ok(CounterAttachment {
        iface: iface.to_owned(),
        ifindex,
        ingress: Some(ingress),
        egress: Some(egress),
    })
}

/// Reads the counts of the interface with index `ifindex`, summed over CPUs.
pub fn read(object: &EbpfObject, ifindex: u32) -> Result<IfaceCounts> {
    let map_error = |source| Error::Map {
        name: IFACE_COUNTERS,
        source,
    };
    let map = object.ebpf().map(IFACE_COUNTERS).ok_or(Error::MissingMap {
        name: IFACE_COUNTERS,
    })?;
    let counters: PerCpuHashMap<_, IfaceKey, PacketCount> =
        PerCpuHashMap::try_from(map).map_err(map_error)?;
    let sum = |direction| -> Result<PacketCount> {
        match counters.get(&IfaceKey { ifindex, direction }, 0) {
            Ok(per_cpu) => {
                Ok(per_cpu
                    .iter()
                    .fold(PacketCount::default(), |total, cpu| PacketCount {
                        packets: total.packets + cpu.packets,
                        bytes: total.bytes + cpu.bytes,
                    }))
            }
            Err(MapError::KeyNotFound) => Ok(PacketCount::default()),
            Err(source) => Err(map_error(source)),
        }
    };
    Ok(IfaceCounts {
        ingress: sum(direction::INGRESS)?,
        egress: sum(direction::EGRESS)?,
    })
}

fn classifier<'a>(
    object: &'a mut EbpfObject,
    name: &'static str,
) -> Result<&'a mut SchedClassifier> {
    object
        .program_mut(name)?
        .try_into()
        .map_err(|_| Error::MissingProgram { name })
}

/// Attaches a loaded classifier to `iface` as a TCX link placed after any program already
/// there (a CNI's programs keep running first); the returned link detaches it when dropped.
pub(crate) fn attach_tcx(
    object: &mut EbpfObject,
    name: &'static str,
    iface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLink> {
    let classifier = classifier(object, name)?;
    let link_id = classifier
        .attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(program_error(
            name,
            format!("attach (TCX) to {iface} {attach_type:?}"),
        ))?;
    classifier
        .take_link(link_id)
        .map_err(program_error(name, "take link of".to_owned()))
}
