//! Shared by the box tests: a host box with this build's `vessel` packed at `/bin/vessel`, the
//! shell command of a `vessel run` on the guest assets, and the usual assertion on a step.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::time::Duration;

use testbox::{Assets, HostBox, StepResult};

/// The helpers the daemon box scripts source (`. /domains.sh`): `api`, `on`, `reach`,
/// `no_crash`.
pub const DOMAINS_LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/domains.sh");

/// The helpers the scheduling box scripts source after them (`. /workers.sh`): `work`,
/// `report_stopped`, `cpu_ns`.
pub const WORKERS_LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/workers.sh");

/// The `vessel` binary of this build.
pub const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");

/// The values of the lines of `out` that start with `key` (trimmed), in order.
pub fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .collect()
}

/// The value of the first line of `out` that starts with `key`; panics (with `out`) if none.
pub fn one<'a>(out: &'a str, key: &str) -> &'a str {
    values(out, key)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {key} line:\n{out}"))
}

/// The number of the first `KEY=NUMBER` line of `out`; panics (with `out`) if none.
pub fn figure(out: &str, key: &str) -> f64 {
    one(out, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number:\n{out}"))
}

/// A host box with `vessel` packed in, allowed `timeout_secs` of wall time.
pub fn box_with_vessel(timeout_secs: u64) -> HostBox {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    HostBox::new(&assets)
        .binary(VESSEL, "/bin/vessel")
        .timeout(Duration::from_secs(timeout_secs))
}

/// Runs the box `make` builds until its step `step` ends without a guest that crashed by
/// itself (a `GUEST_CRASH=` line: under TCG's emulated SVM an L2 guest now and then
/// triple-faults, under QEMU as under Vessel) or stalled while its domain ran (a
/// `GUEST_STALL=` line, with what its domain's process was doing: see `report_stalled` in
/// `box_scripts/workers.sh`), at most `attempts` boxes; each is shown and recorded with the
/// box's retries, so a stall of ours is seen there, not hidden. Returns the step's output;
/// fails when every box had one, and at once when a domain crashed because a thread of
/// Vessel's panicked.
pub fn run_until_no_guest_crash(attempts: u32, step: &str, make: impl Fn() -> HostBox) -> String {
    for attempt in 1..=attempts {
        let run = make()
            .run()
            .unwrap_or_else(|e| panic!("host box failed: {e}"));
        let result = run.step(step);
        eprintln!("{step} step: {:.1} s", result.seconds);
        // A domain crashed because a thread of Vessel's panicked is ours, not TCG's: never
        // retried.
        if let Some(line) = result.output.lines().find(|l| thread_failed(l)) {
            panic!(
                "{step}: a thread of Vessel failed ({line}):\n{}",
                result.output
            );
        }
        let crashes = values(&result.output, "GUEST_CRASH=");
        let stalls = values(&result.output, "GUEST_STALL=");
        let reason = match (crashes.is_empty(), stalls.is_empty()) {
            (true, true) => return result.output.clone(),
            (false, _) => format!("{step}: a guest crashed: {crashes:?}"),
            (true, false) => format!("{step}: a guest stalled while its domain ran: {stalls:?}"),
        };
        eprintln!("warning: {reason} (attempt {attempt} of {attempts})");
        assert!(attempt < attempts, "{reason}:\n{}", result.output);
        testbox::record_retry(&reason, &result.output);
    }
    unreachable!("the last attempt returns or fails")
}

/// Runs the box `make` builds, every step of it, until no step's `vessel run` guest crashed by
/// itself (its vCPU triple-faulted: under TCG's emulated SVM an L2 guest now and then does), at
/// most `attempts` boxes; each crash is shown and recorded with the box's retries. For boxes
/// none of whose steps expects a triple fault. Returns the last run; fails when every box had
/// one.
pub fn run_box_until_no_guest_crash(
    attempts: u32,
    make: impl Fn() -> testbox::HostBox,
) -> testbox::BoxRun {
    for attempt in 1..=attempts {
        let run = make()
            .run()
            .unwrap_or_else(|e| panic!("host box failed: {e}"));
        let Some(crashed) = run.steps.iter().find(|s| {
            s.output.contains("guest crashed: vCPU") && s.output.contains("triple-faulted")
        }) else {
            return run;
        };
        let reason = format!("step {}: the guest triple-faulted by itself", crashed.name);
        eprintln!("warning: {reason} (attempt {attempt} of {attempts})");
        assert!(attempt < attempts, "{reason}:\n{}", crashed.output);
        testbox::record_retry(&reason, &crashed.output);
    }
    unreachable!("the last attempt returns or fails")
}

/// Whether `line` holds the crash message of a domain whose vCPU or I/O thread panicked
/// (`vmm::control::Control::run_or_crash`).
fn thread_failed(line: &str) -> bool {
    line.contains("the I/O thread failed: ")
        || line.split("vCPU ").skip(1).any(|rest| {
            rest.split_once(' ')
                .is_some_and(|(n, after)| n.parse::<u32>().is_ok() && after.starts_with("failed: "))
        })
}

/// `vessel run` of the bzImage and initramfs with 256 MiB, `disks` (each a `--disk` value) and a
/// guest command. The command may hold no quotes: the kernel command line cannot escape them.
pub fn vessel_with_disks(disks: &[&str], guest: &str) -> String {
    let disks: String = disks.iter().map(|d| format!(" --disk {d}")).collect();
    format!(
        "vessel run --kernel /assets/bzImage --initrd /assets/initramfs.cpio.gz --memory 256M{disks} \
         --cmdline 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null"
    )
}

/// The step exited 0 and the guest's command reported success.
pub fn assert_guest_ok(step: &StepResult) {
    assert_eq!(
        step.exit_code, 0,
        "step {} failed:\n{}",
        step.name, step.output
    );
    assert!(
        step.output.contains("VESSEL-CMD-EXIT rc=0"),
        "step {}:\n{}",
        step.name,
        step.output
    );
}

/// The guest tools of `tests/guest/`: `udpflood`, `tcpblast`, `spin` and `pagetouch` compiled statically
/// with gcc into `dir`, and the `agent` and `worker` scripts (`vscript=agent vip=ADDR`) with
/// their `session`, packed as a second initramfs archive
/// (returned) to append to the guest's own:
/// `cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd` in L1.
pub fn guest_tools(dir: &std::path::Path) -> std::path::PathBuf {
    use std::process::Command;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let root = dir.join("tools-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let tools = ["udpflood", "tcpblast", "spin", "pagetouch"];
    for tool in tools.iter() {
        let out = Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(root.join("bin").join(tool))
            .arg(src.join(format!("{tool}.c")))
            .output()
            .expect("gcc is needed to build the guest tools");
        assert!(
            out.status.success(),
            "building {tool} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::copy(src.join("agent.sh"), root.join("scripts/agent")).unwrap();
    std::fs::copy(src.join("worker.sh"), root.join("scripts/worker")).unwrap();
    std::fs::copy(src.join("memfill.sh"), root.join("scripts/memfill")).unwrap();
    std::fs::copy(src.join("samefill.sh"), root.join("scripts/samefill")).unwrap();
    std::fs::copy(src.join("dirtier.sh"), root.join("scripts/dirtier")).unwrap();
    std::fs::copy(src.join("session.sh"), root.join("scripts/session")).unwrap();
    std::fs::set_permissions(
        root.join("scripts/session"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let archive = dir.join("tools.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && ls bin/* scripts/* | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "packing the guest tools failed");
    archive
}
