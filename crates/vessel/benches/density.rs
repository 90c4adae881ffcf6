//! Density benchmark, on /dev/kvm with the `mini` guest (no host box: both VMMs run it here):
//! N domains at once under one `vessel daemon`, each in its own confined process, against N
//! QEMU microvm processes running the same guest with the same 16 MiB.
//!
//! For each: the time from the first start to every guest answering ("mini: waiting for the
//! power button" on its console), so the start rate; and the host memory each VM costs beyond
//! its guest's RAM, measured while all N run: the proportional set size (PSS: shared pages
//! divided among the processes sharing them) of the VMM process, less the PSS of its guest-RAM
//! mapping (the one mapping of the guest's memory size). For Vessel the daemon's own PSS,
//! divided by N, is added (QEMU has no daemon to share).
//!
//! Run with `cargo bench -p vessel --bench density` (`VESSEL_BENCH_DOMAINS`, default 128). Not a
//! test: it prints what it measured, and `tests/density.rs` asserts the leak checks and the
//! 2 MiB bar.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{mini, tmpdir, TestDaemon};

/// Guest RAM of every VM, in KiB.
const GUEST_KIB: u64 = 16 * 1024;
const READY: &str = "waiting for the power button";

/// The PSS of process `pid` (KiB), and the PSS of its mapping of `GUEST_KIB` (its guest RAM).
fn pss_split(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest) = (0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Size:") => size = words.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Pss:") => {
                let pss: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total += pss;
                if size == GUEST_KIB {
                    guest += pss;
                }
            }
            _ => {}
        }
    }
    (total, guest)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// What one side measured.
struct Side {
    /// From the first start to every guest answering.
    all_up: Duration,
    /// Median PSS per VM beyond its guest RAM (KiB), shares of a daemon included.
    overhead_kib: u64,
    /// Median guest-RAM PSS per VM (KiB), for reference.
    guest_kib: u64,
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn vessel(n: usize) -> Side {
    let dir = tmpdir("bench-density");
    let d = TestDaemon::start(&dir);
    let started = Instant::now();
    for i in 0..n {
        d.ok(
            "POST",
            "/v1/domains",
            Some(&mini(&format!("d{i}"), "button", "16M")),
        );
    }
    let created = started.elapsed();
    for i in 0..n {
        let name = format!("d{i}");
        wait_until(&name, Duration::from_secs(120), || {
            d.console(&name).contains(READY)
        });
    }
    let all_up = started.elapsed();
    let daemon_share = pss_split(d.child.id()).0 / n as u64;
    let (mut overhead, mut guest) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (total, ram) = pss_split(d.pid_of(&format!("d{i}")));
        overhead.push(total.saturating_sub(ram) + daemon_share);
        guest.push(ram);
    }
    println!(
        "vessel: {n} domains created through the API in {:.2} s, all answering after {:.2} s; \
         daemon PSS share {daemon_share} KiB per domain",
        created.as_secs_f64(),
        all_up.as_secs_f64()
    );
    for i in 0..n {
        d.ok("POST", &format!("/v1/domains/d{i}/destroy"), None);
    }
    Side {
        all_up,
        overhead_kib: median(overhead),
        guest_kib: median(guest),
    }
}

/// Kills the QEMU processes when the measurement ends, however it ends.
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn qemu(n: usize, kernel: &Path) -> Side {
    let dir = tmpdir("bench-density-qemu");
    let log = |i: usize| -> PathBuf { dir.join(format!("q{i}.log")) };
    let started = Instant::now();
    let mut fleet = Fleet(Vec::new());
    for i in 0..n {
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,rtc=off",
                "-enable-kvm",
                "-cpu",
                "host",
                "-m",
                "16M",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-append",
                "button",
                "-kernel",
            ])
            .arg(kernel)
            .arg("-chardev")
            .arg(format!("file,id=c0,path={}", log(i).display()))
            .args(["-serial", "chardev:c0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start qemu-system-x86_64 (scripts/setup.sh installs it)");
        fleet.0.push(child);
    }
    for i in 0..n {
        wait_until(&format!("QEMU guest {i}"), Duration::from_secs(120), || {
            std::fs::read_to_string(log(i)).is_ok_and(|s| s.contains(READY))
        });
    }
    let all_up = started.elapsed();
    let (mut overhead, mut guest) = (Vec::new(), Vec::new());
    for c in &fleet.0 {
        let (total, ram) = pss_split(c.id());
        overhead.push(total.saturating_sub(ram));
        guest.push(ram);
    }
    println!(
        "qemu: {n} microvm processes spawned, all answering after {:.2} s",
        all_up.as_secs_f64()
    );
    drop(fleet);
    Side {
        all_up,
        overhead_kib: median(overhead),
        guest_kib: median(guest),
    }
}

fn main() {
    let n: usize = std::env::var("VESSEL_BENCH_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    common::require_kvm();
    let kernel = common::mini_kernel();
    let v = vessel(n);
    let q = qemu(n, &kernel);
    let rate = |s: &Side| n as f64 / s.all_up.as_secs_f64();
    println!();
    println!("density, {n} VMs of the mini guest (16 MiB each) at once, on /dev/kvm:");
    println!("| | Vessel | QEMU microvm | Vessel / QEMU |");
    println!("|---|---|---|---|");
    println!(
        "| first start to all {n} answering | {:.2} s ({:.1}/s) | {:.2} s ({:.1}/s) | {:.2} |",
        v.all_up.as_secs_f64(),
        rate(&v),
        q.all_up.as_secs_f64(),
        rate(&q),
        v.all_up.as_secs_f64() / q.all_up.as_secs_f64()
    );
    println!(
        "| host memory per VM beyond guest RAM (median PSS) | {} KiB | {} KiB | {:.3} |",
        v.overhead_kib,
        q.overhead_kib,
        v.overhead_kib as f64 / q.overhead_kib.max(1) as f64
    );
    println!(
        "| guest RAM resident per VM (median PSS, for reference) | {} KiB | {} KiB | |",
        v.guest_kib, q.guest_kib
    );
}
