//! What holds a stage program in place for the traced runs that use it: a classifier on an
//! interface shared by its runs (released when the last one drops it), and a run's use of
//! the socket hooks.

use std::sync::{Arc, Mutex, Weak};

use aya::programs::tc::SchedClassifierLink;

use super::Hooks;
use crate::{pods::CounterStage, stages::lock, tc_counter};

/// One classifier on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TcUse {
    pub(super) iface: String,
    pub(super) program: &'static str,
}

impl TcUse {
    pub(super) fn in_counter(&self) -> bool {
        self.program == tc_counter::COUNTED_STAGE_PROGRAMS[0]
    }
}

/// A classifier on an interface (or a pod counter's stamping), shared by the traced runs
/// that use it: the last user's drop detaches it. Between stamping windows it stays in
/// use with nothing attached.
#[derive(Debug)]
pub struct TcAttachment {
    pub(super) used: TcUse,
    /// What holds it in place; `None` between stamping windows.
    pub(super) hold: Mutex<Option<TcHold>>,
}

impl TcAttachment {
    pub(super) fn new(used: TcUse, hold: Option<TcHold>) -> Arc<Self> {
        Arc::new(Self {
            used,
            hold: Mutex::new(hold),
        })
    }

    /// Whether a pod's packet counter does the stamping (see [`Hooks::attach_tc`]).
    pub fn in_counter(&self) -> bool {
        self.used.in_counter()
    }
}

/// A traced run's use of the socket hooks, and of the send hook when it stamps sends:
/// dropping the last use detaches them.
#[derive(Debug)]
pub struct SocketUse {
    pub(super) hooks: Weak<Mutex<Hooks>>,
    pub(super) stamp_sends: bool,
    /// Whether the run stamps throughout, keeping every other run's stamping on too.
    pub(super) continuous: bool,
}

impl Drop for SocketUse {
    fn drop(&mut self) {
        if let Some(hooks) = self.hooks.upgrade() {
            lock(&hooks).release_sockets(self.stamp_sends, self.continuous);
        }
    }
}

/// What holds a traced interface's stamping in place; dropping it undoes it.
#[derive(Debug)]
pub(super) enum TcHold {
    /// A stage classifier's own link.
    Link(#[expect(dead_code, reason = "held for its drop, which detaches")] SchedClassifierLink),
    /// A pod's counter, running the program that counts and stamps.
    Counter(#[expect(dead_code, reason = "held for its drop, which releases")] CounterStage),
}
