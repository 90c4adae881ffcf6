//! CPU scheduling on /dev/kvm with the `mini` guest's `work` scenario, a CPU-bound guest that
//! prints how many fixed loops it has done. Weights give proportional shares of the CPU time the
//! kernel charges each domain's control group (1:2:3:4 within 5%), a weight changed at run time
//! moves the shares within seconds, a cap holds on an otherwise idle host, and a domain that
//! waits for a CPU is seen waiting. The work each guest's own loop completes is printed beside
//! the CPU and held to 20%: on this kvm_pvm host (itself a guest of another hypervisor) a
//! CPU-second does not buy every domain the same work, which the box test (real SVM, Linux
//! guests) measures by work alone. Each test holds the machine alone ([`TIMING`]): other tests'
//! guests would take CPU time it measures.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{tmpdir, wait_for, TestDaemon, TIMING};
use common::{mini_kernel, require_kvm};
use serde_json::{json, Value};

/// The last complete "mini: work N" line's N.
fn units(console: &str) -> u64 {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("mini: work ")?.parse().ok())
        .unwrap_or(0)
}

fn worker(name: &str, weight: u32, cap: u32) -> String {
    json!({
        "name": name,
        "kernel": mini_kernel(),
        "cmdline": "work",
        "memory": "16M",
        "sched": {"weight": weight, "cap": cap},
    })
    .to_string()
}

/// The CPU time the kernel charged to domain `name`'s control group, in seconds.
fn group_cpu(d: &TestDaemon, name: &str) -> f64 {
    let info = d.ok("GET", &format!("/v1/domains/{name}"), None);
    info["cgroup"]["cpu_ns"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} has no control group: {info}"))
        / 1e9
}

/// Each domain's work (units per second) and CPU (of one host CPU, as its control group was
/// charged) over `span`.
fn rates(d: &TestDaemon, names: &[String], span: Duration) -> (Vec<f64>, Vec<f64>) {
    let before: Vec<(Instant, u64, f64)> = names
        .iter()
        .map(|n| (Instant::now(), units(&d.console(n)), group_cpu(d, n)))
        .collect();
    std::thread::sleep(span);
    names
        .iter()
        .zip(before)
        .map(|(n, (t, u, c))| {
            let secs = t.elapsed().as_secs_f64();
            (
                (units(&d.console(n)) - u) as f64 / secs,
                (group_cpu(d, n) - c) / secs,
            )
        })
        .unzip()
}

/// The host's CPUs.
fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Each single-vCPU domain's fair CPU on `cpus` CPUs by `weights`: proportional, none above
/// one CPU (water-filling).
fn fair(weights: &[f64], cpus: f64) -> Vec<f64> {
    let mut share = vec![0.0; weights.len()];
    let mut open: Vec<usize> = (0..weights.len()).collect();
    let mut left = cpus;
    loop {
        let total: f64 = open.iter().map(|&i| weights[i]).sum();
        let full: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| left * weights[i] / total >= 1.0)
            .collect();
        if full.is_empty() {
            for &i in &open {
                share[i] = left * weights[i] / total;
            }
            return share;
        }
        for &i in &full {
            share[i] = 1.0;
            left -= 1.0;
        }
        open.retain(|i| !full.contains(i));
        if open.is_empty() {
            return share;
        }
    }
}

fn start_workers(d: &TestDaemon, workers: &[(String, u32, u32)]) {
    for (name, weight, cap) in workers {
        d.ok("POST", "/v1/domains", Some(&worker(name, *weight, *cap)));
    }
    for (name, ..) in workers {
        wait_for(&format!("{name} to work"), Duration::from_secs(30), || {
            units(&d.console(name)) >= 1
        });
    }
}

/// Asserts that the rates are proportional to `want` within `tolerance` (relative), printing
/// both.
fn assert_proportional(what: &str, rates: &[f64], want: &[f64], tolerance: f64) -> f64 {
    let (rt, wt): (f64, f64) = (rates.iter().sum(), want.iter().sum());
    let mut worst: f64 = 0.0;
    for (r, w) in rates.iter().zip(want) {
        worst = worst.max(((r / rt) / (w / wt) - 1.0).abs());
    }
    eprintln!(
        "sched: {what}: shares {:?} against {:?}: worst error {:.1}%",
        rates.iter().map(|r| r / rt).collect::<Vec<_>>(),
        want.iter().map(|w| w / wt).collect::<Vec<_>>(),
        worst * 100.0
    );
    assert!(
        worst <= tolerance,
        "{what}: shares off by {:.1}%",
        worst * 100.0
    );
    worst
}

