//! End-to-end boots of an unmodified Linux guest (the Debian cloud kernel and the Vessel guest
//! initramfs) with `vessel run`, on real KVM inside the host box.
//!
//! Each test is one box run whose steps run Vessel in L1 and report what the guest itself saw:
//! its CPU count, its memory, its clocks, and how it left (power-off or reboot). The assertions
//! read the guest's own output, never Vessel's idea of it.

use std::time::Duration;

mod boxed;

use boxed::{box_with_vessel, run_box_until_no_guest_crash, VESSEL};
use testbox::{Assets, BoxRun, StepResult};

/// The guest command: the guest's view of its CPUs, memory and clocks, as `KEY=value` lines.
/// It holds no quotes: the kernel command line cannot escape them inside `vcmd="..."`.
const PROBE: &str = "echo NPROC=$(nproc); echo CPUINFO=$(grep -c ^processor /proc/cpuinfo); \
    echo HYPERVISOR=$(grep -c -w hypervisor /proc/cpuinfo); \
    echo VIRTUALIZATION=$(grep -c -w -e svm -e vmx /proc/cpuinfo); \
    grep MemTotal /proc/meminfo; echo UP1=$(cat /proc/uptime); sleep 2; \
    echo UP2=$(cat /proc/uptime); echo WALL=$(date +%s); \
    echo CLOCKSOURCE=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)";

/// A step that boots the guest with `flags` and the probe command, then prints L1's wall clock.
fn probe_step(kernel: &str, vcpus: u32, memory_mib: u32) -> String {
    // The command line is single-quoted for L1's shell; the guest's shell expands the probe.
    format!(
        "vessel run --kernel /assets/{kernel} --initrd /assets/initramfs.cpio.gz \
         --vcpus {vcpus} --memory {memory_mib}M \
         --cmdline 'console=ttyS0 quiet vcmd=\"{PROBE}\"' </dev/null; rc=$?; \
         echo L1WALL=$(date +%s); exit $rc"
    )
}

fn value<'a>(step: &'a StepResult, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    step.output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .next_back()
        .unwrap_or_else(|| {
            panic!(
                "step {} printed no {key}=; output:\n{}",
                step.name, step.output
            )
        })
}

/// The first whitespace-separated field of `KEY=...` as a number.
fn number(step: &StepResult, key: &str) -> f64 {
    let v = value(step, key).split_whitespace().next().unwrap_or("");
    v.parse()
        .unwrap_or_else(|_| panic!("step {}: {key}={v} is not a number", step.name))
}

/// Checks what a probe step's guest reported against what it was given.
fn assert_guest_view(run: &BoxRun, name: &str, vcpus: u32, memory_mib: u32) {
    let step = run.step(name);
    assert_eq!(
        step.exit_code, 0,
        "vessel must exit 0 on guest power-off:\n{}",
        step.output
    );
    assert!(step.output.contains("VESSEL-GUEST-INIT"), "{}", step.output);
    assert!(
        step.output.contains("VESSEL-CMD-EXIT rc=0"),
        "{}",
        step.output
    );
    assert_eq!(number(step, "NPROC") as u32, vcpus, "nproc");
    assert_eq!(number(step, "CPUINFO") as u32, vcpus, "/proc/cpuinfo");
    // Every CPU says it runs under a hypervisor; none offers SVM or VMX (L1's CPUs do).
    assert_eq!(number(step, "HYPERVISOR") as u32, vcpus, "hypervisor flag");
    assert_eq!(number(step, "VIRTUALIZATION"), 0.0, "CPUs with SVM or VMX");
    // MemTotal is RAM minus what the kernel reserves for itself: within 64 MiB below --memory.
    let mem_kib: f64 = step
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in:\n{}", step.output));
    let given_kib = f64::from(memory_mib) * 1024.0;
    assert!(
        mem_kib <= given_kib && mem_kib >= given_kib - 64.0 * 1024.0,
        "MemTotal {mem_kib} kB is not consistent with --memory {memory_mib}M"
    );
    // The guest's monotonic clock advances across a 2 s sleep (and not absurdly more).
    let slept = number(step, "UP2") - number(step, "UP1");
    assert!(
        (1.9..10.0).contains(&slept),
        "uptime advanced {slept} s over sleep 2"
    );
    // kvmclock supplies the wall clock: the guest's date agrees with L1's.
    let (guest, l1) = (number(step, "WALL"), number(step, "L1WALL"));
    assert!(
        guest <= l1 + 1.0 && guest >= l1 - 60.0,
        "guest wall clock {guest} vs L1 {l1}"
    );
    assert_eq!(value(step, "CLOCKSOURCE"), "kvm-clock");
}

