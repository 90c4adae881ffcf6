# L1 side of crates/vessel/tests/host_swap_linux.rs: host swapping, the memory policy's last
# resort, with real Linux guests. L1 swaps to a zram device. `vessel daemon --memory-pool 320M
# --idle-tax 0` runs a (256 MiB), which writes 160 MiB to its tmpfs while alone (the pool holds
# it). Then b (256 MiB) starts: the targets give each about 150 MiB (the pool less its free
# reserve, halved), but a's guest cannot balloon its tmpfs away, and b writes 110 MiB too, so
# the domains hold more than the pool. The pool goes
# hard or low, and the host pages out what a holds beyond its target (in low, holding a paused
# meanwhile). Then both guests read their data back. Prints KEY=VALUE lines the test checks;
# never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh

echo 512M > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null && swapon /dev/zram0 \
    && echo SWAP=on
grep SwapTotal /proc/meminfo | sed 's/^/L1 /'

vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 \
    --memory-pool 320M --idle-tax 0 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null; swapoff /dev/zram0 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

# field DOMAIN FIELD: a number of the domain's memory object.
field() { api info $1 | sed -n "s/^ *\"$2\": \([0-9]*\).*/\1/p" | head -1; }
create() {
    name=$(echo ab | cut -c$1)
    api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 256M \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$1" \
        --net switch=vsw0 > /dev/null && echo CREATED=$name
}
report() {
    echo "$1 pool: $(api mem | grep '^pool state')"
    for g in a b; do
        api info $g > /dev/null 2>&1 || continue
        echo "$1 $g: state $(api info $g | sed -n 's/^ *"state": "\([a-z]*\)".*/\1/p' | head -1)" \
            "target $(field $g target_bytes) balloon $(field $g balloon_bytes)" \
            "resident $(field $g resident_bytes) swapped $(field $g swapped_bytes)" \
            "$(api info $g | grep -q '"held_for_memory": true' && echo held)"
    done
}
# fill N MIB LINE: guest N writes MIB MiB of LINE to its tmpfs and prints the file's md5.
fill() {
    on $1 "mount -o remount,size=200M /tmp && yes '$3' | head -c $(($2 * 1048576)) > /tmp/fill && md5sum /tmp/fill" | cut -d' ' -f1
}

create 1
reach 1 check && echo REACHABLE=1
echo "A_SUM_BEFORE=$(fill 1 160 'vessel host swapping: a')"
echo "a_resident_alone=$(field a resident_bytes)"
create 2
reach 2 check && echo REACHABLE=2
echo "B_SUM_BEFORE=$(fill 2 110 'vessel host swapping: b')"
# Up to 180 s of the policy's rounds: the most of a's memory seen in swap.
swapped_max=0; i=0
while [ $i -lt 180 ]; do
    s=$(field a swapped_bytes); [ -n "$s" ] && [ "$s" -gt "$swapped_max" ] && swapped_max=$s
    # The first time the policy is seen holding a: its user cannot unpause it.
    if [ -z "${held_seen:-}" ] && api info a | grep -q '"held_for_memory": true'; then
        held_seen=1
        api list | sed 's/^/HELD_LIST /'
        api unpause a > /tmp/unpause.out 2>&1; echo "UNPAUSE_HELD=$? $(head -c 200 /tmp/unpause.out)"
    fi
    [ $((i % 10)) = 0 ] && { report "t=$i"; no_crash; }
    # Paged out, and the pool back to high or soft: done.
    [ "$swapped_max" -gt 0 ] && api mem | grep -q '^pool state    : \(high\|soft\)' && break
    i=$((i+2)); sleep 2
done
echo "a_swapped_max=$swapped_max"
report PAGED
echo "a_resident_paged=$(field a resident_bytes)"
echo "a_target_paged=$(field a target_bytes)"
api mem | sed 's/^/MEM /'
echo "B_SUM_AFTER=$(on 2 'md5sum /tmp/fill' | cut -d' ' -f1)"
no_crash
# With b gone, a has room again, and its pages come back from swap as it reads them.
api destroy b > /dev/null && echo DESTROYED=b
echo "A_SUM_AFTER=$(on 1 'md5sum /tmp/fill' | cut -d' ' -f1)"
report READ
echo "a_state=$(api info a | sed -n 's/^ *"state": "\([a-z]*\)".*/\1/p' | head -1)"
grep SwapFree /proc/meminfo | sed 's/^/L1 /'
no_crash
grep "memory pool\|paging out\|no free swap" /tmp/daemon.log | head -n 40 | sed 's/^/DAEMON_LOG /'
grep ": held it\|: let go of it\|could not be" /tmp/daemon.log | sed 's/^/HOLD_LOG /'
api destroy a > /dev/null
