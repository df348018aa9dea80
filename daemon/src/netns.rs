//! Running work inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a short-lived
//! scoped thread that enters the namespace and ends with it: the caller's thread, and the tokio
//! runtime's threads, never change namespace. Interface names and indexes, TCX attachments and
//! sockets created by the work belong to the target namespace; the file descriptors outlive the
//! thread.

use std::{fs::File, path::Path};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// Runs `work` inside the network namespace at `path` (e.g. `/run/netns/NAME` or
/// `/proc/PID/ns/net`) and returns its result.
pub fn run_in<T, F>(path: &Path, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let netns_error = |source: std::io::Error| Error::Netns {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(netns_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| netns_error(std::io::Error::from(errno)))?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace at `path` for the rest of its life.
/// For threads made for one piece of work (a generator's), never for a runtime's threads.
pub fn enter(path: &Path) -> Result<()> {
    let netns_error = |source: std::io::Error| Error::Netns {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(netns_error)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| netns_error(errno.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = run_in(Path::new("/run/netns/sonde-does-not-exist"), || ())
            .expect_err("no such namespace");
        let text = crate::error::chain(&err);
        assert!(text.contains("/run/netns/sonde-does-not-exist"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
