//! Boot benchmark: Vessel against QEMU (`-M microvm`) on the same Linux guest, in one host box.
//!
//! Run with `cargo bench -p vessel --bench boot`. Not a test: it asserts nothing about speed and
//! prints what it measured. In one L1 boot, the same guest (Debian cloud kernel as a PVH
//! `vmlinux`, the Vessel guest initramfs, 1 vCPU, 256 MiB, serial console) is booted
//! `ROUNDS` times by each VMM, alternating. For each boot it records, in L1 time:
//! - the time from spawning the VMM to the guest's `/init` marker on the console,
//! - the time from spawning the VMM to its exit after the guest sleeps 1 s and powers off,
//! - at the marker, the VMM's peak RSS (VmHWM) and the resident part of its guest-RAM mapping
//!   (the largest mapping in /proc/PID/smaps): their difference is the VMM's own overhead.
//!
//! `ROUNDS` can be set with `VESSEL_BENCH_ROUNDS` (default 5).

mod common;

use std::time::Duration;

use testbox::{Assets, HostBox, StepResult};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const MEMORY_MIB: u32 = 256;
/// `sleep 1` keeps the VMM alive after the marker so its memory can be sampled.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet vcmd=\"sleep 1\"";

/// Shell for L1: runs a VMM command, timestamps the guest's init marker, samples memory there.
const MEASURE: &str = r#"
measure() {
  vmm_name=$1; shift
  t0=$(cut -d' ' -f1 /proc/uptime)
  "$@" </dev/null 2>&1 | awk -v t0="$t0" -v name="$vmm_name" '
    /VESSEL-GUEST-INIT/ {
      getline u < "/proc/uptime"; close("/proc/uptime"); split(u, a, " ");
      printf "MARK=%.2f\n", a[1] - t0; fflush();
      system("sh /bench/sample.sh " name);
    }'
  t1=$(cut -d' ' -f1 /proc/uptime)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "TOTAL=%.2f\n", b - a }'
}
"#;

/// Shell for L1: prints the VMM's VmHWM and the RSS of its largest mapping (guest RAM), in KiB.
const SAMPLE: &str = r#"
pid=$(pidof "$1" | cut -d' ' -f1)
[ -n "$pid" ] || { echo "SAMPLE-ERROR=no $1 process"; exit 0; }
hwm=$(grep VmHWM /proc/$pid/status | tr -s ' ' | cut -d' ' -f2)
guest=$(awk '/^Size:/ { size = $2 } /^Rss:/ { if (size > best) { best = size; rss = $2 } } END { print rss }' /proc/$pid/smaps)
echo "HWM=$hwm"
echo "GUEST_RSS=$guest"
"#;

struct Boot {
    mark: f64,
    total: f64,
    overhead_kib: f64,
    hwm_kib: f64,
}

fn field(step: &StepResult, key: &str) -> f64 {
    common::figure(step, &format!("{key}="))
}

fn boot(step: &StepResult) -> Boot {
    assert_eq!(
        step.exit_code, 0,
        "step {} failed:\n{}",
        step.name, step.output
    );
    let hwm = field(step, "HWM");
    Boot {
        mark: field(step, "MARK"),
        total: field(step, "TOTAL"),
        overhead_kib: hwm - field(step, "GUEST_RSS"),
        hwm_kib: hwm,
    }
}

fn main() {
    let rounds = common::rounds(5);
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let dir = std::env::temp_dir().join(format!("vessel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sample = dir.join("sample.sh");
    std::fs::write(&sample, SAMPLE).unwrap();

    let vessel = format!(
        "{MEASURE} measure vessel vessel run --kernel /assets/vmlinux \
         --initrd /assets/initramfs.cpio.gz --vcpus 1 --memory {MEMORY_MIB}M --cmdline '{CMDLINE}'"
    );
    let qemu = format!(
        "{MEASURE} measure qemu-system-x86_64 qemu-system-x86_64 -enable-kvm -M microvm \
         -cpu host -m {MEMORY_MIB} -smp 1 -nographic -no-reboot -kernel /assets/vmlinux \
         -initrd /assets/initramfs.cpio.gz -append '{CMDLINE}'"
    );
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .file(&sample, "/bench/sample.sh")
        .timeout(Duration::from_secs(1800));
    let run = common::alternate(bx, rounds, &vessel, &qemu);
    let _ = std::fs::remove_dir_all(&dir);

    let collect = |prefix: &str| -> Vec<Boot> {
        (0..rounds)
            .map(|i| boot(run.step(&format!("{prefix}-{i}"))))
            .collect()
    };
    let (v, q) = (collect("vessel"), collect("qemu"));
    let med = |b: &[Boot], f: fn(&Boot) -> f64| common::median(b.iter().map(f).collect());
    println!("boot benchmark: {rounds} boots each, same guest, one box run (L1 seconds, KiB)");
    println!(
        "{:<28}{:>12}{:>12}{:>10}",
        "median", "vessel", "qemu", "ratio"
    );
    for (name, f) in [
        (
            "spawn to /init marker (s)",
            (|b: &Boot| b.mark) as fn(&Boot) -> f64,
        ),
        ("spawn to exit (s)", |b: &Boot| b.total),
        ("peak RSS at marker (KiB)", |b: &Boot| b.hwm_kib),
        ("VMM overhead (KiB)", |b: &Boot| b.overhead_kib),
    ] {
        let (a, b) = (med(&v, f), med(&q, f));
        println!("{name:<28}{a:>12.2}{b:>12.2}{:>10.3}", a / b);
    }
    println!(
        "vessel marks: {:?}\nqemu marks:   {:?}",
        v.iter().map(|b| b.mark).collect::<Vec<_>>(),
        q.iter().map(|b| b.mark).collect::<Vec<_>>()
    );
    println!("box wall time: {:.1} s", run.wall.as_secs_f64());
}
