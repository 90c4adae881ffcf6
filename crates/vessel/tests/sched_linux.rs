//! CPU scheduling with real Linux guests, in the host box (two CPUs in L1): four CPU-bound
//! domains of one vCPU with weights 1, 2, 3 and 4 get their shares of the CPU time the kernel
//! charges their groups within 5%; a weight changed at run time moves the shares within
//! seconds; a contended guest sees steal time in its own `/proc/stat`; a cap of 25% holds
//! within 2 points on an otherwise idle host. The same guests under a
//! daemon that writes the weights as they are (`--scheduler cgroups`, the peers' way) are
//! measured too and their errors printed.
//!
//! Each guest runs `tests/guest/spin.c`, whose own progress is printed beside the CPU shares.
//! In the box the work a CPU-second buys a guest is not the same for all: L1 is emulated, and
//! every switch between two L2 guests costs the next one time to warm up, so a domain of small
//! weight (short slices) does less work per CPU-second (in the runs of 2026-12-06 the weight-1
//! domain's work share was 10% under its share of the weights). The L1 side is
//! `tests/box_scripts/sched.sh`.

mod boxed;

use boxed::{box_with_vessel, guest_tools, run_until_no_guest_crash, DOMAINS_LIB, WORKERS_LIB};

/// Each domain's work rate (units per second of its own clock) and steal ticks in phase
/// `phase`, in the order printed.
fn work(out: &str, phase: &str) -> Vec<(String, f64, i64)> {
    let key = format!("WORK_{phase}=");
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(key.as_str()))
        .map(|v| {
            let f: Vec<&str> = v.split(',').collect();
            let units: f64 = f[1].parse().unwrap_or(f64::NAN);
            let secs: f64 = f.get(3).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            (f[0].to_string(), units / secs, f[2].parse().unwrap_or(-1))
        })
        .collect()
}

/// Phase `phase`'s work, every domain having worked through it.
fn worked(out: &str, phase: &str, domains: usize) -> Vec<(String, f64, i64)> {
    let got = work(out, phase);
    assert_eq!(got.len(), domains, "phase {phase}:\n{out}");
    for (name, units, _) in &got {
        assert!(
            units.is_finite(),
            "{name} stopped working in phase {phase} (GUEST_CRASH/GUEST_STALL, STOPPED_, \
             STALLED_, THREAD_ and CONSOLE_ lines say why):\n{out}"
        );
    }
    got
}

/// Each domain's CPU (milliseconds charged to its control group) in phase `phase`, shaped as
/// [`work`]'s rows.
fn cpu(out: &str, phase: &str) -> Vec<(String, f64, i64)> {
    let key = format!("CPU_{phase}=");
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(key.as_str()))
        .map(|v| {
            let (name, ms) = v.split_once(',').unwrap_or((v, ""));
            (name.to_string(), ms.parse().unwrap_or(f64::NAN), 0)
        })
        .collect()
}

/// The largest relative error of the shares against `weights`, proportionally (with what
/// L1's two CPUs leave the domains, no domain of 1:2:3:4 or 6:2:3:4 would get more than the one
/// CPU its one vCPU can use).
fn share_error(got: &[(String, f64, i64)], weights: &[f64]) -> f64 {
    let total: f64 = got.iter().map(|g| g.1).sum();
    let wt: f64 = weights.iter().sum();
    got.iter()
        .zip(weights)
        .map(|(g, w)| ((g.1 / total) / (w / wt) - 1.0).abs())
        .fold(0.0, f64::max)
}

#[test]
fn four_linux_domains_share_two_cpus_by_weight_and_a_cap_holds() {
    let dir = std::env::temp_dir().join(format!("vessel-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/sched.sh");
    // A worker that crashes by itself (TCG's emulated SVM now and then triple-faults an L2
    // guest) ends the phase with a GUEST_CRASH line, one that stops working while its domain
    // runs with a GUEST_STALL line and where its threads are: the box runs again, up to three
    // boxes (the last full-suite run of 2026-12-06 needed a second; in a CI run of 2026-12-07
    // w3 stopped before the first phase, with its vCPU idle).
    let output = run_until_no_guest_crash(3, "sched", || {
        box_with_vessel(1500)
            .memory_mib(2048)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(WORKERS_LIB, "/workers.sh")
            .file(script, "/sched.sh")
            .step("sched", "sh /sched.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &output;
    println!("{out}");
    assert!(out.contains("CPUS=2"), "{out}");
    assert!(out.contains("DONE=1"), "the script did not finish:\n{out}");

    let check = |phase: &str, weights: &[f64]| {
        let work = worked(out, phase, 4);
        let cpu = cpu(out, phase);
        let cpu_error = share_error(&cpu, weights);
        eprintln!(
            "sched: {phase}, weights {weights:?}: CPU ms {:?}, worst error {:.1}%; work/s {:?}, \
             worst error {:.1}%",
            cpu.iter().map(|c| c.1).collect::<Vec<_>>(),
            cpu_error * 100.0,
            work.iter().map(|w| w.1.round()).collect::<Vec<_>>(),
            share_error(&work, weights) * 100.0
        );
        (cpu_error, work)
    };
    let (error, bvt) = check("BVT", &[1.0, 2.0, 3.0, 4.0]);
    assert!(
        error <= 0.05,
        "weights 1:2:3:4: worst CPU share error {:.1}%",
        error * 100.0
    );
    // Every guest waited for a CPU and saw it as steal time.
    for (name, _, steal) in &bvt {
        assert!(*steal > 0, "{name} saw no steal time:\n{out}");
    }
    // w1 became the heaviest 10 s before this phase: its share moved from about a tenth to
    // near its 6/15.
    let (error, _) = check("CHANGED", &[6.0, 2.0, 3.0, 4.0]);
    let changed = cpu(out, "CHANGED");
    let w1 = changed[0].1 / changed.iter().map(|c| c.1).sum::<f64>();
    assert!(
        w1 >= 0.9 * 6.0 / 15.0,
        "w1's CPU share after the change: {w1:.3}"
    );
    assert!(
        error <= 0.10,
        "after the change: worst CPU share error {:.1}%",
        error * 100.0
    );
    // The peers' way, reported beside.
    check("CGROUPS", &[1.0, 2.0, 3.0, 4.0]);

    // The cap, on the CPU time charged (the guest's work is printed: a throttled guest does
    // less work per CPU-second in the box, as above).
    let phase_secs = |phase: &str| {
        let key = format!("PHASE_{phase}=");
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key}:\n{out}"));
        let (a, b) = line.split_once(',').unwrap();
        b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap()
    };
    let capped_cpu = cpu(out, "CAPPED")[0].1 / 1000.0 / phase_secs("CAPPED");
    let alone_cpu = cpu(out, "ALONE")[0].1 / 1000.0 / phase_secs("ALONE");
    let work_ratio = worked(out, "CAPPED", 1)[0].1 / worked(out, "ALONE", 1)[0].1;
    eprintln!(
        "sched: cap 25%: {:.1}% of a CPU (alone {:.1}%); work {:.1}% of alone",
        capped_cpu * 100.0,
        alone_cpu * 100.0,
        work_ratio * 100.0
    );
    assert!(
        (capped_cpu - 0.25).abs() <= 0.02,
        "a 25% cap let the domain use {:.1}% of a CPU:\n{out}",
        capped_cpu * 100.0
    );
}
