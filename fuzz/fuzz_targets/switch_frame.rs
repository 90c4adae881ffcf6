//! Fuzzes the virtual switch's frame parser (`vswitch::frame::parse`) and rule matcher
//! (`vswitch::rule`, `vswitch::ruleset`, `vswitch::forward`): arbitrary frames, judged by a rule
//! list built from the input (every pattern field and action the API accepts), forwarded
//! between three ports.
//!
//! Checked: nothing panics; what the parser reports is what the frame's bytes say (addresses,
//! tag, ethertype, IP addresses and protocol at their offsets, ports only for TCP and UDP and
//! found inside the frame, an IPv4 fragment other than the first never has ports); a frame is
//! unparsed at L4 exactly when its protocol or ports are unknown; a pattern fits a frame as
//! `Unknown` only when the frame is unparsed and the pattern names a protocol or ports; alone in
//! a list, a `drop` rule drops every frame it fits or might fit and an `accept` rule never drops
//! (the fail-closed semantics); valid rules survive their JSON round trip; the forwarder sends a
//! frame only to other ports that exist.
//!
//! Input layout: byte 0: number of rules (mod 9); then 24 bytes per rule (a field mask u16,
//! then the fields' values); then frames, each a u16 length and that many bytes.
#![no_main]

mod common;

use std::net::IpAddr;
use std::time::Instant;

use common::Input;
use libfuzzer_sys::fuzz_target;
use vswitch::forward::Forwarder;
use vswitch::frame::{
    parse, FrameInfo, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, MAX_FRAME, PROTO_TCP,
    PROTO_UDP,
};
use vswitch::port::{PortId, PortInfo};
use vswitch::rule::Endpoint;
use vswitch::ruleset::RuleSet;
use vswitch::{
    Action, EtherType, IpPrefix, IpProto, L4Ports, MacAddr, Match, Pattern, Policy, RateLimit, Rule,
};

const PORTS: [(&str, Option<&str>); 3] = [("a0", Some("a")), ("b0", Some("b")), ("up", None)];
const MACS: [MacAddr; 4] = [
    MacAddr([2, 0, 0, 0, 0, 0xa]),
    MacAddr([2, 0, 0, 0, 0, 0xb]),
    MacAddr::BROADCAST,
    MacAddr([0x33, 0x33, 0, 0, 0, 1]),
];
const MAX_FRAMES: usize = 16;

/// A valid prefix (no address bits past its length) from 5 bytes of input.
fn prefix(input: &mut Input, v6: bool) -> Option<IpPrefix> {
    let bytes = input.array::<4>();
    let len = input.u8() % if v6 { 129 } else { 33 };
    let keep = |width: u32| {
        let len = u32::from(len);
        if len == 0 {
            0
        } else {
            u128::MAX << (width - len)
        }
    };
    let addr = if v6 {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[1..5].copy_from_slice(&bytes);
        IpAddr::from((u128::from_be_bytes(a) & keep(128)).to_be_bytes())
    } else {
        let bits = u128::from(u32::from_be_bytes(bytes)) & keep(32);
        IpAddr::from((bits as u32).to_be_bytes())
    };
    IpPrefix::new(addr, len)
}

