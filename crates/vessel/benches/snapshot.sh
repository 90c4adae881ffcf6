# L1 side of benches/snapshot.rs: one VMM ($1: vessel or qemu) runs a Linux guest of 256 MiB
# whose /scripts/samefill writes 128 MiB of its tmpfs (not zeros) and idles; the guest is then
# saved to a file (the VMM stops it) and restored from that file, each timed, the file's size
# read. Vessel: `vessel save` and `vessel restore` through its daemon. QEMU: the monitor's
# `stop` and `migrate "exec:cat > FILE"` until `info migrate` says completed, then a new QEMU
# with `-incoming "exec:cat FILE"` until it has loaded it, and `cont` until `info status` says
# running (QEMU's way to save a guest to a file and bring it back, as virsh drives it). Prints KEY=VALUE lines; decides nothing.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
CMDLINE="console=ttyS0 quiet panic=-1 vscript=samefill"
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a=$1 -v b=$(now) 'BEGIN {printf "%.2f\n", b - a}'; }
# until_true SECONDS COMMAND...: polls COMMAND every 0.1 s, at most SECONDS.
until_true() {
    n=$(( $1 * 10 )); shift; i=0
    until "$@"; do i=$((i+1)); [ $i -ge $n ] && return 1; sleep 0.1; done
}
case $1 in
vessel)
    export VESSEL_SOCKET=/tmp/api.sock
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off 2>/tmp/daemon.log &
    daemon=$!
    trap 'kill $daemon 2>/dev/null' EXIT
    i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    vessel create --name a --kernel /assets/bzImage --initrd /tmp/initrd --memory 256M \
        --cmdline "$CMDLINE" >/dev/null && echo CREATED=a
    filled() { vessel api GET /v1/domains/a/console | grep -q GUEST-FILLED; }
    until_true 300 filled || { echo NOT_FILLED; exit 0; }
    sleep 2
    t=$(now); vessel save a /tmp/a.snap >/dev/null && echo SAVE_S=$(since $t)
    echo SNAPSHOT_BYTES=$(wc -c < /tmp/a.snap)
    t=$(now); vessel restore /tmp/a.snap >/dev/null && echo RESTORE_S=$(since $t)
    vessel info a | grep -q '"state": "running"' && echo RESTORED=running
    # What a start costs without a snapshot: the same domain created from its kernel (the
    # API answers once its machine is built, before it boots).
    t=$(now); vessel create --name b --kernel /assets/bzImage --initrd /tmp/initrd \
        --memory 256M --cmdline "$CMDLINE" >/dev/null && echo CREATE_S=$(since $t)
    ;;
qemu)
    mkfifo /tmp/mon.in /tmp/mon.out /tmp/mon2.in /tmp/mon2.out
    DEVICES="-enable-kvm -M microvm -cpu host -m 256 -smp 1 -display none -no-reboot
        -kernel /assets/vmlinux -initrd /tmp/initrd"
    # shellcheck disable=SC2086
    qemu-system-x86_64 $DEVICES -append "$CMDLINE" -serial file:/tmp/console \
        -monitor pipe:/tmp/mon </dev/null >/tmp/qemu.log 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null' EXIT
    exec 3>/tmp/mon.in
    cat /tmp/mon.out > /tmp/mon.log &
    echo CREATED=a
    filled() { grep -q GUEST-FILLED /tmp/console 2>/dev/null; }
    until_true 300 filled || { echo NOT_FILLED; exit 0; }
    sleep 2
    migrated() { echo "info migrate" >&3; sleep 0.1; grep -q "status: completed" /tmp/mon.log; }
    t=$(now)
    echo stop >&3
    echo 'migrate "exec:cat > /tmp/q.snap"' >&3
    until_true 300 migrated && echo SAVE_S=$(since $t)
    echo quit >&3; wait $pid
    echo SNAPSHOT_BYTES=$(wc -c < /tmp/q.snap)
    t=$(now)
    # shellcheck disable=SC2086
    qemu-system-x86_64 $DEVICES -append "$CMDLINE" -serial file:/tmp/console2 \
        -monitor pipe:/tmp/mon2 -incoming "exec:cat /tmp/q.snap" </dev/null >/tmp/qemu2.log 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null' EXIT
    exec 4>/tmp/mon2.in
    cat /tmp/mon2.out > /tmp/mon2.log &
    status() { echo "info status" >&4; sleep 0.05; grep -ao "VM status: [a-z ()-]*" /tmp/mon2.log | tail -1; }
    # Loaded once it is no longer "paused (inmigrate)". A guest stopped when it was saved comes
    # back stopped (QEMU carries the run state in the stream): `cont` runs it, as virsh does.
    loaded() { case "$(status)" in ""|*inmigrate*) return 1 ;; esac; }
    until_true 300 loaded || { echo NOT_LOADED; tail -n 5 /tmp/mon2.log | sed 's/^/MONITOR /'; }
    echo "LOADED_STATUS=$(status)"
    case "$(status)" in *running*) ;; *) echo cont >&4 ;; esac
    running() { status | grep -q running; }
    until_true 60 running && echo RESTORE_S=$(since $t) && echo RESTORED=running
    tail -n 5 /tmp/qemu2.log | sed 's/^/QEMU_LOG /'
    ;;
*) echo "unknown VMM $1"; exit 1 ;;
esac
echo VMM_DONE=$1
