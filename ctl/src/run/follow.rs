//! What a run through a Service sees of it while it runs, for its timeline: a lab's recorded
//! rollout steps, or a cluster's EndpointSlice changes as a watch delivers them.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::TryStreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};

use super::report::TimelineEvent;

/// Something seen at a time, ms since the epoch.
type Seen = (u64, String);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A watch of a Service's EndpointSlices, running until stopped.
#[derive(Debug)]
pub struct SliceWatch {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SliceWatch {
    /// Starts watching the EndpointSlices of `namespace/service`: every change after the
    /// first listing is kept with its time.
    pub fn start(client: kube::Client, namespace: &str, service: &str) -> Self {
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let events = watcher(api, config).default_backoff();
            futures::pin_mut!(events);
            // The state at the start is what the run was planned on, not a change.
            let mut listed = false;
            while let Ok(Some(event)) = events.try_next().await {
                let what = match event {
                    watcher::Event::InitDone => {
                        listed = true;
                        continue;
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                    watcher::Event::Apply(slice) if listed => describe(&slice),
                    watcher::Event::Delete(slice) if listed => {
                        format!("EndpointSlice {} deleted", name_of(&slice))
                    }
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => continue,
                };
                if let Ok(mut seen) = keep.lock() {
                    seen.push((now_ms(), what));
                }
            }
        });
        Self { seen, task }
    }

    /// Stops the watch; what it saw, in order.
    pub fn stop(self) -> Vec<Seen> {
        self.task.abort();
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// A slice as its ready and not-ready pods: `EndpointSlice web-abc: ready a, b; not ready c`.
fn describe(slice: &EndpointSlice) -> String {
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for endpoint in &slice.endpoints {
        let name = endpoint
            .target_ref
            .as_ref()
            .and_then(|target| target.name.clone())
            .unwrap_or_else(|| endpoint.addresses.join(","));
        let is_ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        if is_ready {
            ready.push(name);
        } else {
            waiting.push(name);
        }
    }
    ready.sort();
    waiting.sort();
    let mut text = format!("EndpointSlice {}: ready {}", name_of(slice), list(&ready));
    if !waiting.is_empty() {
        text.push_str(&format!("; not ready {}", list(&waiting)));
    }
    text
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// What the lab recorded of its Service `service` between two times.
pub fn lab_events(lab: &str, service: &str, from_ms: u64, to_ms: u64) -> Vec<Seen> {
    crate::lab::rollout::events_between(lab, service, from_ms, to_ms)
        .into_iter()
        .map(|event| (event.at_unix_ms, event.what))
        .collect()
}

/// `seen` placed on a timeline whose measured part started at `start_ms`, keeping what falls
/// within its warm-up and measured part.
pub fn on_timeline(
    seen: Vec<Seen>,
    source: &str,
    start_ms: u64,
    warmup: Duration,
    duration: Duration,
) -> Vec<TimelineEvent> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (from, to) = (
        start_ms.saturating_sub(ms(warmup)),
        start_ms.saturating_add(ms(duration)),
    );
    seen.into_iter()
        .filter(|(at, _)| (from..=to).contains(at))
        .map(|(at, what)| TimelineEvent {
            at_seconds: (at as f64 - start_ms as f64) / 1e3,
            source: source.to_owned(),
            what,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_seen_is_placed_on_the_timeline_and_kept_within_it() {
        let seen = vec![
            (9_000, "before the warm-up".to_owned()),
            (9_600, "in the warm-up".to_owned()),
            (12_500, "measured".to_owned()),
            (30_000, "after".to_owned()),
        ];
        let events = on_timeline(
            seen,
            "endpoint-slice",
            10_000,
            Duration::from_millis(500),
            Duration::from_secs(10),
        );
        let placed: Vec<(f64, &str)> = events
            .iter()
            .map(|e| (e.at_seconds, e.what.as_str()))
            .collect();
        assert_eq!(placed, [(-0.4, "in the warm-up"), (2.5, "measured")]);
    }
}
