# L1 side of crates/vessel/tests/daemon_linux.rs: four Linux domains under one `vessel daemon`,
# driven only through its API (the vessel CLI is its client), their VIFs on the daemon's switch,
# whose uplink TAP gives L1 a way in to start commands in the guests (tests/guest/agent.sh).
# Prints KEY=VALUE lines the test checks; never decides pass or fail itself.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 2>/tmp/daemon.log &
daemon=$!
# The step ends only when nothing holds its output: stop the daemon however the script ends.
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up
echo DAEMON_RSS_START=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status)

# d's port has a rate of 1 MB/s, like a slow link: the flood phase below needs the switch, not
# L1's CPUs, to be the bottleneck.
n=1
for d in a b c d; do
    bps=; [ $d = d ] && bps=,bps=1000000
    # c and d (the rated transfers below) without offloads: a rated port lets a waiting frame
    # go only once its bucket holds the whole frame, so a 64 KiB segment waits while a flood's
    # small frames take the tokens as they come (docs/benchmarks.md, "Offloaded TCP through a
    # rated port"); the criteria here are for frames of the MTU.
    case $d in c|d) bps="$bps,offloads=off" ;; esac
    cat > /tmp/$d.json <<JSON
{"name": "$d", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n",
 "net": ["switch=vsw0$bps"]}
JSON
    api create /tmp/$d.json && echo CREATED=$d
    n=$((n+1))
done
# Every guest answers L1 (through the uplink) before anything else.
for n in 1 2 3 4; do
    reach $n check && echo REACHABLE=$n
done
api list | sed 's/^/LIST /'

# All pairs through the switch.
for s in 1 2 3 4; do for t in 1 2 3 4; do
    [ $s = $t ] && continue
    on $s "ping -c 1 -W 3 10.0.1.$t >/dev/null 2>&1 && echo PAIR=$s-$t || echo NOPAIR=$s-$t"
done; done

# A drop rule on ICMP from a to b; every other pair still talks.
drop=$(api net rule add --src-domain a --dst-domain b --proto icmp --action drop | cut -d' ' -f2)
echo RULE=drop-$drop
for s in 1 2 3 4; do for t in 1 2 3 4; do
    [ $s = $t ] && continue
    on $s "ping -c 1 -W 3 10.0.1.$t >/dev/null 2>&1 && echo DROPPAIR=$s-$t || echo DROPNOPAIR=$s-$t"
done; done
api net rule list | sed 's/^/RULES /'
api net rule del $drop && echo RULE=deleted

# A rate limit of 200 KB/s on TCP to port 5001: 1 MiB from c to d takes about 5 s.
rate=$(api net rule add --proto tcp --dport 5001 --action rate-limit=200000:32768 | cut -d' ' -f2)
echo RULE=rate-$rate
# blast_receive PORT KEY: guest d receives one tcpblast stream on PORT (in the background; 64
# KiB reads, timed by the receiver from the first byte to the end; busybox nc's small reads and
# writes spend the guests' CPU, which the flood below leaves them little of);
# blast_report KEY prints KEY_BYTES, KEY_SECONDS and KEY_NOPORTS (UDP datagrams d received
# for closed ports over the same span) from what it said.
blast_receive() { ( on 4 "/bin/tcpblast recv $1" > /tmp/$2.out ) & rpid=$!; sleep 2; }
blast_report() {
    sed -n 's/^TCPBLAST received=\([0-9]*\) seconds=\([0-9.]*\)$/'$1'_BYTES=\1\n'$1'_SECONDS=\2/p
            s/^TCPBLAST udp_noports=\([0-9]*\)$/'$1'_NOPORTS=\1/p' /tmp/$1.out
}
blast_receive 5001 RATE
on 3 "/bin/tcpblast send 10.0.1.4 5001 1048576"
wait $rpid
blast_report RATE
no_crash
api net rule del $rate && echo RULE=deleted

# Fairness at a congested destination: c sends 2 MiB to d alone (at d's port rate, 1 MB/s),
# then again while a flood of UDP (to a port nobody listens on, paced at 4 MB/s: four times
# d's rate, so the flood always has a frame waiting for d, without the flooder burning one of
# L1's two CPUs) comes through the uplink. Both transfers use tcpblast (64 KiB writes and
# reads: busybox nc's small ones spend the guests' CPU, which the flood leaves them little
# of, and measure nc more than the switch); d's tcpblast times each from its first byte to
# its end and counts the flood's datagrams that arrived over exactly that span (UDP NoPorts).
# (The flooder is L1, not a guest: under TCG a guest that transmits flat out triple-faults now
# and then, under QEMU as under Vessel; the uplink is a switch port like any other.) The
# victim's command reaches c before the flood starts: during the flood, L1's own packets to
# the guests queue behind it in the uplink (head-of-line blocking within one sender, see
# vswitch), so an agent session started then may wait for the flood to end.
blast_receive 5002 SOLO
on 3 "/bin/tcpblast send 10.0.1.4 5002 2097152"
wait $rpid
blast_report SOLO
no_crash
blast_receive 5003 FLOOD
api net ports | sed 's/^/PORTS0 /'
on 3 "sleep 3; /bin/tcpblast send 10.0.1.4 5003 2097152" &
victim=$!
sleep 1.5
/udpflood 10.0.1.4 9 15 1400 4000000 > /tmp/flood.out 2>&1 &
flooder=$!
wait $victim
wait $rpid
blast_report FLOOD
wait $flooder
cat /tmp/flood.out
api net ports | sed 's/^/PORTS /'
no_crash

