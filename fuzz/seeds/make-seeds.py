#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets other than virtqueue (make-virtqueue-seeds.py)
into seeds/<target>/: small, well-formed inputs that reach each target's deep paths (a driver
bringing a device up, requests of every type, a bzImage and a PVH ELF that load, frames of every
kind against a rule list), so the fuzzer starts from there instead of finding them by chance.
Each target's input layout is described at the top of its source file. Run it again after
changing a layout; the CI run (scripts/fuzz-run.sh) starts every target from its seeds.
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- http_request: flags byte (buffer capacity, response mode), deadline byte (x 16 bytes, 0:
# none), then the connection's bytes.
write("http_request", "get", b"\x00\x00GET /v1/domains HTTP/1.1\r\nHost: vessel\r\n\r\n")
body = b'{"name":"web","kernel":"/k","memory":"64M"}'
write("http_request", "post-keepalive",
      b"\x07\x00POST /v1/domains?start=false HTTP/1.1\r\nHost: vessel\r\nContent-Type: application/json\r\n"
      b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
      + b"DELETE /v1/net/rules/3 HTTP/1.0\nConnection: close\n\n")
write("http_request", "console-upgrade",
      b"\x01\x00GET /v1/domains/web/console HTTP/1.1\r\nUpgrade: vessel-console\r\nConnection: Upgrade\r\n\r\n")
write("http_request", "slow-body",
      b"\x10\x08POST /v1/net/rules HTTP/1.1\r\nContent-Length: 200\r\n\r\n" + b"{" * 200)
write("http_request", "response",
      b"\x80\x00HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
      b'{"error":"busy"}\n')

# --- mmio: device byte, op count, 12-byte ops (kind, size, offset u16, value u64), guest memory.
DESC, AVAIL, USED, BUF = 0x1000, 0x1200, 0x1400, 0x2000
NEXT, WRITE = 1, 2


def op(kind, offset, value, size=4):
    return struct.pack("<BBHQ", kind, size, offset, value)


def bring_up(queues, size=8, event_idx=False):
    ops = [op(1, 0x70, 3),                       # ACKNOWLEDGE | DRIVER
           op(1, 0x24, 1), op(1, 0x20, 1),       # VERSION_1
           op(1, 0x24, 0), op(1, 0x20, (1 << 29) if event_idx else 0),
           op(1, 0x70, 0xb)]                     # FEATURES_OK
    for q in queues:
        base = 0x1000 * q
        ops += [op(1, 0x30, q), op(1, 0x38, size),
                op(1, 0x80, DESC + base), op(1, 0x84, 0),
                op(1, 0x90, AVAIL + base), op(1, 0x94, 0),
                op(1, 0xa0, USED + base), op(1, 0xa4, 0),
                op(1, 0x44, 1)]
    ops.append(op(1, 0x70, 0xf))                 # DRIVER_OK
    return ops


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def ring(mem, base, chains):
    """Writes direct chains (lists of (addr, len, flags)) into the queue at base."""
    i = 0
    heads = []
    for chain in chains:
        heads.append(i)
        for j, (addr, length, flags) in enumerate(chain):
            more = j + 1 < len(chain)
            d = desc(addr, length, flags | (NEXT if more else 0), i + 1 if more else 0)
            mem[DESC + base + 16 * i:DESC + base + 16 * i + 16] = d
            i += 1
    avail = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    mem[AVAIL + base:AVAIL + base + len(avail)] = avail


def mmio_seed(device, ops, mem):
    return bytes([device, len(ops)]) + b"".join(ops) + bytes(mem).rstrip(b"\0")


mem = bytearray(0x4000)
ring(mem, 0, [[(BUF, 64, WRITE)], [(BUF + 0x100, 16, WRITE)]])
write("mmio", "rng", mmio_seed(0, bring_up([0], event_idx=True) + [op(1, 0x50, 0), op(0, 0x60, 0), op(7, 0, 1), op(0, 0x100, 0, 8)], mem))

mem = bytearray(0x4000)
mem[BUF:BUF + 16] = struct.pack("<IIQ", 0, 0, 1)          # read sector 1
mem[BUF + 0x800:BUF + 0x810] = struct.pack("<IIQ", 1, 0, 2)  # write sector 2
ring(mem, 0, [[(BUF, 16, 0), (BUF + 0x100, 512, WRITE), (BUF + 0x400, 1, WRITE)],
              [(BUF + 0x800, 16, 0), (BUF + 0x900, 512, 0), (BUF + 0xc00, 1, WRITE)]])
block_ops = bring_up([0]) + [op(1, 0x50, 0), op(0, 0x100, 0, 8), op(0, 0x60, 0), op(1, 0x70, 0)]
write("mmio", "block", mmio_seed(1, block_ops, mem))
write("mmio", "block-readonly", mmio_seed(2, block_ops, mem))

mem = bytearray(0x4000)
ring(mem, 0, [[(0x3000, 1526, WRITE)]])                   # RX: one buffer
mem[0x2800:0x2800 + 72] = bytes(12) + b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06" + bytes(46)
ring(mem, 0x1000, [[(0x2800, 72, 0)]])                     # TX: one frame
net_ops = bring_up([0, 1]) + [op(1, 0x50, 1), op(6, 1, (64 << 8) | 2), op(6, 3, (60 << 8) | 3), op(1, 0x50, 0), op(7, 0, 3)]
write("mmio", "net", mmio_seed(3, net_ops, mem))

# --- virtio_net: flags byte, then operations (see the target).
def tx_chain(frame, writable=0):
    bufs = [(0, 12 + len(frame))] + ([(1, writable)] if writable else [])
    out = bytes([0, len(bufs) - 1])
    for kind, length in bufs:
        out += bytes([kind]) + struct.pack("<H", length)
    return out + (bytes(12) + frame + bytes(64))[:64]


arp = b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06" + bytes(28)
net = (tx_chain(arp) + b"\x01"                            # send one
       + b"\x02" + struct.pack("<H", 60) + b"\x10"        # the host offers a frame
       + b"\x03"                                          # readable
       + b"\x04\x00" + struct.pack("<H", 1526) + b"\x05"  # a receive buffer, serve RX
       + b"\x06\x01" + tx_chain(arp, 8) + b"\x01"          # backend full: held
       + b"\x06\x00\x07"                                  # room again
       + b"\x02" + struct.pack("<H", 2000) + b"\x20\x03"  # a frame too big for ...
       + b"\x04\x01" + struct.pack("<HH", 600, 600) + b"\x05"  # ... a 1200-byte chain
       + b"\x09" + tx_chain(arp) + b"\x01")
write("virtio_net", "tx-rx", b"\x00" + net)
write("virtio_net", "raw-descriptors", b"\x01" + net + b"\x08\x00" + struct.pack("<HQIBH", 3, 0x3000, 64, 0, 0) + b"\x01")

# --- block_file: flags (read-only, image size), then chains: k, 16-byte header, (kind, len) per buffer.
def req(kind, sector, bufs):
    """bufs: (writable, length, contents); a length is n * 16 + (kind >> 4)."""
    out = bytes([len(bufs) - 1]) + struct.pack("<IIQ", kind, 0, sector)
    for writable, length, contents in bufs:
        n, extra = divmod(length, 16)
        assert n < 256 and extra < 16
        out += bytes([(extra << 4) | (1 if writable else 0), n])
        if not writable:
            out += contents
    return out


data = bytes((i * 31) & 0xff for i in range(512))
chains = (req(0, 1, [(True, 512, None), (True, 1, None)])          # read sector 1
          + req(1, 2, [(False, 512, data), (True, 1, None)])       # write sector 2
          + req(0, 2, [(True, 1024, None), (True, 1, None)])       # read it back
          + req(4, 0, [(True, 1, None)])                            # flush
          + req(8, 0, [(True, 20, None), (True, 1, None)])         # get id
          + req(0, 63, [(True, 1024, None), (True, 1, None)])      # past the end
          + req(7, 0, [(True, 1, None)]))                           # unknown type
write("block_file", "requests", b"\x0a" + chains)
write("block_file", "read-only", b"\x05" + chains)

# --- kernel_loader: layout byte, initrd size (u32), the kernel file.
def bzimage():
    hdr = bytearray(1024 + 512)
    hdr[0x1f1] = 1                                   # setup_sects: 1 (+ the boot sector)
    hdr[0x1fe:0x200] = b"\x55\xaa"
    hdr[0x201] = 0x6a                                # the header runs to 0x26c
    hdr[0x202:0x206] = b"HdrS"
    hdr[0x206:0x208] = struct.pack("<H", 0x20f)      # boot protocol 2.15
    hdr[0x22c:0x230] = struct.pack("<I", 0x7fffffff) # initrd_addr_max
    hdr[0x236:0x238] = struct.pack("<H", 1)          # XLF_KERNEL_64
    hdr[0x258:0x260] = struct.pack("<Q", 0x100000)   # pref_address
    hdr[0x260:0x264] = struct.pack("<I", 0x100000)   # init_size
    hdr[1024:] = bytes((i * 7) & 0xff for i in range(512))
    return bytes(hdr)


def note(name, kind, desc_bytes):
    n = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(n), len(desc_bytes), kind) + pad(n) + pad(desc_bytes)


