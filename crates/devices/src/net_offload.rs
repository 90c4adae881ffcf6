//! virtio-net offloads done in software: checksums left to finish and TCP segmentation.
//!
//! A guest that negotiated `VIRTIO_NET_F_CSUM` or `VIRTIO_NET_F_HOST_TSO*` may hand its transmit
//! queue packets that are not finished: a TCP or UDP checksum holding only the pseudo-header
//! sum (`F_NEEDS_CSUM`), or one large TCP packet to be cut into segments of at most `gso_size`
//! payload bytes (a GSO packet). Whoever receives such a packet must either take it as it is (a
//! peer guest that negotiated the matching `GUEST_*` features, a TAP device with the same
//! offloads) or have the work done for it first.
//!
//! This module is that work, as pure functions over bytes:
//!
//! - [`VnetHeader`] reads and writes the 12-byte `struct virtio_net_hdr_v1`;
//! - [`Offloads`] says what one side took, from its negotiated feature bits;
//! - [`check`] judges a packet's header against what its sender negotiated, before the packet
//!   goes anywhere;
//! - [`deliver`] hands a packet to a receiver: as it is when the receiver takes everything the
//!   header asks, otherwise with its checksum finished or cut into complete segments.
//!
//! Everything here comes from a guest and is untrusted: no input panics, headers are parsed
//! here (never from `hdr_len`), and the work one packet can cause is bounded by [`MAX_FRAME`]
//! and [`MAX_SEGMENTS`].

use thiserror::Error;

/// Size of `struct virtio_net_hdr_v1` (VERSION_1: num_buffers always present).
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame handled (a 64 KiB IP packet with Ethernet and a VLAN tag).
pub const MAX_FRAME: usize = 65550;
/// Most segments one GSO packet may be cut into (bounds the work and output a sender can cause).
pub const MAX_SEGMENTS: usize = 1024;
/// Header flag: the checksum from `csum_start` on is left to finish; the field at
/// `csum_start + csum_offset` holds the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;
/// Header flag: the packet's checksums were already verified.
pub const F_DATA_VALID: u8 = 2;
/// GSO type: not a GSO packet.
pub const GSO_NONE: u8 = 0;
/// GSO type: TCP over IPv4, to be cut into segments.
pub const GSO_TCPV4: u8 = 1;
/// GSO type: UDP fragmentation offload (never offered here).
pub const GSO_UDP: u8 = 3;
/// GSO type: TCP over IPv6, to be cut into segments.
pub const GSO_TCPV6: u8 = 4;
/// GSO type bit: TCP with ECN (the CWR flag may be set and belongs on the first segment only).
pub const GSO_ECN: u8 = 0x80;

const ETH_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_MIN_LEN: usize = 20;
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// IPv4 flags and fragment offset: MF and the 13-bit offset (DF may be set).
const IPV4_FRAGMENT: u16 = 0x3fff;

