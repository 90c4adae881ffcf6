#!/usr/bin/env python3
"""Writes seed inputs for fuzz_targets/net_offload.rs into seeds/net_offload/: well-formed
packets a guest with checksum and segmentation offloads sends (IPv4 and IPv6 TCP GSO packets,
one behind a VLAN tag and with ECN, TCP and UDP packets whose checksum is left to finish, a
plain frame), each for a receiver that takes some offloads, so the fuzzer starts from the deep
paths of `deliver` instead of finding them by chance. The input layout is described at the top
of the fuzz target. Run it again after changing that layout.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "net_offload")

NEEDS_CSUM, DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0, 1, 4, 0x80
CSUM, TSO4, TSO6, ECN = 1, 2, 4, 8   # the receiver's offloads byte
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes([0xfd] + [0] * 14 + [1])
DST6 = bytes([0xfd] + [0] * 14 + [2])


def ones_sum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return s


def eth(ethertype, vlan=None):
    f = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1])
    if vlan is not None:
        f += struct.pack("!HH", 0x8100, vlan)
    return f + struct.pack("!H", ethertype)


def ipv4(proto, l4_len, ident=0x1234):
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, ident, 0x4000, 64, proto,
                               0, SRC4, DST4))
    ip[10:12] = struct.pack("!H", 0xffff - ones_sum(bytes(ip)))
    return bytes(ip)


def ipv6(l4_len):
    return struct.pack("!IHBB16s16s", 0x60000000, l4_len, 6, 64, SRC6, DST6)


def pseudo(v6, proto, l4_len):
    if v6:
        return ones_sum(SRC6 + DST6 + struct.pack("!IxxxB", l4_len, proto))
    return ones_sum(SRC4 + DST4 + struct.pack("!xBH", proto, l4_len))


def tcp_packet(v6, payload, flags=ACK | PSH, vlan=None):
    """A frame whose TCP checksum field holds the pseudo-header sum, and its csum_start."""
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)   # NOP NOP timestamp
    l4_len = 20 + len(opts) + len(payload)
    head = eth(0x86dd if v6 else 0x0800, vlan) + (ipv6(l4_len) if v6 else ipv4(6, l4_len))
    tcp = struct.pack("!HHIIBBHHH", 12345, 443, 0xfffff000, 7, (20 + len(opts)) // 4 << 4,
                      flags, 0xffff, pseudo(v6, 6, l4_len), 0)
    return head + tcp + opts + payload, len(head)


def udp_packet(payload):
    l4_len = 8 + len(payload)
    head = eth(0x0800) + ipv4(17, l4_len)
    udp = struct.pack("!HHHH", 5000, 53, l4_len, pseudo(False, 17, l4_len))
    return head + udp + payload, len(head)


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def write(name, hdr, accepts, frame):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(hdr + bytes([accepts]) + frame)


data = bytes((i * 7 + i // 251) & 0xff for i in range(4000))

frame, start = tcp_packet(False, data, ACK | PSH | FIN)
write("tso4", vnet(NEEDS_CSUM, GSO_TCPV4, start + 32, 1448, start, 16), 0, frame)
write("tso4-csum-receiver", vnet(NEEDS_CSUM, GSO_TCPV4, start + 32, 1000, start, 16), CSUM, frame)

frame, start = tcp_packet(True, data[:3000])
write("tso6", vnet(NEEDS_CSUM, GSO_TCPV6, start + 32, 1440, start, 16), TSO4 | CSUM, frame)

frame, start = tcp_packet(False, data[:2500], ACK | CWR | PSH, vlan=42)
write("tso4-vlan-ecn", vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, start + 32, 1200, start, 16),
      CSUM | TSO4, frame)

frame, start = tcp_packet(False, data[:200])
write("tcp4-csum", vnet(NEEDS_CSUM, csum_start=start, csum_offset=16), 0, frame)

frame, start = tcp_packet(True, data[:301])
write("tcp6-csum", vnet(NEEDS_CSUM, csum_start=start, csum_offset=16), TSO6, frame)

frame, start = udp_packet(data[:99])
write("udp4-csum", vnet(NEEDS_CSUM | DATA_VALID, csum_start=start, csum_offset=6), 0, frame)

frame, start = tcp_packet(False, data[:60])
write("plain", vnet(DATA_VALID), CSUM | TSO4 | TSO6 | ECN, frame)
