//! Copy-on-write qcow2 images with real Linux guests in the host box: one base image with a
//! file system, two qcow2 overlays made by `vessel image create`, two domains each booting from
//! its own overlay and writing its own data; the base's bytes never change (sha256 in L1 before
//! and after), `vessel image check` and QEMU's `qemu-img check` pass on both overlays, and
//! `qemu-img convert` of one yields the files its guest wrote. The other way: a qcow2 overlay
//! on a raw base and a two-deep chain made by `qemu-img` boot under Vessel with their data.
//! And what a guest flushed to an overlay survives `kill -9` of Vessel.
//!
//! Everything runs inside L1 (on its tmpfs), including `vessel image` and `qemu-img`.

mod boxed;

use boxed::{assert_guest_ok, box_with_vessel, vessel_with_disks as vessel};

/// `qemu-img` of the host, for L1.
const QEMU_IMG: &str = "/usr/bin/qemu-img";

/// A domain on its overlay: the base's files are there and intact; it writes its own file and
/// blob, drops its caches and reads them back from the disk.
fn domain(overlay: &str, name: &str) -> String {
    vessel(
        &[&format!("path={overlay},id={name}")],
        &format!(
            "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cd /mnt; cat base.txt; sha256sum -c base.sum; \
             test ! -e other.txt; echo I-am-{name} > mine.txt; \
             dd if=/dev/urandom of=own.blob bs=1k count=1024 2>/dev/null; sha256sum own.blob > own.sum; \
             cd /; sync; echo 3 > /proc/sys/vm/drop_caches; cd /mnt; \
             echo MINE=$(cat mine.txt); sha256sum -c own.sum; cd /; umount /mnt; echo DOMAIN-{name}-DONE"
        ),
    )
}

/// A guest that makes a file system with `base.txt` and a checksummed blob on its vda.
fn make_base() -> String {
    vessel(
        &["path=/tmp/base.img,id=base"],
        "set -e; mkdir -p /mnt; mke2fs -q /dev/vda; mount /dev/vda /mnt; cd /mnt; \
         echo shared-base-content > base.txt; \
         dd if=/dev/urandom of=base.blob bs=1k count=2048 2>/dev/null; \
         sha256sum base.txt base.blob > base.sum; cd /; sync; umount /mnt; echo BASE-MADE",
    )
}

fn show(run: &testbox::BoxRun, names: &[&str]) {
    for name in names {
        let s = run.step(name);
        eprintln!(
            "--- {name}: {:.1}s, exit {}\n{}",
            s.seconds, s.exit_code, s.output
        );
    }
}

