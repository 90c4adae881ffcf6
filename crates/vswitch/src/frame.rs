//! Reading the headers of an Ethernet frame: addresses, one 802.1Q tag, the ethertype, and for
//! IPv4 and IPv6 the addresses, the protocol and the TCP/UDP ports.
//!
//! Frames come from guests and are hostile: nothing here indexes past the end of a slice, and a
//! header that is missing, truncated or malformed only makes the fields above it unknown
//! (`None`). Only two faults make a frame unusable ([`FrameError`]): too short for an Ethernet
//! header (with its tag, if tagged), and longer than [`MAX_FRAME`].
//!
//! Rules for the IP layer:
//!
//! - IPv4 needs its 20 fixed bytes and version 4 for the addresses and protocol to be known. A
//!   bad IHL (under 5, or past the end of the frame) or a fragment other than the first leaves
//!   the ports unknown. A first fragment (offset 0, more fragments to come) carries the ports.
//! - IPv6 walks at most [`MAX_IPV6_EXTENSIONS`] hop-by-hop, routing, fragment and destination
//!   options headers. The first other header is the protocol (so ESP is 50 and AH 51, whose
//!   insides are not parsed), except the extension headers this parser does not follow
//!   ([`IPV6_UNFOLLOWED`]: mobility, HIP, shim6, the experimental 253 and 254), which leave the
//!   protocol unknown, as does a chain that is truncated or longer than the limit. In a fragment
//!   other than the first, what follows the fragment header is the middle of the packet, not
//!   headers: the protocol is the fragment header's next header unless that is an extension
//!   header (then unknown), and the ports are unknown.
//! - Ports are read only for TCP and UDP, and only when their first four bytes are present.
//!
//! A frame with an IP layer whose protocol is unknown, or which is TCP or UDP with unknown
//! ports, is *unparsed at L4* ([`IpInfo::l4_unparsed`]). Such a frame may be carrying anything
//! to any port, so the firewall treats it fail-closed (see [`crate::rule::Match`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::mac::MacAddr;

/// Largest frame the switch moves: a 64 KiB IP packet with Ethernet and VLAN headers (the same
/// bound as the virtio-net device).
pub const MAX_FRAME: usize = 65550;
/// Length of an untagged Ethernet header.
pub const ETH_HEADER_LEN: usize = 14;
/// IPv6 extension headers walked before giving up on the protocol.
pub const MAX_IPV6_EXTENSIONS: usize = 8;
/// IPv6 extension headers (RFC 7045's list, less those walked and ESP and AH) that the parser
/// does not follow: a packet with one has an unknown protocol. Mobility (135), HIP (139),
/// shim6 (140) and the two experimental numbers (253, 254).
pub const IPV6_UNFOLLOWED: [u8; 5] = [135, 139, 140, 253, 254];

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Why a frame cannot be switched at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its Ethernet header (a runt).
    #[error("runt frame of {0} bytes: shorter than its Ethernet header")]
    Runt(usize),
    /// Longer than [`MAX_FRAME`].
    #[error("oversized frame of {0} bytes (at most {MAX_FRAME})")]
    Oversized(usize),
}

/// What the IP header of a frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol, when known.
    pub proto: Option<u8>,
    /// TCP or UDP (source, destination) ports, when known.
    pub ports: Option<(u16, u16)>,
}

impl IpInfo {
    /// Whether the switch could not read this packet's upper layer: its protocol is unknown, or
    /// it is TCP or UDP and its ports are unknown (a fragment other than the first, a truncated
    /// TCP or UDP header, a bad IPv4 header length).
    pub fn l4_unparsed(&self) -> bool {
        match self.proto {
            None => true,
            Some(p) => (p == PROTO_TCP || p == PROTO_UDP) && self.ports.is_none(),
        }
    }
}

/// What the switch and its rules look at in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Destination address.
    pub dst: MacAddr,
    /// Source address.
    pub src: MacAddr,
    /// The VLAN id of an 802.1Q tag.
    pub vlan: Option<u16>,
    /// The ethertype, after one 802.1Q tag.
    pub ethertype: u16,
    /// The IP layer, for IPv4 and IPv6 frames whose fixed header is present.
    pub ip: Option<IpInfo>,
}

