# L1 side of benches/sharing.rs: N identical Linux guests ($2) of 128 MiB under one VMM ($1):
#   vessel       `vessel daemon` with its defaults (page sharing on, the pool L1's memory less
#                its margin: nothing to take back), its policy steering KSM;
#   vessel-pool  the same with `--memory-pool` three quarters of what the guests are given
#                (96 MiB each): the pool's free state drives KSM harder and the balloons take
#                back what the guests do not use;
#   qemu         QEMU 7.2 `-M microvm` (guest RAM mergeable, its default) with KSM started at
#                the kernel's own rate, as a host administrator would.
# Each guest boots the same kernel and initramfs and its /scripts/samefill writes the same
# 48 MiB, then idles. Every 10 s for 180 s after the last one filled: what the guests cost L1
# (MemTotal - MemAvailable, less what it was before the first guest), what KSM saved
# (pages_sharing), the share of their memory reclaimed (saved / (cost + saved)), and the CPU
# time ksmd (and Vessel's daemon) used since the start. Decides nothing.
set -u
VMM=$1
N=${2:-10}
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
CMDLINE="console=ttyS0 quiet panic=-1 vscript=samefill vfill=48"
GUESTS=$(seq 1 $N)
now() { cut -d' ' -f1 /proc/uptime; }
used_kib() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}' /proc/meminfo; }
saved_kib() {
    # ksm_zero_pages is newer than L1's kernel (6.1): none there.
    zero=$(cat /sys/kernel/mm/ksm/ksm_zero_pages 2>/dev/null || echo 0)
    echo $((($(cat /sys/kernel/mm/ksm/pages_sharing) + zero) * 4))
}
# cpu_ticks PID: user + system time of a process, in USER_HZ ticks (100 a second on x86).
cpu_ticks() { sed 's/.*) //' /proc/$1/stat | awk '{print $12 + $13}'; }
ksmd=$(for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = ksmd ] && echo ${p#/proc/}; done | head -n 1)
BASE_KIB=$(used_kib)
KSMD0=$(cpu_ticks $ksmd)
echo "BASE_USED_MIB=$((BASE_KIB / 1024)) KSM_DEFAULTS=$(cat /sys/kernel/mm/ksm/pages_to_scan)/$(cat /sys/kernel/mm/ksm/sleep_millisecs)ms"
t_start=$(now)
case $VMM in
vessel|vessel-pool)
    export VESSEL_SOCKET=/tmp/api.sock
    pool=
    [ $VMM = vessel-pool ] && pool="--memory-pool $((N * 96))M"
    # shellcheck disable=SC2086
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET $pool 2>/tmp/daemon.log &
    daemon=$!
    trap 'kill $daemon 2>/dev/null' EXIT
    i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    for g in $GUESTS; do
        cat > /tmp/g$g.json <<JSON
{"name": "g$g", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "128M",
 "cmdline": "$CMDLINE"}
JSON
        vessel create /tmp/g$g.json >/dev/null || echo "CREATE_FAILED=g$g"
    done
    console() { vessel api GET /v1/domains/g$1/console; }
    ;;
qemu)
    echo 1 > /sys/kernel/mm/ksm/run
    pids=
    for g in $GUESTS; do
        qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 128 -smp 1 -display none \
            -no-reboot -kernel /assets/vmlinux -initrd /tmp/initrd -append "$CMDLINE" \
            -serial file:/tmp/console$g </dev/null >/tmp/qemu$g.log 2>&1 &
        pids="$pids $!"
    done
    trap 'kill $pids 2>/dev/null' EXIT
    console() { cat /tmp/console$1 2>/dev/null; }
    ;;
*) echo "unknown VMM $VMM"; exit 1 ;;
esac

for g in $GUESTS; do
    i=0; until console $g | grep -q GUEST-FILLED; do
        i=$((i+1))
        if [ $i -ge 900 ]; then
            echo "NO_FILL=g$g"
            console $g | tail -n 20 | sed "s/^/CONSOLE_$g /"
            if [ $VMM = qemu ]; then
                sed "s/^/QEMU_LOG_$g /" /tmp/qemu$g.log
            else
                # Crashed, or running and stuck (its vCPU's CPU time tells a spin from a halt).
                vessel list | sed 's/^/LIST /'
                tail -n 10 /tmp/state/logs/g$g.log 2>/dev/null | sed "s/^/LOG_$g /"
            fi
            exit 0
        fi
        sleep 1
    done
done
echo "FILLED_AFTER_S=$(awk -v a=$t_start -v b=$(now) 'BEGIN {printf "%.0f", b - a}')"
# sample LABEL: one line of figures.
sample() {
    cost=$(( $(used_kib) - BASE_KIB )); saved=$(saved_kib)
    extra=
    [ $VMM != qemu ] && extra="DAEMON_CPU_S=$(awk -v t=$(cpu_ticks $daemon) 'BEGIN {print t / 100}')"
    echo "$1 COST_MIB=$((cost / 1024)) SAVED_MIB=$((saved / 1024))" \
        "RECLAIMED_PCT=$(awk -v c=$cost -v s=$saved 'BEGIN {printf "%.1f", (c + s > 0 ? 100 * s / (c + s) : 0)}')" \
        "KSMD_CPU_S=$(awk -v t=$(cpu_ticks $ksmd) -v t0=$KSMD0 'BEGIN {print (t - t0) / 100}')" \
        "SCAN=$(cat /sys/kernel/mm/ksm/pages_to_scan)/$(cat /sys/kernel/mm/ksm/sleep_millisecs)" $extra
}
sample "AT=0"
t0=$(now)
for s in $(seq 10 10 180); do
    while [ $(awk -v a=$t0 -v b=$(now) -v s=$s 'BEGIN {print (b - a < s)}') = 1 ]; do sleep 0.5; done
    sample "AT=$s"
done
if [ $VMM != qemu ]; then
    vessel list | awk '$3 == "crashed"' | sed 's/^/CRASHED /'
    vessel mem | sed 's/^/MEM /'
fi
echo VMM_DONE=$VMM