# Fairness between backlogged senders, measured at the switch: c sends UDP to d at d's whole
# port rate (1 MB/s: twice its fair half, so a frame of c's always waits for d) while L1's
# flood comes through the uplink at four times that, both in 1400-byte datagrams; the ports
# table is read twice while both run, and the bytes each sender got into the switch in between
# (it reads a sender's next frame only once its last one went) are its part of d's port.
on 3 "sleep 1; /bin/udpflood 10.0.1.4 9 14 1400 1000000 | sed 's/^/VICTIM_UDP /'" &
victim=$!
sleep 1.5
/udpflood 10.0.1.4 9 14 1400 4000000 > /tmp/flood2.out 2>&1 &
flooder=$!
sleep 4
echo PORTS_A_AT=$(cut -d' ' -f1 /proc/uptime); api net ports | sed 's/^/PORTS_A /'
sleep 5
echo PORTS_B_AT=$(cut -d' ' -f1 /proc/uptime); api net ports | sed 's/^/PORTS_B /'
wait $victim
wait $flooder
sed 's/^/FLOOD_UDP /' /tmp/flood2.out
no_crash

# Pause: the guest's own counter stops while paused and goes on after. The counter is
# renamed into place, so a read never sees the file between its truncation and its write.
on 2 "(i=0; while true; do i=\$((i+1)); echo \$i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done) </dev/null >/dev/null 2>&1 & echo COUNTING"
sleep 3
# clocks: L1's uptime, then b's uptime and wall clock (seconds since the epoch), then L1's wall
# clock: b's clocks across the pause are compared with L1's.
clocks() { echo "$(cut -d' ' -f1 /proc/uptime),$(on 2 'echo $(cut -d" " -f1 /proc/uptime),$(date +%s)'),$(date +%s)"; }
echo CLOCKS_BEFORE=$(clocks)
c0=$(on 2 "cat /tmp/count")
api pause b && echo PAUSED=b
on 1 "ping -c 1 -W 2 10.0.1.2 >/dev/null 2>&1 && echo PAUSED_PING=answered || echo PAUSED_PING=silent"
sleep 6
api unpause b && echo UNPAUSED=b
echo CLOCKS_AFTER=$(clocks)
c1=$(on 2 "cat /tmp/count"); sleep 3; c2=$(on 2 "cat /tmp/count")
echo COUNTS=$c0,$c1,$c2
api info b | grep -E '"state"|"cpu_ns"' | sed 's/^/INFO_B /'

# Crash: c triple-faults (reboot=t after a panic); the others keep running.
on 3 "echo c > /proc/sysrq-trigger" >/dev/null 2>&1 &
crasher=$!
i=0; until api info c | grep -q '"state": "crashed"'; do i=$((i+1)); [ $i -ge 120 ] && break; sleep 1; done
api info c | grep -E '"state"|"message"' | sed 's/^/INFO_C /'
on 1 "ping -c 1 -W 3 10.0.1.4 >/dev/null 2>&1 && echo AFTER_CRASH=1-4"

# Destroy frees memory: the guest's RAM is its own process's, which ends.
dpid=$(api info d | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
echo D_PID=$dpid
echo D_RSS_BEFORE_DESTROY=$(awk '/VmRSS/ {print $2}' /proc/$dpid/status)
api destroy d && echo DESTROYED=d
i=0; while [ -e /proc/$dpid/status ] && ! grep -q zombie /proc/$dpid/status && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
[ -e /proc/$dpid/status ] && ! grep -q zombie /proc/$dpid/status && echo D_PROCESS=alive || echo D_PROCESS=gone
echo DAEMON_RSS_AFTER_DESTROY=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status)
api list | sed 's/^/LIST2 /'
api info a | grep -E '"(cpu_ns|memory_resident_bytes|rx_bytes|tx_bytes)"' | tr -d ' ",' | sed 's/^/INFO_A /'
kill $daemon $crasher 2>/dev/null
echo DAEMON_LOG; cat /tmp/daemon.log
