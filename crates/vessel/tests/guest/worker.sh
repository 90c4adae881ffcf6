# /scripts/worker (guest side, packed by tests/boxed/mod.rs::guest_tools): a CPU-bound guest for
# the scheduling box tests. Runs /bin/spin once /tmp/go exists (its progress lines go to the console, which the
# daemon keeps: the host reads them through the API) and, like the agent, gives eth0 the
# address in vip= and serves one-command sessions on TCP port 7000. spin's UNIT comes from the
# kernel command line's vunit=, if given.
ip addr add "$vip/24" dev eth0
ip link set eth0 up
# The work starts once L1 says so (/tmp/go, through a session): guests that spin from their
# boot would slow the boots of those created after them.
( while [ ! -e /tmp/go ]; do sleep 0.2; done; exec /bin/spin ${vunit:-} > /dev/console 2>&1 ) &
echo "WORKER-UP $vip"
while true; do
    nc -l -p 7000 -e /scripts/session
done
