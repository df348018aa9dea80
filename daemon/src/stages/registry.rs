//! The flows traced now, as the kernel's maps hold them: flow numbers handed out and returned,
//! each key's users and their sampling, the server ports' entries.

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use sonde_common::{
    maps,
    stages::{
        FlowInfo, FlowKey, FlowKey4, LOST_EVENTS, MAX_FLOWS, MAX_SAMPLE_SHIFT, PortFlow,
        port_flow_slot, side,
    },
};

use crate::{Error, Result};

/// One trace's use of a flow key: the sides it holds here and how it samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Use {
    pub(super) sides: u8,
    pub(super) sample_shift: u8,
    pub(super) dns_ids: bool,
}

/// The flows traced now, as the kernel's maps hold them.
pub(super) struct Registry {
    pub(super) flows: BpfHashMap<MapData, FlowKey, FlowInfo>,
    pub(super) flows4: BpfHashMap<MapData, FlowKey4, FlowInfo>,
    /// The one IPv4 flow of each server port with one (`PortFlow`).
    pub(super) port_flows: Array<MapData, PortFlow>,
    /// The port whose flow each slot of `port_flows` holds.
    pub(super) slot_owners: HashMap<u32, u16>,
    pub(super) ports: Array<MapData, u8>,
    pub(super) lost: PerCpuArray<MapData, u64>,
    /// Per key: its flow number and each trace's use of it.
    pub(super) keys: HashMap<FlowKey, (u32, Vec<Use>)>,
    /// Each use of each server port.
    pub(super) port_users: HashMap<u16, Vec<Use>>,
    /// Flow numbers handed out and returned.
    pub(super) next_flow: u32,
    pub(super) free_flows: Vec<u32>,
}

impl Registry {
    pub(super) fn add(&mut self, key: FlowKey, used: Use) -> Result<u32> {
        let map_error = |source| Error::Map {
            name: maps::FLOWS,
            source,
        };
        let number = match self.keys.get(&key) {
            Some((number, _)) => *number,
            None => match self.free_flows.pop() {
                Some(number) => number,
                None if self.next_flow < MAX_FLOWS => {
                    self.next_flow += 1;
                    self.next_flow - 1
                }
                None => return Err(Error::TooManyFlows { max: MAX_FLOWS }),
            },
        };
        let users = &mut self.keys.entry(key).or_insert((number, Vec::new())).1;
        users.push(used);
        let info = flow_info(number, users);
        self.set_flow(&key, info).map_err(map_error)?;
        self.set_port_flow(key.server_port)
            .map_err(|source| Error::Map {
                name: maps::PORT_FLOWS,
                source,
            })?;
        self.port_users
            .entry(key.server_port)
            .or_default()
            .push(used);
        self.set_port(key.server_port)
            .map_err(|source| Error::Map {
                name: maps::SERVER_PORTS,
                source,
            })?;
        Ok(number)
    }

    pub(super) fn remove(&mut self, key: &FlowKey, used: Use) {
        if let Some((number, users)) = self.keys.get_mut(key) {
            if let Some(at) = users.iter().position(|u| *u == used) {
                users.remove(at);
            }
            let number = *number;
            if users.is_empty() {
                self.keys.remove(key);
                let _ = match key.v4() {
                    Some(v4) => self.flows4.remove(&v4),
                    None => self.flows.remove(key),
                };
                self.free_flows.push(number);
            } else {
                let info = flow_info(number, users);
                let _ = self.set_flow(key, info);
            }
            if let Err(err) = self.set_port_flow(key.server_port) {
                // The slot may keep naming the flow: its packets are then still followed
                // until the port is used again, as a stale flow map entry would be.
                tracing::warn!(
                    port = key.server_port,
                    "clearing a port's flow failed: {err}"
                );
            }
        }
        if let Some(users) = self.port_users.get_mut(&key.server_port) {
            if let Some(at) = users.iter().position(|user| *user == used) {
                users.remove(at);
            }
            if users.is_empty() {
                self.port_users.remove(&key.server_port);
            }
        }
        let _ = self.set_port(key.server_port);
    }

    /// Writes a flow's entry, in the IPv4 map when it is an IPv4 flow.
    fn set_flow(&mut self, key: &FlowKey, info: FlowInfo) -> Result<(), aya::maps::MapError> {
        match key.v4() {
            Some(v4) => self.flows4.insert(v4, info, 0),
            None => self.flows.insert(key, info, 0),
        }
    }

