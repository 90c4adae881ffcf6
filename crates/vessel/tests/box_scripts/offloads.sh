# L1 side of crates/vessel/tests/offloads_linux.rs: three Linux domains on the daemon's switch,
# a and b offered checksum offload and TSO, c not (offloads=off), and L1 behind the switch's
# uplink TAP. TCP transfers of random data between each kind of pair and through the uplink both
# ways, each checked by its MD5 and size at the receiver; UDP datagrams to a guest with and
# without offloads, counted by its kernel (checksum errors apart); the switch's port counters
# and c's VIF counters around the transfers. Prints KEY=VALUE lines the test checks; never
# decides pass or fail itself.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 2>/tmp/daemon.log &
daemon=$!
# The step ends only when nothing holds its output: stop the daemon however the script ends.
trap 'kill $daemon 2>/dev/null' EXIT
. /domains.sh
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

n=1
for d in a b c; do
    extra=; [ $d = c ] && extra=,offloads=off
    cat > /tmp/$d.json <<JSON
{"name": "$d", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 vscript=agent vip=10.0.1.$n",
 "net": ["switch=vsw0$extra"]}
JSON
    api create /tmp/$d.json && echo CREATED=$d
    n=$((n+1))
done
for n in 1 2 3; do reach $n check && echo REACHABLE=$n; done

# What the guest negotiated: the virtio-net device's feature bits (the sysfs string, bit 0 first).
for g in 1 3; do
    on $g "for f in /sys/bus/virtio/devices/*; do [ \$(cat \$f/device) = 0x0001 ] && echo FEATURES_$g=\$(cat \$f/features); done"
done

# A guest that crashes during a transfer ends the step at the next no_crash (the test runs the
# box again, or fails at once if a thread of Vessel's failed), rather than leaving every later
# session to time out: one box sat 600 s that way, its domain a gone from the switch.
# 4 MiB of random data in each guest and in L1, with their digests.
for g in 1 2 3; do
    on $g "head -c 4194304 /dev/urandom > /tmp/data; echo DATA_$g=\$(md5sum < /tmp/data | cut -d' ' -f1),\$(wc -c < /tmp/data)"
done
head -c 4194304 /dev/urandom > /tmp/l1data
echo DATA_L1=$(md5sum < /tmp/l1data | cut -d' ' -f1),$(wc -c < /tmp/l1data)

# receive GUEST PORT KEY: guest GUEST receives one TCP stream on PORT (in the background) and
# prints KEY=md5,size of what arrived. (nc's standard input is a FIFO held open: a listening
# busybox nc whose stdin ends closes the connection early.)
receive() {
    ( on $1 "mkfifo /tmp/in$2; nc -l -p $2 < /tmp/in$2 > /tmp/rx$2 & p=\$!; exec 3> /tmp/in$2; wait \$p; echo $3=\$(md5sum < /tmp/rx$2 | cut -d' ' -f1),\$(wc -c < /tmp/rx$2); rm /tmp/rx$2" > /tmp/$3.out ) &
    rpid=$!; sleep 2
}
# send GUEST ADDRESS PORT: guest GUEST sends its data to ADDRESS:PORT (retrying until the
# receiver listens).
send() {
    on $1 "i=0; until nc $2 $3 < /tmp/data; do i=\$((i+1)); [ \$i -ge 40 ] && break; sleep 0.5; done"
}
ports() { api net ports | sed "s/^/$1 /"; }

ports PORTS0
receive 2 5001 AB
send 1 10.0.1.2 5001
wait $rpid; cat /tmp/AB.out
no_crash
ports PORTS1
api info c | grep -E '"(rx_frames|rx_bytes)"' | tr -d ' ",' | sed 's/^/VIF_C0 /'
receive 3 5002 AC
send 1 10.0.1.3 5002
wait $rpid; cat /tmp/AC.out
no_crash
ports PORTS2
api info c | grep -E '"(rx_frames|rx_bytes)"' | tr -d ' ",' | sed 's/^/VIF_C1 /'
receive 1 5003 CA
send 3 10.0.1.1 5003
wait $rpid; cat /tmp/CA.out
no_crash

# Through the uplink: a to L1, then L1 to a.
mkfifo /tmp/l1in; nc -l -p 6000 < /tmp/l1in > /tmp/l1rx & l1nc=$!; exec 3> /tmp/l1in
sleep 1
send 1 10.0.1.254 6000
wait $l1nc; exec 3>&-
echo AL1=$(md5sum < /tmp/l1rx | cut -d' ' -f1),$(wc -c < /tmp/l1rx)
no_crash
receive 1 5004 L1A
i=0; until nc 10.0.1.1 5004 < /tmp/l1data; do i=$((i+1)); [ $i -ge 40 ] && break; sleep 0.5; done
wait $rpid; cat /tmp/L1A.out
no_crash

# The firewall on offloaded TCP from a to b (a's segments cross the switch whole). A
# rate-limit rule holds a stream to its rate, charging each segment's real bytes (its
# counters say how many it was charged). Then a drop rule put before it while a
# stream runs stops that stream: b's port carries nothing more of it.
rule() {
    api net rule add --src-domain a --dst-domain b --proto tcp --dport $1 --action $2 ${3:-} | cut -d' ' -f2
}
rated=$(rule 5006 rate-limit=300000:65536)
echo RATED_RULE=$rated
( on 2 "/bin/tcpblast recv 5006" > /tmp/rated.out ) & rpid=$!
sleep 2
on 1 "/bin/tcpblast send 10.0.1.2 5006 1048576" | sed 's/^/RATED_SENDER /'
wait $rpid; sed 's/^/RATED /' /tmp/rated.out
echo "RULES_RATED $(api net rule list --json | tr -d ' \n')"
api net rule del $rated && echo RULE=deleted

rated=$(rule 5007 rate-limit=300000:65536)
( on 2 "/bin/tcpblast recv 5007" > /tmp/cut.out ) & rpid=$!
sleep 2
( on 1 "timeout 20 /bin/tcpblast send 10.0.1.2 5007 8388608" > /tmp/cutsend.out ) & spid=$!
sleep 3
ports PORTS_CUT0
sleep 3
ports PORTS_CUT1
dropped=$(rule 5007 drop --position=0)
echo RULE=drop-$dropped
sleep 1
ports PORTS_CUT2
sleep 5
ports PORTS_CUT3
echo "RULES_CUT $(api net rule list --json | tr -d ' \n')"
api net rule del $dropped && api net rule del $rated && echo RULE=deleted
on 2 'kill $(pidof tcpblast) 2>/dev/null'
wait $spid; wait $rpid
sed 's/^/CUT /' /tmp/cut.out /tmp/cutsend.out

no_crash

# UDP from a (its checksums left to finish) to b (takes them as they are) and to c (this end
# finishes them): 1400-byte datagrams to a port nobody listens on, counted by the receiver's
# kernel as NoPorts once their checksum verified, as InCsumErrors if not.
for g in 2 3; do
    on $g "grep '^Udp: [0-9]' /proc/net/snmp" | sed "s/^/UDP0_$g /"
    on 1 "/bin/udpflood 10.0.1.$g 9 2 1400 500000" | sed "s/^/UDPSENT_$g /"
    sleep 1
    on $g "grep '^Udp: [0-9]' /proc/net/snmp" | sed "s/^/UDP1_$g /"
done
grep '^Udp:' /proc/net/snmp | head -1 | sed 's/^/UDPHEAD /'
api net ports | sed 's/^/PORTS3 /'
no_crash
kill $daemon 2>/dev/null
echo DAEMON_LOG; cat /tmp/daemon.log
