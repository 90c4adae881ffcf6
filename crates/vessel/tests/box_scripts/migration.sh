# L1 side of crates/vessel/tests/migration_linux.rs: two daemons in L1 (each its own socket,
# state directory and switch; their uplink TAPs joined by a Linux bridge with L1's address).
# On daemon A, guest a counts in a loop and streams a line a second to guest b over one TCP
# connection; b pings a once a second; L1 pings a every 20 ms with timestamps. a is migrated
# to daemon B: its counter, boot id and uptime go on, the same connection carries lines again,
# and the gap in L1's replies is the downtime seen from outside. Then a is migrated back with
# A's receiving domain process killed mid-way: a runs on on B. Prints KEY=VALUE lines the test
# checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
A=/tmp/a.sock
B=/tmp/b.sock
export VESSEL_SOCKET=$A
. /domains.sh
vessel daemon --state-dir /tmp/sa --socket $A --page-sharing off --uplink vtapa \
    --cgroup-parent vessel-a 2>/tmp/daemon.log &
da=$!
vessel daemon --state-dir /tmp/sb --socket $B --page-sharing off --uplink vtapb \
    --cgroup-parent vessel-b 2>/tmp/daemon-b.log &
db=$!
trap 'kill $da $db 2>/dev/null' EXIT
i=0; while { [ ! -S $A ] || [ ! -S $B ]; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
# The daemons talk over L1's loopback.
ip link set lo up
{ ip link add br0 type bridge 2>/dev/null || brctl addbr br0; } && brctl addif br0 vtapa \
    && brctl addif br0 vtapb && ip link set vtapa up && ip link set vtapb up \
    && ip addr add 10.0.1.254/24 dev br0 && ip link set br0 up && echo UPLINK=up

for n in 1 2; do
    name=$(echo ab | cut -c$n)
    api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 160M \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n" \
        --net switch=vsw0 && echo CREATED=$name
done
reach 1 check && echo REACHABLE=1
reach 2 check && echo REACHABLE=2

# b keeps what arrives on port 7100 and pings a; a counts, and sends b a line a second on one
# connection. (Every descriptor of what a session leaves running must leave its socket.)
on 2 "(sleep 1000000 | nc -l -p 7100 > /tmp/recv) </dev/null >/dev/null 2>&1 & (ping 10.0.1.1 > /tmp/ping) </dev/null >/dev/null 2>&1 & echo LISTENING=b"
sleep 1
on 1 "(i=0; while true; do i=\$((i+1)); echo \$i > /tmp/count; sleep 0.2; done) >/dev/null 2>&1 </dev/null & (i=0; while true; do i=\$((i+1)); echo line-\$i; sleep 1; done) 2>/dev/null </dev/null | nc 10.0.1.2 7100 >/dev/null 2>&1 & echo COUNTING=a"
sleep 4
no_crash
# state: the counter, boot id, uptime (s), and the lines b has had.
state() {
    on 1 "echo COUNT$1=\$(cat /tmp/count) BOOT_ID$1=\$(cat /proc/sys/kernel/random/boot_id) UPTIME$1=\$(cut -d' ' -f1 /proc/uptime)" | tr ' ' '\n'
    echo "LINES$1=$(on 2 'wc -l < /tmp/recv')"
}
state 1

# L1's view: a request every 20 ms, each reply stamped with L1's uptime (10 ms steps) as it
# arrives.
(ping -i 0.02 10.0.1.1 2>&1 | awk '{getline u < "/proc/uptime"; close("/proc/uptime");
    split(u, f, " "); print f[1], $0; fflush()}' > /tmp/l1ping) &
pinger=$!
sleep 2
VESSEL_SOCKET=$B timeout 300 vessel migrate-receive tcp:127.0.0.1:7500 --token s3cret \
    > /tmp/recv.out 2>&1 &
receiver=$!
sleep 1
api migrate a tcp:127.0.0.1:7500 --token s3cret 2>/tmp/progress | sed 's/^/MIGRATE /'
sed 's/^/PROGRESS /' /tmp/progress
# A guest that triple-faulted on its own meanwhile (TCG, now and then) ends the step, and the
# test runs the box again: on A if it died before the hand-over, on B after it.
no_crash
VESSEL_SOCKET=$B; no_crash; VESSEL_SOCKET=$A
wait $receiver; echo RECEIVER_EXIT=$?
sed 's/^/RECEIVED /' /tmp/recv.out
sleep 3
kill $pinger; killall ping
# The longest time between two replies L1 had, how many there were, and how many requests
# went unanswered (the sequence numbers missing between the first reply and the last).
awk '/bytes from/ {t = $1; if (n && t - last > gap) gap = t - last; last = t; n++
        sub(/.*seq=/, ""); s = $1 + 0; if (first == "") first = s; top = s}
    END {printf "L1_REPLIES=%d\nL1_GAP_MS=%.0f\nL1_LOST=%d\n", n, gap * 1000, top - first + 1 - n}' /tmp/l1ping
echo "LIST_A=$(api list | awk '$2 == "a" {print $3}')"
echo "LIST_B=$(VESSEL_SOCKET=$B api list | awk '$2 == "a" {print $3}')"
sleep 3
state 2
on 2 "echo B_PING_SENT=\$(grep -c . /tmp/ping)"
on 2 "kill \$(pidof ping); sleep 1; tail -n 3 /tmp/ping" | sed 's/^/B_PING /'

# Back to A, slowly (2 MiB/s), with A's receiving domain process killed mid-way: a runs on
# on B.
VESSEL_SOCKET=$A timeout 300 vessel migrate-receive tcp:127.0.0.1:7501 --token s3cret \
    > /tmp/recv2.out 2>&1 &
receiver=$!
sleep 1
(VESSEL_SOCKET=$B timeout 300 vessel migrate a tcp:127.0.0.1:7501 --token s3cret --bandwidth 2 \
    > /tmp/back.out 2>&1; echo $? > /tmp/back.rc) &
back=$!
i=0; until grep -q "receiving a migration" /tmp/daemon.log; do
    i=$((i+1)); [ $i -ge 300 ] && break; sleep 0.1
done
sleep 3
# A's domain process for a (its channel is /tmp/sa/run/a.sock).
victim=$(for p in /proc/[0-9]*; do
    { tr '\0' '\n' < $p/environ; } 2>/dev/null | grep -q '^VESSEL_DOMAIN_CHANNEL=/tmp/sa/run/a.sock$' \
        && echo ${p#/proc/}
done | head -n 1)
echo "KILLED=$victim $(tr '\0' ' ' < /proc/$victim/cmdline)"
kill -9 $victim
wait $back
echo BACK_EXIT=$(cat /tmp/back.rc)
sed 's/^/BACK /' /tmp/back.out
wait $receiver; echo RECEIVER2_EXIT=$?
echo "LIST_A2=$(api list | awk '$2 == "a" {print $3 ? $3 : "defined"}')"
echo "LIST_B2=$(VESSEL_SOCKET=$B api list | awk '$2 == "a" {print $3}')"
VESSEL_SOCKET=$B; no_crash; VESSEL_SOCKET=$A
state 3
sleep 3
state 4
tail -n 20 /tmp/daemon.log | sed 's/^/DAEMON_LOG /'
tail -n 20 /tmp/daemon-b.log | sed 's/^/DAEMON_B_LOG /'
