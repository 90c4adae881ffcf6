#!/usr/bin/env bash
# Writes the seed inputs of the qcow2_check, qcow2_disk and vslcow fuzz targets into
# fuzz/seeds/<target>/: small qcow2 images made by qemu-img and qemu-io (512-byte clusters so
# they stay a few KiB): empty, with data, compressed, with an internal snapshot, 1-bit and
# 64-bit refcounts, version 2, naming a backing file; and a small VSLCOW01 overlay.
# Needs qemu-img and qemu-io (qemu-utils) and python3. Run from anywhere; output is committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$here/qcow2_check" "$here/qcow2_disk" "$here/vslcow"

mk() { qemu-img create -q -f qcow2 -o "cluster_size=512,$2" "$work/$1" 64K; }
mk empty.qcow2 compat=1.1
mk data.qcow2 compat=1.1
qemu-io -f qcow2 -c "write -P 0x5a 1k 2k" -c "write -P 1 40k 512" "$work/data.qcow2" >/dev/null
mk v2.qcow2 compat=0.10
qemu-io -f qcow2 -c "write -P 7 0 1k" "$work/v2.qcow2" >/dev/null
mk rc1.qcow2 refcount_bits=1
qemu-io -f qcow2 -c "write -P 9 8k 1k" "$work/rc1.qcow2" >/dev/null
mk rc64.qcow2 refcount_bits=64
qemu-io -f qcow2 -c "write -P 9 8k 1k" "$work/rc64.qcow2" >/dev/null
cp "$work/data.qcow2" "$work/snap.qcow2"
qemu-img snapshot -c s1 "$work/snap.qcow2"
qemu-io -f qcow2 -c "write -P 3 1k 512" "$work/snap.qcow2" >/dev/null
qemu-img convert -c -f qcow2 -O qcow2 -o cluster_size=512 "$work/data.qcow2" "$work/compressed.qcow2"
qemu-img create -q -f raw "$work/base.raw" 64K
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw "$work/backed.qcow2"

for f in empty data v2 rc1 rc64 snap compressed backed; do
    cp "$work/$f.qcow2" "$here/qcow2_check/$f"
done
# qcow2_disk: u16 image length, the image, then operations (kind, u32 offset, length byte).
python3 - "$work" "$here/qcow2_disk" <<'PY'
import struct, sys, os
work, out = sys.argv[1], sys.argv[2]
ops = bytes([1, 2, 0, 0, 0, 2,   0, 0, 0, 0, 0, 4,   2, 1, 0, 0, 0, 8,   3, 0, 0, 0, 0, 0,
             1, 80, 0, 0, 0, 1,  0, 127, 0, 0, 0, 2])
for name in ["empty", "data", "v2", "rc1", "snap", "compressed"]:
    img = open(os.path.join(work, name + ".qcow2"), "rb").read()
    open(os.path.join(out, name), "wb").write(struct.pack("<H", len(img)) + img + ops)
PY
# vslcow: the header and bitmap of a 128 KiB overlay with no backing file and nothing allocated
# (layout: docs/formats.md); the fuzzer grows it.
python3 - "$here/vslcow/small" <<'PY'
import struct, sys
size, bitmap_off, bitmap_len, data_off = 128 * 1024, 4096, 1, 65536
h = bytearray(4096)
h[0:8] = b"VSLCOW01"
struct.pack_into("<IIII", h, 8, 1, 4096, 16, 0)
struct.pack_into("<QQQQQI", h, 24, size, bitmap_off, bitmap_len, data_off, 0, 0)
s = 0xcbf29ce484222325
for b in h[:4088]:
    s = ((s ^ b) * 0x100000001b3) & 0xffffffffffffffff
struct.pack_into("<Q", h, 4088, s)
open(sys.argv[1], "wb").write(bytes(h) + b"\0")
PY
ls -l "$here/qcow2_check" "$here/qcow2_disk" "$here/vslcow"
