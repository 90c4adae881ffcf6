# L1 side of crates/vessel/tests/pool_linux.rs: `vessel daemon --memory-pool 400M` with two
# Linux domains of 256 MiB, a with 1000 shares and b with 3000. The targets may add up to the
# pool less its free reserve (24 MiB), 136 MiB short, and the memory policy takes that back
# from a (the fewest shares per page) through a's balloon; b
# keeps all of its memory. Once b is destroyed, a gets its memory back. Prints KEY=VALUE lines
# the test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 \
    --memory-pool 400M --idle-tax 0 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

for n in 1 2; do
    name=$(echo ab | cut -c$n); shares=$((n * 2000 - 1000))
    api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 256M \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n" \
        --net switch=vsw0 --shares $shares && echo CREATED=$name
done
reach 1 check && echo REACHABLE=1
reach 2 check && echo REACHABLE=2

# field DOMAIN FIELD: a number of the domain's memory object.
field() { api info $1 | sed -n "s/^ *\"$2\": \([0-9]*\).*/\1/p" | head -1; }
# until_balloon DOMAIN BYTES: waits up to 120 s until the domain's balloon holds BYTES.
until_balloon() {
    i=0; until [ "$(field $1 balloon_bytes)" = "$2" ]; do
        i=$((i+1)); [ $i -ge 120 ] && return 1
        [ $((i % 10)) = 0 ] && no_crash
        sleep 1
    done
}
until_balloon a 142606336 && echo A_BALLOONED=yes
for g in a b; do
    echo "${g}_target=$(field $g target_bytes)"
    echo "${g}_balloon=$(field $g balloon_bytes)"
done
echo A_GUEST_FREE_KIB=$(on 1 "awk '/^MemFree:/ {print \$2}' /proc/meminfo")
api mem | sed 's/^/MEM /'
no_crash
api destroy b && echo DESTROYED=b
until_balloon a 0 && echo A_DEFLATED=yes
echo "a_target_after=$(field a target_bytes)"
no_crash
grep "memory target\|memory pool" /tmp/daemon.log | sed 's/^/DAEMON_LOG /'
