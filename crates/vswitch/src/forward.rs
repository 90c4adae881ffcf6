//! The forwarding decision for one received frame, without any I/O: check it, learn its source,
//! choose the output ports (the learned one, or all others for broadcast, multicast and unknown
//! destinations), and ask the rules about each copy. The switch thread does the sending and
//! reports back with [`Forwarder::sent`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::frame;
use crate::learning::MacTable;
use crate::port::{PortId, PortInfo, PortStatus};
use crate::rule::Endpoint;
use crate::ruleset::RuleSet;

/// Ports, learning table and rules of one switch.
pub struct Forwarder {
    ports: BTreeMap<PortId, PortInfo>,
    macs: MacTable,
    /// The rule list and default policy.
    pub rules: RuleSet,
}

impl Forwarder {
    /// No ports, no rules, addresses aging after `age`.
    pub fn new(age: Duration) -> Self {
        Forwarder {
            ports: BTreeMap::new(),
            macs: MacTable::new(age),
            rules: RuleSet::new(),
        }
    }

    /// Adds a port.
    pub fn add_port(&mut self, id: PortId, info: PortInfo) {
        self.ports.insert(id, info);
    }

    /// Removes a port and forgets the addresses learned on it.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortInfo> {
        self.macs.forget_port(id);
        self.ports.remove(&id)
    }

    /// The port `id`.
    pub fn port(&self, id: PortId) -> Option<&PortInfo> {
        self.ports.get(&id)
    }

    /// The port `id`, to change.
    pub fn port_mut(&mut self, id: PortId) -> Option<&mut PortInfo> {
        self.ports.get_mut(&id)
    }

    /// The port called `name`.
    pub fn port_named(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| *id)
    }

    /// Every port with its learned addresses and counters, by id.
    pub fn status(&self, now: Instant) -> Vec<PortStatus> {
        self.ports
            .iter()
            .map(|(id, p)| PortStatus {
                id: *id,
                name: p.name.clone(),
                domain: p.domain.clone(),
                uplink: p.domain.is_none(),
                macs: self.macs.macs_on(*id, now),
                rate_bytes_per_sec: p.rate,
                counters: p.counters,
            })
            .collect()
    }

    /// Drops learned addresses that aged out.
    pub fn expire(&mut self, now: Instant) {
        self.macs.expire(now);
    }

    /// Decides where `frame`, received on `ingress` at `now`, goes: the ports to send it to
    /// are left in `out` (emptied first). Counts the frame as received, and counts errors and
    /// filtered copies.
    pub fn forward(&mut self, ingress: PortId, frame: &[u8], now: Instant, out: &mut Vec<PortId>) {
        out.clear();
        let Forwarder { ports, macs, rules } = self;
        let Some(port) = ports.get_mut(&ingress) else {
            return;
        };
        port.counters.rx_frames += 1;
        port.counters.rx_bytes += frame.len() as u64;
        let info = match frame::parse(frame) {
            Ok(info) if info.src.is_valid_source() => info,
            _ => {
                port.counters.rx_errors += 1;
                return;
            }
        };
        if info.l4_unparsed() {
            port.counters.rx_unparsed += 1;
        }
        macs.learn(info.src, ingress, now);
        match (!info.dst.is_multicast())
            .then(|| macs.lookup(info.dst, now))
            .flatten()
        {
            // Learned on the port it came from: the destination already has it.
            Some(dst) if dst == ingress => return,
            Some(dst) if ports.contains_key(&dst) => out.push(dst),
            _ => out.extend(ports.keys().filter(|id| **id != ingress)),
        }
        let from = &ports[&ingress];
        let from_end = Endpoint {
            port: &from.name,
            domain: from.domain.as_deref(),
        };
        let mut filtered = 0;
        out.retain(|dst| {
            let to = &ports[dst];
            let to_end = Endpoint {
                port: &to.name,
                domain: to.domain.as_deref(),
            };
            let pass = rules.allows(&info, frame.len(), from_end, to_end, now);
            filtered += u64::from(!pass);
            pass
        });
        if let Some(port) = ports.get_mut(&ingress) {
            port.counters.rx_filtered += filtered;
        }
    }

    /// Records that a frame found `port` with no room and waits for it.
    pub fn waited(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.counters.tx_waits += 1;
        }
    }

    /// Records the outcome of sending a `len`-byte frame out of `port`.
    pub fn sent(&mut self, port: PortId, len: usize, delivered: bool) {
        if let Some(p) = self.ports.get_mut(&port) {
            if delivered {
                p.counters.tx_frames += 1;
                p.counters.tx_bytes += len as u64;
            } else {
                p.counters.tx_dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::DEFAULT_AGE;
    use crate::mac::MacAddr;
    use crate::rule::{Policy, Rule};
    use crate::testing::*;

    const PA: PortId = PortId(1);
    const PB: PortId = PortId(2);
    const PC: PortId = PortId(3);
    const UP: PortId = PortId(4);

    fn switch() -> Forwarder {
        let mut f = Forwarder::new(DEFAULT_AGE);
        f.add_port(PA, PortInfo::new("a0", Some("a")));
        f.add_port(PB, PortInfo::new("b0", Some("b")));
        f.add_port(PC, PortInfo::new("c0", Some("c")));
        f.add_port(UP, PortInfo::new("tap0", None));
        f
    }

    fn dests(f: &mut Forwarder, ingress: PortId, frame: &[u8], now: Instant) -> Vec<PortId> {
        let mut out = Vec::new();
        f.forward(ingress, frame, now, &mut out);
        out
    }

    #[test]
    fn floods_unknown_then_unicasts_learned() {
        let now = Instant::now();
        let mut f = switch();
        assert_eq!(dests(&mut f, PA, &ping(B, A, 1, 2), now), [PB, PC, UP]);
        assert_eq!(dests(&mut f, PB, &ping(A, B, 2, 1), now), [PA]);
        assert_eq!(dests(&mut f, PA, &ping(B, A, 1, 2), now), [PB]);
        // Broadcast and multicast: everyone else.
        let bcast = ping(MacAddr::BROADCAST, B, 2, 255);
        assert_eq!(dests(&mut f, PB, &bcast, now), [PA, PC, UP]);
        let mcast = ping(MacAddr([0x33, 0x33, 0, 0, 0, 1]), C, 3, 255);
        assert_eq!(dests(&mut f, PC, &mcast, now), [PA, PB, UP]);
        // To an address learned on the sender's own port: nowhere.
        assert_eq!(dests(&mut f, PA, &ping(A, A, 1, 1), now), []);
        // Aged out: flooded again.
        let later = now + DEFAULT_AGE;
        assert_eq!(dests(&mut f, PA, &ping(B, A, 1, 2), later), [PB, PC, UP]);
    }

    #[test]
    fn removing_a_port_forgets_its_addresses() {
        let now = Instant::now();
        let mut f = switch();
        dests(&mut f, PB, &ping(A, B, 2, 1), now);
        assert_eq!(f.status(now)[1].macs, vec![B]);
        assert!(f.remove_port(PB).is_some());
        assert_eq!(f.macs.lookup(B, now), None);
        assert!(f.macs.is_empty());
        assert_eq!(dests(&mut f, PA, &ping(B, A, 1, 2), now), [PC, UP]);
        assert_eq!(f.port_named("b0"), None);
        assert_eq!(f.port_named("c0"), Some(PC));
        // A frame from a port that is gone is ignored.
        assert_eq!(dests(&mut f, PB, &ping(A, B, 2, 1), now), []);
    }

    #[test]
    fn malformed_frames_are_counted_not_forwarded() {
        let now = Instant::now();
        let mut f = switch();
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 13],
            vlan_tagged(&ping(B, A, 1, 2), 7)[..16].to_vec(),
            vec![0; frame::MAX_FRAME + 1],
            ping(B, MacAddr::BROADCAST, 1, 2),
            ping(B, MacAddr([0; 6]), 1, 2),
        ];
        for frame in &bad {
            assert_eq!(dests(&mut f, PA, frame, now), []);
        }
        let c = f.status(now)[0].counters;
        assert_eq!((c.rx_frames, c.rx_errors), (6, 6));
        assert!(f.status(now).iter().all(|p| p.macs.is_empty()));
        // A tagged frame and one with garbage after the Ethernet header are switched.
        assert_eq!(
            dests(&mut f, PA, &vlan_tagged(&ping(B, A, 1, 2), 7), now).len(),
            3
        );
        let mut junk = eth(B, A, frame::ETHERTYPE_IPV4, &[0x4f; 30]);
        junk[14] = 0x41;
        assert_eq!(dests(&mut f, PA, &junk, now).len(), 3);
    }

    #[test]
    fn rules_apply_per_copy_and_count_filtered() {
        let now = Instant::now();
        let mut f = switch();
        let rule = Rule::from_json(
            r#"{"pattern":{"src_domain":"a","dst_domain":"b","proto":"icmp"},"action":"drop"}"#,
        )
        .unwrap();
        f.rules.add(rule, None, now).unwrap();
        // A broadcast ping from a: every copy but b's goes.
        let bcast = ping(MacAddr::BROADCAST, A, 1, 255);
        assert_eq!(dests(&mut f, PA, &bcast, now), [PC, UP]);
        // UDP from a to b passes; ICMP from b to a passes.
        assert_eq!(dests(&mut f, PA, &udp_frame(B, A, 1, 2, 60), now).len(), 3);
        assert_eq!(dests(&mut f, PB, &ping(A, B, 2, 1), now), [PA]);
        assert_eq!(dests(&mut f, PA, &ping(B, A, 1, 2), now), []);
        assert_eq!(f.status(now)[0].counters.rx_filtered, 2);
        assert_eq!(f.rules.list()[0].counters.frames, 2);

        f.rules.set_policy(Policy::Drop);
        assert_eq!(dests(&mut f, PA, &udp_frame(B, A, 1, 2, 60), now), []);
        f.sent(PB, 100, true);
        f.sent(PB, 100, false);
        let c = f.status(now)[1].counters;
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 100, 1));
    }
}
