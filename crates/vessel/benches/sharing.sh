# L1 side of benches/sharing.rs: one VMM ($1: vessel or qemu) runs three Linux guests of 224 MiB
# in an L1 short of memory; each guest's /scripts/samefill writes the same 128 MiB. KSM merges
# what is identical: under Vessel as its daemon's page sharing steers it, under QEMU (guest RAM
# mergeable, its default) with KSM started at the kernel's own rate, as a host administrator
# would. Prints what KSM saved every 10 s for 120 s after the guests filled, and the VMMs' RSS;
# decides nothing.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
CMDLINE="console=ttyS0 quiet panic=-1 vscript=samefill"
GUESTS="1 2 3"
now() { cut -d' ' -f1 /proc/uptime; }
saved_mib() {
    # ksm_zero_pages is newer than L1's kernel (6.1): none there.
    zero=$(cat /sys/kernel/mm/ksm/ksm_zero_pages 2>/dev/null || echo 0)
    echo $((($(cat /sys/kernel/mm/ksm/pages_sharing) + zero) / 256))
}
avail_pct() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {printf "%d", a * 100 / t}' /proc/meminfo; }
rss_total() {
    t=0; for p in $pids; do t=$((t + $(awk '/^VmRSS:/ {print $2}' /proc/$p/status))); done; echo $t
}
case $1 in
vessel)
    export VESSEL_SOCKET=/tmp/api.sock
    # A pool that holds all three guests: page sharing alone is measured, not the balloons
    # (the default pool, L1's memory less 256 MiB, would take memory back from them).
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --memory-pool 2G \
        2>/tmp/daemon.log &
    daemon=$!
    trap 'kill $daemon 2>/dev/null' EXIT
    i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    pids=
    for g in $GUESTS; do
        cat > /tmp/g$g.json <<JSON
{"name": "g$g", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "224M",
 "cmdline": "$CMDLINE"}
JSON
        vessel create /tmp/g$g.json >/dev/null && echo CREATED=g$g
        pids="$pids $(vessel info g$g | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')"
    done
    console() { vessel api GET /v1/domains/g$1/console; }
    ;;
qemu)
    echo 1 > /sys/kernel/mm/ksm/run
    pids=
    for g in $GUESTS; do
        qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 224 -smp 1 -display none \
            -no-reboot -kernel /assets/vmlinux -initrd /tmp/initrd -append "$CMDLINE" \
            -serial file:/tmp/console$g </dev/null >/tmp/qemu$g.log 2>&1 &
        pids="$pids $!"
    done
    trap 'kill $pids 2>/dev/null' EXIT
    console() { cat /tmp/console$1 2>/dev/null; }
    ;;
*) echo "unknown VMM $1"; exit 1 ;;
esac

for g in $GUESTS; do
    i=0; until console $g | grep -q GUEST-FILLED; do
        i=$((i+1))
        [ $i -ge 600 ] && { echo "NO_FILL=$g"; console $g | tail -n 20 | sed "s/^/CONSOLE_$g /"; exit 0; }
        sleep 1
    done
done
echo KSM_SETTINGS=$(cat /sys/kernel/mm/ksm/pages_to_scan)/$(cat /sys/kernel/mm/ksm/sleep_millisecs)ms
echo FILLED_AVAIL_PCT=$(avail_pct)
echo FILLED_SAVED_MIB=$(saved_mib)
t0=$(now)
for s in 10 20 30 40 50 60 70 80 90 100 110 120; do
    while [ $(awk -v a=$t0 -v b=$(now) -v s=$s 'BEGIN {print (b - a < s)}') = 1 ]; do sleep 0.5; done
    echo "AT=$s SAVED_MIB=$(saved_mib) AVAIL_PCT=$(avail_pct) SCAN=$(cat /sys/kernel/mm/ksm/pages_to_scan)"
done
echo RSS_TOTAL_KIB=$(rss_total)
[ $1 = vessel ] && vessel mem | sed 's/^/MEM /'
echo VMM_DONE=$1
