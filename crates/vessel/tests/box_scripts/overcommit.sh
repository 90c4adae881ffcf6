# L1 side of crates/vessel/tests/overcommit_linux.rs: memory overcommitted twice over with real
# Linux guests. `vessel daemon --memory-pool 512M` (page sharing on, the idle memory tax at its
# default, sampling every 10 s) runs four domains of 256 MiB with equal shares and a
# reservation of 96 MiB each: 1024 MiB given for a pool of 512. First a and b run alone (their
# targets, 240 MiB each, leave the pool's free reserve) and each writes 160 MiB and frees it, so
# their processes hold what they wrote; then c and d start, and a and b give back through their balloons what the newcomers
# need. Then all four write 48 MiB each and read it back 20 s later. Prints KEY=VALUE lines the
# test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --uplink vtap0 \
    --memory-pool 512M --working-set-period 10 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

# field DOMAIN FIELD: a number of the domain's memory object.
field() { api info $1 | sed -n "s/^ *\"$2\": \([0-9]*\).*/\1/p" | head -1; }
# create N: domain number N (a to d) at 10.0.1.N.
create() {
    name=$(echo abcd | cut -c$1)
    api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 256M \
        --reservation 96M \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$1" \
        --net switch=vsw0 > /dev/null && echo CREATED=$name
}
# settled DOMAIN: waits up to 180 s until the domain's balloon holds what its target leaves
# (within 4 MiB: the policy moves targets in steps of 1 MiB, the guest's driver in its own).
settled() {
    i=0
    until balloon=$(field $1 balloon_bytes) && target=$(field $1 target_bytes) \
        && [ -n "$balloon" ] && [ -n "$target" ] \
        && [ $((balloon + 4194304)) -ge $((268435456 - target)) ]; do
        i=$((i+1)); [ $i -ge 180 ] && { echo "UNSETTLED=$1"; return 1; }
        [ $((i % 10)) = 0 ] && no_crash
        sleep 1
    done
}
report() {
    echo "$1 pool: $(api mem | grep '^pool state') ksm: $(cat /sys/kernel/mm/ksm/pages_to_scan)" \
        "pages/$(cat /sys/kernel/mm/ksm/sleep_millisecs) ms, L1 load $(cut -d' ' -f1-3 /proc/loadavg)"
    for g in a b c d; do
        api info $g > /dev/null 2>&1 || continue
        echo "$1 $g: target $(field $g target_bytes) balloon $(field $g balloon_bytes)" \
            "resident $(field $g resident_bytes) shared $(field $g shared_bytes)" \
            "active $(field $g active_estimate_bytes)"
    done
}

create 1; create 2
reach 1 check && echo REACHABLE=1
reach 2 check && echo REACHABLE=2
for n in 1 2; do
    on $n 'mount -o remount,size=200M /tmp && dd if=/dev/zero of=/tmp/fill bs=1M count=160 2>/dev/null && rm /tmp/fill && echo FILLED_AND_FREED'
done | sed 's/^/AB_/'
for g in a b; do echo "${g}_resident_alone=$(field $g resident_bytes)"; done
report ALONE

create 3; create 4
reach 3 check && echo REACHABLE=3
reach 4 check && echo REACHABLE=4
settled a && settled b && echo AB_SETTLED=yes
for g in a b; do echo "${g}_resident_shared_out=$(field $g resident_bytes)"; done
report FOUR

# The workload: 24 MiB of the guest's own and 24 MiB every guest writes alike, summed, and
# checked again 20 s later, in all four guests at once.
for n in 1 2 3 4; do
    on $n "mount -o remount,size=200M /tmp && (yes 'vessel overcommit: guest $n' | head -c 25165824 > /tmp/own; yes 'vessel overcommit: every guest' | head -c 25165824 > /tmp/common; md5sum /tmp/own /tmp/common > /tmp/sums; sleep 20; if md5sum -c /tmp/sums > /tmp/check 2>&1; then echo WORK-OK; else echo WORK-BAD; fi > /tmp/done) > /dev/null 2>&1 &"
done
for n in 1 2 3 4; do
    g=$(echo abcd | cut -c$n); i=0
    until [ -n "$(on $n 'cat /tmp/done 2>/dev/null')" ]; do
        i=$((i+1)); [ $i -ge 60 ] && break
        [ $((i % 5)) = 0 ] && no_crash
        sleep 5
    done
    echo "WORKLOAD_$g=$(on $n 'cat /tmp/done 2>/dev/null')"
    echo "SUMS_$g=$(on $n 'cat /tmp/check' | tr '\n' ' ')"
    # A guest that does not answer: what its domain's process and the daemon are doing.
    if ! ping -c 1 -W 2 10.0.1.$n > /dev/null 2>&1 || [ -z "$(field $g resident_bytes)" ]; then
        echo "SILENT=$g"
        threads $g "THREAD_$g"
        api api GET /v1/domains/$g/console | tail -n 20 | sed "s/^/CONSOLE_$g /"
    fi
done
report WORKED
for g in a b c d; do settled $g; done
report END
for n in 1 2 3 4; do
    g=$(echo abcd | cut -c$n)
    for f in target_bytes balloon_bytes resident_bytes shared_bytes; do
        echo "${g}_$f=$(field $g $f)"
    done
    echo "${g}_guest_available_kib=$(on $n "awk '/^MemAvailable:/ {print \$2}' /proc/meminfo")"
done
api mem | sed 's/^/MEM /'
no_crash
grep "memory target\|memory pool\|page sharing\|WARN\|ERROR" /tmp/daemon.log | tail -n 40 \
    | sed 's/^/DAEMON_LOG /'
for g in a b c d; do api destroy $g > /dev/null; done