#[test]
fn linux_boots_as_bzimage_and_pvh_with_one_and_two_vcpus() {
    let run = run_box_until_no_guest_crash(2, || {
        box_with_vessel(600)
            .step("bzimage-1cpu", &probe_step("bzImage", 1, 256))
            .step("bzimage-2cpu", &probe_step("bzImage", 2, 384))
            .step("pvh-1cpu", &probe_step("vmlinux", 1, 256))
            .step("pvh-2cpu", &probe_step("vmlinux", 2, 512))
    });
    assert_guest_view(&run, "bzimage-1cpu", 1, 256);
    assert_guest_view(&run, "bzimage-2cpu", 2, 384);
    assert_guest_view(&run, "pvh-1cpu", 1, 256);
    assert_guest_view(&run, "pvh-2cpu", 2, 512);
}

#[test]
fn guest_reboot_restarts_or_exits_as_asked() {
    let reboot = |extra: &str| {
        format!(
            "vessel run --kernel /assets/bzImage --initrd /assets/initramfs.cpio.gz --on-reboot exit \
             --cmdline 'console=ttyS0 quiet {extra} vcmd=\"reboot -f\"' </dev/null"
        )
    };
    // With the default policy the domain boots again; stop it after the second boot. (The
    // log may end mid-line: the guest is still writing when it is read, so the figures
    // start on a line of their own.)
    let restart = "vessel run --kernel /assets/vmlinux --initrd /assets/initramfs.cpio.gz \
         --cmdline 'console=ttyS0 quiet vcmd=\"reboot -f\"' </dev/null >/tmp/restart.log 2>&1 & \
         pid=$!; i=0; n=0; \
         while [ $i -lt 120 ]; do n=$(grep -c VESSEL-GUEST-INIT /tmp/restart.log); \
           [ $n -ge 2 ] && break; sleep 1; i=$((i+1)); done; \
         alive=no; kill -0 $pid 2>/dev/null && alive=yes; kill $pid; cat /tmp/restart.log; \
         echo; echo BOOTS=$n; echo ALIVE=$alive";
    let run = run_box_until_no_guest_crash(2, || {
        box_with_vessel(600)
            .step("reboot-default", &reboot(""))
            .step("reboot-acpi", &reboot("reboot=acpi"))
            .step("reboot-kbd", &reboot("reboot=kbd"))
            .step("restart", restart)
            // A kernel panic under panic=-1 resets the machine: with no initrd, Linux panics
            // because it cannot mount a root file system.
            .step(
                "panic-reset",
                "vessel run --kernel /assets/bzImage --on-reboot exit \
                 --cmdline 'console=ttyS0 panic=-1' </dev/null",
            )
    });
    for name in ["reboot-default", "reboot-acpi", "reboot-kbd"] {
        let step = run.step(name);
        assert_eq!(
            step.exit_code, 2,
            "{name}: a reboot under --on-reboot exit exits 2:\n{}",
            step.output
        );
        assert!(
            step.output.contains("guest rebooted"),
            "{name}:\n{}",
            step.output
        );
        assert_eq!(
            step.output.matches("VESSEL-GUEST-INIT").count(),
            1,
            "{name}"
        );
    }
    let step = run.step("panic-reset");
    assert!(step.output.contains("Kernel panic"), "{}", step.output);
    assert_eq!(
        step.exit_code, 2,
        "panic=-1 resets the guest:\n{}",
        step.output
    );
    let step = run.step("restart");
    assert!(
        number(step, "BOOTS") >= 2.0,
        "the guest booted again:\n{}",
        step.output
    );
    assert_eq!(
        value(step, "ALIVE"),
        "yes",
        "vessel kept the domain running"
    );
    assert!(step.output.contains("starting it again"), "{}", step.output);
}

#[test]
fn linux_on_kvm_pvm_is_refused_plainly() {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let mut child = std::process::Command::new(VESSEL)
        .args(["run", "--kernel"])
        .arg(&assets.bzimage)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vessel");
    // On a hardware KVM host the guest starts booting; stop it after a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if pvm {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("kvm_pvm") && stderr.contains("cannot boot an unmodified Linux"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    } else {
        assert!(
            !stderr.contains("kvm_pvm"),
            "a hardware KVM host must not be refused: {stderr}"
        );
    }
}
