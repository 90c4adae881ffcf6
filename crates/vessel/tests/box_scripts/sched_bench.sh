# L1 side of crates/vessel/benches/sched.rs (MODE=shares or MODE=latency in the environment).
# Prints KEY=VALUE lines the benchmark reads:
#   WORK_<PHASE>=NAME,UNITS,STEAL,SECS   the work (tests/guest/spin.c) each domain did in a
#                                        phase, its steal ticks, and the seconds by its clock
#   CPU_<PHASE>=NAME,MS               the CPU time charged to a domain's group in a phase, in ms
#   RTT_<PHASE>=MS                    one ping's round trip to the interactive domain
#   PHASE_<PHASE>=START,END           the phase, by L1's uptime
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
. /workers.sh
start_daemon() {
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 --shutdown-timeout 10 "$@" \
        2>>/tmp/daemon.log &
    daemon=$!
    i=0; while ! vessel list >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
}
restart_daemon() {
    kill -QUIT $daemon; wait $daemon
    start_daemon "$@"
    # The uplink TAP went with the old daemon: L1's end of the new one is set up again, and the
    # pinged domain answers through it before anything is measured.
    ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up
    [ -z "${PING:-}" ] || reach $PING || echo "NOT_REACHABLE=$PING"
}
worker() { # NAME WEIGHT ADDRESS
    echo "{\"name\": \"$1\", \"kernel\": \"/assets/bzImage\", \"initrd\": \"/tmp/initrd\",
 \"memory\": \"112M\", \"net\": [\"switch=vsw0\"], \"sched\": {\"weight\": $2},
 \"cmdline\": \"console=ttyS0 quiet panic=-1 vscript=worker vip=10.0.1.$3 vunit=${UNIT:-65536}\"}" \
        > /tmp/$1.json
    api create /tmp/$1.json >/dev/null && echo CREATED=$1
}
wait_working() {
    for d in "$@"; do
        i=0; until [ -n "$(work $d)" ]; do i=$((i+1)); [ $i -ge 900 ] && break; sleep 1; done
    done
}
# measure PHASE SECONDS NAME...: work and CPU of each domain over SECONDS (and, with PING set,
# that many pings to 10.0.1.$PING meanwhile, one every 50 ms).
measure() {
    phase=$1; secs=$2; shift 2
    for d in "$@"; do work $d > /tmp/w0.$d; cpu_ns $d > /tmp/c0.$d; done
    t0=$(cut -d' ' -f1 /proc/uptime)
    if [ -n "${PING:-}" ]; then
        ping -c $((secs * 20)) -i 0.05 -W 2 10.0.1.$PING | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' \
            | sed "s/^/RTT_$phase=/"
    else
        sleep $secs
    fi
    for d in "$@"; do work $d > /tmp/w1.$d; cpu_ns $d > /tmp/c1.$d; done
    t1=$(cut -d' ' -f1 /proc/uptime)
    report_stopped $ALL
    # The interactive domain i prints no work.
    report_stalled $(for d in "$@"; do [ $d = i ] || echo $d; done)
    for d in "$@"; do
        set -- $(cat /tmp/w0.$d) $(cat /tmp/w1.$d)
        [ $# = 6 ] && echo "WORK_$phase=$d,$(($4 - $1)),$(($5 - $2)),$(echo "$6 $3" | awk '{print $1 - $2}')"
        echo "CPU_$phase=$d,$(( ($(cat /tmp/c1.$d) - $(cat /tmp/c0.$d)) / 1000000 ))"
    done
    echo "PHASE_$phase=$t0,$t1"
}
start_daemon
trap 'kill $daemon 2>/dev/null' EXIT
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up
echo CPUS=$(nproc)
SPAN=${SPAN:-60}
if [ "$MODE" = shares ]; then
    names=""
    for w in 1 2 3 4 5 6 7 8; do worker w$w $w $w; names="$names w$w"; done
    ALL=$names
    go 1 2 3 4 5 6 7 8
    wait_working $names
    sleep 20
    measure BVT $SPAN $names
    restart_daemon --scheduler cgroups
    sleep 10
    measure CGROUPS $SPAN $names
else
    for w in 1 2 3 4; do worker w$w 256 $w; done
    ALL="w1 w2 w3 w4 i"
    cat > /tmp/i.json <<JSON
{"name": "i", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "112M",
 "net": ["switch=vsw0"], "cmdline": "console=ttyS0 quiet panic=-1 vscript=agent vip=10.0.1.9"}
JSON
    api create /tmp/i.json >/dev/null && echo CREATED=i
    go 1 2 3 4
    wait_working w1 w2 w3 w4
    i=0; until ping -c 1 -W 1 10.0.1.9 >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 600 ] && break; sleep 1; done
    echo REACHABLE=i
    PING=9 restart_daemon --scheduler cgroups
    sleep 10
    PING=9 measure CGROUPS $SPAN w1 w2 w3 w4 i
    PING=9 restart_daemon
    sleep 10
    PING=9 measure BVT $SPAN w1 w2 w3 w4 i
    api sched i --warp ${WARP:-100} | sed 's/^/WARPED /'
    sleep 10
    PING=9 measure WARP $SPAN w1 w2 w3 w4 i
    api sched | sed 's/^/SCHED /'
fi
echo DONE=1
