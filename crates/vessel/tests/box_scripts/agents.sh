# Sourced (as /agents.sh) by the L1 scripts of the box tests whose Linux guests run
# tests/guest/agent.sh on 10.0.1.N, reached through the daemon's uplink TAP.

# api ARGS...: a `vessel` API call, bounded; one that hangs names itself (on stderr, which
# reaches the console also from inside $(...)) with L1's processes.
api() {
    timeout 60 vessel "$@"; r=$?
    [ $r = 124 ] && { echo "HUNG=vessel $* ($(date +%T))"; ps -o pid,stat,args | sed 's/^/HUNG-PS /'; } >&2
    return $r
}

# on N COMMANDS: runs COMMANDS (one line) in guest N's shell and prints their output. The agent
# listens again right after each session; a connection in between is refused and retried (nc
# fails at once then, before anything ran).
on() {
    g=$1; shift; i=0
    until echo "$*" | timeout 120 nc 10.0.1.$g 7000 2>/tmp/on.err; do
        grep -q refused /tmp/on.err || break
        i=$((i+1)); [ $i -ge 50 ] && break; sleep 0.2
    done
}

# reach N: waits (up to 300 s) until guest N answers a ping; fails if it never does.
reach() {
    i=0; until ping -c 1 -W 1 10.0.1.$1 >/dev/null 2>&1; do
        i=$((i+1)); [ $i -ge 300 ] && return 1; sleep 1; done
}
