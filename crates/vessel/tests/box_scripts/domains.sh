# Sourced by the daemon box scripts (four_domains.sh, confined_domains.sh, rates.sh, offloads.sh; packed
# at /domains.sh): the helpers L1 uses to drive Linux domains under `vessel daemon` through
# its API and to reach their agents (tests/guest/agent.sh at 10.0.1.N, through the switch's
# uplink TAP). Needs VESSEL_SOCKET set.

# api ARGS: `vessel ARGS`, bounded; a call that hangs names itself (on stderr, which reaches
# the console also from inside $(...)).
api() {
    timeout 60 vessel "$@"; r=$?
    # Busybox's timeout kills with SIGTERM (143); GNU's says 124.
    { [ $r = 124 ] || [ $r = 143 ]; } \
        && { echo "HUNG=vessel $* ($(date +%T))"; ps -o pid,stat,args | sed 's/^/HUNG-PS /'; } >&2
    return $r
}

# no_crash: if a guest crashed on its own (under TCG an L2 guest triple-faults now and then,
# under QEMU as under Vessel), prints a GUEST_CRASH line for each (with its domain's message),
# what they printed last, the end of their domain processes' logs and the daemon's log, and
# ends the step (the test runs the box again, or fails at once if a thread of Vessel's failed).
no_crash() {
    crashed=$(api list | awk '$3 == "crashed" {print $2}')
    [ -z "$crashed" ] && return 0
    for g in $crashed; do
        echo "GUEST_CRASH=$g $(api info $g | grep '"message"' | head -1)"
    done
    for g in $crashed; do
        api api GET /v1/domains/$g/console | tail -n 40 | sed "s/^/CONSOLE_$g /"
        tail -n 10 ${STATE_DIR:-/tmp/state}/logs/$g.log 2>/dev/null | sed "s/^/LOG_$g /"
    done
    sed 's/^/DAEMON_LOG /' /tmp/daemon.log
    exit 0
}

# threads NAME PREFIX: each thread of domain NAME's process as L1's kernel sees it (its name,
# state, where it sleeps and the top of its kernel stack), a PREFIX line each: tells a vCPU
# whose guest halted for good (asleep in KVM) from a thread of ours blocked in user space. Then
# the end of the domain process's own log (STATE_DIR/logs/NAME.log; STATE_DIR is /tmp/state
# unless set).
threads() {
    tail -n 10 ${STATE_DIR:-/tmp/state}/logs/$1.log 2>/dev/null | sed "s/^/$2 LOG /"
    pid=$(api info $1 | tr -d ' ,' | sed -n 's/^"pid":\([0-9]*\)$/\1/p' | head -n 1)
    for t in /proc/${pid:-none}/task/*; do
        [ -r $t/stat ] || continue
        echo "$2 $(cat $t/comm) $(sed 's/.*) //' $t/stat | cut -d' ' -f1) $(cat $t/wchan 2>/dev/null)" \
            "$(head -n 4 $t/stack 2>/dev/null | sed 's/^\[<[0-9a-f]*>\] //' | tr '\n' ' ')"
    done
}

# reach N [check]: waits up to 300 tries (a second or two each) for guest N to answer L1's
# ping; if it never does, prints what the daemon of $VESSEL_SOCKET knows (its domains, their
# consoles' ends and threads, its log's end) as UNREACHABLE lines and fails. With `check`, a guest that
# crashed on its own meanwhile ends the step (no_crash).
reach() {
    i=0; until ping -c 1 -W 1 10.0.1.$1 >/dev/null 2>&1; do
        i=$((i+1))
        if [ $i -ge 300 ]; then
            echo "UNREACHABLE=10.0.1.$1 ($i pings unanswered)"
            api list 2>&1 | sed 's/^/UNREACHABLE_LIST /'
            for g in $(api list 2>/dev/null | awk 'NR > 1 {print $2}'); do
                api api GET /v1/domains/$g/console 2>&1 | tail -n 20 | sed "s/^/UNREACHABLE_CONSOLE_$g /"
                threads $g UNREACHABLE_THREAD_$g
            done
            tail -n 30 /tmp/daemon.log 2>/dev/null | sed 's/^/UNREACHABLE_DAEMON_LOG /'
            return 1
        fi
        [ -n "${2:-}" ] && [ $((i % 5)) = 0 ] && no_crash
        sleep 1
    done
}

# on GUEST_N COMMANDS: runs COMMANDS (one line) in guest N's shell and prints their output.
# The agent listens again right after each session; a connection in between is refused and
# retried (nc fails at once then, before anything ran).
on() {
    g=$1; shift; i=0
    until echo "$*" | timeout 120 nc 10.0.1.$g 7000 2>/tmp/on.err; do
        # Busybox's timeout kills nc with SIGTERM (143); GNU's says 124.
        r=$?
        if [ $r = 124 ] || [ $r = 143 ]; then
            echo "HUNG=session in guest $g: $*"; break
        fi
        if ! grep -q refused /tmp/on.err; then
            echo "SESSION_FAILED=guest $g ($r: $(cat /tmp/on.err)): $*"; break
        fi
        i=$((i+1)); [ $i -ge 50 ] && break; sleep 0.2
    done
}