/// A rule from 24 bytes: field mask (u16), a name/MAC picker, an ethertype (u16), source and
/// destination prefixes (4 address bytes and a length each), a protocol, source and
/// destination port ranges (two u16 each). The mask's bits 0-11 select the pattern's fields in
/// that order (in_port, out_port, src_domain, dst_domain, src_mac, dst_mac, ethertype, src_ip,
/// dst_ip, proto, sport, dport), bits 12-13 the action (accept, drop, rate limit), bit 15 IPv6
/// prefixes.
fn rule(input: &mut Input) -> Rule {
    let mask = input.u16();
    let pick = input.u8();
    let raw = input.u16();
    let v6 = mask & (1 << 15) != 0;
    let (src_ip, dst_ip) = (prefix(input, v6), prefix(input, v6));
    let proto = input.u8();
    let mut range = || {
        let (a, b) = (input.u16(), input.u16());
        L4Ports {
            first: a.min(b),
            last: a.max(b),
        }
    };
    let (sport, dport) = (range(), range());
    let bit = |i: u32| mask & (1 << i) != 0;
    let name = |i: u8| PORTS[usize::from(i) % PORTS.len()];
    let p = Pattern {
        in_port: bit(0).then(|| name(pick).0.into()),
        out_port: bit(1).then(|| name(pick >> 2).0.into()),
        src_domain: bit(2).then(|| name(pick >> 4).1).flatten().map(Into::into),
        dst_domain: bit(3).then(|| name(pick >> 6).1).flatten().map(Into::into),
        src_mac: bit(4).then(|| MACS[usize::from(pick) % 4]),
        dst_mac: bit(5).then(|| MACS[usize::from(pick >> 3) % 4]),
        ethertype: bit(6).then_some(EtherType(match raw % 4 {
            0 => ETHERTYPE_IPV4,
            1 => ETHERTYPE_IPV6,
            2 => 0x0806,
            _ => raw,
        })),
        src_ip: src_ip.filter(|_| bit(7)),
        dst_ip: dst_ip.filter(|_| bit(8)),
        proto: bit(9).then_some(IpProto(match proto % 5 {
            0 => PROTO_TCP,
            1 => PROTO_UDP,
            2 => 1,
            3 => 58,
            _ => proto,
        })),
        sport: bit(10).then_some(sport),
        dport: bit(11).then_some(dport),
    };
    let action = match (bit(12), bit(13)) {
        (false, false) => Action::Accept,
        (true, false) => Action::Drop,
        _ => Action::RateLimit(RateLimit {
            bytes_per_sec: u64::from(pick) * 100,
            burst: u64::from(proto) * 64,
        }),
    };
    Rule { pattern: p, action }
}

