//! `vessel run` directly on this host's `/dev/kvm`, with a purpose-built guest.
//!
//! The guest is `tests/guest/mini.S` (linker script `mini.ld`): a few hundred lines of assembly
//! that Vessel boots through PVH like any ELF kernel. It is built at test time with the host's
//! `gcc` into the target directory (never committed). Its kernel command line picks a scenario;
//! it prints results on the serial console (Vessel's stdout) and powers off. It keeps its
//! ring-0 paths short and does its real work at CPL3, so it runs fast even on a `kvm_pvm` host,
//! where guest ring-0 code is emulated (see docs/environment.md in the shared docs).
//!
//! What is covered:
//! - `hello`: PVH entry (32-bit, start info in EBX, command line), the switch to long mode,
//!   a drop to CPL3, a 10-million-iteration loop there, a return to CPL0 through `ud2`, power-off
//!   through the ACPI sleep register (exit status 0). The whole run must take well under the
//!   time the loop would need if ring 3 were emulated.
//! - `irq`: the UART's transmit interrupt on ISA IRQ 4, through the in-kernel IOAPIC and local
//!   APIC (irqfd), taken while halted at CPL0 and while spinning at CPL3.
//! - `smp`: INIT-SIPI-SIPI to every AP, a real-mode trampoline, `lock xadd` check-ins, the
//!   MADT's processor count (with 1, 2 and 4 vCPUs).
//! - `reboot`: the i8042 reset line, with `--on-reboot exit` (exit status 2) and with the
//!   default `restart` policy (the guest boots again).
//! - `triplefault`: a CPU shutdown ends `vessel run` with status 1 and a message, not a hang.
//! - `button`: SIGTERM or SIGINT presses the ACPI power button (GSI 3, through an irqfd and the
//!   IOAPIC); the guest powers off and Vessel exits 0. With a guest that ignores the button
//!   (`tick`), `--shutdown-timeout` or a second SIGTERM stops the domain with status 1.
//! - `mmio`: unclaimed MMIO from CPL3 reads as all ones and writes are dropped.
//! - `fetchmmio`: executing from unclaimed MMIO at CPL0 is a KVM internal error, which ends the
//!   run with status 1 and a message naming it.
//! - `vessel run` refusing bad input with one line on stderr and status 1: missing, directory,
//!   FIFO, non-kernel and non-PVH kernel files, a FIFO initrd (at once: a FIFO with no writer must
//!   not hang the open), a VIF socket path where something exists (left alone), more `--memory`
//!   than the host has, an initrd that is missing or does not fit, no `/dev/kvm`, and no
//!   permission to open it (these last two unshare a mount namespace and switch to an unprivileged
//!   user, so they need root). Values that are wrong whatever the host (a size or a `--disk`
//!   that does not parse, `--vcpus 0`, too little memory, too many devices...) are unit tests of
//!   `vmm::DomainSpec` and its `validate()`; two tests here show that they, too, end `vessel
//!   run` with one line and status 1, before any file or `/dev/kvm` is opened.
//!
//! Every child process has a hard timeout: a hang fails its test instead of blocking CI. If
//! `/dev/kvm` is missing, the tests that need it fail saying so; none is skipped.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    mini_kernel, require_kvm, require_root, run_command, run_command_reacting, send_signal,
    vessel_run, Finished, TempDir,
};

/// Generous: every scenario finishes in well under a second on the development machines.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Boots the mini guest with scenario `cmdline` and the extra `args`.
fn mini(cmdline: &str, args: &[&str]) -> Finished {
    require_kvm();
    let kernel = mini_kernel();
    let mut all = vec!["--kernel", kernel.to_str().unwrap(), "--cmdline", cmdline];
    all.extend_from_slice(args);
    let run = vessel_run(&all, TIMEOUT);
    eprintln!(
        "kvm_direct: mini '{cmdline}' {args:?}: {:.3} s",
        run.elapsed.as_secs_f64()
    );
    run
}

/// The value after `key=` on the guest's console, up to the next space or end of line.
fn value<'a>(run: &'a Finished, key: &str) -> &'a str {
    let at = run
        .stdout
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} on the console:\n{}", run.report()));
    run.stdout[at + key.len()..]
        .split([' ', '\n', '\r'])
        .next()
        .unwrap_or("")
}

fn number(run: &Finished, key: &str) -> u64 {
    let v = value(run, key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key:?} is not a number ({v:?}):\n{}", run.report()))
}

