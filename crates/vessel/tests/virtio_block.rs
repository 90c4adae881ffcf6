//! Paravirtual I/O with a real Linux guest in the host box: virtual block devices (virtio-blk
//! over virtio-mmio, found through ACPI) driven by the guest kernel's own drivers, and the
//! virtio entropy source.
//!
//! Disk images are made inside L1 (on its tmpfs); L1 checks their bytes from outside the guest.

mod boxed;

use boxed::{assert_guest_ok as assert_ok, box_with_vessel, vessel_with_disks as vessel};
#[test]
fn a_file_system_on_a_vbd_survives_power_off_and_a_new_boot() {
    let make = vessel(
        &["path=/tmp/disk.img,id=data"],
        "set -e; cat /sys/block/vda/serial; mkdir -p /mnt; mke2fs -q /dev/vda; mount /dev/vda /mnt; \
         echo hello-vessel > /mnt/greeting; dd if=/dev/urandom of=/mnt/blob bs=1k count=4096 2>/dev/null; \
         cd /mnt; sha256sum blob > sum; cat sum; cd /; sync; umount /mnt; \
         echo RNG=$(cat /sys/devices/virtual/misc/hw_random/rng_current); \
         echo RNGBYTES=$(head -c 4096 /dev/hwrng | wc -c)",
    );
    let verify = vessel(
        &["path=/tmp/disk.img"],
        "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cat /mnt/greeting; cd /mnt; sha256sum -c sum; echo VERIFIED",
    );
    let run = box_with_vessel(600)
        .step("make", &format!("truncate -s 64M /tmp/disk.img && {make}"))
        .step("verify", &verify)
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let make = run.step("make");
    assert_ok(make);
    assert!(
        make.output.contains("data"),
        "the guest reads the VBD's id as its serial"
    );
    assert!(make.output.contains("RNG=virtio_rng.0"), "{}", make.output);
    assert!(make.output.contains("RNGBYTES=4096"), "{}", make.output);
    let verify = run.step("verify");
    assert_ok(verify);
    assert!(verify.output.contains("hello-vessel"), "{}", verify.output);
    assert!(
        verify.output.contains("blob: OK") && verify.output.contains("VERIFIED"),
        "{}",
        verify.output
    );
}

#[test]
fn a_read_only_vbd_refuses_writes_and_its_file_stays_identical() {
    let guest = vessel(
        &["path=/tmp/ro.img,readonly=on"],
        "echo RO=$(cat /sys/block/vda/ro); \
         dd if=/dev/zero of=/dev/vda bs=4k count=1 conv=fsync 2>&1; echo DD1=$?; \
         blockdev --setrw /dev/vda; echo RW=$(cat /sys/block/vda/ro); \
         dd if=/dev/zero of=/dev/vda bs=4k count=1 conv=fsync 2>&1; echo DD2=$?; \
         echo IOERRS=$(dmesg | grep -c I/O.error.*vda); \
         echo READ=$(head -c 1048576 /dev/vda | wc -c)",
    );
    let run = box_with_vessel(600)
        .step(
            "readonly",
            &format!(
                "dd if=/dev/urandom of=/tmp/ro.img bs=1M count=8 2>/dev/null; \
                 sha256sum /tmp/ro.img > /tmp/before; {guest}; rc=$?; \
                 sha256sum -c /tmp/before && echo FILE-UNCHANGED; exit $rc"
            ),
        )
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let step = run.step("readonly");
    assert_ok(step);
    let out = &step.output;
    assert!(
        out.contains("RO=1"),
        "the guest sees a read-only disk:\n{out}"
    );
    assert!(
        !out.contains("DD1=0"),
        "a write through the read-only disk failed:\n{out}"
    );
    // Even a guest that flips its own read-only flag gets an I/O error from the device.
    assert!(
        !out.contains("DD2=0"),
        "the device itself refused the write:\n{out}"
    );
    assert!(out.contains("READ=1048576"), "reads still work:\n{out}");
    assert!(
        out.contains("FILE-UNCHANGED"),
        "the image's bytes are identical:\n{out}"
    );
}