/// `struct virtio_net_hdr_v1`, with little-endian fields: flags u8, gso_type u8, hdr_len u16,
/// gso_size u16, csum_start u16, csum_offset u16, num_buffers u16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_UDP`] or [`GSO_TCPV6`], possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// The sender's idea of the length of the headers (a hint, never trusted here).
    pub hdr_len: u16,
    /// Largest payload of one segment, for a GSO packet.
    pub gso_size: u16,
    /// Where the checksummed range starts, for [`F_NEEDS_CSUM`].
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`, for [`F_NEEDS_CSUM`].
    pub csum_offset: u16,
    /// How many receive buffers the packet fills (mergeable receive buffers; else 0).
    pub num_buffers: u16,
}

impl VnetHeader {
    /// Reads a header from its 12 bytes.
    pub fn parse(bytes: &[u8; VNET_HDR_LEN]) -> VnetHeader {
        let field = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        VnetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
            num_buffers: field(10),
        }
    }

    /// The header's 12 bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (at, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Whether the packet needs no work a receiver might not do: no checksum left to finish
    /// and no segmentation.
    pub fn is_plain(&self) -> bool {
        self.flags & F_NEEDS_CSUM == 0 && self.gso_type == GSO_NONE
    }
}

/// Offloads one side takes: for a guest's transmit queue the `HOST_*` features it negotiated,
/// for its receive queue the `GUEST_*` ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Packets whose checksum is left to finish ([`F_NEEDS_CSUM`]).
    pub csum: bool,
    /// TCP over IPv4 GSO packets.
    pub tso4: bool,
    /// TCP over IPv6 GSO packets.
    pub tso6: bool,
    /// TCP GSO packets with the [`GSO_ECN`] bit.
    pub ecn: bool,
}

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;

impl Offloads {
    /// No offload: every packet plain.
    pub const NONE: Offloads = Offloads {
        csum: false,
        tso4: false,
        tso6: false,
        ecn: false,
    };
    /// Every offload this module knows.
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };
    /// The feature bits for offering all of these on both sides (`CSUM`, `GUEST_CSUM`,
    /// `HOST_TSO4`, `HOST_TSO6`, `HOST_ECN`, `GUEST_TSO4`, `GUEST_TSO6`, `GUEST_ECN`).
    pub const FEATURES: u64 = F_CSUM
        | F_GUEST_CSUM
        | F_HOST_TSO4
        | F_HOST_TSO6
        | F_HOST_ECN
        | F_GUEST_TSO4
        | F_GUEST_TSO6
        | F_GUEST_ECN;

    /// What a guest's transmit queue may send, from its negotiated virtio-net feature bits:
    /// `VIRTIO_NET_F_CSUM` (bit 0), `HOST_TSO4` (11), `HOST_TSO6` (12), `HOST_ECN` (13).
    pub fn transmit(features: u64) -> Offloads {
        Offloads {
            csum: features & F_CSUM != 0,
            tso4: features & F_HOST_TSO4 != 0,
            tso6: features & F_HOST_TSO6 != 0,
            ecn: features & F_HOST_ECN != 0,
        }
    }

    /// What a guest's receive queue takes, from its negotiated virtio-net feature bits:
    /// `GUEST_CSUM` (bit 1), `GUEST_TSO4` (7), `GUEST_TSO6` (8), `GUEST_ECN` (9).
    pub fn receive(features: u64) -> Offloads {
        Offloads {
            csum: features & F_GUEST_CSUM != 0,
            tso4: features & F_GUEST_TSO4 != 0,
            tso6: features & F_GUEST_TSO6 != 0,
            ecn: features & F_GUEST_ECN != 0,
        }
    }
}

/// Why a packet was refused by [`check`] or could not be handled by [`deliver`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OffloadError {
    /// The frame is longer than [`MAX_FRAME`].
    #[error("a frame of {0} bytes is longer than the {MAX_FRAME} allowed")]
    FrameTooLong(usize),
    /// Header flags other than [`F_NEEDS_CSUM`] and [`F_DATA_VALID`].
    #[error("unknown header flags {0:#04x}")]
    UnknownFlags(u8),
    /// [`F_NEEDS_CSUM`] from a sender that did not negotiate checksum offload.
    #[error("checksum offload was not negotiated")]
    CsumNotNegotiated,
    /// The checksum field (`csum_start + csum_offset`, 2 bytes) is not inside the frame.
    #[error("the checksum field at {at} is past the frame's end ({len} bytes)")]
    CsumOutOfFrame {
        /// Where the field starts.
        at: usize,
        /// The frame's length.
        len: usize,
    },
    /// A GSO type this module does not know (the [`GSO_ECN`] bit left out).
    #[error("unknown GSO type {0}")]
    UnknownGso(u8),
    /// [`GSO_UDP`]: UDP fragmentation offload is never offered.
    #[error("UDP fragmentation offload (GSO type 3) is not supported")]
    UdpGso,
    /// A TCP GSO type whose offload the sender did not negotiate ("TCPv4" or "TCPv6").
    #[error("{0} segmentation offload was not negotiated")]
    GsoNotNegotiated(&'static str),
    /// The [`GSO_ECN`] bit from a sender that did not negotiate ECN offload.
    #[error("TCP ECN segmentation offload was not negotiated")]
    EcnNotNegotiated,
    /// The [`GSO_ECN`] bit on a packet that is not TCP GSO.
    #[error("the ECN bit on a packet that is not TCP segmentation")]
    EcnWithoutTcp,
    /// A GSO packet without [`F_NEEDS_CSUM`].
    #[error("a GSO packet without F_NEEDS_CSUM")]
    GsoWithoutCsum,
    /// A GSO packet with `gso_size` 0.
    #[error("gso_size 0")]
    GsoSizeZero,
    /// A GSO packet that would be cut into more than [`MAX_SEGMENTS`] segments.
    #[error("more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// The frame ends inside the named header ("Ethernet", "IPv4", "IPv6", "TCP").
    #[error("the frame ends inside its {0} header")]
    Truncated(&'static str),
    /// A [`GSO_TCPV4`] packet whose frame is not IPv4 carrying TCP.
    #[error("a TCPv4 segment that is not IPv4/TCP")]
    NotIpv4Tcp,
    /// A [`GSO_TCPV6`] packet whose frame is not IPv6.
    #[error("a TCPv6 segment that is not IPv6/TCP")]
    NotIpv6Tcp,
    /// An IPv6 header whose next header is not TCP (extension headers are not supported).
    #[error("an IPv6 next header {0}, not TCP (extension headers are not supported)")]
    Ipv6NextHeader(u8),
    /// An IPv4 header length (IHL) below 5 words.
    #[error("an IPv4 header length of {0} words (at least 5)")]
    BadIhl(u8),
    /// An IPv4 fragment (MF set or a nonzero offset) as a GSO packet.
    #[error("an IPv4 fragment as a TCPv4 segment")]
    Ipv4Fragment,
    /// A TCP data offset below 5 words.
    #[error("a TCP data offset of {0} words (at least 5)")]
    BadDataOffset(u8),
    /// A segment whose IPv4 total length (or IPv6 payload length) would not fit 16 bits.
    #[error("a segment of {0} IP bytes, longer than 65535")]
    SegmentTooLong(usize),
}

/// The value to store in an internet checksum field (RFC 1071): the ones'-complement of the
/// ones'-complement sum of `data`, read as big-endian 16-bit words (an odd last byte padded
/// with zero), plus `initial` (a pseudo-header sum, say). Over data that holds a correct
/// checksum field, with the same `initial`, it gives 0.
pub fn internet_checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum16(data, u64::from(initial)))
}

/// Adds `data`'s big-endian 16-bit words to `acc` (no folding; a u64 cannot overflow here).
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum's carries back in, down to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// What kind of segmentation a header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gso {
    None,
    Tcp4,
    Tcp6,
}

/// The header's GSO kind and whether its ECN bit is set.
fn gso_kind(hdr: &VnetHeader) -> Result<(Gso, bool), OffloadError> {
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let kind = match hdr.gso_type & !GSO_ECN {
        GSO_NONE => Gso::None,
        GSO_TCPV4 => Gso::Tcp4,
        GSO_TCPV6 => Gso::Tcp6,
        GSO_UDP => return Err(OffloadError::UdpGso),
        other => return Err(OffloadError::UnknownGso(other)),
    };
    if ecn && kind == Gso::None {
        return Err(OffloadError::EcnWithoutTcp);
    }
    Ok((kind, ecn))
}

/// Where the checksum field of an `F_NEEDS_CSUM` packet starts, if it is inside the frame.
fn csum_field(hdr: &VnetHeader, frame: &[u8]) -> Result<usize, OffloadError> {
    let at = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::CsumOutOfFrame {
            at,
            len: frame.len(),
        });
    }
    Ok(at)
}

/// Offsets of a TCP packet's headers within its frame.
#[derive(Clone, Copy, Debug)]
struct TcpHeaders {
    /// The IP header.
    l3: usize,
    /// The TCP header.
    l4: usize,
    /// The payload (the end of the TCP header).
    payload: usize,
}

/// The smallest headers a TCP GSO packet of this kind can have.
fn min_headers(kind: Gso) -> usize {
    let ip = if kind == Gso::Tcp6 {
        IPV6_LEN
    } else {
        IPV4_MIN_LEN
    };
    ETH_LEN + ip + TCP_MIN_LEN
}

/// The ethertype under at most one 802.1Q tag, and where the IP header starts.
fn ethernet(frame: &[u8]) -> Result<(u16, usize), OffloadError> {
    let field = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(OffloadError::Truncated("Ethernet"))
    };
    let outer = field(12)?;
    if outer == ETHERTYPE_VLAN {
        Ok((field(16)?, ETH_LEN + VLAN_TAG_LEN))
    } else {
        Ok((outer, ETH_LEN))
    }
}

/// Parses the Ethernet, IP and TCP headers a TCP GSO packet of `kind` must have.
fn parse_tcp(frame: &[u8], kind: Gso) -> Result<TcpHeaders, OffloadError> {
    let (ethertype, l3) = ethernet(frame)?;
    let l4 = if kind == Gso::Tcp6 {
        if ethertype != ETHERTYPE_IPV6 {
            return Err(OffloadError::NotIpv6Tcp);
        }
        let ip = frame
            .get(l3..l3 + IPV6_LEN)
            .ok_or(OffloadError::Truncated("IPv6"))?;
        if ip[0] >> 4 != 6 {
            return Err(OffloadError::NotIpv6Tcp);
        }
        if ip[6] != PROTO_TCP {
            return Err(OffloadError::Ipv6NextHeader(ip[6]));
        }
        l3 + IPV6_LEN
    } else {
        if ethertype != ETHERTYPE_IPV4 {
            return Err(OffloadError::NotIpv4Tcp);
        }
        let ip = frame
            .get(l3..l3 + IPV4_MIN_LEN)
            .ok_or(OffloadError::Truncated("IPv4"))?;
        if ip[0] >> 4 != 4 || ip[9] != PROTO_TCP {
            return Err(OffloadError::NotIpv4Tcp);
        }
        let ihl = ip[0] & 0xf;
        if ihl < 5 {
            return Err(OffloadError::BadIhl(ihl));
        }
        if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT != 0 {
            return Err(OffloadError::Ipv4Fragment);
        }
        let l4 = l3 + 4 * usize::from(ihl);
        if l4 > frame.len() {
            return Err(OffloadError::Truncated("IPv4"));
        }
        l4
    };
    let tcp = frame
        .get(l4..l4 + TCP_MIN_LEN)
        .ok_or(OffloadError::Truncated("TCP"))?;
    let doff = tcp[12] >> 4;
    if doff < 5 {
        return Err(OffloadError::BadDataOffset(doff));
    }
    let payload = l4 + 4 * usize::from(doff);
    if payload > frame.len() {
        return Err(OffloadError::Truncated("TCP"));
    }
    Ok(TcpHeaders { l3, l4, payload })
}

/// How many segments `payload` bytes make at `gso_size` each (an empty payload still makes one).
fn segment_count(payload: usize, gso_size: u16) -> usize {
    payload.div_ceil(usize::from(gso_size).max(1)).max(1)
}

/// Checks a packet's header against what its sender negotiated (`allowed`), before the packet
/// goes anywhere.
///
/// Only the [`F_NEEDS_CSUM`] and [`F_DATA_VALID`] flags; [`F_NEEDS_CSUM`] needs `allowed.csum`
/// and a checksum field inside the frame (`csum_start + csum_offset + 2 <= frame.len()`); the
/// GSO type (without the ECN bit) [`GSO_NONE`], [`GSO_TCPV4`] (needs `tso4`) or [`GSO_TCPV6`]
/// (needs `tso6`); the [`GSO_ECN`] bit needs `ecn` and a TCP GSO type; a GSO packet needs
/// [`F_NEEDS_CSUM`], `gso_size > 0`, and at most [`MAX_SEGMENTS`] segments (counted after the
/// headers when they parse, else after the smallest headers possible); the frame at most
/// [`MAX_FRAME`] bytes. The headers of a GSO packet are not otherwise judged here: a receiver
/// that takes it as it is judges them itself, and [`deliver`] refuses what it cannot cut.
pub fn check(hdr: &VnetHeader, frame: &[u8], allowed: Offloads) -> Result<(), OffloadError> {
    if frame.len() > MAX_FRAME {
        return Err(OffloadError::FrameTooLong(frame.len()));
    }
    if hdr.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(OffloadError::UnknownFlags(hdr.flags));
    }
    let needs_csum = hdr.flags & F_NEEDS_CSUM != 0;
    if needs_csum {
        if !allowed.csum {
            return Err(OffloadError::CsumNotNegotiated);
        }
        csum_field(hdr, frame)?;
    }
    let (kind, ecn) = gso_kind(hdr)?;
    match kind {
        Gso::None => return Ok(()),
        Gso::Tcp4 if !allowed.tso4 => return Err(OffloadError::GsoNotNegotiated("TCPv4")),
        Gso::Tcp6 if !allowed.tso6 => return Err(OffloadError::GsoNotNegotiated("TCPv6")),
        Gso::Tcp4 | Gso::Tcp6 => {}
    }
    if ecn && !allowed.ecn {
        return Err(OffloadError::EcnNotNegotiated);
    }
    if !needs_csum {
        return Err(OffloadError::GsoWithoutCsum);
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    let headers = parse_tcp(frame, kind).map_or(min_headers(kind), |h| h.payload);
    if segment_count(frame.len().saturating_sub(headers), hdr.gso_size) > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    Ok(())
}

/// Hands a packet to a receiver that takes `accepts`, calling `emit` with each header and
/// frame the receiver gets.
///
/// When the receiver takes everything the header asks (a plain packet; [`F_NEEDS_CSUM`] and
/// `accepts.csum`; [`GSO_TCPV4`] with `tso4`, `csum`, and `ecn` if the ECN bit is set;
/// [`GSO_TCPV6`] likewise), `emit` is called once with the packet as it is (`num_buffers` set
/// to 0, [`F_DATA_VALID`] cleared when `!accepts.csum`).
///
/// Otherwise the work is done here and each result emitted with [`VnetHeader::default`]:
///
/// - a GSO packet is cut into segments of at most `gso_size` payload bytes, each a complete
///   frame: headers copied, the IPv4 total length, identification (+i, wrapping) and header
///   checksum or the IPv6 payload length set, the TCP sequence number advanced, FIN and PSH
///   kept only on the last segment and CWR only on the first, and the TCP checksum computed in
///   full with the pseudo-header. A payload that fits one segment makes one frame.
/// - a packet with [`F_NEEDS_CSUM`] gets its checksum finished: the internet checksum of
///   `frame[csum_start..]` (whose checksum field holds the pseudo-header sum, as Linux leaves
///   it) is stored at `csum_start + csum_offset` in a copy of the frame (0 stored as 0xffff,
///   as UDP needs). The field is taken to start an even number of bytes after `csum_start`,
///   as TCP's and UDP's do; at an odd `csum_offset` the value stored does not verify.
///
/// The headers are parsed here, never trusting `hdr_len`: Ethernet, at most one 802.1Q tag,
/// IPv4 (IHL at least 5, not a fragment) or IPv6 whose next header is TCP, TCP with a data
/// offset of at least 5, all within the frame. When they cannot be read for the work needed,
/// or the packet would make more than [`MAX_SEGMENTS`] segments, or the frame is longer than
/// [`MAX_FRAME`], an error and nothing is emitted.
pub fn deliver(
    hdr: &VnetHeader,
    frame: &[u8],
    accepts: Offloads,
    emit: &mut dyn FnMut(&VnetHeader, &[u8]),
) -> Result<(), OffloadError> {
    if frame.len() > MAX_FRAME {
        return Err(OffloadError::FrameTooLong(frame.len()));
    }
    let (kind, ecn) = gso_kind(hdr)?;
    let needs_csum = hdr.flags & F_NEEDS_CSUM != 0;
    let tso = |takes: bool| takes && accepts.csum && (!ecn || accepts.ecn);
    let taken = match kind {
        Gso::None => !needs_csum || accepts.csum,
        Gso::Tcp4 => tso(accepts.tso4),
        Gso::Tcp6 => tso(accepts.tso6),
    };
    if taken {
        let mut out = *hdr;
        out.num_buffers = 0;
        if !accepts.csum {
            out.flags &= !F_DATA_VALID;
        }
        emit(&out, frame);
        return Ok(());
    }
    if kind == Gso::None {
        let at = csum_field(hdr, frame)?;
        let mut out = frame.to_vec();
        let sum = match internet_checksum(&out[usize::from(hdr.csum_start)..], 0) {
            0 => 0xffff,
            sum => sum,
        };
        out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        emit(&VnetHeader::default(), &out);
        return Ok(());
    }
    segment(hdr, frame, kind, emit)
}

/// Stores `v` big-endian at `at`.
fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Cuts a TCP GSO packet into complete segments (see [`deliver`]).
fn segment(
    hdr: &VnetHeader,
    frame: &[u8],
    kind: Gso,
    emit: &mut dyn FnMut(&VnetHeader, &[u8]),
) -> Result<(), OffloadError> {
    let h = parse_tcp(frame, kind)?;
    if hdr.gso_size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    let mss = usize::from(hdr.gso_size);
    let payload = &frame[h.payload..];
    let count = segment_count(payload.len(), hdr.gso_size);
    if count > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    // The first segment is the longest: if its IP length fits 16 bits, every one does.
    let ip_len = h.payload - h.l3 + payload.len().min(mss);
    if ip_len > usize::from(u16::MAX) {
        return Err(OffloadError::SegmentTooLong(ip_len));
    }
    let headers = &frame[..h.payload];
    let (l3, l4) = (h.l3, h.l4);
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let id = be16(l3 + 4);
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let tcp_flags = frame[l4 + 13];
    let mut buf = Vec::with_capacity(h.payload + payload.len().min(mss));
    for i in 0..count {
        let start = i * mss;
        let chunk = &payload[start.min(payload.len())..(start + mss).min(payload.len())];
        buf.clear();
        buf.extend_from_slice(headers);
        buf.extend_from_slice(chunk);
        // Lengths below fit 16 bits: checked above for the first (longest) segment.
        let tcp_len = buf.len() - l4;
        let addresses = if kind == Gso::Tcp4 {
            let ip_len = (buf.len() - l3) as u16;
            put16(&mut buf, l3 + 2, ip_len);
            put16(&mut buf, l3 + 4, id.wrapping_add(i as u16));
            put16(&mut buf, l3 + 10, 0);
            let csum = internet_checksum(&buf[l3..l4], 0);
            put16(&mut buf, l3 + 10, csum);
            sum16(&buf[l3 + 12..l3 + 20], 0)
        } else {
            let payload_len = (buf.len() - l3 - IPV6_LEN) as u16;
            put16(&mut buf, l3 + 4, payload_len);
            sum16(&buf[l3 + 8..l3 + 40], 0)
        };
        let pseudo = fold(addresses + u64::from(PROTO_TCP) + tcp_len as u64);
        buf[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add(start as u32).to_be_bytes());
        let mut f = tcp_flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        buf[l4 + 13] = f;
        put16(&mut buf, l4 + 16, 0);
        let csum = internet_checksum(&buf[l4..], u32::from(pseudo));
        put16(&mut buf, l4 + 16, csum);
        emit(&VnetHeader::default(), &buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 12] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [10, 0, 0, 2];
    const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const SEQ: u32 = 0xffff_f000; // wraps during a 10000-byte packet
    const ID: u16 = 0xfffd; // wraps too

    /// A ones'-complement sum written separately from the module's: bytes paired by index,
    /// folded at every step.
    fn naive_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 = 0;
        for i in (0..bytes.len()).step_by(2) {
            let hi = u32::from(bytes[i]) << 8;
            let lo = bytes.get(i + 1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
            if sum > 0xffff {
                sum -= 0xffff;
            }
        }
        sum as u16
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn eth(vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
        let mut f = MAC.to_vec();
        if let Some(tag) = vlan {
            f.extend(0x8100u16.to_be_bytes());
            f.extend(tag.to_be_bytes());
        }
        f.extend(ethertype.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, l4_len: usize, options: usize) -> Vec<u8> {
        let len = 20 + options + l4_len;
        let mut ip = vec![0x45 + (options / 4) as u8, 0];
        ip.extend((len as u16).to_be_bytes());
        ip.extend(ID.to_be_bytes());
        ip.extend([0x40, 0, 64, proto, 0, 0]); // DF
        ip.extend(SRC4);
        ip.extend(DST4);
        ip.extend(std::iter::repeat_n(1u8, options)); // NOPs
        let csum = !naive_sum(&[&ip]);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        ip
    }

    fn ipv6(l4_len: usize) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend((l4_len as u16).to_be_bytes());
        ip.extend([PROTO_TCP, 64]);
        ip.extend(SRC6);
        ip.extend(DST6);
        ip
    }

    fn tcp(flags: u8, options: usize) -> Vec<u8> {
        let mut t = vec![0x30, 0x39, 0x01, 0xbb];
        t.extend(SEQ.to_be_bytes());
        t.extend(7u32.to_be_bytes());
        t.extend([((5 + options / 4) as u8) << 4, flags]);
        t.extend([0xff, 0xff, 0, 0, 0, 0]);
        t.extend(std::iter::repeat_n(1u8, options));
        t
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The pseudo-header sum a sender leaves in the checksum field with `F_NEEDS_CSUM`.
    fn pseudo(v6: bool, proto: u8, l4_len: usize) -> u16 {
        let len = (l4_len as u32).to_be_bytes();
        if v6 {
            naive_sum(&[&SRC6, &DST6, &len, &[0, 0, 0, proto]])
        } else {
            naive_sum(&[&SRC4, &DST4, &[0, proto], &len[2..]])
        }
    }

    /// A TCP frame (IPv4 unless `v6`) as a sender with checksum offload hands it over: the
    /// TCP checksum field holds the pseudo-header sum, the header says `F_NEEDS_CSUM`.
    fn tcp_frame(v6: bool, vlan: Option<u16>, flags: u8, data: &[u8]) -> (VnetHeader, Vec<u8>) {
        let mut t = tcp(flags, 12);
        let l4_len = t.len() + data.len();
        let mut f = if v6 {
            [eth(vlan, 0x86dd), ipv6(l4_len)].concat()
        } else {
            [eth(vlan, 0x0800), ipv4(PROTO_TCP, l4_len, 4)].concat()
        };
        t[16..18].copy_from_slice(&pseudo(v6, PROTO_TCP, l4_len).to_be_bytes());
        let csum_start = f.len() as u16;
        f.extend(t);
        f.extend(data);
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            hdr_len: csum_start + 32,
            csum_start,
            csum_offset: 16,
            ..VnetHeader::default()
        };
        (hdr, f)
    }

    fn tso(v6: bool, vlan: Option<u16>, flags: u8, data: &[u8], mss: u16) -> (VnetHeader, Vec<u8>) {
        let (mut hdr, f) = tcp_frame(v6, vlan, flags, data);
        hdr.gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr.gso_size = mss;
        (hdr, f)
    }

    fn udp_frame(data: &[u8]) -> (VnetHeader, Vec<u8>) {
        let l4_len = 8 + data.len();
        let mut f = [eth(None, 0x0800), ipv4(17, l4_len, 0)].concat();
        let csum_start = f.len() as u16;
        f.extend([0x13, 0x88, 0x00, 0x35]);
        f.extend((l4_len as u16).to_be_bytes());
        f.extend(pseudo(false, 17, l4_len).to_be_bytes());
        f.extend(data);
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start,
            csum_offset: 6,
            ..VnetHeader::default()
        };
        (hdr, f)
    }

    /// What [`verify`] read from a frame whose checksums all verified.
    #[derive(Debug)]
    struct Seen {
        ip_id: Option<u16>,
        seq: u32,
        tcp_flags: u8,
        payload: Vec<u8>,
    }

    /// Parses a frame from scratch and checks every length and checksum in it: the IPv4
    /// header checksum and total length or the IPv6 payload length, and the TCP or UDP
    /// checksum with its pseudo-header.
    fn verify(frame: &[u8]) -> Seen {
        let mut l3 = 14;
        let mut ethertype = be16(frame, 12);
        if ethertype == 0x8100 {
            ethertype = be16(frame, 16);
            l3 = 18;
        }
        let (proto, l4, ip_id, pseudo_addrs): (u8, usize, _, Vec<u8>) = match ethertype {
            0x0800 => {
                let ihl = usize::from(frame[l3] & 0xf) * 4;
                let ip = &frame[l3..l3 + ihl];
                assert_eq!(naive_sum(&[ip]), 0xffff, "IPv4 header checksum");
                assert_eq!(
                    usize::from(be16(ip, 2)),
                    frame.len() - l3,
                    "IPv4 total length"
                );
                (ip[9], l3 + ihl, Some(be16(ip, 4)), ip[12..20].to_vec())
            }
            0x86dd => {
                let ip = &frame[l3..l3 + 40];
                assert_eq!(
                    usize::from(be16(ip, 4)),
                    frame.len() - l3 - 40,
                    "IPv6 length"
                );
                (ip[6], l3 + 40, None, ip[8..40].to_vec())
            }
            other => panic!("ethertype {other:#x}"),
        };
        let l4_len = (frame.len() - l4) as u32;
        let len_bytes = l4_len.to_be_bytes();
        let sum = naive_sum(&[&pseudo_addrs, &[0, proto], &len_bytes, &frame[l4..]]);
        assert_eq!(sum, 0xffff, "L4 checksum (protocol {proto})");
        if proto == 17 {
            assert_ne!(be16(frame, l4 + 6), 0, "a UDP checksum of 0 means none");
            assert_eq!(u32::from(be16(frame, l4 + 4)), l4_len, "UDP length");
            return Seen {
                ip_id,
                seq: 0,
                tcp_flags: 0,
                payload: frame[l4 + 8..].to_vec(),
            };
        }
        assert_eq!(proto, PROTO_TCP);
        let t = &frame[l4..];
        Seen {
            ip_id,
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            tcp_flags: t[13],
            payload: t[usize::from(t[12] >> 4) * 4..].to_vec(),
        }
    }

    /// Everything `deliver` emitted, or its error (and then nothing must have been emitted).
    fn run(
        hdr: &VnetHeader,
        frame: &[u8],
        accepts: Offloads,
    ) -> Result<Vec<(VnetHeader, Vec<u8>)>, OffloadError> {
        let mut out = Vec::new();
        let r = deliver(hdr, frame, accepts, &mut |h, f| out.push((*h, f.to_vec())));
        match r {
            Ok(()) => Ok(out),
            Err(e) => {
                assert!(out.is_empty(), "emitted before failing with {e}");
                Err(e)
            }
        }
    }

    #[test]
    fn header_round_trip() {
        let bytes = [1, 0x81, 0x36, 0, 0xa8, 5, 0x22, 0, 0x10, 0, 3, 0];
        let hdr = VnetHeader::parse(&bytes);
        assert_eq!(
            hdr,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4 | GSO_ECN,
                hdr_len: 0x36,
                gso_size: 1448,
                csum_start: 0x22,
                csum_offset: 0x10,
                num_buffers: 3,
            }
        );
        assert_eq!(hdr.to_bytes(), bytes);
        assert!(!hdr.is_plain());
        assert!(VnetHeader::default().is_plain());
        let valid = VnetHeader {
            flags: F_DATA_VALID,
            num_buffers: 1,
            ..VnetHeader::default()
        };
        assert!(valid.is_plain());
        assert!(!VnetHeader {
            gso_type: GSO_TCPV6,
            ..VnetHeader::default()
        }
        .is_plain());
    }

    #[test]
    fn offloads_from_feature_bits() {
        assert_eq!(Offloads::transmit(0), Offloads::NONE);
        assert_eq!(Offloads::receive(0), Offloads::NONE);
        assert_eq!(Offloads::transmit(Offloads::FEATURES), Offloads::ALL);
        assert_eq!(Offloads::receive(Offloads::FEATURES), Offloads::ALL);
        assert_eq!(Offloads::FEATURES, 0x3b83);
        let host_only = 1 | (1 << 11) | (1 << 13);
        assert_eq!(
            Offloads::transmit(host_only),
            Offloads {
                csum: true,
                tso4: true,
                tso6: false,
                ecn: true
            }
        );
        assert_eq!(Offloads::receive(host_only), Offloads::NONE);
        let guest = (1 << 1) | (1 << 8);
        assert_eq!(Offloads::transmit(guest), Offloads::NONE);
        assert_eq!(
            Offloads::receive(guest),
            Offloads {
                csum: true,
                tso6: true,
                ..Offloads::NONE
            }
        );
    }

    #[test]
    fn check_accepts_valid_packets() {
        let data = payload(10000);
        let (plain_hdr, plain) = tcp_frame(false, None, 0, &data[..100]);
        let plain_hdr = VnetHeader {
            flags: F_DATA_VALID,
            ..plain_hdr
        };
        assert_eq!(check(&plain_hdr, &plain, Offloads::NONE), Ok(()));
        let (h, f) = tcp_frame(false, None, 0, &data[..100]);
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        assert_eq!(check(&h, &f, csum_only), Ok(()));
        let (h, f) = udp_frame(&data[..33]);
        assert_eq!(check(&h, &f, csum_only), Ok(()));
        for v6 in [false, true] {
            let (mut h, f) = tso(v6, Some(5), 0, &data, 1448);
            assert_eq!(check(&h, &f, Offloads::ALL), Ok(()));
            h.gso_type |= GSO_ECN;
            assert_eq!(check(&h, &f, Offloads::ALL), Ok(()));
        }
        // Exactly MAX_SEGMENTS segments.
        let (h, f) = tso(false, None, 0, &data[..MAX_SEGMENTS], 1);
        assert_eq!(check(&h, &f, Offloads::ALL), Ok(()));
    }

    #[test]
    fn check_refuses_each_bad_case() {
        use OffloadError as E;
        let data = payload(10000);
        let (csum_hdr, frame) = tcp_frame(false, None, 0, &data[..100]);
        let (gso_hdr, gso) = tso(false, None, 0, &data, 1448);
        let (gso6_hdr, gso6) = tso(true, None, 0, &data, 1448);
        let mut bad_eth = gso.clone();
        bad_eth[12] = 0;
        let all = Offloads::ALL;
        let cases: Vec<(VnetHeader, &[u8], Offloads, OffloadError)> = vec![
            (
                VnetHeader {
                    flags: 4,
                    ..VnetHeader::default()
                },
                &frame,
                all,
                E::UnknownFlags(4),
            ),
            (csum_hdr, &frame, Offloads::NONE, E::CsumNotNegotiated),
            (
                VnetHeader {
                    csum_offset: frame.len() as u16 - csum_hdr.csum_start - 1,
                    ..csum_hdr
                },
                &frame,
                all,
                E::CsumOutOfFrame {
                    at: frame.len() - 1,
                    len: frame.len(),
                },
            ),
            (
                VnetHeader {
                    gso_type: 5,
                    ..gso_hdr
                },
                &gso,
                all,
                E::UnknownGso(5),
            ),
            (
                VnetHeader {
                    gso_type: GSO_UDP,
                    ..gso_hdr
                },
                &gso,
                all,
                E::UdpGso,
            ),
            (
                gso_hdr,
                &gso,
                Offloads { tso4: false, ..all },
                E::GsoNotNegotiated("TCPv4"),
            ),
            (
                gso6_hdr,
                &gso6,
                Offloads { tso6: false, ..all },
                E::GsoNotNegotiated("TCPv6"),
            ),
            (
                VnetHeader {
                    gso_type: GSO_TCPV4 | GSO_ECN,
                    ..gso_hdr
                },
                &gso,
                Offloads { ecn: false, ..all },
                E::EcnNotNegotiated,
            ),
            (
                VnetHeader {
                    gso_type: GSO_ECN,
                    ..csum_hdr
                },
                &frame,
                all,
                E::EcnWithoutTcp,
            ),
            (
                VnetHeader {
                    flags: 0,
                    ..gso_hdr
                },
                &gso,
                all,
                E::GsoWithoutCsum,
            ),
            (
                VnetHeader {
                    gso_size: 0,
                    ..gso_hdr
                },
                &gso,
                all,
                E::GsoSizeZero,
            ),
            (
                VnetHeader {
                    gso_size: 9,
                    ..gso_hdr
                },
                &gso,
                all,
                E::TooManySegments,
            ),
            (
                // Headers that do not parse: counted after the smallest headers possible.
                VnetHeader {
                    gso_size: 9,
                    ..gso_hdr
                },
                &bad_eth,
                all,
                E::TooManySegments,
            ),
        ];
        for (i, (h, f, allowed, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(&h, f, allowed), Err(want), "case {i}");
        }
        let long = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            check(&VnetHeader::default(), &long, all),
            Err(E::FrameTooLong(MAX_FRAME + 1))
        );
        assert_eq!(
            check(&VnetHeader::default(), &long[..MAX_FRAME], all),
            Ok(())
        );
        // The messages read well.
        assert_eq!(
            E::CsumOutOfFrame { at: 70, len: 60 }.to_string(),
            "the checksum field at 70 is past the frame's end (60 bytes)"
        );
        assert_eq!(E::UnknownGso(5).to_string(), "unknown GSO type 5");
        assert_eq!(E::TooManySegments.to_string(), "more than 1024 segments");
        assert_eq!(
            E::NotIpv4Tcp.to_string(),
            "a TCPv4 segment that is not IPv4/TCP"
        );
    }

    #[test]
    fn deliver_passes_through_what_the_receiver_takes() {
        let data = payload(3000);
        let (csum_hdr, frame) = tcp_frame(false, None, 0, &data[..100]);
        let (gso_hdr, gso) = tso(true, None, 0, &data, 1448);
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        let cases = [
            (
                VnetHeader {
                    flags: F_DATA_VALID,
                    num_buffers: 2,
                    ..VnetHeader::default()
                },
                &frame,
                Offloads::NONE,
                VnetHeader::default(),
            ),
            (
                VnetHeader {
                    flags: F_DATA_VALID,
                    ..VnetHeader::default()
                },
                &frame,
                csum_only,
                VnetHeader {
                    flags: F_DATA_VALID,
                    ..VnetHeader::default()
                },
            ),
            (csum_hdr, &frame, csum_only, csum_hdr),
            (
                VnetHeader {
                    num_buffers: 7,
                    ..gso_hdr
                },
                &gso,
                Offloads::ALL,
                gso_hdr,
            ),
            (
                VnetHeader {
                    gso_type: GSO_TCPV6 | GSO_ECN,
                    ..gso_hdr
                },
                &gso,
                Offloads::ALL,
                VnetHeader {
                    gso_type: GSO_TCPV6 | GSO_ECN,
                    ..gso_hdr
                },
            ),
        ];
        for (i, (h, f, accepts, want)) in cases.into_iter().enumerate() {
            let out = run(&h, f, accepts).unwrap();
            assert_eq!(out, vec![(want, f.clone())], "case {i}");
        }
    }

    #[test]
    fn deliver_finishes_checksums() {
        let data = payload(1001); // odd: the last byte is padded
        let mut cases = vec![
            tcp_frame(false, None, 0x18, &data),
            tcp_frame(true, None, 0x18, &data),
            tcp_frame(false, Some(0x123), 0x18, &data),
            udp_frame(&data),
            udp_frame(&data[..20]),
        ];
        // The stored checksum would be 0: UDP must send 0xffff instead.
        let (mut h, mut f) = udp_frame(&[0, 0]);
        let sum = naive_sum(&[&f[34..]]);
        f[42..44].copy_from_slice(&(!sum).to_be_bytes());
        assert_eq!(naive_sum(&[&f[34..]]), 0xffff);
        h.flags |= F_DATA_VALID;
        cases.push((h, f));
        for (i, (h, f)) in cases.into_iter().enumerate() {
            let out = run(&h, &f, Offloads::NONE).unwrap();
            assert_eq!(out.len(), 1, "case {i}");
            let (oh, of) = &out[0];
            assert_eq!(*oh, VnetHeader::default());
            assert_eq!(of.len(), f.len());
            let at = usize::from(h.csum_start + h.csum_offset);
            assert_eq!(of[..at], f[..at]);
            assert_eq!(of[at + 2..], f[at + 2..]);
            let seen = verify(of);
            assert_eq!(seen.payload, f[f.len() - seen.payload.len()..]);
        }
    }

    /// Cuts `data` at `mss` and checks every segment: checksums, payloads, sequence numbers,
    /// IPv4 identifications, flags.
    fn check_segments(
        v6: bool,
        vlan: Option<u16>,
        flags: u8,
        ecn: bool,
        data: &[u8],
        mss: u16,
        accepts: Offloads,
    ) {
        let (mut h, f) = tso(v6, vlan, flags, data, mss);
        if ecn {
            h.gso_type |= GSO_ECN;
        }
        let out = run(&h, &f, accepts).unwrap();
        let want = data.len().div_ceil(usize::from(mss)).max(1);
        assert_eq!(out.len(), want);
        let mut joined = Vec::new();
        for (i, (oh, of)) in out.iter().enumerate() {
            assert_eq!(*oh, VnetHeader::default());
            let seen = verify(of);
            assert!(seen.payload.len() <= usize::from(mss));
            assert_eq!(
                seen.seq,
                SEQ.wrapping_add(joined.len() as u32),
                "segment {i}"
            );
            if v6 {
                assert_eq!(seen.ip_id, None);
            } else {
                assert_eq!(seen.ip_id, Some(ID.wrapping_add(i as u16)));
            }
            let last = i + 1 == out.len();
            let first = i == 0;
            let keep = |bit: u8, on: bool| if on { flags & bit } else { 0 };
            let want_flags = (flags & !(TCP_FIN | TCP_PSH | TCP_CWR))
                | keep(TCP_FIN, last)
                | keep(TCP_PSH, last)
                | keep(TCP_CWR, first);
            assert_eq!(seen.tcp_flags, want_flags, "segment {i}");
            if vlan.is_some() {
                assert_eq!(of[12..14], [0x81, 0x00]);
            }
            joined.extend(seen.payload);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn deliver_segments_tcp() {
        let data = payload(10000);
        // ACK | PSH | FIN | CWR
        let flags = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
        for v6 in [false, true] {
            for vlan in [None, Some(42)] {
                check_segments(v6, vlan, flags, true, &data, 1448, Offloads::NONE);
            }
        }
        // 10000 bytes at 1448: 7 segments.
        let (h, f) = tso(false, None, flags, &data, 1448);
        assert_eq!(run(&h, &f, Offloads::NONE).unwrap().len(), 7);
        // A receiver with checksum offload but no TSO (or no ECN) still gets segments.
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        check_segments(false, None, flags, false, &data, 1448, csum_only);
        check_segments(true, None, flags, false, &data, 1448, csum_only);
        let no_ecn = Offloads {
            ecn: false,
            ..Offloads::ALL
        };
        check_segments(false, None, flags, true, &data, 1448, no_ecn);
        // TSO4 alone does not take TSO6; TSO without checksum offload is not taken.
        let tso4 = Offloads {
            tso4: true,
            csum: true,
            ..Offloads::NONE
        };
        check_segments(true, None, flags, false, &data, 1448, tso4);
        check_segments(
            false,
            None,
            flags,
            false,
            &data,
            1448,
            Offloads {
                csum: false,
                ..Offloads::ALL
            },
        );
        // An exact multiple, one segment, an empty payload.
        check_segments(
            false,
            None,
            flags,
            false,
            &data[..4344],
            1448,
            Offloads::NONE,
        );
        check_segments(
            false,
            None,
            flags,
            false,
            &data[..1000],
            1448,
            Offloads::NONE,
        );
        check_segments(
            true,
            None,
            flags,
            false,
            &data[..1448],
            1448,
            Offloads::NONE,
        );
        check_segments(false, None, flags, false, &[], 1448, Offloads::NONE);
        check_segments(
            false,
            None,
            flags,
            false,
            &data[..MAX_SEGMENTS],
            1,
            Offloads::NONE,
        );
    }

    #[test]
    fn deliver_refuses_malformed_frames() {
        use OffloadError as E;
        let data = payload(3000);
        let none = Offloads::NONE;
        let (h4, f4) = tso(false, None, 0, &data, 1448);
        let (h6, f6) = tso(true, None, 0, &data, 1448);
        let (hv, fv) = tso(false, Some(1), 0, &data, 1448);
        // Layout: Ethernet 14, IPv4 24 (l4 at 38), TCP 32 (payload at 70); IPv6 40 (l4 at 54).
        let edit = |f: &[u8], at: usize, v: u8| {
            let mut f = f.to_vec();
            f[at] = v;
            f
        };
        let cases: Vec<(VnetHeader, Vec<u8>, OffloadError)> = vec![
            (h4, f4[..13].to_vec(), E::Truncated("Ethernet")),
            (hv, fv[..17].to_vec(), E::Truncated("Ethernet")),
            (h4, f4[..30].to_vec(), E::Truncated("IPv4")),
            (h4, f4[..36].to_vec(), E::Truncated("IPv4")), // inside the options
            (h6, f6[..50].to_vec(), E::Truncated("IPv6")),
            (h4, f4[..50].to_vec(), E::Truncated("TCP")),
            (h4, f4[..60].to_vec(), E::Truncated("TCP")), // inside the options
            (h6, f6[..80].to_vec(), E::Truncated("TCP")),
            (h4, edit(&f4, 20, 0x20), E::Ipv4Fragment), // MF
            (h4, edit(&f4, 21, 0x01), E::Ipv4Fragment), // offset 1
            (h4, edit(&f4, 14, 0x44), E::BadIhl(4)),
            (h4, edit(&f4, 23, 17), E::NotIpv4Tcp),   // UDP
            (h4, edit(&f4, 14, 0x65), E::NotIpv4Tcp), // version 6
            (h4, f6.clone(), E::NotIpv4Tcp),
            (h6, f4.clone(), E::NotIpv6Tcp),
            (h6, edit(&f6, 14, 0x40), E::NotIpv6Tcp),
            (h6, edit(&f6, 20, 0), E::Ipv6NextHeader(0)), // hop-by-hop options
            (h6, edit(&f6, 20, 44), E::Ipv6NextHeader(44)), // fragment header
            (h4, edit(&f4, 50, 0x40), E::BadDataOffset(4)),
            (h6, edit(&f6, 66, 0x00), E::BadDataOffset(0)),
            (hv, edit(&fv, 16, 0x81), E::NotIpv4Tcp), // a second VLAN tag
            (
                VnetHeader { gso_size: 2, ..h4 },
                f4.clone(),
                E::TooManySegments,
            ),
            (VnetHeader { gso_size: 0, ..h4 }, f4.clone(), E::GsoSizeZero),
            (
                VnetHeader {
                    gso_type: GSO_UDP,
                    ..h4
                },
                f4.clone(),
                E::UdpGso,
            ),
            (
                VnetHeader { gso_type: 2, ..h4 },
                f4.clone(),
                E::UnknownGso(2),
            ),
            (
                VnetHeader {
                    gso_type: GSO_ECN,
                    ..h4
                },
                f4.clone(),
                E::EcnWithoutTcp,
            ),
            (
                VnetHeader {
                    gso_type: GSO_NONE,
                    csum_offset: 3031,
                    ..h4
                },
                f4.clone(),
                E::CsumOutOfFrame {
                    at: 3069,
                    len: f4.len(),
                },
            ),
            (
                VnetHeader::default(),
                vec![0; MAX_FRAME + 1],
                E::FrameTooLong(MAX_FRAME + 1),
            ),
        ];
        for (i, (h, f, want)) in cases.into_iter().enumerate() {
            assert_eq!(run(&h, &f, none), Err(want), "case {i}");
        }
        // Segments whose IPv4 total length would not fit 16 bits.
        let big = payload(MAX_FRAME - 14 - 20 - 20);
        let (mut h, mut f) = tso(false, None, 0, &[], 1);
        f.truncate(14 + 20);
        f[14] = 0x45;
        f.extend(&tcp(0, 0));
        f.extend(&big);
        assert_eq!(f.len(), MAX_FRAME);
        h.gso_size = u16::MAX;
        assert_eq!(
            run(&h, &f, none),
            Err(E::SegmentTooLong(usize::from(u16::MAX) + 1))
        );
        h.gso_size = 65535 - 40;
        assert_eq!(run(&h, &f, none).unwrap().len(), 2);
    }

    #[test]
    fn internet_checksum_examples() {
        // RFC 1071's example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data, 0), !0xddf2);
        assert_eq!(internet_checksum(&data[..7], 0), !naive_sum(&[&data[..7]]));
        assert_eq!(internet_checksum(&[], 0x1_2345), !0x2346);
        assert_eq!(internet_checksum(&[], 0), 0xffff);
    }
}
