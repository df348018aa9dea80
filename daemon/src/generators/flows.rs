//! Client flows on one clock: the part every one-thread-per-flow client shares.
//!
//! Each flow gets a thread in the run's network namespace, gets ready (connects, says hello),
//! waits for the others, and then works inside the window the first one past the barrier
//! started; its CPU clock stops when its work ends. A flow that could not get ready reports
//! why and does no work, and never leaves the others waiting at the barrier.

use std::{
    path::Path,
    sync::{Arc, Barrier, Mutex},
    time::Instant,
};

use super::measure::{ThreadResult, Window, join_all};
use crate::runs::spec::RunSpec;

/// Runs `flows` flows: `ready(flow)` in the namespace, then `work(state, window, result)`.
pub fn run_flows<S, R, W>(
    spec: &RunSpec,
    netns: Option<&Path>,
    flows: u32,
    ready: R,
    work: W,
) -> Vec<ThreadResult>
where
    S: 'static,
    R: Fn(u32) -> Result<S, String> + Send + Sync + 'static,
    W: Fn(S, Window, &mut ThreadResult) + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(flows as usize));
    let clock = Arc::new(Mutex::new(None));
    let (ready, work) = (Arc::new(ready), Arc::new(work));
    let threads: Vec<_> = (0..flows)
        .map(|flow| {
            let (spec, netns) = (spec.clone(), netns.map(Path::to_path_buf));
            let (barrier, clock) = (Arc::clone(&barrier), Arc::clone(&clock));
            let (ready, work) = (Arc::clone(&ready), Arc::clone(&work));
            std::thread::spawn(move || {
                let mut result = ThreadResult::new();
                let state = match &netns {
                    Some(netns) => {
                        crate::netns::enter(netns).map_err(|err| crate::error::chain(&err))
                    }
                    None => Ok(()),
                }
                .and_then(|()| ready(flow));
                barrier.wait();
                match state {
                    Ok(state) => {
                        let window = shared_window(&clock, &spec);
                        work(state, window, &mut result);
                        result.stop_cpu();
                    }
                    Err(err) => result.error(err),
                }
                result
            })
        })
        .collect();
    join_all(threads, "client")
}

/// The first thread past the barrier starts the clock; the others read it.
pub fn shared_window(clock: &Mutex<Option<Window>>, spec: &RunSpec) -> Window {
    let mut clock = match clock.lock() {
        Ok(clock) => clock,
        Err(poisoned) => poisoned.into_inner(),
    };
    *clock.get_or_insert_with(|| Window::starting_at(Instant::now(), spec.warmup, spec.duration))
}