impl FrameInfo {
    /// Whether the frame has an IP layer whose upper layer could not be read (see
    /// [`IpInfo::l4_unparsed`]).
    pub fn l4_unparsed(&self) -> bool {
        self.ip.as_ref().is_some_and(IpInfo::l4_unparsed)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

/// Parses the headers of `frame`. See the module documentation.
pub fn parse(frame: &[u8]) -> Result<FrameInfo, FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversized(frame.len()));
    }
    if frame.len() < ETH_HEADER_LEN {
        return Err(FrameError::Runt(frame.len()));
    }
    let dst = mac_at(frame, 0);
    let src = mac_at(frame, 6);
    let mut ethertype = be16(frame, 12).unwrap_or(0);
    let mut vlan = None;
    let mut payload_at = ETH_HEADER_LEN;
    if ethertype == ETHERTYPE_VLAN {
        let (Some(tci), Some(inner)) = (be16(frame, 14), be16(frame, 16)) else {
            return Err(FrameError::Runt(frame.len()));
        };
        vlan = Some(tci & 0x0fff);
        ethertype = inner;
        payload_at += 4;
    }
    let payload = &frame[payload_at..];
    let ip = match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(payload),
        ETHERTYPE_IPV6 => parse_ipv6(payload),
        _ => None,
    };
    Ok(FrameInfo {
        dst,
        src,
        vlan,
        ethertype,
        ip,
    })
}

/// TCP/UDP ports at the start of `l4`, for those two protocols only.
fn ports(proto: u8, l4: &[u8]) -> Option<(u16, u16)> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    Some((be16(l4, 0)?, be16(l4, 2)?))
}

fn parse_ipv4(p: &[u8]) -> Option<IpInfo> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let proto = p[9];
    let header_len = usize::from(p[0] & 0x0f) * 4;
    let fragment_offset = be16(p, 6).unwrap_or(0) & 0x1fff;
    let ports = if header_len < 20 || fragment_offset != 0 {
        None
    } else {
        p.get(header_len..).and_then(|l4| ports(proto, l4))
    };
    Some(IpInfo {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        proto: Some(proto),
        ports,
    })
}

fn parse_ipv6(p: &[u8]) -> Option<IpInfo> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src, dst) = (addr(8), addr(24));
    let (proto, ports) = ipv6_upper_layer(p[6], &p[40..]);
    Some(IpInfo {
        src,
        dst,
        proto,
        ports,
    })
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

/// Whether `next` is an IPv6 extension header (one walked, or one not followed).
fn ipv6_extension(next: u8) -> bool {
    matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | DEST_OPTIONS)
        || IPV6_UNFOLLOWED.contains(&next)
}

