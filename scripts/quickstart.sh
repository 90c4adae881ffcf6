#!/usr/bin/env bash
# One command from a fresh machine to a booted guest: install what Vessel needs, build it and the
# default guest (Debian's cloud kernel and a busybox initramfs), and boot that guest with its
# serial console on this terminal; the guest prints a few facts about itself and powers off.
# Where this host's KVM cannot boot a stock kernel (kvm_pvm), Vessel runs inside the host box:
# QEMU TCG with an SVM CPU, whose Linux loads kvm-amd and gives Vessel a real KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p vessel
assets=.cache/assets
cmdline='console=ttyS0 quiet vcmd="uname -sr; echo cpus: $(nproc); grep MemTotal /proc/meminfo"'
if [ -d /sys/module/kvm_pvm ]; then
  echo "quickstart: this host's /dev/kvm is kvm_pvm, which cannot boot an unmodified Linux kernel;"
  echo "quickstart: running Vessel inside the host box (real KVM under QEMU TCG, about a minute)."
  cargo run --release -q -p testbox --example run-in-box -- target/release/vessel \
    run --kernel /assets/bzImage --initrd /assets/initramfs.cpio.gz --vcpus 2 --memory 256M \
    --cmdline "$cmdline"
else
  exec target/release/vessel run --kernel "$assets/bzImage" --initrd "$assets/initramfs.cpio.gz" \
    --vcpus 2 --memory 256M --cmdline "$cmdline"
fi
