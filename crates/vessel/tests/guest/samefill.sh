# /scripts/samefill (guest side, packed by tests/boxed/mod.rs::guest_tools; the page-sharing
# benchmark's guest): fills `vfill` MiB (a kernel command-line parameter; 128 unless given) of
# its tmpfs with the bytes every such guest writes (a text pattern, not zeros), says so, and
# idles, so that the host's page sharing has identical pages to find across guests.
mib=${vfill:-128}
mount -o remount,size=$((mib + 72))M /tmp
yes "vessel page sharing benchmark: the same bytes in every guest" | head -c $((mib * 1048576)) > /tmp/fill
echo "GUEST-FILLED $(du -m /tmp/fill | cut -f1)"
while true; do sleep 1000; done