def pvh_elf(paddr):
    notes = note(b"Xen", 18, struct.pack("<I", 0x100000)) + note(b"Linux", 6, b"6.1\0")
    code = bytes(range(64))
    eh = bytearray(64)
    eh[0:4] = b"\x7fELF"
    eh[4], eh[5], eh[6] = 2, 1, 1
    eh[16:18] = struct.pack("<H", 2)
    eh[18:20] = struct.pack("<H", 62)
    eh[32:40] = struct.pack("<Q", 64)                # e_phoff
    eh[54:56] = struct.pack("<H", 56)
    eh[56:58] = struct.pack("<H", 2)
    code_at = 64 + 2 * 56
    notes_at = code_at + len(code)
    ph_load = struct.pack("<IIQQQQQQ", 1, 5, code_at, paddr, paddr, len(code), 0x2000, 0x1000)
    ph_note = struct.pack("<IIQQQQQQ", 4, 4, notes_at, 0, 0, len(notes), len(notes), 4)
    return bytes(eh) + ph_load + ph_note + code + notes


write("kernel_loader", "bzimage", b"\x02" + struct.pack("<I", 0x3000) + bzimage())
write("kernel_loader", "pvh", b"\x01" + struct.pack("<I", 0x10000) + pvh_elf(0x100000))
write("kernel_loader", "pvh-high", b"\x81" + struct.pack("<I", 0) + pvh_elf(0x100001000))

