# L1 side of crates/vessel/tests/balloon_linux.rs: one Linux domain of 256 MiB under `vessel
# daemon`, its balloon driven through the API. The guest fills and frees memory (free page
# reporting gives it back to the host), is asked to keep 128 MiB (the balloon inflates; the
# guest's free memory falls, the host's resident memory with it), then its whole memory again
# (the balloon deflates). Prints KEY=VALUE lines the test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

cat > /tmp/a.json <<JSON
{"name": "a", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "256M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.1",
 "net": ["switch=vsw0"], "free_page_reporting": true}
JSON
api create /tmp/a.json && echo CREATED=a
reach 1 check && echo REACHABLE=1

# mem NAME...: prints NAME=VALUE for each field of `vessel info a`'s memory object named.
mem() {
    info=$(api info a)
    for f in "$@"; do
        echo "$f=$(echo "$info" | sed -n "s/^ *\"$f\": \([0-9]*\).*/\1/p" | head -1)"
    done
}
# guest_free: the guest's MemFree in KiB.
guest_free() { on 1 "awk '/^MemFree:/ {print \$2}' /proc/meminfo"; }
# wait_for FIELD MIN MAX: waits up to 90 s until the memory field is within [MIN, MAX].
wait_for() {
    i=0
    while [ $i -lt 90 ]; do
        v=$(api info a | sed -n "s/^ *\"$1\": \([0-9]*\).*/\1/p" | head -1)
        [ -n "$v" ] && [ "$v" -ge "$2" ] && [ "$v" -le "$3" ] && return 0
        i=$((i+1)); sleep 1
    done
    return 1
}

on 1 "ls /sys/bus/virtio/drivers/virtio_balloon >/dev/null 2>&1 && echo DRIVER=bound"
sleep 3
api info a | sed -n '/"memory": {/,/^  }/p' | sed 's/^/INFO0 /'
mem resident_bytes | sed 's/^/M0_/'

# The guest fills 150 MiB of its tmpfs, then frees it: free page reporting hands the freed
# memory back to the host.
on 1 "mount -o remount,size=200M /tmp; dd if=/dev/zero of=/tmp/fill bs=1M count=150 2>/dev/null; echo FILLED=\$(du -m /tmp/fill | cut -f1)"
mem resident_bytes reported_bytes | sed 's/^/M1_/'
reported=$(mem reported_bytes | cut -d= -f2)
on 1 "rm /tmp/fill; echo FREED=yes"
# (The guest reports its free memory from boot on: what counts is what comes after the rm.)
wait_for reported_bytes $((reported + 100000000)) 99999999999 && echo REPORTED=yes
mem resident_bytes reported_bytes | sed 's/^/M2_/'

# Keep 128 MiB: the balloon takes the other 128 MiB.
echo GUEST_FREE_BEFORE=$(guest_free)
api mem-set a 128M && echo MEMSET=128M
wait_for balloon_bytes 134217728 134217728 && echo INFLATED=yes
mem target_bytes balloon_bytes resident_bytes | sed 's/^/M3_/'
echo GUEST_FREE_INFLATED=$(guest_free)
# The guest goes on using what it kept: 32 MiB more in its tmpfs.
on 1 "dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>/dev/null; echo FILLED_INFLATED=\$(du -m /tmp/fill | cut -f1); rm /tmp/fill"
mem target_bytes balloon_bytes resident_bytes | sed 's/^/M4_/'
api info a | sed -n '/"memory": {/,/^  }/p' | sed 's/^/INFO4 /'

# Refused: above the domain's memory, below the minimum, not a size.
api mem-set a 512M; echo REFUSED_ABOVE=$?
api mem-set a 8M; echo REFUSED_BELOW=$?
api mem-set a lots; echo REFUSED_TEXT=$?

# All of it again: the balloon deflates.
api mem-set a 256M && echo MEMSET=256M
wait_for balloon_bytes 0 0 && echo DEFLATED=yes
mem target_bytes balloon_bytes | sed 's/^/M5_/'
echo GUEST_FREE_DEFLATED=$(guest_free)
api api GET /metrics | grep -E '^vessel_domain_(memory_balloon|memory_target|guest_memory_available)' | sed 's/^/METRIC /'
no_crash
api destroy a
api mem-set a 128M; echo REFUSED_STOPPED=$?
sed 's/^/DAEMON_LOG /' /tmp/daemon.log