    /// Writes `port`'s slot of the port-flow table: its one flow when it has exactly one, an
    /// IPv4 one; else the slot is cleared if `port` holds it (another port may, sharing it).
    fn set_port_flow(&mut self, port: u16) -> Result<(), aya::maps::MapError> {
        let mut flows = self.keys.iter().filter(|(key, _)| key.server_port == port);
        let single = match (flows.next(), flows.next()) {
            (Some((key, (number, users))), None) => key
                .v4()
                .map(|v4| PortFlow::new(v4, flow_info(*number, users))),
            _ => None,
        };
        let slot = port_flow_slot(port);
        match single {
            Some(entry) => {
                self.port_flows.set(slot, entry, 0)?;
                self.slot_owners.insert(slot, port);
            }
            None if self.slot_owners.get(&slot) == Some(&port) => {
                self.port_flows.set(slot, PortFlow::default(), 0)?;
                self.slot_owners.remove(&slot);
            }
            None => {}
        }
        Ok(())
    }

    /// Writes a server port's entry (see [`port_entry`]).
    pub(super) fn set_port(&mut self, port: u16) -> Result<(), aya::maps::MapError> {
        let value = port_entry(self.port_users.get(&port).map_or(&[], Vec::as_slice));
        self.ports.set(u32::from(port), value, 0)
    }

    pub(super) fn lost_total(&self) -> u64 {
        self.lost
            .get(&LOST_EVENTS, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// A server port's entry for its users: 0 when no traced flow uses it, else the densest
/// sample shift of its users plus one (the probes drop a packet outside every user's sample
/// before any flow lookup), with the bits of the sides held here and of DNS ids.
pub(super) fn port_entry(users: &[Use]) -> u8 {
    let Some(shift) = users.iter().map(|used| used.sample_shift).min() else {
        return 0;
    };
    let sides = users.iter().fold(0, |all, used| all | used.sides);
    let mut entry = shift.min(MAX_SAMPLE_SHIFT) + 1;
    if sides & side::CLIENT != 0 {
        entry |= maps::PORT_CLIENT_HERE;
    }
    if sides & side::SERVER != 0 {
        entry |= maps::PORT_SERVER_HERE;
    }
    if users.iter().any(|used| used.dns_ids) {
        entry |= maps::PORT_DNS_IDS;
    }
    entry
}

/// The flow map's value for a key: its number, every side its users hold on this node, and
/// the densest sampling any of them asked for.
pub(super) fn flow_info(number: u32, users: &[Use]) -> FlowInfo {
    FlowInfo {
        flow: number,
        sides: users.iter().fold(0, |all, used| all | used.sides),
        sample_shift: users
            .iter()
            .map(|used| used.sample_shift)
            .min()
            .unwrap_or(0),
        pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(sides: u8, sample_shift: u8, dns_ids: bool) -> Use {
        Use {
            sides,
            sample_shift,
            dns_ids,
        }
    }

    #[test]
    fn a_port_entry_holds_the_densest_sampling_and_every_side_here() {
        assert_eq!(port_entry(&[]), 0);
        let client = port_entry(&[used(side::CLIENT, 0, false)]);
        assert_eq!(client & maps::PORT_SHIFT_MASK, 1);
        assert_eq!(client & !maps::PORT_SHIFT_MASK, maps::PORT_CLIENT_HERE);
        let both = port_entry(&[used(side::SERVER, 4, false), used(side::CLIENT, 2, true)]);
        assert_eq!(both & maps::PORT_SHIFT_MASK, 3);
        assert_eq!(
            both & !maps::PORT_SHIFT_MASK,
            maps::PORT_CLIENT_HERE | maps::PORT_SERVER_HERE | maps::PORT_DNS_IDS
        );
        // The densest sampling allowed still fits below the side bits.
        let sparse = port_entry(&[used(side::SERVER, MAX_SAMPLE_SHIFT, false)]);
        assert_eq!(sparse & maps::PORT_SHIFT_MASK, MAX_SAMPLE_SHIFT + 1);
        assert_eq!(sparse & !maps::PORT_SHIFT_MASK, maps::PORT_SERVER_HERE);
    }
}