/// Walks the extension headers starting with `next` at `rest`: the protocol and ports.
fn ipv6_upper_layer(mut next: u8, mut rest: &[u8]) -> (Option<u8>, Option<(u16, u16)>) {
    for _ in 0..=MAX_IPV6_EXTENSIONS {
        let header_len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS => match rest.get(1) {
                Some(&units) => 8 + usize::from(units) * 8,
                None => return (None, None),
            },
            FRAGMENT => {
                let (Some(&after), Some(offset)) = (rest.first(), be16(rest, 2)) else {
                    return (None, None);
                };
                if offset >> 3 != 0 {
                    // A later fragment: no headers follow, only the middle of the packet.
                    return ((!ipv6_extension(after)).then_some(after), None);
                }
                8
            }
            unfollowed if IPV6_UNFOLLOWED.contains(&unfollowed) => return (None, None),
            proto => return (Some(proto), ports(proto, rest)),
        };
        let Some(after) = rest.get(header_len..) else {
            return (None, None);
        };
        next = rest[0];
        rest = after;
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn ethernet_and_vlan() {
        let f = eth(B, A, ETHERTYPE_ARP, &[0; 28]);
        let info = parse(&f).unwrap();
        assert_eq!((info.dst, info.src, info.ethertype), (B, A, ETHERTYPE_ARP));
        assert_eq!((info.vlan, info.ip), (None, None));

        let inner = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            PROTO_UDP,
            &udp_header(53, 1000),
        );
        let tagged = vlan_tagged(&eth(B, A, ETHERTYPE_IPV4, &inner), 42);
        let info = parse(&tagged).unwrap();
        assert_eq!((info.vlan, info.ethertype), (Some(42), ETHERTYPE_IPV4));
        assert_eq!(info.ip.unwrap().ports, Some((53, 1000)));
    }

    #[test]
    fn runts_truncated_tags_and_oversized_frames() {
        for len in 0..ETH_HEADER_LEN {
            assert_eq!(parse(&vec![0; len]), Err(FrameError::Runt(len)));
        }
        let tagged = vlan_tagged(&eth(B, A, ETHERTYPE_ARP, &[]), 1);
        for len in ETH_HEADER_LEN..18 {
            assert_eq!(parse(&tagged[..len]), Err(FrameError::Runt(len)));
        }
        assert_eq!(
            parse(&vec![0; MAX_FRAME + 1]),
            Err(FrameError::Oversized(MAX_FRAME + 1))
        );
        assert!(parse(&vec![0; MAX_FRAME]).is_ok());
    }

    #[test]
    fn ipv4_fields_and_bad_headers() {
        let pkt = ipv4(
            [10, 0, 0, 1],
            [192, 168, 1, 9],
            PROTO_TCP,
            &tcp_header(4000, 22),
        );
        let ip = parse(&eth(B, A, ETHERTYPE_IPV4, &pkt)).unwrap().ip.unwrap();
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst, "192.168.1.9".parse::<IpAddr>().unwrap());
        assert_eq!((ip.proto, ip.ports), (Some(PROTO_TCP), Some((4000, 22))));

        // IHL under 5 or past the end: addresses and protocol, ports unknown.
        for ihl in [0u8, 4, 15] {
            let mut bad = pkt.clone();
            bad[0] = 0x40 | ihl;
            let ip = parse(&eth(B, A, ETHERTYPE_IPV4, &bad)).unwrap().ip.unwrap();
            assert_eq!((ip.proto, ip.ports), (Some(PROTO_TCP), None), "ihl {ihl}");
        }
        // Every truncation parses without panicking; under 20 bytes there is no IP layer.
        let frame = eth(B, A, ETHERTYPE_IPV4, &pkt);
        for len in 0..frame.len() {
            let parsed = parse(&frame[..len]);
            if len < ETH_HEADER_LEN + 20 {
                assert!(parsed.map_or(true, |i| i.ip.is_none()));
            } else if len < ETH_HEADER_LEN + 24 {
                assert_eq!(parsed.unwrap().ip.unwrap().ports, None);
            }
        }
        // A later fragment carries no ports; the wrong version is not IPv4.
        let mut frag = pkt.clone();
        frag[6] = 0x00;
        frag[7] = 0x10;
        let ip = parse(&eth(B, A, ETHERTYPE_IPV4, &frag))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!(ip.ports, None);
        let mut v6 = pkt.clone();
        v6[0] = 0x65;
        assert_eq!(parse(&eth(B, A, ETHERTYPE_IPV4, &v6)).unwrap().ip, None);
    }

    #[test]
    fn ipv6_fields_and_extension_headers() {
        let (s, d) = ("fd00::1", "fd00::2");
        let pkt = ipv6(s, d, PROTO_UDP, &udp_header(546, 547));
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &pkt)).unwrap().ip.unwrap();
        assert_eq!(ip.src, s.parse::<IpAddr>().unwrap());
        assert_eq!((ip.proto, ip.ports), (Some(PROTO_UDP), Some((546, 547))));

        // Hop-by-hop (8 bytes) then TCP: walked.
        let mut body = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&tcp_header(1, 443));
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 0, &body)))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!((ip.proto, ip.ports), (Some(PROTO_TCP), Some((1, 443))));

        // An extension header claiming more bytes than there are: protocol unknown.
        let long = [PROTO_TCP, 200, 0, 0, 0, 0, 0, 0];
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 60, &long)))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!((ip.proto, ip.ports), (None, None));

        // An endless chain of destination options: given up on, no panic.
        let chain: Vec<u8> = (0..20).flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0]).collect();
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 60, &chain)))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!(ip.proto, None);

        // AH is not parsed: it is the protocol, L4 unknown.
        let ah = [PROTO_TCP, 4, 0, 0, 0, 0, 0, 0];
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 51, &ah)))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!((ip.proto, ip.ports), (Some(51), None));

        // A non-first fragment: protocol known, ports not.
        let mut frag = vec![PROTO_UDP, 0, 0x01, 0x00, 0, 0, 0, 1];
        frag.extend_from_slice(&udp_header(1, 2));
        let ip = parse(&eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 44, &frag)))
            .unwrap()
            .ip
            .unwrap();
        assert_eq!((ip.proto, ip.ports), (Some(PROTO_UDP), None));

        // Every truncation parses.
        let frame = eth(B, A, ETHERTYPE_IPV6, &ipv6(s, d, 0, &body));
        for len in 0..frame.len() {
            let _ = parse(&frame[..len]);
        }
    }

    #[test]
    fn fragments_chains_and_truncated_headers_are_unparsed_at_l4() {
        let info = |ethertype, pkt: &[u8]| parse(&eth(B, A, ethertype, pkt)).unwrap();
        let v4 = |proto, l4: &[u8]| ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto, l4);
        let tcp22 = v4(PROTO_TCP, &tcp_header(4000, 22));

        // A whole datagram and a first fragment carry their ports.
        for pkt in [tcp22.clone(), fragmented(tcp22.clone(), 0, true)] {
            let f = info(ETHERTYPE_IPV4, &pkt);
            assert_eq!(f.ip.unwrap().ports, Some((4000, 22)));
            assert!(!f.l4_unparsed());
        }
        // A later fragment (in the middle or the last) does not.
        for more in [true, false] {
            let f = info(ETHERTYPE_IPV4, &fragmented(tcp22.clone(), 185, more));
            let ip = f.ip.unwrap();
            assert_eq!((ip.proto, ip.ports), (Some(PROTO_TCP), None));
            assert!(f.l4_unparsed());
        }
        // A later fragment of ICMP is not unparsed: there are no ports to know.
        let icmp = fragmented(v4(PROTO_ICMP, &[8, 0, 0, 0]), 3, false);
        assert!(!info(ETHERTYPE_IPV4, &icmp).l4_unparsed());
        // TCP or UDP headers too short for their ports.
        for (proto, l4) in [
            (PROTO_TCP, &tcp_header(1, 22)[..3]),
            (PROTO_UDP, &udp_header(1, 53)[..2]),
            (PROTO_TCP, &[][..]),
        ] {
            let f = info(ETHERTYPE_IPV4, &v4(proto, l4));
            assert_eq!(f.ip.unwrap().proto, Some(proto));
            assert!(f.l4_unparsed(), "{proto} with {} bytes", l4.len());
        }

        let (s, d) = ("fd00::1", "fd00::2");
        // MAX_IPV6_EXTENSIONS headers are walked; one more and the protocol is unknown.
        let chain = |n| ipv6_options_chain(n, PROTO_TCP, &tcp_header(1, 22));
        let f = info(ETHERTYPE_IPV6, &ipv6(s, d, 60, &chain(MAX_IPV6_EXTENSIONS)));
        assert_eq!(f.ip.unwrap().ports, Some((1, 22)));
        assert!(!f.l4_unparsed());
        let f = info(
            ETHERTYPE_IPV6,
            &ipv6(s, d, 60, &chain(MAX_IPV6_EXTENSIONS + 1)),
        );
        assert_eq!(f.ip.unwrap().proto, None);
        assert!(f.l4_unparsed());
        // Extension headers not followed, first or behind a hop-by-hop header.
        for next in IPV6_UNFOLLOWED {
            let mut body = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
            body.extend_from_slice(&tcp_header(1, 22));
            let f = info(ETHERTYPE_IPV6, &ipv6(s, d, next, &body));
            assert_eq!(f.ip.unwrap().proto, None, "next header {next}");
            let mut hop = vec![next, 0, 0, 0, 0, 0, 0, 0];
            hop.extend_from_slice(&body);
            let f = info(ETHERTYPE_IPV6, &ipv6(s, d, 0, &hop));
            assert_eq!(f.ip.unwrap().proto, None, "next header {next}");
            assert!(f.l4_unparsed());
        }
        // A later fragment whose fragmentable part starts with destination options: the bytes
        // after its fragment header are the middle of the packet, never read as headers.
        let mut frag = vec![60, 0, 0x01, 0x00, 0, 0, 0, 1];
        frag.extend_from_slice(&[PROTO_UDP, 0, 0, 0, 0, 0, 0, 0]);
        frag.extend_from_slice(&udp_header(1, 2));
        let f = info(ETHERTYPE_IPV6, &ipv6(s, d, 44, &frag));
        let ip = f.ip.unwrap();
        assert_eq!((ip.proto, ip.ports), (None, None));
        assert!(f.l4_unparsed());
        // A first fragment walks on to the ports.
        let mut first = vec![PROTO_TCP, 0, 0x00, 0x01, 0, 0, 0, 1];
        first.extend_from_slice(&tcp_header(1, 22));
        let ip = info(ETHERTYPE_IPV6, &ipv6(s, d, 44, &first)).ip.unwrap();
        assert_eq!((ip.proto, ip.ports), (Some(PROTO_TCP), Some((1, 22))));
        // ESP is a protocol without ports; a frame without an IP layer has no L4 to judge.
        assert!(!info(ETHERTYPE_IPV6, &ipv6(s, d, 50, &[0; 16])).l4_unparsed());
        assert!(!info(ETHERTYPE_ARP, &[0; 28]).l4_unparsed());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 120) as usize;
            let mut f: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 * 7) & 0xff) as u8)
                .collect();
            if f.len() >= 14 {
                let kinds = [ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN];
                let t = kinds[(x >> 40) as usize % 3].to_be_bytes();
                f[12] = t[0];
                f[13] = t[1];
            }
            if f.len() > 14 {
                f[14] = if x & 1 == 0 { 0x45 } else { 0x60 };
            }
            let _ = parse(&f);
        }
    }
}
