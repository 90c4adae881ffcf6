//! CPU scheduling benchmark, in the host box (two CPUs in L1) with Linux guests, each measure
//! beside the peers' way (one control group per VM with its weight written as it is: the
//! daemon's `--scheduler cgroups`) on the same guests in the same run:
//!
//! - **shares**: eight CPU-bound domains of one vCPU with weights 1 to 8 (`tests/guest/spin.c`
//!   counts the work each guest's own loop completes); the error of each domain's share of the
//!   CPU time charged to its group, and of the work, against its weight's, under BVT and under
//!   cgroups only.
//! - **latency**: one interactive domain answering pings from L1 (every 50 ms) while four
//!   CPU-bound domains of equal weight run: round-trip median and 99th percentile with cgroups
//!   only, BVT without warp, and BVT with the interactive domain warped; and how far warp moved
//!   the long-run shares (the interactive domain's CPU, the workers' work).
//!
//! Run with `cargo bench -p vessel --bench sched`. Not a test: it prints what it measured. Each
//! step runs in a box of its own (`VESSEL_BENCH_ONLY=shares|latency` runs one);
//! `VESSEL_BENCH_SPAN` sets each phase's seconds (default 60).

mod common;

use std::time::Duration;

use testbox::{Assets, HostBox, StepResult};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
#[path = "../tests/boxed/mod.rs"]
mod boxed;

/// `KEY=a,b,c` lines of a step as their fields.
fn rows<'a>(step: &'a StepResult, key: &str) -> Vec<Vec<&'a str>> {
    let key = format!("{key}=");
    step.output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key.as_str()))
        .map(|v| v.split(',').collect())
        .collect()
}

/// Each domain's work rate in phase `phase` (units per second of its own clock), by name.
fn work(step: &StepResult, phase: &str) -> Vec<(String, f64)> {
    rows(step, &format!("WORK_{phase}"))
        .into_iter()
        .map(|f| {
            let units: f64 = f[1].parse().unwrap_or(f64::NAN);
            let secs: f64 = f.get(3).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            (f[0].to_string(), units / secs)
        })
        .collect()
}