/// Asserts the guest booted with `cmdline` and did not panic.
fn assert_booted(run: &Finished, cmdline: &str) {
    assert!(
        run.stdout
            .contains(&format!("mini: boot, cmdline '{cmdline}'")),
        "the guest did not boot, or got another command line:\n{}",
        run.report()
    );
    assert!(
        !run.stdout.contains("PANIC"),
        "the guest panicked:\n{}",
        run.report()
    );
}

#[test]
fn hello_runs_ring3_code_at_native_speed() {
    let run = mini("hello", &[]);
    run.assert_code(0);
    assert_booted(&run, "hello");
    assert!(
        run.stdout.contains("mini: hello from cpl0\n"),
        "{}",
        run.report()
    );
    let n: u64 = 10_000_000;
    assert_eq!(
        number(&run, "sum(0..10000000)="),
        n * (n - 1) / 2,
        "{}",
        run.report()
    );
    // 10^7 iterations of a 4-instruction loop take ~10 ms natively; emulated (as ring 0 is on
    // kvm_pvm, ~2.5 M instructions/s) they would take ~15 s.
    assert!(
        run.elapsed < Duration::from_secs(10),
        "too slow for a loop running natively at CPL3:\n{}",
        run.report()
    );
    assert!(run.stderr.is_empty(), "{}", run.report());
}

#[test]
fn irq_uart_interrupts_arrive_through_the_ioapic() {
    let run = mini("irq", &[]);
    run.assert_code(0);
    assert_booted(&run, "irq");
    assert!(
        run.stdout.contains("mini: irq cpl0 phase done"),
        "{}",
        run.report()
    );
    // Five waits in hlt at CPL0, then five spins at CPL3, each for at least one interrupt.
    let count = number(&run, "irq count=");
    assert!(
        count >= 10,
        "want at least 10 interrupts, got {count}:\n{}",
        run.report()
    );
    let from_user = number(&run, "from_cpl3=");
    assert!(
        from_user >= 1,
        "no interrupt was taken at CPL3:\n{}",
        run.report()
    );
}

#[test]
fn smp_brings_up_every_vcpu() {
    for vcpus in [1u64, 2, 4] {
        let n = vcpus.to_string();
        let run = mini("smp", &["--vcpus", &n]);
        run.assert_code(0);
        assert_booted(&run, "smp");
        assert_eq!(
            number(&run, "madt="),
            vcpus,
            "MADT processor count:\n{}",
            run.report()
        );
        assert_eq!(
            number(&run, "cpus online="),
            vcpus,
            "CPUs that checked in:\n{}",
            run.report()
        );
        // Every APIC ID 0..vcpus checked in.
        assert_eq!(
            value(&run, "mask="),
            format!("{:#x}", (1u64 << vcpus) - 1),
            "{}",
            run.report()
        );
    }
}

#[test]
fn reboot_with_on_reboot_exit_exits_2() {
    let run = mini("reboot", &["--on-reboot", "exit"]);
    run.assert_code(2);
    assert_booted(&run, "reboot");
    assert_eq!(
        run.stdout.matches("mini: boot").count(),
        1,
        "{}",
        run.report()
    );
    assert!(run.stderr.contains("guest rebooted"), "{}", run.report());
}

#[test]
fn reboot_with_restart_boots_the_guest_again() {
    require_kvm();
    let kernel = mini_kernel();
    let mut cmd = Command::new(common::VESSEL);
    cmd.args([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "reboot",
    ]);
    // The guest reboots forever: stop it once it has booted three times (or after the timeout).
    let boots = |out: &str| out.matches("mini: boot").count();
    let run = run_command(
        cmd,
        Duration::from_secs(20),
        Some(&|out: &str| boots(out) >= 3),
    );
    eprintln!(
        "kvm_direct: reboot loop: {:.3} s",
        run.elapsed.as_secs_f64()
    );
    assert!(
        run.code().is_none(),
        "vessel stopped by itself:\n{}",
        run.report()
    );
    assert!(
        boots(&run.stdout) >= 2,
        "want at least 2 boots:\n{}",
        run.report()
    );
    assert!(
        run.stderr.contains("guest rebooted; starting it again"),
        "{}",
        run.report()
    );
}

#[test]
fn triple_fault_ends_the_run_with_an_error() {
    let run = mini("triplefault", &[]);
    run.assert_code(1);
    assert_booted(&run, "triplefault");
    assert!(run.stdout.contains("executing ud2"), "{}", run.report());
    assert!(run.stderr.contains("triple-faulted"), "{}", run.report());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.report());
}