#[test]
fn two_domains_boot_from_qcow2_overlays_on_one_base_that_never_changes() {
    // Both overlays, read-only at once in one domain: each sees its own data and the base.
    let reverify = vessel(
        &["path=/tmp/a.qcow2,readonly=on", "path=/tmp/b.qcow2,readonly=on"],
        "set -e; mkdir -p /a /b; mount -o ro /dev/vda /a; mount -o ro /dev/vdb /b; \
         echo RO=$(cat /sys/block/vda/ro)$(cat /sys/block/vdb/ro); \
         echo A=$(cat /a/mine.txt) B=$(cat /b/mine.txt); \
         cd /a; sha256sum -c base.sum; sha256sum -c own.sum; cd /b; sha256sum -c base.sum; sha256sum -c own.sum; \
         cmp -s /a/own.blob /b/own.blob && echo SAME-BLOBS || echo DIFFERENT-BLOBS; \
         cd /; umount /a; umount /b",
    );
    // What qemu-img convert made of A's overlay, as a raw disk.
    let converted = vessel(
        &["path=/tmp/a.raw,format=raw,readonly=on"],
        "set -e; mkdir -p /c; mount -o ro /dev/vda /c; cd /c; echo CONVERTED=$(cat mine.txt); \
         sha256sum -c base.sum; sha256sum -c own.sum; cd /; umount /c",
    );
    let run = box_with_vessel(900)
        .binary(QEMU_IMG, "/bin/qemu-img")
        .step(
            "base",
            &format!(
                "vessel image create --size 64M /tmp/base.img && {} && \
                 sha256sum /tmp/base.img > /tmp/base.sha && cat /tmp/base.sha",
                make_base()
            ),
        )
        .step(
            "create",
            "set -e; vessel image create --backing /tmp/base.img --backing-format raw /tmp/a.qcow2; \
             vessel image create --backing /tmp/base.img /tmp/b.qcow2; vessel image info /tmp/a.qcow2; \
             if vessel image create --backing /tmp/base.img /tmp/a.qcow2; then echo REPLACED; fi",
        )
        .step(
            "domains",
            &format!(
                "({a}) >/tmp/a.log 2>&1 & pa=$!; ({b}) >/tmp/b.log 2>&1 & pb=$!; i=0; \
                 while [ $i -lt 600 ] && ! grep -q VESSEL-GUEST-INIT /tmp/a.log; do sleep 0.2; i=$((i+1)); done; \
                 {rw} >/tmp/rw.log 2>&1; echo BASE-RW=$?; cat /tmp/rw.log; \
                 wait $pa; ra=$?; wait $pb; rb=$?; \
                 echo '=== A'; cat /tmp/a.log; echo '=== B'; cat /tmp/b.log; echo RA=$ra RB=$rb; \
                 [ $ra = 0 ] && [ $rb = 0 ]",
                a = domain("/tmp/a.qcow2", "A"),
                b = domain("/tmp/b.qcow2", "B"),
                rw = vessel(&["path=/tmp/base.img"], "true"),
            ),
        )
        .step("reverify", &reverify)
        .step(
            "check",
            "set -e; sha256sum -c /tmp/base.sha && echo BASE-UNCHANGED; \
             vessel image check /tmp/a.qcow2; vessel image check /tmp/b.qcow2; \
             qemu-img check /tmp/a.qcow2; qemu-img check /tmp/b.qcow2; \
             qemu-img info /tmp/a.qcow2; \
             qemu-img convert -f qcow2 -O raw /tmp/a.qcow2 /tmp/a.raw; echo QEMU-CONVERTED; \
             du -k /tmp/base.img /tmp/a.qcow2 /tmp/b.qcow2",
        )
        .step("converted", &converted)
        .step(
            "corrupt",
            "cp /tmp/a.qcow2 /tmp/bad.qcow2; printf Z | dd of=/tmp/bad.qcow2 bs=1 seek=1 conv=notrunc 2>/dev/null; \
             vessel image check --format qcow2 /tmp/bad.qcow2; echo CHECK=$?; \
             vessel run --kernel /assets/bzImage --cmdline 'console=ttyS0 panic=-1' --on-reboot exit --disk path=/tmp/bad.qcow2,format=qcow2 </dev/null; echo RUN=$?; \
             mv /tmp/base.img /tmp/base.moved; vessel image check /tmp/b.qcow2; echo MISSING=$?; \
             vessel run --kernel /assets/bzImage --cmdline 'console=ttyS0 panic=-1' --on-reboot exit --disk path=/tmp/b.qcow2 </dev/null; echo RUN2=$?",
        )
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    show(
        &run,
        &[
            "base",
            "create",
            "domains",
            "reverify",
            "check",
            "converted",
            "corrupt",
        ],
    );
    let base = run.step("base");
    assert_guest_ok(base);
    assert!(base.output.contains("BASE-MADE"), "{}", base.output);

    let create = run.step("create");
    assert_eq!(create.exit_code, 0, "{}", create.output);
    assert!(
        create.output.contains("qcow2 image (version 3)")
            && create.output.contains("virtual size: 67108864 bytes")
            && create.output.contains("clusters allocated: 0 of 1024")
            && create
                .output
                .contains("backing file: /tmp/base.img (format raw, /tmp/base.img present)"),
        "{}",
        create.output
    );
    assert_eq!(
        create
            .output
            .matches("backing /tmp/base.img (format raw)")
            .count(),
        2,
        "the format given and the format found are recorded:\n{}",
        create.output
    );
    assert!(
        !create.output.contains("REPLACED"),
        "an existing overlay was replaced:\n{}",
        create.output
    );

    // Two domains at once, each on its own overlay of the one base (shared, read-only); the
    // base cannot be opened read-write meanwhile.
    let both = run.step("domains");
    assert_eq!(both.exit_code, 0, "{}", both.output);
    assert!(both.output.contains("RA=0 RB=0"), "{}", both.output);
    assert!(
        both.output.contains("BASE-RW=1") && both.output.contains("in use by another process"),
        "{}",
        both.output
    );
    for name in ["A", "B"] {
        let out = both
            .output
            .split(&format!("=== {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no log of domain {name}:\n{}", both.output));
        let out = out.split("=== ").next().unwrap_or_default();
        assert!(out.contains("VESSEL-CMD-EXIT rc=0"), "{out}");
        assert!(out.contains("shared-base-content"), "{out}");
        assert!(
            out.contains("base.blob: OK") && out.contains("base.txt: OK"),
            "{out}"
        );
        assert!(out.contains(&format!("MINE=I-am-{name}")), "{out}");
        assert!(out.contains("own.blob: OK"), "{out}");
        assert!(out.contains(&format!("DOMAIN-{name}-DONE")), "{out}");
    }

    let re = run.step("reverify");
    assert_guest_ok(re);
    let out = &re.output;
    assert!(out.contains("RO=11"), "{out}");
    assert!(out.contains("A=I-am-A B=I-am-B"), "{out}");
    assert_eq!(out.matches("own.blob: OK").count(), 2, "{out}");
    assert_eq!(out.matches("base.blob: OK").count(), 2, "{out}");
    assert!(out.contains("DIFFERENT-BLOBS"), "{out}");

    let check = run.step("check");
    assert_eq!(check.exit_code, 0, "{}", check.output);
    assert!(check.output.contains("BASE-UNCHANGED"), "{}", check.output);
    assert_eq!(
        check.output.matches("no errors found").count(),
        2,
        "{}",
        check.output
    );
    assert_eq!(
        check
            .output
            .matches("No errors were found on the image.")
            .count(),
        2,
        "qemu-img check:\n{}",
        check.output
    );
    assert!(
        check.output.contains("backing file format: raw")
            && check.output.contains("QEMU-CONVERTED"),
        "{}",
        check.output
    );
    let converted = run.step("converted");
    assert_guest_ok(converted);
    assert!(
        converted.output.contains("CONVERTED=I-am-A"),
        "{}",
        converted.output
    );
    assert!(
        converted.output.contains("own.blob: OK") && converted.output.contains("base.blob: OK"),
        "{}",
        converted.output
    );

    let bad = run.step("corrupt");
    let out = &bad.output;
    assert!(out.contains("CHECK=1") && out.contains("RUN=1"), "{out}");
    assert!(
        out.contains("/tmp/bad.qcow2") && out.contains("magic"),
        "{out}"
    );
    assert!(out.contains("MISSING=1") && out.contains("RUN2=1"), "{out}");
    assert!(out.contains("/tmp/base.img"), "{out}");
}

