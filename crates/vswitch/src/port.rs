//! Ports as the switch's logic and its API see them: ids, names, the owning domain, counters.
//! (The sockets and files behind them belong to the switch thread, `switch.rs`.)

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// A port's identifier, never reused by a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PortId(pub u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a port's traffic did. "rx" is what the switch received on the port (the domain sent
/// it), "tx" what the switch sent out of it (to the domain).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCounters {
    /// Frames received on the port, well-formed or not.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Received frames dropped as unusable: runts, oversized, or a group or zero source address.
    pub rx_errors: u64,
    /// Copies of received frames that a rule or the default policy dropped.
    pub rx_filtered: u64,
    /// Received frames whose protocol or ports the switch could not read (fragments other than
    /// the first, IPv6 header chains it does not follow, truncated TCP/UDP headers); the rules
    /// judge them fail-closed (see `rule`). Counted whatever became of them.
    #[serde(default)]
    pub rx_unparsed: u64,
    /// Frames sent out of the port.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames for the port dropped because it had no room (its domain is not reading), its rate
    /// allowed no more, or its peer is gone.
    pub tx_dropped: u64,
    /// Frames that found the port with no room (or over its rate) and waited (see `HOLD_MAX`).
    pub tx_waits: u64,
}

/// A port, as listed by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortStatus {
    /// Stable id.
    pub id: PortId,
    /// Name (unique on the switch).
    pub name: String,
    /// Owning domain; `None` for the uplink.
    pub domain: Option<String>,
    /// Whether this is the uplink to a host TAP.
    pub uplink: bool,
    /// Addresses currently learned on the port, sorted.
    pub macs: Vec<MacAddr>,
    /// The port's rate, if it has one: the switch sends it at most this many bytes per second
    /// (frames wait for it as for room, senders sharing it in DRR order).
    #[serde(default)]
    pub rate_bytes_per_sec: Option<u64>,
    /// Traffic counters.
    pub counters: PortCounters,
}

/// What the forwarding logic keeps about a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Name (unique on the switch).
    pub name: String,
    /// Owning domain; `None` for the uplink.
    pub domain: Option<String>,
    /// The port's rate in bytes per second, if it has one.
    pub rate: Option<u64>,
    /// Counters.
    pub counters: PortCounters,
}

impl PortInfo {
    /// A fresh port.
    pub fn new(name: &str, domain: Option<&str>) -> Self {
        PortInfo {
            name: name.to_string(),
            domain: domain.map(str::to_string),
            rate: None,
            counters: PortCounters::default(),
        }
    }
}
