//! `sondectl lab rollout --service NAME`: a Service's pods replaced one at a time, as a
//! Deployment's rolling update replaces them (maxSurge 1, maxUnavailable 0):
//!
//! 1. a new pod is made on the old one's node and listed as not ready (a run through the
//!    Service prepares its server there);
//! 2. after `ready_after` it is ready: added to the Service's rules;
//! 3. the old pod leaves the rules: new connections go elsewhere, its own go on (draining);
//! 4. after `drain` it terminates: its connections are reset, as when a server exits;
//! 5. its namespace and veth are deleted; `pause`, then the next pod.
//!
//! Each step is an event in the lab's `events.jsonl` (time, Service, what), where runs
//! through the Service read what happened during their measurement.

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    create::make_pod,
    inventory::Inventory,
    nft,
    sys::{self, ip_in},
};
use crate::error::{Context as _, refuse};

/// How a rollout paces its steps.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// From a new pod's creation to its readiness.
    pub ready_after: Duration,
    /// From an old pod's removal from the rules to its termination.
    pub drain: Duration,
    /// Between one pod's replacement and the next.
    pub pause: Duration,
}

/// One step of a rollout, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, ms since the epoch.
    pub at_unix_ms: u64,
    /// The Service rolled out.
    pub service: String,
    /// What happened.
    pub what: String,
}

/// The file a lab's events go to.
pub fn events_path(inventory: &Inventory) -> PathBuf {
    inventory.state_dir.join("events.jsonl")
}

/// The events of `service` recorded in the lab between two times (ms since the epoch).
pub fn events_between(lab: &str, service: &str, from_ms: u64, to_ms: u64) -> Vec<Event> {
    let Ok(inventory) = Inventory::load(lab) else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(events_path(&inventory)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .filter(|event| event.service == service && (from_ms..=to_ms).contains(&event.at_unix_ms))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Records an event (and shows it through `said`).
fn record(inventory: &Inventory, service: &str, what: String, said: &mut impl FnMut(&Event)) {
    let event = Event {
        at_unix_ms: now_ms(),
        service: service.to_owned(),
        what,
    };
    if let Ok(line) = serde_json::to_string(&event)
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(events_path(inventory))
    {
        let _ = writeln!(file, "{line}");
    }
    said(&event);
}

/// Rolls out `service` in the lab `lab`; returns the events, in order.
pub async fn rollout(
    lab: &str,
    service: &str,
    pacing: Pacing,
    mut said: impl FnMut(&Event),
) -> crate::Result<Vec<Event>> {
    if !sys::is_root() {
        refuse!("a rollout makes and deletes network namespaces: it needs root");
    }
    let mut inventory = Inventory::load(lab)?;
    let Some(found) = inventory.services.iter().find(|s| s.name == service) else {
        let names: Vec<&str> = inventory.services.iter().map(|s| s.name.as_str()).collect();
        refuse!(
            "the lab has no Service {service:?} (Services: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let old_pods = found.endpoints.clone();
    let mut events = Vec::new();
    let mut keep = |event: &Event| {
        events.push(event.clone());
        said(event);
    };
    for (step, old) in old_pods.iter().enumerate() {
        let node = inventory
            .pod(old)
            .map(|pod| pod.node.clone())
            .with_context(|| {
                format!("the inventory lists {old} behind {service}, but no such pod")
            })?;
        let pod = inventory
            .new_pod(&node)
            .with_context(|| format!("no free address for a new pod on {node}"))?;
        let node_facts = inventory
            .node(&node)
            .context("the inventory is inconsistent")?;
        make_pod(&pod, node_facts)?;
        let new = pod.name.clone();
        inventory.pods.push(pod);
        service_mut(&mut inventory, service)?
            .pending
            .push(new.clone());
        inventory.save()?;
        record(
            &inventory,
            service,
            format!(
                "step {} of {}: {new} created on {node}, not ready",
                step + 1,
                old_pods.len()
            ),
            &mut keep,
        );
        tokio::time::sleep(pacing.ready_after).await;

        let entry = service_mut(&mut inventory, service)?;
        entry.pending.retain(|pod| pod != &new);
        entry.endpoints.push(new.clone());
        nft::load(&inventory)?;
        inventory.save()?;
        record(
            &inventory,
            service,
            format!("{new} ready: added to {service}'s endpoints"),
            &mut keep,
        );

        service_mut(&mut inventory, service)?
            .endpoints
            .retain(|pod| pod != old);
        nft::load(&inventory)?;
        inventory.save()?;
        record(
            &inventory,
            service,
            format!("{old} removed from {service}'s endpoints: draining"),
            &mut keep,
        );
        tokio::time::sleep(pacing.drain).await;

        terminate(&inventory, old)?;
        record(
            &inventory,
            service,
            format!("{old} terminated: its connections reset"),
            &mut keep,
        );
        remove_pod(&mut inventory, old)?;
        inventory.save()?;
        record(&inventory, service, format!("{old} deleted"), &mut keep);
        if step + 1 < old_pods.len() {
            tokio::time::sleep(pacing.pause).await;
        }
    }
    Ok(events)
}

fn service_mut<'a>(
    inventory: &'a mut Inventory,
    service: &str,
) -> crate::Result<&'a mut super::inventory::Service> {
    inventory
        .services
        .iter_mut()
        .find(|s| s.name == service)
        .with_context(|| format!("the Service {service} left the inventory"))
}

/// Closes the TCP connections in `pod` (`ss -K`: each peer gets a reset), as a server's
/// connections end when its process exits. Its listeners stay: the pod's address goes with
/// its veth next, and the run's server side there ends with the run.
fn terminate(inventory: &Inventory, pod: &str) -> crate::Result<()> {
    let netns = &inventory
        .pod(pod)
        .context("the pod left the inventory")?
        .netns;
    sys::run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "ss",
            "-K",
            "-t",
            "state",
            "connected",
        ],
    )?;
    Ok(())
}

/// Deletes `pod`: its veth (its address is gone from the node's bridge at once) and its
/// namespace.
fn remove_pod(inventory: &mut Inventory, pod: &str) -> crate::Result<()> {
    let facts = inventory
        .pod(pod)
        .context("the pod left the inventory")?
        .clone();
    let node = inventory
        .node(&facts.node)
        .context("the inventory is inconsistent")?;
    ip_in(&node.netns, &["link", "del", &facts.host_veth])?;
    sys::run("ip", &["netns", "del", &facts.netns])?;
    inventory.pods.retain(|p| p.name != pod);
    Ok(())
}
