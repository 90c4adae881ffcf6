//! `vswitch`: the virtual firewall-router that domain 0 runs between the virtual NICs (VIFs) of
//! its domains.
//!
//! Every VIF is a port: a learning Ethernet switch (addresses age out after five minutes;
//! broadcast, multicast and unknown destinations are flooded to every other port), with per-port
//! counters, an optional uplink to a host TAP, an ordered list of firewall rules with a default
//! policy, and deficit round robin between ingress ports so that a domain flooding the switch
//! cannot starve the others.
//!
//! ```no_run
//! use vswitch::{Rule, Switch};
//! let switch = Switch::start()?;
//! let (port, backend) = switch.add_port("web-eth0", "web")?;
//! // `backend` implements devices::net_backend::NetBackend: give it to the VIF's device.
//! let rule = Rule::from_json(r#"{"pattern":{"src_domain":"web","proto":"icmp"},"action":"drop"}"#)?;
//! let id = switch.add_rule(rule, None)?;
//! for status in switch.rules() { println!("{} {:?}", status.id, status.counters); }
//! switch.delete_rule(id)?;
//! switch.remove_port(port)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Threads and queues
//!
//! The switch runs one thread ([`switch`] module). Each domain port is a Unix datagram socket
//! pair: the switch keeps one end, the VIF's [`SwitchPortBackend`] the other, and the kernel's
//! socket buffers are the bounded queues in both directions. A VIF sending into a full socket
//! gets `WouldBlock` and its device waits for room. A unicast frame for a port with no room
//! waits (at most `HOLD_MAX`, 500 ms, more on a slow rated port) with its sender, which is pushed back, and congested
//! destinations are shared between senders in DRR order; a port that stays full is marked
//! stalled and its frames are dropped and counted (`tx_dropped`), so a domain that stops
//! reading blocks nobody for long. The [`switch`] module has the details.
//!
//! # Rules
//!
//! Rules are evaluated in order for every copy of a frame (a flooded frame is judged once per
//! output port, with that port as the destination); the first whose pattern matches decides,
//! and frames no rule matches follow the default [`Policy`] (`accept` unless set). Each rule
//! counts the copies it matched, their bytes, the ones it dropped, and the ones it judged
//! fail-closed because their protocol or ports could not be read (see "Bad frames" below). Ids
//! are stable and never reused.
//!
//! A rule in JSON, annotated (unknown fields are errors; every pattern field is optional and all
//! given fields must match; an absent or empty `pattern` matches everything):
//!
//! ```text
//! {
//!   "pattern": {
//!     "in_port": "web-eth0",      "out_port": "db-eth0",   // switch port names
//!     "src_domain": "web",        "dst_domain": "db",      // the ports' domains (never the uplink)
//!     "src_mac": "02:00:00:00:00:01", "dst_mac": "ff:ff:ff:ff:ff:ff",
//!     "ethertype": "ipv4",        // "ipv4", "arp", "ipv6", "0x88cc" or a number; after one 802.1Q tag
//!     "src_ip": "10.0.0.0/8",     "dst_ip": "10.1.2.3",   // CIDR, IPv4 or IPv6; a bare address is one host
//!     "proto": "tcp",             // "icmp", "tcp", "udp", "icmpv6" or 0-255
//!     "sport": "1024-65535",      "dport": 5432           // TCP/UDP ports: a number or "first-last"; need proto tcp or udp
//!   },
//!   "action": "accept"            // or "drop", or {"rate_limit": {"bytes_per_sec": 1000000, "burst": 65536}}
//! }
//! ```
//!
//! A `rate_limit` rule forwards the copies it matches while its token bucket (refilled at
//! `bytes_per_sec`, holding at most `burst` bytes) has room for them and drops the rest.
//! [`Rule::from_json`] (or [`Rule::validate`] on a rule built in Rust) refuses, with a message
//! naming the field: unknown fields, malformed MACs, prefixes (including address bits past the
//! prefix length), ethertypes, protocols or port ranges, `sport`/`dport` without `proto` tcp or
//! udp, contradictions between the IP version of the prefixes, the protocol and the ethertype,
//! empty names, and a zero rate or burst. Listing gives [`RuleStatus`]:
//! `{"id": 3, "rule": {...}, "counters": {"frames": 10, "bytes": 980, "dropped": 10, "unparsed": 2}}`.
//!
//! # Bad frames
//!
//! Nothing a domain sends can panic the switch. Frames shorter than their Ethernet header,
//! longer than 65550 bytes, or from a group or zero source address are dropped and counted
//! (`rx_errors`). Headers past Ethernet that are truncated or malformed just leave their fields
//! unknown (see [`frame`]). A pattern naming an IP field does not match a frame without an IP
//! layer. A frame with an IP layer whose protocol or ports are unknown (a fragment other than
//! the first, an IPv6 header chain the parser does not follow, a truncated TCP or UDP header)
//! is *unparsed at L4* and the firewall fails closed on it ([`rule`]): it matches every `drop`
//! rule whose other fields it matches, as if the unknown protocol and ports matched too; a
//! `rate_limit` rule charges it without ever letting it through by itself; an `accept` rule
//! never takes it on a protocol or port it does not show. Such frames are counted per port
//! (`rx_unparsed`) and per rule (`unparsed`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod drr;
pub mod forward;
pub mod frame;
pub mod learning;
pub mod mac;
pub mod port;
pub mod prefix;
pub mod rule;
pub mod rule_fields;
pub mod ruleset;
pub mod switch;
pub mod token_bucket;

#[cfg(test)]
mod testing;

pub use backend::SwitchPortBackend;
pub use mac::MacAddr;
pub use port::{PortCounters, PortId, PortStatus};
pub use prefix::IpPrefix;
pub use rule::{Action, Match, Pattern, Policy, RateLimit, Rule, RuleError, RuleId};
pub use rule_fields::{EtherType, IpProto, L4Ports};
pub use ruleset::{RuleCounters, RuleStatus};
pub use switch::{Switch, SwitchConfig, SwitchHandle};
