# /scripts/dirtier (guest side, packed by tests/boxed/mod.rs::guest_tools; the migration
# benchmark's busy guest): fills 128 MiB of its tmpfs (not zeros), says so, then writes 4 MiB
# of it again every 0.1 s, going round a 32 MiB working set: at most 40 MiB/s of pages dirtied
# at a steady pace, as long as it runs.
mount -o remount,size=200M /tmp
yes "vessel migration benchmark: pages written again and again" | head -c 134217728 > /tmp/fill
echo "GUEST-FILLED $(du -m /tmp/fill | cut -f1)"
i=0
while true; do
    # 4 MiB from a part further on that moves too, so the pages' bytes change each time.
    dd if=/tmp/fill of=/tmp/fill bs=1M count=4 skip=$(( 64 + i % 31 )) seek=$(( (i % 8) * 4 )) \
        conv=notrunc 2>/dev/null
    i=$((i+1))
    sleep 0.1
done