# --- switch_frame: rule count, 24-byte rules, then frames (u16 length + bytes).
def rule(mask, pick=0, ethertype=0, src=(b"\0" * 4, 0), dst=(b"\0" * 4, 0), proto=0,
         sport=(0, 0), dport=(0, 0)):
    return (struct.pack("<HBH", mask, pick, ethertype) + src[0] + bytes([src[1]]) + dst[0]
            + bytes([dst[1]]) + bytes([proto]) + struct.pack("<HHHH", *sport, *dport))


PROTO, SPORT, DPORT, ETHER, SRC_IP, DST_IP = 1 << 9, 1 << 10, 1 << 11, 1 << 6, 1 << 7, 1 << 8
DROP, RATE, DST_DOMAIN = 1 << 12, 3 << 12, 1 << 3
rules = [
    rule(PROTO | DPORT | DROP | DST_DOMAIN, pick=0x40, proto=0, dport=(22, 22)),  # drop tcp/22 to b
    rule(PROTO | DPORT, proto=1, dport=(53, 53)),                                 # accept udp/53
    rule(SRC_IP | DROP, src=(b"\x0a\0\0\0", 8)),                                  # drop 10/8
    rule(ETHER | RATE, pick=50, ethertype=1, proto=40),                           # rate-limit IPv6
]
A, B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def eth(ethertype, payload, dst=B, src=A):
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4(proto, l4, frag=0x4000, src=b"\xc0\xa8\0\1"):
    return struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0) + src + b"\xc0\xa8\0\2" + l4


def ipv6(nxt, body):
    return struct.pack(">IHBB", 0x60000000, len(body), nxt, 64) + b"\xfd" + bytes(15) + b"\xfd" + bytes(14) + b"\2" + body


tcp22 = struct.pack(">HHIIBBHHH", 40000, 22, 0, 0, 0x50, 2, 0xffff, 0, 0)
udp53 = struct.pack(">HHHH", 5353, 53, 8, 0)
chain = b"".join(bytes([60, 0, 1, 4, 0, 0, 0, 0]) for _ in range(9))[:-8] + bytes([6, 0, 1, 4, 0, 0, 0, 0]) + tcp22
frames = [
    eth(0x0806, bytes(28), dst=b"\xff" * 6),
    eth(0x0800, ipv4(6, tcp22)),
    eth(0x0800, ipv4(6, tcp22, frag=0x2000)),                 # first fragment
    eth(0x0800, ipv4(6, tcp22, frag=0x0003)),                 # a later one
    eth(0x0800, ipv4(17, udp53, src=b"\x0a\0\0\1")),
    eth(0x0800, ipv4(6, tcp22[:3])),                          # truncated TCP
    eth(0x86dd, ipv6(60, chain)),                             # 9 extension headers
    eth(0x86dd, ipv6(44, bytes([6, 0, 0, 0x11, 0, 0, 0, 1]) + tcp22)),
    eth(0x8100, struct.pack(">HH", 5, 0x0800) + ipv4(17, udp53)),
]
write("switch_frame", "rules-and-frames",
      bytes([len(rules)]) + b"".join(rules) + b"".join(struct.pack("<H", len(f)) + f for f in frames))

# --- device_state: flags byte (device in bits 0-1; bit 7: frame the state here), the state's
# length (u16), the state (docs/formats.md, "Device state"), then guest memory. Seeds: each
# device saved live, framed and as a bare payload; a VIF holding a frame and with one pending.
VERSION_1, EVENT_IDX = 1 << 32, 1 << 29