/// Boots the mini guest with `scenario` and `args` and signals Vessel as its console goes:
/// `signals[0]` once the console contains `ready`, each later one once the guest has printed
/// two more ticks (so it reacts to the guest, not to a clock).
fn mini_signalled(scenario: &str, args: &[&str], ready: &str, signals: &[&str]) -> Finished {
    require_kvm();
    let kernel = mini_kernel();
    let mut cmd = Command::new(common::VESSEL);
    cmd.args([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        scenario,
    ])
    .args(args);
    let ticks = |out: &str| out.matches("mini: tick").count();
    let mut sent = 0;
    let mut ticks_at_last = 0;
    let run = run_command_reacting(cmd, TIMEOUT, &mut |out, pid| {
        let due = match sent {
            0 => out.contains(ready),
            n if n < signals.len() => ticks(out) >= ticks_at_last + 2,
            _ => false,
        };
        if due {
            send_signal(pid, signals[sent]);
            sent += 1;
            ticks_at_last = ticks(out);
        }
        false
    });
    eprintln!(
        "kvm_direct: mini '{scenario}' {args:?} signalled {signals:?}: {:.3} s",
        run.elapsed.as_secs_f64()
    );
    assert_eq!(
        sent,
        signals.len(),
        "not every signal was sent:\n{}",
        run.report()
    );
    run
}

#[test]
fn sigterm_or_sigint_press_the_power_button_and_the_guest_powers_off() {
    for signal in ["TERM", "INT"] {
        let run = mini_signalled("button", &[], "waiting for the power button", &[signal]);
        run.assert_code(0);
        assert!(
            run.stdout.contains("mini: power button pressed"),
            "{}",
            run.report()
        );
        assert!(
            run.stderr
                .contains(&format!("SIG{signal}: pressed the guest's power button")),
            "{}",
            run.report()
        );
    }
}

#[test]
fn a_guest_that_ignores_the_power_button_is_stopped_after_the_shutdown_timeout() {
    // The tick guest never unmasks the button's line.
    let run = mini_signalled(
        "tick",
        &["--shutdown-timeout", "1"],
        "mini: tick 1",
        &["TERM"],
    );
    run.assert_code(1);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("did not power off within 1 s of the power button"),
        "{}",
        run.report()
    );
    assert!(run.elapsed >= Duration::from_secs(1), "{}", run.report());
}

#[test]
fn a_second_sigterm_stops_the_domain_at_once() {
    // Default timeout (30 s): the second signal, not the timeout, ends the run.
    let run = mini_signalled("tick", &[], "mini: tick 1", &["TERM", "TERM"]);
    run.assert_code(1);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("SIGTERM again: stopped the domain"),
        "{}",
        run.report()
    );
    assert!(run.elapsed < Duration::from_secs(25), "{}", run.report());
}

#[test]
fn unclaimed_mmio_reads_all_ones_from_ring3() {
    let run = mini("mmio", &[]);
    run.assert_code(0);
    assert_booted(&run, "mmio");
    assert_eq!(value(&run, "read32="), "0xffffffff", "{}", run.report());
    assert_eq!(
        value(&run, "read64="),
        "0xffffffffffffffff",
        "{}",
        run.report()
    );
    assert_eq!(value(&run, "read8="), "0xff", "{}", run.report());
}

#[test]
fn instruction_fetch_from_mmio_is_an_internal_error() {
    let run = mini("fetchmmio", &[]);
    run.assert_code(1);
    assert_booted(&run, "fetchmmio");
    assert!(
        run.stderr.contains("internal error at rip 0xe0000000"),
        "{}",
        run.report()
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.report());
}

#[test]
fn a_hung_child_is_killed_at_its_timeout() {
    // The harness itself: what every test above relies on so that a hang cannot block CI.
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let run = run_command(cmd, Duration::from_millis(300), None);
    assert!(run.timed_out && run.status.is_none(), "{}", run.report());
    assert!(run.elapsed < Duration::from_secs(10), "{}", run.report());
}

// ---- Bad input: one line on stderr, exit status 1 ----------------------------------------------

/// `vessel run` with `args` and the mini kernel where `{kernel}` appears.
fn refused(args: &[&str]) -> Finished {
    require_kvm();
    let kernel = mini_kernel();
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "{kernel}" {
                kernel.to_str().unwrap()
            } else {
                a
            }
        })
        .collect();
    vessel_run(&args, TIMEOUT)
}

