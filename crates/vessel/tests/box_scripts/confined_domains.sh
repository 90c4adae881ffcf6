# L1 side of crates/vessel/tests/daemon_linux.rs's confinement test: two Linux domains on the
# daemon's switch, each in its own confined process. Prints KEY=VALUE lines the test checks;
# never decides pass or fail itself.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
start_daemon() {
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 \
        --shutdown-timeout 60 --debug-hooks 2>>/tmp/daemon.log &
    daemon=$!
    i=0; while ! vessel list >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
}
pid_of() { api info $1 | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p'; }
alive() { [ -e /proc/$1/status ] && ! grep -q zombie /proc/$1/status; }
# unreachable NAME: what the daemon (the domain's state and its devices' counters), the
# switch, the domain process's log and its console said, for a domain that never answered.
unreachable() {
    api info $1 | sed "s/^/INFO_$1 /"
    api net ports | sed "s/^/PORTS_$1 /"
    tail -n 20 /tmp/state/logs/$1.log | sed "s/^/LOG_$1 /"
    api api GET /v1/domains/$1/console | tail -n 30 | sed "s/^/CONSOLE_$1 /"
    tail -n 30 /tmp/daemon.log | sed 's/^/DAEMON_LOG /'
}
start_daemon
trap 'kill $daemon 2>/dev/null' EXIT
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up
echo CGROUP_MOUNT=$(grep -c cgroup2 /proc/mounts)

n=1
for d in a b c; do
    cat > /tmp/$d.json <<JSON
{"name": "$d", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n",
 "net": ["switch=vsw0"]}
JSON
    n=$((n+1))
done
api create /tmp/a.json && echo CREATED=a
api create /tmp/b.json && echo CREATED=b
reach 1 && echo REACHABLE=1
reach 2 && echo REACHABLE=2
pa=$(pid_of a); pb=$(pid_of b)
echo PIDS=$pa,$pb,$daemon
for p in $pa $pb; do
    grep -E '^(Uid|NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/$p/status | tr -d '\t' | sed "s/^/STATUS_$p /"
    echo "CGROUP_$p $(cat /proc/$p/cgroup)"
done
on 1 "ping -c 1 -W 3 10.0.1.2 >/dev/null 2>&1 && echo PAIR=1-2"

# A system call outside the I/O thread's filter kills that domain only.
api create /tmp/c.json && echo CREATED=c
reach 3 && echo REACHABLE=3 || { echo NOT_REACHABLE=3; unreachable c; }
pc=$(pid_of c)
api api POST '/v1/domains/c/debug/forbidden-call?thread=io' && echo HOOK=asked
i=0; until api info c | grep -q '"state": "crashed"'; do i=$((i+1)); [ $i -ge 60 ] && break; sleep 0.5; done
api info c | grep '"message"' | sed 's/^/INFO_C /'
alive $pc && echo C_PROCESS=alive || echo C_PROCESS=gone
on 1 "ping -c 1 -W 3 10.0.1.2 >/dev/null 2>&1 && echo AFTER_SECCOMP=1-2"

# kill -9 of b's process: b is crashed, a still pings L1 through the switch.
kill -9 $pb
i=0; until api info b | grep -q '"state": "crashed"'; do i=$((i+1)); [ $i -ge 60 ] && break; sleep 0.5; done
api info b | grep '"message"' | sed 's/^/INFO_B /'
ping -c 1 -W 3 10.0.1.1 >/dev/null 2>&1 && echo AFTER_KILL=L1-1
api start b && echo RESTARTED=b
# (Once, in a full-suite run, the restarted b never answered and the box timed out; what b and
# the daemon said is printed if that happens again.)
reach 2 && echo REACHABLE_AGAIN=2 || { echo NOT_REACHABLE_AGAIN=2; unreachable b; }
pb=$(pid_of b)

# kill -9 of the daemon: both domains run on; a new daemon lists them and their consoles work.
on 1 'echo console-before-restart > /dev/console'
on 2 '(i=0; while true; do i=$((i+1)); echo console-tick-$i > /dev/console; sleep 1; done) >/dev/null 2>&1 &'
kept() { api api GET /v1/domains/$1/console; }
sleep 2
echo TICK_BEFORE=$(kept b | sed -n 's/.*console-tick-\([0-9]*\).*/\1/p' | tail -1)
kill -9 $daemon; wait $daemon 2>/dev/null
alive $pa && alive $pb && echo BOTH_ALIVE_WITHOUT_DAEMON=yes
sleep 4
start_daemon
api list | sed 's/^/LIST2 /'
echo PIDS2=$(pid_of a),$(pid_of b)
kept a | grep -c console-before-restart | sed 's/^/CONSOLE_A_KEPT=/'
echo TICK_AFTER=$(kept b | sed -n 's/.*console-tick-\([0-9]*\).*/\1/p' | tail -1)
api pause a && api unpause a && echo PAUSE_AFTER_RESTART=ok

# SIGTERM: both power off through their buttons (the guests' acpid), the daemon exits 0.
kill -TERM $daemon; wait $daemon; echo DAEMON_EXIT=$?
alive $pa || alive $pb || echo BOTH_GONE=yes
grep -E "is shutoff|did not power off" /tmp/daemon.log | sed 's/^/LOG /'