def queue_record(max_size, base, ready=True, next_avail=0, next_used=0):
    return struct.pack("<HHBQQQHHH", max_size, 8, (1 if ready else 0) | 2, base, base + 0x200,
                       base + 0x400, next_avail, next_used, next_used)


def device_payload(device_id, offered, queues, section):
    p = struct.pack("<IQIQIIIII", device_id, offered | VERSION_1 | EVENT_IDX, 0xf,
                    VERSION_1 | EVENT_IDX, 0, 0, 0, 0, 3)
    p += struct.pack("<I", 0)                     # no failure message
    p += struct.pack("<H", len(queues)) + b"".join(queues)
    return p + struct.pack("<I", len(section)) + section


def framed(payload):
    head = b"VSLDEVST" + struct.pack("<II", 1, len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


def state_input(kind, state, memory=b"", seal=False):
    return bytes([kind | (0x80 if seal else 0)]) + struct.pack("<H", len(state)) + state + memory


rng = device_payload(4, 0, [queue_record(64, 0x1000)], b"")
block_section = struct.pack("<QBHQQQQ", 32, 0, 0, 1 << 20, struct.unpack("<Q", struct.pack("<d", 1000.0))[0], 0, 0)
block = device_payload(2, (1 << 2) | (1 << 9), [queue_record(256, 0x1000)], block_section)
frame60 = bytes(range(60))
# The VIF holds transmit chain 0 (one 72-byte buffer at 0x3000: header and a 60-byte frame)
# and has one frame waiting for a receive buffer.
net_section = struct.pack("<BH", 1 | 4, 0) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack("<H", 1) \
    + struct.pack("<I", len(frame60)) + frame60
net = device_payload(1, (1 << 5) | (1 << 16),
                     [queue_record(256, 0x1000), queue_record(256, 0x2000, next_avail=1)],
                     net_section)
memory = bytearray(0x4000)
struct.pack_into("<QIHH", memory, 0x2000, 0x3000, 72, 0, 0)
memory[0x3000 + 12:0x3000 + 72] = frame60
for name, kind, payload in [("rng", 0, rng), ("block", 1, block), ("net", 2, net)]:
    write("device_state", name, state_input(kind, framed(payload), bytes(memory)))
    write("device_state", name + "-payload", state_input(kind, payload, bytes(memory), seal=True))


# --- snapshot: byte 0 bit 0 set: records (kind u8, length u16, payload) that the target frames
# with the header and checksums. A one-vCPU domain of 16 MiB: its specification, VM and vCPU
# state of zeros in this KVM's structure sizes, a UART, no device (as the records go; a real
# domain has its entropy device and balloon), two pages of memory and the end.
def rec(kind, payload):
    return struct.pack("<BH", kind, len(payload)) + payload


def sized(*sizes):
    return b"".join(struct.pack("<I", n) + b"\0" * n for n in sizes)


spec = b'{"name":"web","kernel":"/k","memory":"16M"}'
cpuid = struct.pack("<I", 2) + struct.pack("<7I", 1, 0, 0, 0x806f8, 0x800, 0x7ffafbbf, 0x178bfbff) \
    + struct.pack("<7I", 7, 0, 1, 0, 0x29c6fbf, 0, 0)
vm = sized(520, 520, 520, 112, 48) + struct.pack("<Q", 1796000000000000000)
vcpu = struct.pack("<I", 0) + sized(4, 144, 312, 4096, 392, 128, 1024, 64) \
    + struct.pack("<I", 1) + struct.pack("<IQ", 0x10, 12345) + struct.pack("<I", 2000000)
serial = bytes(9) + struct.pack("<I", 2) + b"hi"
memory = struct.pack("<Q", 0x1000) + b"\x5a" * 4096
write("snapshot", "framed",
      b"\x01" + rec(1, spec) + rec(8, cpuid) + rec(2, vm) + rec(3, vcpu) + rec(4, serial) + rec(6, memory)
      + rec(7, b""))
# A migration stream (bit 1): its TSC frequency, a page, then it zeroed and another sent, then
# the machine.
write("snapshot", "migration",
      b"\x03" + rec(1, spec) + rec(8, cpuid) + rec(11, struct.pack("<I", 2000000)) + rec(6, memory) + rec(9, struct.pack("<QQ", 0x1000, 1))
      + rec(6, struct.pack("<Q", 0x2000) + b"\xa5" * 4096) + rec(2, vm) + rec(3, vcpu) + rec(4, serial)
      + rec(7, b""))
write("snapshot", "framed-device",
      b"\x01" + rec(1, spec) + rec(8, cpuid) + rec(2, vm) + rec(3, vcpu) + rec(4, serial)
      + rec(5, struct.pack("<I", 0) + b"VSLDEVST") + rec(7, b""))
