# L1 side of benches/migration.rs: one VMM ($1: vessel or qemu) live-migrates a Linux guest of
# 256 MiB between two of its own instances in this L1, over TCP on the loopback; the guest
# ($2: idle or busy) wrote 128 MiB of its memory (not zeros) and then idles (samefill) or
# keeps dirtying a 32 MiB working set at up to 40 MiB/s (dirtier). Both with a 60 ms downtime
# target and no bandwidth cap. Vessel: two daemons, `vessel migrate-receive` on one and
# `vessel migrate` on the other, whose report gives the rounds, bytes, downtime and total.
# QEMU: a second QEMU with `-incoming tcp:`, the first one's monitor `migrate_set_parameter
# downtime-limit 60` and `max-bandwidth` lifted, `migrate -d`, then `info migrate` until it
# completes (its total time, downtime and transferred bytes). Prints KEY=VALUE lines; decides
# nothing.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
case $2 in
idle) SCRIPT=samefill ;;
busy) SCRIPT=dirtier ;;
*) echo "unknown guest $2"; exit 1 ;;
esac
CMDLINE="console=ttyS0 quiet panic=-1 vscript=$SCRIPT"
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a=$1 -v b=$(now) 'BEGIN {printf "%.3f\n", b - a}'; }
# until_true SECONDS COMMAND...: polls COMMAND every 0.1 s, at most SECONDS.
until_true() {
    n=$(( $1 * 10 )); shift; i=0
    until "$@"; do i=$((i+1)); [ $i -ge $n ] && return 1; sleep 0.1; done
}
# The two instances talk over L1's loopback.
ip link set lo up
case $1 in
vessel)
    A=/tmp/a.sock
    B=/tmp/b.sock
    export VESSEL_SOCKET=$A
    vessel daemon --state-dir /tmp/sa --socket $A --page-sharing off --cgroup-parent vessel-a \
        2>/tmp/daemon.log &
    da=$!
    vessel daemon --state-dir /tmp/sb --socket $B --page-sharing off --cgroup-parent vessel-b \
        2>/tmp/daemon-b.log &
    db=$!
    trap 'kill $da $db 2>/dev/null' EXIT
    i=0; while { [ ! -S $A ] || [ ! -S $B ]; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    # The uncompressed kernel, as QEMU's below: a bzImage leaves its compressed copy in RAM.
    vessel create --name a --kernel /assets/vmlinux --initrd /tmp/initrd --memory 256M \
        --cmdline "$CMDLINE" >/dev/null && echo CREATED=a
    filled() { vessel api GET /v1/domains/a/console | grep -q GUEST-FILLED; }
    if ! until_true 300 filled; then
        # What the guest and its domain were doing: its console's end, what the daemon says
        # of it, where each thread of its process sleeps in L1's kernel, the daemon's log.
        echo NOT_FILLED
        timeout 60 vessel api GET /v1/domains/a/console | tr -d '\r' | tail -n 30 \
            | sed 's/^/STUCK_CONSOLE /'
        timeout 60 vessel info a > /tmp/info.json 2>&1
        sed 's/^/STUCK_INFO /' /tmp/info.json
        pid=$(tr -d ' ,' < /tmp/info.json | sed -n 's/^"pid":\([0-9]*\)$/\1/p' | head -n 1)
        for t in /proc/${pid:-none}/task/*; do
            [ -r $t/stat ] || continue
            echo "STUCK_THREAD $(cat $t/comm) $(sed 's/.*) //' $t/stat | cut -d' ' -f1)" \
                "$(cat $t/wchan) $(head -n 4 $t/stack 2>/dev/null | tr '\n' ' ')"
        done
        tail -n 20 /tmp/daemon.log | sed 's/^/STUCK_DAEMON /'
        tail -n 10 /tmp/sa/logs/a.log | sed 's/^/STUCK_LOG /'
        exit 0
    fi
    sleep 5
    VESSEL_SOCKET=$B vessel migrate-receive tcp:127.0.0.1:7500 --token bench \
        >/tmp/recv.out 2>&1 &
    receiver=$!
    sleep 1
    t=$(now)
    vessel api POST /v1/domains/a/migrate \
        '{"to":"tcp:127.0.0.1:7500","token":"bench","downtime_ms":60}' > /tmp/report.json 2>&1
    echo WALL_S=$(since $t)
    wait $receiver
    tr -d ' \n' < /tmp/report.json | sed 's/[{}]//g' | tr ',' '\n' | tr -d '"' | sed 's/:/=/' \
        | sed 's/^/REPORT_/'
    echo
    VESSEL_SOCKET=$B vessel info a | grep -q '"state": "running"' && echo MIGRATED=running
    grep "migration round\|hand-over" /tmp/sa/logs/a.log 2>/dev/null | tail -n 4 | sed 's/^/ROUND /'
    grep "migration received" /tmp/sb/logs/a.log 2>/dev/null | sed 's/^/RECEIVED /'
    ;;
qemu)
    mkfifo /tmp/mon.in /tmp/mon.out /tmp/mon2.in /tmp/mon2.out
    DEVICES="-enable-kvm -M microvm -cpu host -m 256 -smp 1 -display none -no-reboot
        -kernel /assets/vmlinux -initrd /tmp/initrd"
    # shellcheck disable=SC2086
    qemu-system-x86_64 $DEVICES -append "$CMDLINE" -serial file:/tmp/console \
        -monitor pipe:/tmp/mon </dev/null >/tmp/qemu.log 2>&1 &
    pid=$!
    # shellcheck disable=SC2086
    qemu-system-x86_64 $DEVICES -append "$CMDLINE" -serial file:/tmp/console2 \
        -monitor pipe:/tmp/mon2 -incoming tcp:127.0.0.1:4444 </dev/null >/tmp/qemu2.log 2>&1 &
    pid2=$!
    trap 'kill $pid $pid2 2>/dev/null' EXIT
    exec 3>/tmp/mon.in
    cat /tmp/mon.out > /tmp/mon.log &
    exec 4>/tmp/mon2.in
    cat /tmp/mon2.out > /tmp/mon2.log &
    echo CREATED=a
    filled() { grep -q GUEST-FILLED /tmp/console 2>/dev/null; }
    if ! until_true 300 filled; then
        echo NOT_FILLED
        tail -n 30 /tmp/console | sed 's/^/STUCK_CONSOLE /'
        exit 0
    fi
    sleep 5
    echo "migrate_set_parameter downtime-limit 60" >&3
    echo "migrate_set_parameter max-bandwidth 100G" >&3
    sleep 0.5
    done_migrating() {
        echo "info migrate" >&3; sleep 0.2
        grep -q "Migration status: \(completed\|failed\)" /tmp/mon.log
    }
    t=$(now)
    echo "migrate -d tcp:127.0.0.1:4444" >&3
    until_true 240 done_migrating || { echo NOT_CONVERGED; echo migrate_cancel >&3; }
    echo WALL_S=$(since $t)
    sleep 0.5
    # The last `info migrate`'s figures.
    awk '/Migration status/ {s = $0} /^total time:/ {t = $3} /^downtime:/ {d = $2}
        /^transferred ram/ {b = $3} /^dirty sync count/ {r = $4}
        END {print s; printf "REPORT_total_ms=%s\nREPORT_downtime_ms=%s\nREPORT_bytes=%d\nREPORT_rounds=%s\n", t, d, b * 1024, r}' \
        /tmp/mon.log | tr -d '\r'
    status() { echo "info status" >&4; sleep 0.1; grep -ao "VM status: [a-z ()-]*" /tmp/mon2.log | tail -1; }
    running() { status | grep -q running; }
    until_true 60 running && echo MIGRATED=running
    ;;
*) echo "unknown VMM $1"; exit 1 ;;
esac
echo VMM_DONE=$1