#[test]
fn missing_kernel_is_refused() {
    let run = refused(&["--kernel", "/nonexistent/vmlinux"]);
    run.assert_one_line_error(&["cannot read kernel /nonexistent/vmlinux", "No such file"]);
}

#[test]
fn directory_as_kernel_is_refused() {
    let dir = TempDir::new("kdir");
    let run = refused(&["--kernel", dir.path().to_str().unwrap()]);
    run.assert_one_line_error(&["cannot read kernel", "is a directory"]);
}

#[test]
fn non_kernel_file_is_refused() {
    let dir = TempDir::new("text");
    let file = dir.path().join("hostname");
    std::fs::write(&file, "vessel-test-host\n").unwrap();
    let run = refused(&["--kernel", file.to_str().unwrap()]);
    run.assert_one_line_error(&["is not a kernel", "bzImage", "ELF"]);
}

/// A FIFO at `dir/name` (with mkfifo(1)); nothing ever writes to it.
fn fifo(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let made = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo {} failed", path.display());
    path
}

#[test]
fn fifo_kernel_is_refused_at_once() {
    let dir = TempDir::new("fifo-kernel");
    let kernel = fifo(&dir, "vmlinux");
    let run = refused(&["--kernel", kernel.to_str().unwrap()]);
    run.assert_one_line_error(&["cannot read kernel", "is a FIFO, not a regular file"]);
    assert!(run.elapsed < Duration::from_secs(10), "{}", run.report());
}

#[test]
fn fifo_initrd_is_refused_at_once() {
    let dir = TempDir::new("fifo-initrd");
    let initrd = fifo(&dir, "initrd");
    let run = refused(&["--kernel", "{kernel}", "--initrd", initrd.to_str().unwrap()]);
    run.assert_one_line_error(&["cannot read initrd", "is a FIFO, not a regular file"]);
    assert!(run.elapsed < Duration::from_secs(10), "{}", run.report());
}

#[test]
fn a_vif_socket_path_that_exists_is_refused_and_left_alone() {
    let dir = TempDir::new("vif-socket");
    let taken = dir.path().join("taken.sock");
    let listener = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let net = format!(
        "socket={},peer={}",
        taken.display(),
        dir.path().join("peer.sock").display()
    );
    let run = refused(&["--kernel", "{kernel}", "--cmdline", "tick", "--net", &net]);
    run.assert_one_line_error(&["--net socket=", "cannot bind the socket", "never replaces"]);
    assert!(
        std::os::unix::net::UnixStream::connect(&taken).is_ok(),
        "the other program's socket still answers"
    );
    drop(listener);
}

#[test]
fn elf_without_pvh_note_is_refused() {
    assert!(
        std::path::Path::new("/bin/true").exists(),
        "this test needs /bin/true"
    );
    let run = refused(&["--kernel", "/bin/true"]);
    run.assert_one_line_error(&["/bin/true", "without a PVH entry note"]);
}

#[test]
fn a_value_out_of_range_is_refused_with_one_line_before_any_file_is_read() {
    // The kernel does not exist and no KVM is needed: the specification's own checks come
    // first.
    for (args, says) in [
        (&["--vcpus", "0"][..], "--vcpus must be at least 1"),
        (
            &["--memory", "8M", "--disk", "path=/nonexistent/disk.img"],
            "--memory 8 MiB is too small: a domain needs at least 16 MiB",
        ),
    ] {
        let mut all = vec!["--kernel", "/nonexistent/vmlinux"];
        all.extend_from_slice(args);
        let run = vessel_run(&all, TIMEOUT);
        run.assert_one_line_error(&[says]);
    }
}

#[test]
fn a_value_that_does_not_parse_is_refused_with_one_line() {
    for (args, says) in [
        (
            ["--memory", "12Q"],
            &["'12Q'", "--memory", "invalid size"][..],
        ),
        (
            ["--disk", "path=/d.img,format=vmdk"],
            &["invalid --disk", "format must be raw or qcow2, not 'vmdk'"],
        ),
    ] {
        let mut all = vec!["--kernel", "/nonexistent/vmlinux"];
        all.extend_from_slice(&args);
        let run = vessel_run(&all, TIMEOUT);
        run.assert_one_line_error(says);
    }
}

#[test]
fn more_memory_than_the_host_has_is_refused() {
    let run = refused(&["--kernel", "{kernel}", "--memory", "100000G"]);
    run.assert_one_line_error(&["--memory 102400000 MiB", "more than this host's"]);
}

