//! Smoke test of the host box: L1 has a real `/dev/kvm`, and QEMU (the reference VMM) boots the
//! L2 guest on it. Takes a few tens of seconds (everything runs under TCG).
//!
//! Run: `cargo test -p testbox --test box_smoke -- --nocapture`

use std::time::{Duration, Instant};

use testbox::{Assets, HostBox, GUEST_CMD_EXIT, GUEST_INIT_MARKER};

#[test]
fn box_runs_qemu_guest_on_real_kvm() {
    let t0 = Instant::now();
    let assets = match Assets::locate() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let located = t0.elapsed();

    let t1 = Instant::now();
    let run = HostBox::new(&assets)
        .with_qemu()
        .timeout(Duration::from_secs(240))
        .step(
            "kvm",
            "ls -l /dev/kvm && test -c /dev/kvm && grep -c svm /proc/cpuinfo",
        )
        .step(
            "qemu-l2",
            "qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -nographic -no-reboot \
             -kernel /assets/vmlinux -initrd /assets/initramfs.cpio.gz \
             -append 'console=ttyS0 panic=-1 vcmd=\"nproc; head -1 /proc/meminfo\"' </dev/null",
        )
        .run();
    let run = match run {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };

    let kvm = run.step_ok("kvm");
    assert!(
        kvm.output.contains("/dev/kvm"),
        "kvm step output: {}",
        kvm.output
    );

    let l2 = run.step_ok("qemu-l2");
    assert!(
        l2.output.lines().any(|l| l.trim() == GUEST_INIT_MARKER),
        "no {GUEST_INIT_MARKER} in the L2 output:\n{}",
        l2.output
    );
    assert!(
        l2.output.lines().any(|l| l.starts_with("MemTotal:")),
        "no MemTotal line in the L2 output:\n{}",
        l2.output
    );
    assert!(
        l2.output
            .lines()
            .any(|l| l.trim() == format!("{GUEST_CMD_EXIT}0")),
        "the guest command did not exit 0:\n{}",
        l2.output
    );

    eprintln!(
        "box smoke: assets located in {:.2} s; run() {:.1} s, of which QEMU {:.1} s; \
         step kvm {:.2} s, step qemu-l2 {:.2} s (L1 time)",
        located.as_secs_f64(),
        t1.elapsed().as_secs_f64(),
        run.wall.as_secs_f64(),
        kvm.seconds,
        l2.seconds
    );
}
