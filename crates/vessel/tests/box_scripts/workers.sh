# Sourced by the scheduling box scripts (sched.sh, sched_bench.sh; packed at /workers.sh,
# after /domains.sh): reading the CPU-bound worker domains (tests/guest/worker.sh running
# tests/guest/spin.c) and their control groups through the daemon's API.

# work NAME: the last complete "WORK N steal=S t=T" line of a domain's console, as "N S T".
work() {
    # The last line may still be arriving: the one before it is whole.
    api api GET /v1/domains/$1/console | tr -d '\r' | grep -a '^WORK [0-9]* steal=' | tail -2 \
        | head -1 | sed -n 's/^WORK \([0-9]*\) steal=\(-*[0-9]*\) t=\([0-9.]*\)$/\1 \2 \3/p'
}

# report_stopped NAME...: if a domain crashed by itself, why, with the end of its console and a
# GUEST_CRASH line each; then the step ends (the test runs the box again).
report_stopped() {
    stopped=
    for d in "$@"; do
        api info $d | grep -q '"state": "crashed"' || continue
        stopped=1
        echo "GUEST_CRASH=$d"
        api info $d | grep -E '"state"|"message"' | sed "s/^/STOPPED_$d /"
        api api GET /v1/domains/$d/console | tr -d '\r' | tail -15 | sed "s/^/CONSOLE_$d /"
    done
    [ -z "$stopped" ] || exit 0
}

# report_stalled NAME...: after a phase (each domain's work read into /tmp/w0.NAME and
# /tmp/w1.NAME), a domain that still runs but whose guest printed no new work in it: a
# GUEST_STALL line; what the daemon says of it, and of its vCPUs again 2 s later (do they still
# exit and use CPU?); the end of its console; its threads in L1's kernel (threads). Then the
# step ends: the test runs the box again and keeps these lines in the retry log. A stall is
# TCG's (an L2 guest that halts for good, as one did in a CI run of 2026-12-07 with nothing
# printed to tell why) or ours; these lines tell which.
report_stalled() {
    stalled=
    for d in "$@"; do
        [ -s /tmp/w1.$d ] && ! cmp -s /tmp/w0.$d /tmp/w1.$d && continue
        stalled=1
        echo "GUEST_STALL=$d"
        api info $d | sed "s/^/STALLED_$d /"
        sleep 2
        api info $d | tr -d ' ' | grep -A 30 '"vcpus"' | sed "s/^/STALLED_LATER_$d /"
        api api GET /v1/domains/$d/console | tr -d '\r' | tail -n 30 | sed "s/^/CONSOLE_$d /"
        threads $d THREAD_$d
        case $d in w[0-9]*) guest_view ${d#w} GUEST_$d ;; esac
        # A byte of console input: its receive interrupt runs the guest's UART handler, which
        # sends what waits to be sent. Output that resumes now means a transmit interrupt was lost.
        printf '\n' | api console --timeout 3 $d > /dev/null 2>&1
        sleep 3
        api api GET /v1/domains/$d/console | tr -d '\r' | tail -n 5 | sed "s/^/CONSOLE_AFTER_INPUT_$d /"
        case $d in w[0-9]*) guest_view ${d#w} GUEST_AFTER_INPUT_$d ;; esac
    done
    [ -z "$stalled" ] || exit 0
}

# guest_view N PREFIX: what guest N's own kernel says, through its agent (which answers while
# a stalled worker prints nothing): its UART's transmit and receive counts, the interrupts it
# took (the UART's line 4 and the local timer), and each process with its state and where it
# sleeps. Tells a console write blocked on a lost transmit interrupt (spin asleep in the tty
# layer, tx not moving) from a timer that stopped (sleep never returning, LOC not moving).
guest_view() {
    on $1 'cat /proc/tty/driver/serial; grep -E "^ *(4|LOC):|ttyS" /proc/interrupts; for p in /proc/[0-9]*; do echo "$(cat $p/comm) $(cut -d" " -f3 $p/stat) $(cat $p/wchan)"; done' \
        2>&1 | tr -d '\r' | sed "s/^/$2 /"
}

# cpu_ns NAME: the CPU time the kernel charged to a domain's control group, in nanoseconds.
cpu_ns() { api info $1 | tr -d ' ,' | grep -A3 '"cgroup"' | sed -n 's/^"cpu_ns":\([0-9]*\)$/\1/p'; }

# go N...: once guest N (10.0.1.N) answers L1, starts its work (tests/guest/worker.sh waits for
# /tmp/go); a guest that crashed by itself meanwhile ends the step (no_crash).
go() {
    for n in "$@"; do
        reach $n check && on $n "touch /tmp/go && echo GO=$n"
    done
}