#[test]
fn data_the_guest_synced_survives_sigkill_of_the_vmm() {
    let writer = vessel(
        &["path=/tmp/dur.img"],
        "set -e; mkdir -p /mnt; mke2fs -q /dev/vda; mount /dev/vda /mnt; \
         dd if=/dev/urandom of=/mnt/blob bs=1k count=2048 2>/dev/null; cd /mnt; sha256sum blob > sum; \
         sync; echo SYNCED-NOW; sleep 600",
    );
    // L1 reacts to the guest's own output (no timed polling in L1): the moment the guest says
    // its data is synced, Vessel is killed; the closed pipe then ends the loop.
    let kill = format!(
        "truncate -s 32M /tmp/dur.img; ({writer}) 2>&1 | while read -r line; do echo \"$line\"; \
         case \"$line\" in SYNCED-NOW*) kill -9 $(pidof vessel); echo KILLED;; esac; done"
    );
    let verify = vessel(
        &["path=/tmp/dur.img"],
        "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cd /mnt; sha256sum -c sum; echo VERIFIED",
    );
    let run = box_with_vessel(240)
        .step("write-and-kill", &kill)
        .step("verify", &verify)
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let step = run.step("write-and-kill");
    assert_eq!(step.exit_code, 0, "{}", step.output);
    assert!(step.output.contains("KILLED"), "{}", step.output);
    let verify = run.step("verify");
    assert_ok(verify);
    assert!(verify.output.contains("blob: OK"), "{}", verify.output);
}

#[test]
fn a_rate_limited_vbd_is_held_near_its_rate() {
    // vda is limited to 1 MiB/s, vdb is not; the guest reads 4 MiB from each with O_DIRECT.
    let guest = vessel(
        &["path=/tmp/slow.img,bps=1M", "path=/tmp/fast.img"],
        "for d in vda vdb; do echo T0$d=$(cat /proc/uptime); \
         dd if=/dev/$d of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null; \
         echo T1$d=$(cat /proc/uptime); done",
    );
    let run = box_with_vessel(600)
        .step(
            "rate",
            &format!("truncate -s 16M /tmp/slow.img /tmp/fast.img && {guest}"),
        )
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let step = run.step("rate");
    assert_ok(step);
    let at = |key: &str| -> f64 {
        step.output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in:\n{}", step.output))
    };
    let slow = at("T1vda") - at("T0vda");
    let fast = at("T1vdb") - at("T0vdb");
    // 4 MiB at 1 MiB/s with a 1 MiB burst: about 3 s.
    assert!((2.5..12.0).contains(&slow), "limited read took {slow} s");
    assert!(
        fast < slow / 2.0,
        "unlimited read took {fast} s vs {slow} s limited"
    );
}

/// A block device is a disk too: a loop device in L1 with 4 KiB logical blocks, holding the
/// guest's own root file system (the tree of its initramfs: Debian's busybox and kernel
/// modules), given as `--disk path=/dev/loopN`. The guest sees the device's size and block
/// size, switches its root to it and boots from it, and what it writes there is on the device.
#[test]
fn a_guest_boots_its_root_file_system_from_a_loop_device() {
    let assets = testbox::Assets::locate().unwrap_or_else(|e| panic!("guest assets: {e}"));
    let loop_ko = assets.modules.join("kernel/drivers/block/loop.ko");
    let guest =
        "echo ROOT=$(grep ^/dev/vda /proc/mounts); echo SECTORS=$(cat /sys/block/vda/size); \
                 echo LBS=$(cat /sys/block/vda/queue/logical_block_size); \
                 echo written-from-its-root > /from-guest.txt; sync";
    let script = format!(
        "set -e; [ -e /dev/loop-control ] || insmod /loop.ko; truncate -s 64M /tmp/root.img; \
         dev=$(util-losetup --find --show --sector-size 4096 /tmp/root.img); echo DEV=$dev; \
         mke2fs -q -b 4096 $dev; mkdir -p /mnt; mount $dev /mnt; \
         (cd /mnt && zcat /assets/initramfs.cpio.gz | cpio -id 2>/dev/null); umount /mnt; \
         vessel run --kernel /assets/bzImage --initrd /assets/initramfs.cpio.gz --memory 256M \
           --disk path=$dev --cmdline 'console=ttyS0 quiet vroot=/dev/vda vcmd=\"{guest}\"' </dev/null; \
         mount $dev /mnt; echo ON-DEVICE=$(cat /mnt/from-guest.txt); umount /mnt; util-losetup -d $dev"
    );
    let run = box_with_vessel(600)
        .binary("/usr/sbin/losetup", "/bin/util-losetup")
        .file(&loop_ko, "/loop.ko")
        .step("loop", &script)
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let step = run.step("loop");
    eprintln!("--- loop: {:.1}s\n{}", step.seconds, step.output);
    assert_ok(step);
    let out = &step.output;
    assert!(
        out.contains("ROOT=/dev/vda / ext"),
        "root not on the disk:\n{out}"
    );
    assert!(
        out.contains("SECTORS=131072"),
        "64 MiB in 512-byte sectors:\n{out}"
    );
    assert!(
        out.contains("LBS=4096"),
        "the device's logical block size:\n{out}"
    );
    assert!(out.contains("ON-DEVICE=written-from-its-root"), "{out}");
}
