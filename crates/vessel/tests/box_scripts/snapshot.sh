# L1 side of crates/vessel/tests/snapshot_linux.rs: two Linux domains on the daemon's switch;
# a counts in a loop and streams a line a second to b over one TCP connection. a is saved to a
# file (it stops), left saved a few seconds, and restored: its counter, boot id and uptime
# continue, the same connection carries lines again, and its wall clock is right. Prints
# KEY=VALUE lines the test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 \
    2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

for n in 1 2; do
    name=$(echo ab | cut -c$n)
    api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 160M \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n" \
        --net switch=vsw0 && echo CREATED=$name
done
reach 1 check && echo REACHABLE=1
reach 2 check && echo REACHABLE=2

# b keeps what arrives on port 7100; a counts, and sends b a line a second on one connection.
# (Every descriptor of what a session leaves running must leave the session's socket.)
on 2 "(sleep 1000000 | nc -l -p 7100 > /tmp/recv) </dev/null >/dev/null 2>&1 & echo LISTENING=b"
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
# Seconds from L1's /proc/uptime (busybox's date has no fractions).
now() { cut -d' ' -f1 /proc/uptime; }
t=$(now)
api save a /tmp/a.snap | sed 's/^/SAVE /'
echo SAVE_SECONDS=$(awk "BEGIN {print $(now) - $t}")
echo STATE_AFTER_SAVE=$(api info a | sed -n 's/^  "state": "\(.*\)",*/\1/p')
echo SNAPSHOT_BYTES=$(wc -c < /tmp/a.snap)
ping -c 1 -W 1 10.0.1.1 >/dev/null 2>&1 && echo SAVED_ANSWERS=yes || echo SAVED_ANSWERS=no
sleep 5
echo LINES_SAVED=$(on 2 'wc -l < /tmp/recv')
started=$(now)
api restore /tmp/a.snap | sed 's/^/RESTORE /'
echo RESTORE_SECONDS=$(awk "BEGIN {print $(now) - $started}")
i=0; until ping -c 1 -W 1 10.0.1.1 >/dev/null 2>&1; do
    i=$((i+1)); [ $i -ge 60 ] && break
done
echo ANSWERS_AFTER=$(awk "BEGIN {print $(now) - $started}")
no_crash
sleep 5
echo "CLOCKS guest=$(on 1 'date +%s') l1=$(date +%s)"
state 2
api list | sed 's/^/LIST /'
tail -n 20 /tmp/daemon.log | sed 's/^/DAEMON_LOG /'