/// (worst, mean) relative error of the work shares against `weights`.
fn share_errors(got: &[(String, f64)], weights: &[f64]) -> (f64, f64) {
    let total: f64 = got.iter().map(|g| g.1).sum();
    let wt: f64 = weights.iter().sum();
    let errors: Vec<f64> = got
        .iter()
        .zip(weights)
        .map(|(g, w)| ((g.1 / total) / (w / wt) - 1.0).abs())
        .collect();
    (
        errors.iter().copied().fold(0.0, f64::max),
        errors.iter().sum::<f64>() / errors.len().max(1) as f64,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

fn run_step(mode: &str, span: u64) -> Result<StepResult, String> {
    let dir = std::env::temp_dir().join(format!("vessel-bench-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tools = boxed::guest_tools(&dir);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/box_scripts/sched_bench.sh"
    );
    let assets = Assets::locate().map_err(|e| e.to_string())?;
    let run = HostBox::new(&assets)
        .binary(VESSEL, "/bin/vessel")
        .timeout(Duration::from_secs(1800 + 8 * span))
        .memory_mib(2048)
        .file(&tools, "/tools.cpio.gz")
        .file(boxed::DOMAINS_LIB, "/domains.sh")
        .file(boxed::WORKERS_LIB, "/workers.sh")
        .file(script, "/sched_bench.sh")
        .step(mode, &format!("MODE={mode} SPAN={span} sh /sched_bench.sh"))
        .run()
        .map_err(|e| format!("host box failed: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let step = run.step(mode).clone();
    if !step.output.contains("DONE=1") {
        return Err(format!(
            "step {mode} did not finish (exit {}):\n{}",
            step.exit_code, step.output
        ));
    }
    Ok(step)
}

fn shares(span: u64) {
    let step = match run_step("shares", span) {
        Ok(s) => s,
        Err(e) => return eprintln!("bench: shares: the round is left out: {e}"),
    };
    let weights: Vec<f64> = (1..=8).map(f64::from).collect();
    for (phase, label) in [("BVT", "Vessel BVT"), ("CGROUPS", "cgroups only")] {
        let cpu: Vec<(String, f64)> = rows(&step, &format!("CPU_{phase}"))
            .into_iter()
            .map(|f| (f[0].to_string(), f[1].parse().unwrap_or(f64::NAN)))
            .collect();
        let (worst, mean) = share_errors(&cpu, &weights);
        let total: f64 = cpu.iter().map(|c| c.1).sum();
        println!(
            "sched shares, weights 1..8 on 2 CPUs, {label}: CPU shares % [{}]; error worst \
             {:.1}%, mean {:.1}%",
            cpu.iter()
                .map(|c| format!("{:.1}", 100.0 * c.1 / total))
                .collect::<Vec<_>>()
                .join(", "),
            worst * 100.0,
            mean * 100.0
        );
        let got = work(&step, phase);
        let (worst, mean) = share_errors(&got, &weights);
        let total: f64 = got.iter().map(|g| g.1).sum();
        let shares: Vec<String> = got
            .iter()
            .map(|g| format!("{:.1}", 100.0 * g.1 / total))
            .collect();
        println!(
            "sched shares, weights 1..8 on 2 CPUs, {label}: work shares % [{}] (ideal [{}]); \
             error worst {:.1}%, mean {:.1}%",
            shares.join(", "),
            weights
                .iter()
                .map(|w| format!("{:.1}", 100.0 * w / 36.0))
                .collect::<Vec<_>>()
                .join(", "),
            worst * 100.0,
            mean * 100.0
        );
    }
}

fn latency(span: u64) {
    let step = match run_step("latency", span) {
        Ok(s) => s,
        Err(e) => return eprintln!("bench: latency: the round is left out: {e}"),
    };
    let mut base: Option<(f64, Vec<(String, f64)>)> = None;
    for (phase, label) in [
        ("CGROUPS", "cgroups only, equal weights"),
        ("BVT", "Vessel BVT, no warp"),
        ("WARP", "Vessel BVT, warp on the pinged domain"),
    ] {
        let mut rtt: Vec<f64> = rows(&step, &format!("RTT_{phase}"))
            .iter()
            .filter_map(|f| f[0].parse().ok())
            .collect();
        rtt.sort_by(f64::total_cmp);
        let cpu: Vec<(String, f64)> = rows(&step, &format!("CPU_{phase}"))
            .into_iter()
            .map(|f| (f[0].to_string(), f[1].parse().unwrap_or(f64::NAN)))
            .collect();
        let secs: f64 = rows(&step, &format!("PHASE_{phase}"))
            .first()
            .map(|f| f[1].parse::<f64>().unwrap_or(0.0) - f[0].parse::<f64>().unwrap_or(0.0))
            .unwrap_or(f64::NAN);
        let interactive_cpu = cpu
            .iter()
            .find(|c| c.0 == "i")
            .map_or(f64::NAN, |c| c.1 / 1000.0 / secs * 100.0);
        let workers = work(&step, phase);
        let total: f64 = workers.iter().map(|w| w.1).sum();
        let worker_shares: Vec<(String, f64)> =
            workers.iter().map(|w| (w.0.clone(), w.1 / total)).collect();
        println!(
            "sched latency, {label}: ping RTT median {:.2} ms, p99 {:.2} ms ({} replies); \
             pinged domain's CPU {:.2}% of one CPU; workers' work shares {:?}",
            percentile(&rtt, 0.5),
            percentile(&rtt, 0.99),
            rtt.len(),
            interactive_cpu,
            worker_shares
                .iter()
                .map(|w| format!("{} {:.1}%", w.0, 100.0 * w.1))
                .collect::<Vec<_>>()
        );
        match (&base, phase) {
            (None, "BVT") => base = Some((interactive_cpu, worker_shares)),
            (Some((cpu0, shares0)), "WARP") => {
                let moved = shares0
                    .iter()
                    .zip(&worker_shares)
                    .map(|(a, b)| (b.1 - a.1).abs() * 100.0)
                    .fold(0.0, f64::max);
                println!(
                    "sched latency: warp moved the pinged domain's CPU from {cpu0:.2}% to \
                     {interactive_cpu:.2}% of one CPU, and the workers' shares by at most \
                     {moved:.2} points"
                );
            }
            _ => {}
        }
    }
}

fn main() {
    let span: u64 = std::env::var("VESSEL_BENCH_SPAN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let only = std::env::var("VESSEL_BENCH_ONLY").ok();
    if only.as_deref().is_none_or(|o| o == "shares") {
        shares(span);
    }
    if only.as_deref().is_none_or(|o| o == "latency") {
        latency(span);
    }
}
