#!/usr/bin/env python3
"""Writes seed inputs for fuzz_targets/virtqueue.rs into seeds/virtqueue/: well-formed rings with
long direct chains, indirect tables, and a direct chain ending in an indirect table, so the
fuzzer starts from deep chain walks instead of finding them by chance. The input layout is
described at the top of the fuzz target. Use the seeds with:
    RUSTC_BOOTSTRAP=1 cargo fuzz run virtqueue fuzz/corpus/virtqueue fuzz/seeds/virtqueue
"""
import os
import struct

NEXT, WRITE, INDIRECT = 1, 2, 4
DESC, AVAIL, USED = 0x000, 0x100, 0x128  # fits queue size 16; buffers from 0x200


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def op(code, a=0, b=0, c=0):
    return bytes([code, a, b, c])


def seed(event_idx, avail_flags, used_event, ops):
    mem = bytearray(0x480)
    table = [
        # head 0: two readable, two writable buffers
        desc(0x200, 8, NEXT, 1), desc(0x208, 8, NEXT, 2),
        desc(0x210, 16, WRITE | NEXT, 3), desc(0x220, 16, WRITE),
        # head 4: an indirect table of three
        desc(0x300, 48, INDIRECT),
        # head 5: one direct buffer, then an indirect table of 15 (16 buffers: the limit)
        desc(0x270, 8, NEXT, 6), desc(0x340, 15 * 16, INDIRECT),
    ]
    mem[DESC:DESC + 16 * len(table)] = b"".join(table)
    mem[0x300:0x330] = desc(0x240, 8, NEXT, 1) + desc(0x248, 8, NEXT, 2) + desc(0x250, 32, WRITE)
    chain15 = [desc(0x440 + 4 * i, 4, (WRITE if i >= 8 else 0) | (NEXT if i < 14 else 0), i + 1)
               for i in range(15)]
    mem[0x340:0x340 + 15 * 16] = b"".join(chain15)
    ring = [0, 4, 5]
    mem[AVAIL:AVAIL + 4 + 2 * len(ring)] = struct.pack("<HH", avail_flags, len(ring)) + b"".join(
        struct.pack("<H", h) for h in ring)
    mem[AVAIL + 4 + 2 * 16:AVAIL + 6 + 2 * 16] = struct.pack("<H", used_event)
    mem[0x200:0x210] = b"request-header.."
    header = bytes([event_idx, 4]) + b"\0" + struct.pack("<HHH", DESC, AVAIL, USED)
    return header + bytes([len(ops)]) + b"".join(ops) + bytes(mem)


OPS = [
    op(0), op(0), op(0),           # pop the three chains
    op(1, 0, 0, 8), op(2, 0, 0, 8),  # read and write the first
    op(1, 2, 1, 16), op(2, 2, 0, 16),
    op(3, 0, 0, 16), op(5),        # complete one, ask about an interrupt
    op(7), op(6),                  # disable, enable notifications
    op(8, 0x01, 0x02, 4),          # guest bumps avail.idx (the byte at 0x102) to 4
    op(10), op(3, 0, 1, 0), op(3, 0, 2, 0), op(5), op(9, 0), op(10),
]

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "virtqueue")
os.makedirs(here, exist_ok=True)
for name, data in [
    ("event-idx", seed(1, 0, 0, OPS)),
    ("no-interrupt", seed(0, 1, 0, OPS)),
    ("used-event-ahead", seed(1, 0, 2, OPS)),
]:
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)