/// What the parser reports must be what the bytes say.
fn check_parse(frame: &[u8], info: &FrameInfo) {
    assert_eq!(info.dst.0, frame[0..6]);
    assert_eq!(info.src.0, frame[6..12]);
    let outer = u16::from_be_bytes([frame[12], frame[13]]);
    let payload = if outer == ETHERTYPE_VLAN {
        assert_eq!(
            info.vlan,
            Some(u16::from_be_bytes([frame[14], frame[15]]) & 0xfff)
        );
        assert_eq!(info.ethertype, u16::from_be_bytes([frame[16], frame[17]]));
        &frame[18..]
    } else {
        assert_eq!(info.vlan, None);
        assert_eq!(info.ethertype, outer);
        &frame[14..]
    };
    let unparsed = info.ip.is_some_and(|ip| {
        ip.proto.is_none()
            || (matches!(ip.proto, Some(PROTO_TCP | PROTO_UDP)) && ip.ports.is_none())
    });
    assert_eq!(info.l4_unparsed(), unparsed);
    let Some(ip) = info.ip else {
        return;
    };
    if let Some((s, d)) = ip.ports {
        assert!(matches!(ip.proto, Some(PROTO_TCP | PROTO_UDP)));
        let [s0, s1] = s.to_be_bytes();
        let [d0, d1] = d.to_be_bytes();
        assert!(
            payload.windows(4).any(|w| w == [s0, s1, d0, d1]),
            "ports not in the frame"
        );
    }
    match info.ethertype {
        ETHERTYPE_IPV4 => {
            assert_eq!(payload[0] >> 4, 4);
            assert_eq!(
                ip.src,
                IpAddr::from(<[u8; 4]>::try_from(&payload[12..16]).unwrap())
            );
            assert_eq!(
                ip.dst,
                IpAddr::from(<[u8; 4]>::try_from(&payload[16..20]).unwrap())
            );
            assert_eq!(ip.proto, Some(payload[9]));
            if let Some((s, d)) = ip.ports {
                let at = usize::from(payload[0] & 0xf) * 4;
                assert!(at >= 20);
                assert_eq!(
                    payload[at..at + 4],
                    [s.to_be_bytes(), d.to_be_bytes()].concat()
                );
                assert_eq!(u16::from_be_bytes([payload[6], payload[7]]) & 0x1fff, 0);
            }
        }
        ETHERTYPE_IPV6 => {
            assert_eq!(payload[0] >> 4, 6);
            assert_eq!(
                ip.src,
                IpAddr::from(<[u8; 16]>::try_from(&payload[8..24]).unwrap())
            );
            assert_eq!(
                ip.dst,
                IpAddr::from(<[u8; 16]>::try_from(&payload[24..40]).unwrap())
            );
        }
        other => panic!("an IP layer under ethertype {other:#06x}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let now = Instant::now();
    let n_rules = usize::from(input.u8() % 9);
    let mut rules = Vec::new();
    for _ in 0..n_rules {
        let mut fields = Input(input.bytes(24));
        let r = rule(&mut fields);
        if r.validate().is_ok() {
            let json = r.to_json();
            assert_eq!(Rule::from_json(&json).as_ref(), Ok(&r), "{json}");
            rules.push(r);
        }
    }
    let ends: Vec<Endpoint> = PORTS
        .iter()
        .map(|&(port, domain)| Endpoint { port, domain })
        .collect();
    let mut forwarder = Forwarder::new(std::time::Duration::from_secs(300));
    for (i, &(name, domain)) in PORTS.iter().enumerate() {
        forwarder.add_port(PortId(i as u64 + 1), PortInfo::new(name, domain));
    }
    for r in &rules {
        forwarder
            .rules
            .add(r.clone(), None, now)
            .expect("a valid rule");
    }
    let mut out = Vec::new();
    for n in 0..MAX_FRAMES {
        if input.is_empty() {
            break;
        }
        let len = usize::from(input.u16());
        let frame = input.bytes(len);
        let info = match parse(frame) {
            Ok(info) => info,
            Err(_) => {
                assert!(frame.len() < 18 || frame.len() > MAX_FRAME);
                continue;
            }
        };
        check_parse(frame, &info);
        for r in &rules {
            for (from, to) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
                let fit = r.pattern.check(&info, ends[from], ends[to]);
                assert_eq!(
                    r.pattern.matches(&info, ends[from], ends[to]),
                    fit == Match::Yes
                );
                if fit == Match::Unknown {
                    assert!(info.l4_unparsed());
                    let p = &r.pattern;
                    assert!(p.proto.is_some() || p.sport.is_some() || p.dport.is_some());
                }
                if !info.l4_unparsed() {
                    assert_ne!(fit, Match::Unknown);
                }
                // Alone in a list: drop rules fail closed, accept rules never drop.
                for policy in [Policy::Accept, Policy::Drop] {
                    let mut alone = RuleSet::new();
                    alone.set_policy(policy);
                    alone.add(r.clone(), None, now).unwrap();
                    let pass = alone.allows(&info, frame.len(), ends[from], ends[to], now);
                    match (r.action, fit) {
                        (Action::Drop, Match::Yes | Match::Unknown) => assert!(!pass),
                        (Action::Accept, Match::Yes) => assert!(pass),
                        (Action::Accept, _) | (Action::Drop, Match::No) => {
                            assert_eq!(pass, policy == Policy::Accept)
                        }
                        (Action::RateLimit(_), Match::No) => {
                            assert_eq!(pass, policy == Policy::Accept)
                        }
                        (Action::RateLimit(_), Match::Unknown) if policy == Policy::Drop => {
                            assert!(!pass, "a rate limit let an unparsed frame through")
                        }
                        (Action::RateLimit(_), _) => {}
                    }
                }
            }
        }
        let ingress = PortId(n as u64 % 3 + 1);
        forwarder.forward(ingress, frame, now, &mut out);
        assert!(out.iter().all(|p| *p != ingress && (1..=3).contains(&p.0)));
        assert!(out.len() <= 2);
    }
    let rx: u64 = forwarder
        .status(now)
        .iter()
        .map(|p| p.counters.rx_frames)
        .sum();
    assert!(rx as usize <= MAX_FRAMES);
});