#[test]
fn four_domains_share_the_cpus_by_weight_and_a_weight_change_moves_them() {
    require_kvm();
    let alone = TIMING.write().unwrap_or_else(|e| e.into_inner());
    let d = TestDaemon::start_alone(&tmpdir("sched-weights"), &alone);
    let workers: Vec<(String, u32, u32)> = (1..=4).map(|w| (format!("w{w}"), w, 0)).collect();
    let names: Vec<String> = workers.iter().map(|w| w.0.clone()).collect();
    start_workers(&d, &workers);
    let cpus = host_cpus();
    assert!(
        cpus < 4.0,
        "this test needs fewer host CPUs than its 4 domains, to contend (it has {cpus})"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (work, cpu) = rates(&d, &names, Duration::from_secs(15));
    let want = fair(&[1.0, 2.0, 3.0, 4.0], cpus);
    assert_proportional("weights 1:2:3:4, CPU", &cpu, &want, 0.05);
    assert_proportional("weights 1:2:3:4, work", &work, &want, 0.20);
    // Each waited for a CPU, and the scheduler says so.
    let all = d.ok("GET", "/v1/sched", None);
    for row in all.as_array().unwrap() {
        assert!(row["wait_percent"].as_f64().unwrap() > 1.0, "{row}");
        assert!(row["cpu_percent"].as_f64().unwrap() > 5.0, "{row}");
    }
    // w1 becomes the heaviest: within a few seconds the shares follow.
    let changed = d.ok("PUT", "/v1/domains/w1/sched", Some(r#"{"weight": 8}"#));
    assert_eq!(changed["params"]["weight"], 8, "{changed}");
    std::thread::sleep(Duration::from_secs(3));
    let (work, cpu) = rates(&d, &names, Duration::from_secs(10));
    let want = fair(&[8.0, 2.0, 3.0, 4.0], cpus);
    assert_proportional("weights 8:2:3:4, CPU", &cpu, &want, 0.05);
    assert_proportional("weights 8:2:3:4, work", &work, &want, 0.20);
    let stored = d.ok("GET", "/v1/domains/w1", None);
    assert_eq!(stored["definition"]["sched"]["weight"], 8, "kept: {stored}");
}

#[test]
fn a_cap_holds_on_an_otherwise_idle_host() {
    require_kvm();
    let alone = TIMING.write().unwrap_or_else(|e| e.into_inner());
    let d = TestDaemon::start_alone(&tmpdir("sched-cap"), &alone);
    start_workers(&d, &[("free".into(), 256, 0)]);
    let name = ["free".to_string()];
    std::thread::sleep(Duration::from_secs(1));
    let (full, full_cpu) = rates(&d, &name, Duration::from_secs(5));
    d.ok("PUT", "/v1/domains/free/sched", Some(r#"{"cap": 25}"#));
    std::thread::sleep(Duration::from_secs(1));
    let (capped, capped_cpu) = rates(&d, &name, Duration::from_secs(10));
    let row = d.ok("GET", "/v1/domains/free/sched", None);
    let measured = row["cpu_percent"].as_f64().unwrap();
    eprintln!(
        "sched: cap 25%: CPU {:.1}% of one CPU (uncapped {:.1}%); work {:.2}/s against {:.2}/s \
         uncapped = {:.1}%; the scheduler measured {measured:.1}% over its last interval",
        capped_cpu[0] * 100.0,
        full_cpu[0] * 100.0,
        capped[0],
        full[0],
        capped[0] / full[0] * 100.0
    );
    // The cap is on CPU time, as the kernel charged it.
    assert!(
        (capped_cpu[0] - 0.25).abs() <= 0.02,
        "a 25% cap let the domain use {:.1}% of a CPU",
        capped_cpu[0] * 100.0
    );
    assert!(full_cpu[0] > 0.9, "uncapped, the guest had {full_cpu:?}");
    // The cap goes as it came.
    d.ok("PUT", "/v1/domains/free/sched", Some(r#"{"cap": 0}"#));
    std::thread::sleep(Duration::from_secs(1));
    let (_, again_cpu) = rates(&d, &name, Duration::from_secs(3));
    assert!(
        again_cpu[0] > 0.9,
        "uncapped again, the guest had {again_cpu:?} of a CPU"
    );
}

#[test]
fn scheduling_parameters_are_checked_and_shown() {
    require_kvm();
    let d = TestDaemon::start(&tmpdir("sched-api"));
    let (status, v) = d.call("POST", "/v1/domains", Some(&worker("bad", 0, 0)));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--weight 0"), "{v}");
    d.ok(
        "POST",
        "/v1/domains?start=false",
        Some(&worker("idle", 300, 50)),
    );
    for (body, says) in [
        (r#"{"cap": 101}"#, "--cap 101"),
        (r#"{"speed": 3}"#, "unknown field"),
        ("{}", "no scheduling parameter to change"),
    ] {
        let (status, v) = d.call("PUT", "/v1/domains/idle/sched", Some(body));
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let (status, _) = d.call("PUT", "/v1/domains/nobody/sched", Some(r#"{"cap": 5}"#));
    assert_eq!(status, 404);
    let row = d.ok("GET", "/v1/domains/idle/sched", None);
    assert_eq!(row["params"]["weight"], 300);
    assert_eq!(row["params"]["cap"], 50);
    assert_eq!(row["state"], "shutoff");
    assert!(row.get("cpu_percent").is_none(), "{row}");
    // The CLI shows the same, as a table.
    let out = std::process::Command::new(common::VESSEL)
        .args(["--socket"])
        .arg(&d.socket)
        .args(["sched"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("idle"))
        .unwrap_or_default();
    assert!(line.contains("300") && line.contains("50"), "{text}");
    let metrics = d
        .raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .1;
    assert!(
        metrics.contains("vessel_domain_sched_weight{domain=\"idle\"} 300"),
        "{metrics}"
    );
    let _: Value = d.ok("DELETE", "/v1/domains/idle", None);
}