/// Images QEMU's tools made: a qcow2 overlay on a raw base, a second overlay on it (a two-deep
/// chain), and a standalone qcow2 image converted from the chain; a guest writes through each
/// layer and reads everything below it.
#[test]
fn images_qemu_img_made_boot_under_vessel_with_their_data() {
    let on_q1 = vessel(
        &["path=/tmp/q1.qcow2"],
        "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cd /mnt; sha256sum -c base.sum; \
         echo layer-one > q1.txt; cd /; umount /mnt; echo Q1-WRITTEN",
    );
    let on_q2 = vessel(
        &["path=/tmp/q2.qcow2"],
        "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cd /mnt; sha256sum -c base.sum; \
         echo Q1=$(cat q1.txt); echo layer-two > q2.txt; cd /; umount /mnt; echo Q2-WRITTEN",
    );
    let on_flat = vessel(
        &["path=/tmp/flat.qcow2,readonly=on"],
        "set -e; mkdir -p /mnt; mount -o ro /dev/vda /mnt; cd /mnt; sha256sum -c base.sum; \
         echo FLAT=$(cat q1.txt)+$(cat q2.txt); cd /; umount /mnt",
    );
    let run = box_with_vessel(900)
        .binary(QEMU_IMG, "/bin/qemu-img")
        .step(
            "base",
            &format!(
                "vessel image create --size 64M /tmp/base.img && {}",
                make_base()
            ),
        )
        .step(
            "q1",
            &format!(
                "set -e; qemu-img create -q -f qcow2 -b /tmp/base.img -F raw /tmp/q1.qcow2; \
                 vessel image info /tmp/q1.qcow2; {on_q1}; qemu-img check /tmp/q1.qcow2"
            ),
        )
        .step(
            "q2",
            &format!(
                "set -e; qemu-img create -q -f qcow2 -b /tmp/q1.qcow2 -F qcow2 /tmp/q2.qcow2; \
                 {on_q2}; qemu-img check /tmp/q2.qcow2; vessel image check /tmp/q2.qcow2"
            ),
        )
        .step(
            "flat",
            &format!(
                "set -e; qemu-img convert -f qcow2 -O qcow2 /tmp/q2.qcow2 /tmp/flat.qcow2; \
                 vessel image check /tmp/flat.qcow2; {on_flat}"
            ),
        )
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    show(&run, &["base", "q1", "q2", "flat"]);
    assert_guest_ok(run.step("base"));
    let q1 = run.step("q1");
    assert_guest_ok(q1);
    assert!(
        q1.output
            .contains("backing file: /tmp/base.img (format raw, /tmp/base.img present)")
            && q1.output.contains("base.blob: OK")
            && q1.output.contains("Q1-WRITTEN")
            && q1.output.contains("No errors were found"),
        "{}",
        q1.output
    );
    let q2 = run.step("q2");
    assert_guest_ok(q2);
    assert!(
        q2.output.contains("Q1=layer-one")
            && q2.output.contains("Q2-WRITTEN")
            && q2.output.contains("No errors were found")
            && q2.output.contains("no errors found"),
        "{}",
        q2.output
    );
    let flat = run.step("flat");
    assert_guest_ok(flat);
    assert!(
        flat.output.contains("FLAT=layer-one+layer-two") && flat.output.contains("base.blob: OK"),
        "{}",
        flat.output
    );
}

