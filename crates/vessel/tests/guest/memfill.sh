# /scripts/memfill (guest side, packed by tests/boxed/mod.rs::guest_tools; the balloon benchmark's
# guest): fills 150 MiB of its tmpfs, says so, frees it 10 s later, says so, and then idles, so
# that the host can see what its VMM holds after each step and drive the balloon.
mount -o remount,size=200M /tmp
dd if=/dev/zero of=/tmp/fill bs=1M count=150 2>/dev/null
echo "GUEST-FILLED $(du -m /tmp/fill | cut -f1)"
sleep 10
rm /tmp/fill
echo GUEST-FREED
while true; do sleep 1000; done
