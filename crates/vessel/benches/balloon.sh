# L1 side of benches/balloon.rs: one VMM ($1: vessel, qemu, or qemu-reporting) runs a Linux
# guest of 256 MiB whose /scripts/memfill fills 150 MiB and frees it; the host reads the VMM
# process's RSS after each, then asks the balloon for 128 MiB (the guest keeps 128) and for
# all of it back, timing each until the guest's driver says it is done. Prints KEY=VALUE
# lines; decides nothing.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
CMDLINE="console=ttyS0 quiet panic=-1 vscript=memfill"
rss() { awk '/^VmRSS:/ {print $2}' /proc/$1/status; }
now() { cut -d' ' -f1 /proc/uptime; }
case $1 in
vessel)
    export VESSEL_SOCKET=/tmp/api.sock
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off 2>/tmp/daemon.log &
    daemon=$!
    trap 'kill $daemon 2>/dev/null' EXIT
    i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    cat > /tmp/a.json <<JSON
{"name": "a", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "256M",
 "cmdline": "$CMDLINE", "free_page_reporting": true}
JSON
    vessel create /tmp/a.json >/dev/null && echo CREATED=a
    pid=$(vessel info a | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
    console() { vessel api GET /v1/domains/a/console; }
    target() { vessel mem-set a ${1}M >/dev/null; }
    kept_mib() {
        b=$(vessel info a | sed -n 's/^ *"balloon_bytes": \([0-9]*\).*/\1/p')
        echo $(( 256 - ${b:-0} / 1048576 ))
    }
    ;;
qemu|qemu-reporting)
    prop=; [ $1 = qemu-reporting ] && prop=,free-page-reporting=on
    mkfifo /tmp/mon.in /tmp/mon.out
    qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -smp 1 -display none \
        -no-reboot -kernel /assets/vmlinux -initrd /tmp/initrd -append "$CMDLINE" \
        -serial file:/tmp/console -monitor pipe:/tmp/mon \
        -device virtio-balloon-device$prop </dev/null >/tmp/qemu.log 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null' EXIT
    exec 3>/tmp/mon.in
    cat /tmp/mon.out > /tmp/mon.log &
    console() { cat /tmp/console 2>/dev/null; }
    target() { echo "balloon $1" >&3; }
    kept_mib() {
        echo "info balloon" >&3; sleep 0.2
        grep -ao 'actual=[0-9]*' /tmp/mon.log | tail -1 | cut -d= -f2
    }
    ;;
*) echo "unknown VMM $1"; exit 1 ;;
esac

# until_console TEXT: waits up to 300 s for TEXT on the guest's console.
until_console() {
    i=0; until console | grep -q "$1"; do
        i=$((i+1)); [ $i -ge 300 ] && { echo "NO_$1"; return 1; }; sleep 1
    done
}
# until_kept MIB T0: waits up to 180 s until the guest keeps MIB; prints the seconds since T0.
until_kept() {
    t0=$2; i=0
    until [ "$(kept_mib)" = "$1" ]; do
        i=$((i+1)); [ $i -ge 900 ] && { echo never; return 1; }; sleep 0.2
    done
    awk -v a=$t0 -v b=$(now) 'BEGIN {printf "%.2f\n", b - a}'
}

until_console GUEST-FILLED || exit 0
sleep 2; echo RSS_FILLED_KIB=$(rss $pid)
until_console GUEST-FREED || exit 0
sleep 15; echo RSS_FREED_KIB=$(rss $pid)
t0=$(now); target 128; echo INFLATE_S=$(until_kept 128 $t0)
sleep 2; echo RSS_INFLATED_KIB=$(rss $pid)
t0=$(now); target 256; echo DEFLATE_S=$(until_kept 256 $t0)
echo VMM_DONE=$1
