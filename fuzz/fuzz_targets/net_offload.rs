//! Fuzzes virtio-net's software offloads (`devices::net_offload`): a transmit header and frame
//! judged by `check` against a sender that negotiated every offload, then handed by `deliver`
//! to a receiver that takes the offloads the input picks.
//!
//! Checked, besides no panic: `deliver` emits nothing when it fails; it emits at most
//! `MAX_SEGMENTS` frames, none longer than `MAX_FRAME`; a packet `check` passed reaches a
//! receiver that takes every offload exactly once, unchanged (`num_buffers` 0); when `deliver`
//! did the work (a packet that is not plain comes out with a default header), a finished
//! checksum is the only change and (at an even `csum_offset`) makes everything from
//! `csum_start`, plus the pseudo-header sum the field held, sum to zero; and every segment of
//! a GSO packet is a complete IPv4 or IPv6 TCP frame whose lengths and checksums (IPv4 header,
//! TCP with its pseudo-header) verify, whose payloads are at most `gso_size` and concatenate
//! back to the original's, with sequence numbers advancing by the payload before them.
//!
//! Input layout: 12 bytes of `virtio_net_hdr_v1`, 1 byte of receiver offloads (bit 0 csum,
//! bit 1 tso4, bit 2 tso6, bit 3 ecn), then the frame (everything left).
#![no_main]

mod common;

use common::Input;
use devices::net_offload::{
    check, deliver, Offloads, VnetHeader, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, MAX_FRAME, MAX_SEGMENTS,
    VNET_HDR_LEN,
};
use libfuzzer_sys::fuzz_target;

/// The ones'-complement sum of `parts` as one byte string (written here, not taken from the
/// module under test), folded to 16 bits.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks one segment `deliver` cut; returns its sequence number and payload.
fn check_segment(frame: &[u8]) -> (u32, &[u8]) {
    let (ethertype, l3) = match be16(frame, 12) {
        0x8100 => (be16(frame, 16), 18),
        t => (t, 14),
    };
    let (l4, addrs) = match ethertype {
        0x0800 => {
            let ihl = usize::from(frame[l3] & 0xf) * 4;
            assert!(ihl >= 20);
            let ip = &frame[l3..l3 + ihl];
            assert_eq!(ip[0] >> 4, 4);
            assert_eq!(ip[9], 6);
            assert_eq!(ones_sum(&[ip]), 0xffff, "IPv4 header checksum");
            assert_eq!(
                usize::from(be16(ip, 2)),
                frame.len() - l3,
                "IPv4 total length"
            );
            (l3 + ihl, &ip[12..20])
        }
        0x86dd => {
            let ip = &frame[l3..l3 + 40];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(ip[6], 6);
            assert_eq!(
                usize::from(be16(ip, 4)),
                frame.len() - l3 - 40,
                "IPv6 payload length"
            );
            (l3 + 40, &ip[8..40])
        }
        other => panic!("a segment with ethertype {other:#06x}"),
    };
    let tcp = &frame[l4..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    assert!(doff >= 20 && doff <= tcp.len());
    let len = (tcp.len() as u32).to_be_bytes();
    assert_eq!(
        ones_sum(&[addrs, &[0, 6], &len, tcp]),
        0xffff,
        "TCP checksum"
    );
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    (seq, &tcp[doff..])
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let hdr = VnetHeader::parse(&input.array::<VNET_HDR_LEN>());
    let bits = input.u8();
    let accepts = Offloads {
        csum: bits & 1 != 0,
        tso4: bits & 2 != 0,
        tso6: bits & 4 != 0,
        ecn: bits & 8 != 0,
    };
    let frame = input.rest();
    let checked = check(&hdr, frame, Offloads::ALL).is_ok();

    let mut out: Vec<(VnetHeader, Vec<u8>)> = Vec::new();
    let result = deliver(&hdr, frame, accepts, &mut |h, f| {
        assert!(f.len() <= MAX_FRAME, "a {}-byte frame emitted", f.len());
        out.push((*h, f.to_vec()));
        assert!(out.len() <= MAX_SEGMENTS, "more than MAX_SEGMENTS emitted");
    });
    if result.is_err() {
        assert!(out.is_empty(), "emitted, then failed");
        return;
    }
    assert!(!out.is_empty());
    if checked && accepts == Offloads::ALL {
        let want = VnetHeader {
            num_buffers: 0,
            ..hdr
        };
        assert_eq!(out, vec![(want, frame.to_vec())]);
    }
    if !checked || hdr.is_plain() || out[0].0 != VnetHeader::default() {
        return; // passed through as it is (or unchecked: only the bounds above hold)
    }
    // deliver did the work.
    assert!(out.iter().all(|(h, _)| *h == VnetHeader::default()));
    if hdr.gso_type & !GSO_ECN == GSO_NONE {
        assert_eq!(hdr.flags & F_NEEDS_CSUM, F_NEEDS_CSUM);
        assert_eq!(out.len(), 1);
        let done = &out[0].1;
        assert_eq!(done.len(), frame.len());
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        assert_eq!(done[..at], frame[..at]);
        assert_eq!(done[at + 2..], frame[at + 2..]);
        assert_ne!(be16(done, at), 0);
        if hdr.csum_offset % 2 == 0 {
            // The pseudo-header sum the field held, plus everything from csum_start now.
            let held = frame[at..at + 2].to_vec();
            let sum = ones_sum(&[&held]) as u32 + ones_sum(&[&done[start..]]) as u32;
            assert_eq!(ones_sum(&[&sum.to_be_bytes()]), 0xffff, "finished checksum");
        }
        return;
    }
    let mss = usize::from(hdr.gso_size);
    let mut joined: Vec<u8> = Vec::new();
    let mut first: Option<(u32, usize)> = None; // sequence number, header length
    for (_, seg) in &out {
        let (seq, payload) = check_segment(seg);
        assert!(payload.len() <= mss);
        let (seq0, headers) = *first.get_or_insert((seq, seg.len() - payload.len()));
        assert_eq!(
            seg.len() - payload.len(),
            headers,
            "headers of another length"
        );
        assert_eq!(
            seq,
            seq0.wrapping_add(joined.len() as u32),
            "sequence number"
        );
        joined.extend_from_slice(payload);
    }
    let (_, headers) = first.expect("a segment");
    assert_eq!(
        frame[headers..],
        joined[..],
        "payloads do not rebuild the original"
    );
});
