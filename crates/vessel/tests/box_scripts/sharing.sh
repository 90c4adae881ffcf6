# L1 side of crates/vessel/tests/sharing_linux.rs: two Linux domains of 160 MiB booting the same
# kernel and initramfs under `vessel daemon` (page sharing on, its default). The daemon starts
# the kernel's KSM; the domains' identical pages are merged, and KSM is as the daemon found it
# after a SIGTERM. Prints KEY=VALUE lines the test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
echo KSM_BEFORE=$(cat /sys/kernel/mm/ksm/run),$(cat /sys/kernel/mm/ksm/pages_to_scan),$(cat /sys/kernel/mm/ksm/sleep_millisecs)
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --uplink vtap0 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

for n in 1 2; do
    cat > /tmp/d$n.json <<JSON
{"name": "d$n", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n",
 "net": ["switch=vsw0"]}
JSON
    api create /tmp/d$n.json && echo CREATED=d$n
done
reach 1 check && echo REACHABLE=1
reach 2 check && echo REACHABLE=2
echo KSM_RUN_DURING=$(cat /sys/kernel/mm/ksm/run)
mg=$(grep -c '^VmFlags:.* mg' /proc/$(api info d1 | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')/smaps)
echo MERGEABLE_MAPPINGS=$mg

# shared NAME: the bytes of domain NAME that page sharing merged.
shared() { api info $1 | sed -n 's/^ *"shared_bytes": \([0-9]*\).*/\1/p'; }
# Both domains share at least 8 MiB, or 240 s pass.
start=$(cut -d' ' -f1 /proc/uptime)
i=0
while :; do
    s1=$(shared d1); s2=$(shared d2)
    [ "${s1:-0}" -ge 8388608 ] && [ "${s2:-0}" -ge 8388608 ] && break
    i=$((i+1)); [ $i -ge 120 ] && break
    [ $((i % 10)) = 0 ] && no_crash
    sleep 2
done
echo SHARE_SECONDS=$(awk -v s=$start '{print $1 - s}' /proc/uptime)
echo SHARED_D1=$(shared d1)
echo SHARED_D2=$(shared d2)
sleep 3
api mem --json | sed -n 's/^ *"saved_bytes": \([0-9]*\).*/SAVED=\1/p'
api mem | sed 's/^/MEM /'
api api GET /metrics | grep '^vessel_domain_memory_shared_bytes' | sed 's/^/METRIC /'
no_crash
kill -TERM $daemon
i=0; while kill -0 $daemon 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo DAEMON_GONE=$(kill -0 $daemon 2>/dev/null && echo no || echo yes)
echo KSM_AFTER=$(cat /sys/kernel/mm/ksm/run),$(cat /sys/kernel/mm/ksm/pages_to_scan),$(cat /sys/kernel/mm/ksm/sleep_millisecs)
grep -i "page sharing" /tmp/daemon.log | sed 's/^/DAEMON_LOG /'