/// The flush ordering end to end: what the guest flushed (fsync of the block device, a virtio
/// FLUSH) survives SIGKILL of the VMM, which runs no cleanup, so the tables on disk are the
/// ones the FLUSH wrote; the overlay checks clean (by Vessel and by qemu-img, which may find
/// clusters allocated after the last FLUSH leaked, never corruption) and the base is untouched.
#[test]
fn data_the_guest_flushed_to_an_overlay_survives_sigkill_of_the_vmm() {
    let writer = vessel(
        &["path=/tmp/dur.qcow2"],
        "set -e; mkdir -p /mnt; mke2fs -q /dev/vda; mount /dev/vda /mnt; \
         dd if=/dev/urandom of=/mnt/blob bs=1k count=2048 2>/dev/null; cd /mnt; sha256sum blob > sum; \
         cd /; sync; sync /dev/vda; echo SYNCED-NOW; sleep 600",
    );
    let kill = format!(
        "set -e; vessel image create --size 32M /tmp/base.img; sha256sum /tmp/base.img > /tmp/base.sha; \
         vessel image create --backing /tmp/base.img /tmp/dur.qcow2; \
         ({writer}) >/tmp/w.log 2>&1 & pid=$!; i=0; \
         while [ $i -lt 240 ] && ! grep -q SYNCED-NOW /tmp/w.log; do sleep 0.5; i=$((i+1)); done; \
         grep -q SYNCED-NOW /tmp/w.log || {{ cat /tmp/w.log; echo NEVER-SYNCED; exit 1; }}; \
         kill -9 $(pidof vessel); wait $pid || true; echo KILLED; \
         vessel image check /tmp/dur.qcow2; qemu-img check /tmp/dur.qcow2 && echo QEMU-CHECK=0 || echo QEMU-CHECK=$?"
    );
    let verify = vessel(
        &["path=/tmp/dur.qcow2"],
        "set -e; mkdir -p /mnt; mount /dev/vda /mnt; cd /mnt; sha256sum -c sum; echo VERIFIED",
    );
    let run = box_with_vessel(900)
        .binary(QEMU_IMG, "/bin/qemu-img")
        .step("write-and-kill", &kill)
        .step("verify", &verify)
        .step("base", "sha256sum -c /tmp/base.sha && echo BASE-UNCHANGED")
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    for name in ["write-and-kill", "verify", "base"] {
        let s = run.step(name);
        eprintln!(
            "--- {name}: {:.1}s, exit {}\n{}",
            s.seconds, s.exit_code, s.output
        );
    }
    let step = run.step("write-and-kill");
    assert_eq!(step.exit_code, 0, "{}", step.output);
    assert!(
        step.output.contains("KILLED") && step.output.contains("no errors found"),
        "{}",
        step.output
    );
    assert!(
        step.output.contains("QEMU-CHECK=0") || step.output.contains("QEMU-CHECK=3"),
        "qemu-img check found corruption:\n{}",
        step.output
    );
    let verify = run.step("verify");
    assert_guest_ok(verify);
    assert!(verify.output.contains("blob: OK"), "{}", verify.output);
    assert!(
        run.step("base").output.contains("BASE-UNCHANGED"),
        "{}",
        run.step("base").output
    );
}
