//! Test support: builders of the frames the tests send (no checksums; the switch never looks
//! at them).

use crate::frame::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, PROTO_ICMP, PROTO_UDP};
use crate::mac::MacAddr;

pub const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
pub const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
pub const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);
pub const D: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xd]);

/// An Ethernet frame.
pub fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` with an 802.1Q tag for `vlan` inserted after the addresses.
pub fn vlan_tagged(frame: &[u8], vlan: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    f.extend_from_slice(&vlan.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv4 packet with a 20-byte header.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// `packet` (from [`ipv4`]) as a fragment starting `offset` 8-byte units into its datagram,
/// with more fragments to come or not.
pub fn fragmented(mut packet: Vec<u8>, offset: u16, more: bool) -> Vec<u8> {
    let field = offset | if more { 0x2000 } else { 0 };
    packet[6..8].copy_from_slice(&field.to_be_bytes());
    packet
}

/// `n` (at least 1) empty IPv6 destination-options headers, the last naming `upper` as its next
/// header, then `l4`: the body of an [`ipv6`] packet whose first next-header is 60.
pub fn ipv6_options_chain(n: usize, upper: u8, l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..n {
        let next = if i + 1 == n { upper } else { 60 };
        body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    body.extend_from_slice(l4);
    body
}

/// An IPv6 packet whose first next-header is `next`.
pub fn ipv6(src: &str, dst: &str, next: u8, body: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(body);
    p
}

/// The first 8 bytes of a UDP header.
pub fn udp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 8, 0, 0]);
    h
}

/// A 20-byte TCP header.
pub fn tcp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// An ICMP echo request from 10.0.0.`from` to 10.0.0.`to`, between MACs.
pub fn ping(dst: MacAddr, src: MacAddr, from: u8, to: u8) -> Vec<u8> {
    let icmp = [8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    eth(
        dst,
        src,
        ETHERTYPE_IPV4,
        &ipv4([10, 0, 0, from], [10, 0, 0, to], PROTO_ICMP, &icmp),
    )
}

/// A UDP datagram of `len` bytes in all (padded) from 10.0.0.`from` to 10.0.0.`to`.
pub fn udp_frame(dst: MacAddr, src: MacAddr, from: u8, to: u8, len: usize) -> Vec<u8> {
    let mut f = eth(
        dst,
        src,
        ETHERTYPE_IPV4,
        &ipv4(
            [10, 0, 0, from],
            [10, 0, 0, to],
            PROTO_UDP,
            &udp_header(5000, 6000),
        ),
    );
    f.resize(len.max(f.len()), 0x55);
    f
}

/// Any IPv6 frame between two MACs.
pub fn ipv6_frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    eth(
        dst,
        src,
        ETHERTYPE_IPV6,
        &ipv6("fd00::a", "fd00::b", PROTO_UDP, &udp_header(1, 2)),
    )
}
