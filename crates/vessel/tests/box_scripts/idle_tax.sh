# L1 side of crates/vessel/tests/idle_tax_linux.rs: the idle memory tax with real Linux guests,
# in two phases, each under a fresh `vessel daemon --memory-pool 768M --working-set-period 5`:
# first with the tax at its default (0.75), then with `--idle-tax 0`. Each phase runs two
# domains of 512 MiB with equal shares; both write 100 MiB to their tmpfs, then a idles and b
# reads its 100 MiB again and again (a byte of each page, five passes a second). Sampling finds
# a idle and b busy: with the tax, the 303 MiB the targets lack (the pool less its free
# reserve of 47 MiB) come mostly from a; without it, half from each. a's data is read back at the end
# of the taxed phase (its pages were taken away and given back period after period). Prints
# KEY=VALUE lines (TAX_ or NOTAX_ first) the test checks; never decides pass or fail.
set -u
cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
. /domains.sh

# field DOMAIN FIELD: a number of the domain's memory object (a fraction's digits too).
field() { api info $1 | sed -n "s/^ *\"$2\": \([0-9.]*\).*/\1/p" | head -1; }
progress() {
    echo "PROGRESS $1 a: target $(field a target_bytes) active $(field a active_estimate_bytes)" \
        "share $(field a active_share) balloon $(field a balloon_bytes);" \
        "b: target $(field b target_bytes) active $(field b active_estimate_bytes)" \
        "share $(field b active_share) balloon $(field b balloon_bytes)"
}
# below FRACTION LIMIT: whether a decimal fraction is below LIMIT (awk: busybox sh has no floats).
below() { [ -n "$1" ] && awk "BEGIN { exit !($1 < $2) }"; }
above() { [ -n "$1" ] && awk "BEGIN { exit !($1 >= $2) }"; }

# phase TAX PREFIX
phase() {
    rm -rf /tmp/state
    vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --page-sharing off \
        --uplink vtap0 --memory-pool 768M --working-set-period 5 --idle-tax $1 \
        2>/tmp/daemon.log &
    daemon=$!
    trap 'kill $daemon 2>/dev/null' EXIT
    i=0; while [ ! -S $VESSEL_SOCKET ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    # Each daemon makes the uplink TAP anew.
    ip addr add 10.0.1.254/24 dev vtap0 && ip link set vtap0 up && echo ${2}UPLINK=up
    for n in 1 2; do
        name=$(echo ab | cut -c$n)
        api create --name $name --kernel /assets/bzImage --initrd /tmp/initrd --memory 512M \
            --cmdline "console=ttyS0 quiet panic=-1 reboot=t vscript=agent vip=10.0.1.$n" \
            --net switch=vsw0 --shares 1000 > /dev/null && echo ${2}CREATED=$name
    done
    reach 1 check && echo ${2}REACHABLE=1
    reach 2 check && echo ${2}REACHABLE=2
    fill='mount -o remount,size=300M /tmp && yes "vessel idle memory tax: written once" | head -c 104857600 > /tmp/fill && md5sum /tmp/fill'
    echo "${2}A_SUM_BEFORE=$(on 1 "$fill" | cut -d' ' -f1)"
    echo "${2}B_SUM=$(on 2 "$fill" | cut -d' ' -f1)"
    # pagetouch reads a byte of every page of the file, five passes a second.
    on 2 '/bin/pagetouch /tmp/fill > /dev/null 2>&1 &'
    on 2 'pidof pagetouch > /dev/null && echo BUSY=b' | sed "s/^/${2}/"
    # Until the estimates tell idle a from busy b, up to 300 s; then three rounds of the policy.
    i=0
    until below "$(field a active_share)" 0.1 && above "$(field b active_share)" 0.3; do
        i=$((i+5)); [ $i -gt 300 ] && break
        [ $((i % 10)) = 0 ] && { progress "$2 t=$i"; no_crash; }
        sleep 5
    done
    echo ${2}ESTIMATED_AFTER=$i
    sleep 6
    progress "$2 end"
    for g in a b; do
        for f in target_bytes active_estimate_bytes resident_bytes active_share; do
            echo "${2}${g}_$f=$(field $g $f)"
        done
    done
    if [ "$1" != 0 ]; then
        # a's balloon takes what its target leaves (up to 180 s: the guest gives page by page).
        want=$(( 536870912 - $(field a target_bytes) ))
        i=0; until [ $(( $(field a balloon_bytes) + 4194304 )) -ge $want ]; do
            i=$((i+1)); [ $i -ge 180 ] && break
            [ $((i % 10)) = 0 ] && no_crash
            sleep 1
        done
        echo "${2}a_balloon_bytes=$(field a balloon_bytes)"
        echo "${2}A_SUM_AFTER=$(on 1 'md5sum /tmp/fill' | cut -d' ' -f1)"
    fi
    api mem | sed "s/^/${2}MEM /"
    no_crash
    grep "memory target" /tmp/daemon.log | tail -n 6 | sed "s/^/${2}DAEMON_LOG /"
    api destroy a > /dev/null; api destroy b > /dev/null
    kill $daemon; wait $daemon 2>/dev/null
    trap - EXIT
}
phase 0.75 TAX_
phase 0 NOTAX_