#[test]
fn missing_initrd_is_refused() {
    let run = refused(&[
        "--kernel",
        "{kernel}",
        "--initrd",
        "/nonexistent/initrd.img",
    ]);
    run.assert_one_line_error(&["cannot read initrd /nonexistent/initrd.img", "No such file"]);
}

#[test]
fn initrd_larger_than_memory_is_refused() {
    let dir = TempDir::new("initrd");
    let initrd = dir.path().join("initrd.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let path = initrd.to_str().unwrap();
    let run = refused(&["--kernel", "{kernel}", "--memory", "16M", "--initrd", path]);
    run.assert_one_line_error(&["initrd", "(20 MiB) does not fit in guest memory (16 MiB)"]);
}

#[test]
fn initrd_that_does_not_fit_beside_the_kernel_is_refused() {
    // 15.5 MiB fits in 16 MiB of RAM, but not above the kernel at 1 MiB.
    let dir = TempDir::new("initrd2");
    let initrd = dir.path().join("initrd.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(31 << 19)
        .unwrap();
    let path = initrd.to_str().unwrap();
    let run = refused(&["--kernel", "{kernel}", "--memory", "16M", "--initrd", path]);
    run.assert_one_line_error(&[
        "does not fit in guest memory (16 MiB) next to the kernel",
        "--memory",
    ]);
}

#[test]
fn missing_dev_kvm_is_explained() {
    require_root();
    // A private mount namespace with an empty /dev: no /dev/kvm, nothing else changed.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "sh",
        "-c",
        r#"mount -t tmpfs tmpfs /dev && exec "$0" run --kernel "$1""#,
    ])
    .arg(common::VESSEL)
    .arg("/nonexistent/vmlinux");
    let run = run_command(cmd, TIMEOUT, None);
    run.assert_one_line_error(&["/dev/kvm does not exist"]);
}

#[test]
fn no_permission_on_dev_kvm_is_explained() {
    require_kvm();
    require_root();
    // The unprivileged user must be able to execute vessel: copy it somewhere world-readable.
    let dir = TempDir::new("noperm");
    let vessel = dir.path().join("vessel");
    std::fs::copy(common::VESSEL, &vessel).unwrap();
    // In a private mount namespace, cover /dev/kvm with a node for the same device with mode
    // 0600 (whatever the host's mode), then run vessel as nobody.
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata("/dev/kvm").unwrap());
    let major = ((rdev & 0xf_ff00) >> 8) | ((rdev & 0xffff_f000_0000_0000) >> 32);
    let minor = (rdev & 0xff) | ((rdev & 0xfff_fff0_0000) >> 12);
    let script = format!(
        r#"mount -t tmpfs tmpfs "$1" && mknod -m 600 "$1/kvm" c {major} {minor} && \
           mount --bind "$1/kvm" /dev/kvm && \
           exec setpriv --reuid=65534 --regid=65534 --clear-groups "$0" run --kernel /nonexistent/vmlinux"#
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", &script])
        .arg(&vessel)
        .arg(dir.path().join("dev"));
    std::fs::create_dir(dir.path().join("dev")).unwrap();
    let run = run_command(cmd, TIMEOUT, None);
    run.assert_one_line_error(&["permission denied opening /dev/kvm"]);
}

/// Runs `vessel run ARGS` as root without the capabilities that bypass file permissions, so a
/// mode-000 file is unreadable to it while /dev/kvm (root's, mode 0600) stays usable.
fn run_without_dac_override(args: &[&str]) -> Finished {
    require_kvm();
    require_root();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        common::VESSEL,
        "run",
    ])
    .args(args);
    run_command(cmd, TIMEOUT, None)
}

#[test]
fn unreadable_kernel_is_refused() {
    let dir = TempDir::new("unreadable-kernel");
    let kernel = dir.path().join("vmlinux");
    std::fs::copy(mini_kernel(), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let run = run_without_dac_override(&["--kernel", kernel.to_str().unwrap()]);
    run.assert_one_line_error(&["cannot read kernel", "Permission denied"]);
}

#[test]
fn unreadable_initrd_is_refused() {
    let dir = TempDir::new("unreadable-initrd");
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"not read").unwrap();
    std::fs::set_permissions(&initrd, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let kernel = mini_kernel();
    let run = run_without_dac_override(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    run.assert_one_line_error(&["cannot read initrd", "Permission denied"]);
}
