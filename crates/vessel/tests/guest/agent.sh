# /scripts/agent (guest side, packed by tests/boxed/mod.rs::guest_tools): gives eth0 the address
# in the kernel command line's vip=, then serves one-command sessions on TCP port 7000 forever:
# whoever connects sends one line of shell, reads its output, and the connection closes when it
# is done (/scripts/session).
ip addr add "$vip/24" dev eth0
ip link set eth0 up
echo "AGENT-UP $vip"
while true; do
    nc -l -p 7000 -e /scripts/session
done
