# L1 side of crates/vessel/tests/daemon_linux.rs's rate test: two Linux domains under one
# `vessel daemon`; a disk's rate limit and a switch port's rate are changed while a transfer
# runs, and the transfer's rate over spans before and after each change is read from the
# daemon's /metrics (the disk's bytes read, the port's bytes sent to its guest).
# Prints KEY=VALUE lines the test checks; never decides pass or fail itself.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
truncate -s 64M /tmp/data.img
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off --uplink vtap0 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo UPLINK=up

# a has a disk limited to 4 MiB/s; b's port has a rate of 600 kB/s.
cat > /tmp/a.json <<JSON
{"name": "a", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.1",
 "disk": ["path=/tmp/data.img,format=raw,bps=4M"], "net": ["switch=vsw0"]}
JSON
cat > /tmp/b.json <<JSON
{"name": "b", "kernel": "/assets/bzImage", "initrd": "/tmp/initrd", "memory": "160M",
 "cmdline": "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.2",
 "net": ["switch=vsw0,bps=600000"]}
JSON
api create /tmp/a.json && echo CREATED=a
api create /tmp/b.json && echo CREATED=b

for n in 1 2; do
    reach $n check && echo REACHABLE=$n
done

# reading NAME PATTERN: prints NAME=SECONDS,VALUE: L1's uptime and the value of the /metrics
# sample whose line matches PATTERN.
reading() {
    v=$(api api GET /metrics | grep -F "$2" | head -1 | awk '{print $2}')
    echo "$1=$(cut -d' ' -f1 /proc/uptime),$v"
}

# The disk: a reads it whole (64 MiB, direct I/O) in the background, at 4 MiB/s; after two
# spans of readings its limit goes to 1 MiB/s, then away.
disk_bytes='vessel_block_bytes_total{domain="a",disk="disk0",op="read"}'
api disk list a | sed 's/^/DISKS /'
on 1 "(dd if=/dev/vda of=/dev/null bs=64k iflag=direct; echo done > /tmp/dd.done) </dev/null >/dev/null 2>&1 & echo DD=started"
sleep 2
reading DISK_0 "$disk_bytes"; sleep 3; reading DISK_1 "$disk_bytes"
api disk set a vda --bps 1M | sed 's/^/DISK_SET /'
api disk list a --json | grep bytes_per_sec | sed 's/^/DISK_KEPT /'
sleep 1
reading DISK_2 "$disk_bytes"; sleep 3; reading DISK_3 "$disk_bytes"
api disk set a disk0 --bps 0 | sed 's/^/DISK_UNSET /'
i=0; until [ "$(on 1 'cat /tmp/dd.done 2>/dev/null')" = done ]; do
    i=$((i+1)); [ $i -ge 60 ] && break; sleep 1
done
[ $i -lt 60 ] && echo DD=done
api disk list a --json | grep bytes_per_sec | sed 's/^/DISK_AFTER /'
no_crash

# The port: a sends b 6 MiB (tcpblast); b's port at 600 kB/s, then 100 kB/s, then no limit.
port_bytes='vessel_switch_port_bytes_total{port="b-eth0",domain="b",direction="tx"}'
( on 2 "/bin/tcpblast recv 5001" > /tmp/blast.out ) & rpid=$!
sleep 2
( on 1 "/bin/tcpblast send 10.0.1.2 5001 6291456" > /tmp/send.out ) & spid=$!
sleep 2
reading PORT_0 "$port_bytes"; sleep 3; reading PORT_1 "$port_bytes"
api net port set b-eth0 --bps 100000 | sed 's/^/PORT_SET /'
api api GET /metrics | grep -F 'vessel_switch_port_rate_bytes_per_second{port="b-eth0"' \
    | sed 's/^/PORT_RATE_METRIC /'
api info b | grep -o 'switch=vsw0[^"]*' | sed 's/^/B_NET_KEPT /'
sleep 1
reading PORT_2 "$port_bytes"; sleep 4; reading PORT_3 "$port_bytes"
api net port set b-eth0 --bps 0 | sed 's/^/PORT_UNSET /'
# The rest of the stream (about 2 MB) then goes at the guests' pace. In one run of three on
# 2026-12-06 it never finished (no byte for 108 s, cause not found): that case is reported with
# what the switch and the VIFs counted, not waited out.
i=0; until grep -q '^TCPBLAST received=' /tmp/blast.out; do
    i=$((i+1)); [ $i -ge 60 ] && break; sleep 1
done
if [ $i -ge 60 ]; then
    echo BLAST_STUCK=1
    api net ports | sed 's/^/STUCK_PORTS /'
    for g in a b; do api info $g | tr -d ' \n' | grep -o '"kind":"net"[^}]*}' | sed "s/^/STUCK_VIF_$g /"; done
    kill $spid $rpid 2>/dev/null
fi
wait $spid
wait $rpid
sed 's/^/BLAST /' /tmp/blast.out
sed 's/^/SENDER /' /tmp/send.out
no_crash
sed 's/^/DAEMON_LOG /' /tmp/daemon.log
