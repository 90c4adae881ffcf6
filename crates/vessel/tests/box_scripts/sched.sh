# L1 side of crates/vessel/tests/sched_linux.rs: CPU-bound Linux domains (tests/guest/spin.c,
# printing its progress to the console) on L1's two CPUs under the daemon's scheduler. Prints
# KEY=VALUE lines the test checks; never decides pass or fail itself.
#   WORK_<PHASE>=NAME,UNITS,STEAL,SECS    the work (and steal ticks) each domain did in a phase,
#                                         and the seconds that took by its own clock
#   CPU_<PHASE>=NAME,MS                   the CPU time charged to a domain's group in a phase
#   PHASE_<PHASE>=START,END               the phase, by L1's uptime
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
. /workers.sh
start_daemon() {
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 "$@" \
        2>>/tmp/daemon.log &
    daemon=$!
    i=0; while ! vessel list >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
}
# measure PHASE SECONDS NAME...: each domain's work and steal over SECONDS.
measure() {
    phase=$1; secs=$2; shift 2
    for d in "$@"; do work $d > /tmp/w0.$d; cpu_ns $d > /tmp/c0.$d; done
    t0=$(cut -d' ' -f1 /proc/uptime)
    sleep $secs
    for d in "$@"; do work $d > /tmp/w1.$d; cpu_ns $d > /tmp/c1.$d; done
    t1=$(cut -d' ' -f1 /proc/uptime)
    report_stopped w1 w2 w3 w4
    report_stalled "$@"
    for d in "$@"; do
        echo "CPU_$phase=$d,$(( ($(cat /tmp/c1.$d) - $(cat /tmp/c0.$d)) / 1000000 ))"
    done
    for d in "$@"; do
        set -- $(cat /tmp/w0.$d) $(cat /tmp/w1.$d)
        if [ $# = 6 ]; then
            echo "WORK_$phase=$d,$(($4 - $1)),$(($5 - $2)),$(echo "$6 $3" | awk '{print $1 - $2}')"
        else
            echo "WORK_$phase=$d,none,none,none"
        fi
    done
    echo "PHASE_$phase=$t0,$t1"
    echo "DAEMON_CPU_$phase=$(awk '{print $14 + $15}' /proc/$daemon/stat)"
}
start_daemon
trap 'kill $daemon 2>/dev/null' EXIT
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up
echo CPUS=$(nproc)

n=1
for w in 1 2 3 4; do
    cat > /tmp/w$w.json <<JSON
{"name": "w$w", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "128M",
 "cmdline": "console=ttyS0 quiet panic=-1 vscript=worker vip=10.0.1.$n vunit=${UNIT:-65536}",
 "net": ["switch=vsw0"], "sched": {"weight": $w}}
JSON
    api create /tmp/w$w.json && echo CREATED=w$w
    n=$((n+1))
done
go 1 2 3 4
for w in 1 2 3 4; do
    i=0; until [ -n "$(work w$w)" ]; do i=$((i+1)); [ $i -ge 600 ] && break; sleep 1; done
    echo WORKING=w$w
done
sleep ${SETTLE:-10}
api sched | sed 's/^/SCHED0 /'
# The phase whose CPU shares the test holds to 5% measures over 80 s: over 40 s, L1's own
# jitter under TCG moved the weight-4 share by 5.8% in one run of three (2026-12-07).
measure BVT ${BVT_SPAN:-80} w1 w2 w3 w4
api sched | sed 's/^/SCHED1 /'

# A weight changed at run time: w1 becomes the heaviest, at the share w4 had above (6/15 =
# 4/10). At 8 (8/17 of what L1's two CPUs leave, 0.89 of a CPU for one vCPU) L1's own threads
# held w1 below its share by 10% in one full-suite run of three (2026-12-07).
api sched w1 --weight 6 | sed 's/^/CHANGED /'
sleep 10
measure CHANGED ${SPAN:-40} w1 w2 w3 w4
api sched w1 --weight 1 >/dev/null

# The peers' way, same guests: a daemon that writes each weight as it is (kill -QUIT leaves
# the domains running; the new daemon attaches to them).
kill -QUIT $daemon; wait $daemon
start_daemon --scheduler cgroups
echo RESTARTED=cgroups
sleep 5
measure CGROUPS ${SPAN:-40} w1 w2 w3 w4

# A cap on an otherwise idle host: w1 alone, uncapped then at 25%.
for w in 2 3 4; do api destroy w$w >/dev/null && echo DESTROYED=w$w; done
sleep 3
measure ALONE ${CAP_SPAN:-20} w1
api sched w1 --cap 25 | sed 's/^/CAPPED /'
sleep 3
measure CAPPED ${CAP_SPAN:-20} w1
api destroy w1 >/dev/null && echo DESTROYED=w1
echo DONE=1
