//! Page-sharing benchmark (issue 13): N identical Linux guests of 128 MiB (10 unless
//! `VESSEL_BENCH_GUESTS` says), each writing the same 48 MiB, in an L1 of 2560 MiB, one VMM per
//! box: Vessel's daemon as it comes (its policy steers KSM by free memory), Vessel with a
//! memory pool of three quarters of what the guests are given (the pool's free state drives
//! KSM harder and the balloons take back what the guests do not use), and QEMU (`-M microvm`, guest RAM
//! mergeable by default) with KSM at the kernel's own rate, what a QEMU user gets. For 180 s
//! after the last guest filled: what the guests cost L1, what KSM saved, the share of their
//! memory reclaimed, and ksmd's CPU time. ESX reclaimed about 60% of ten identical guests.
//!
//! Run with `cargo bench -p vessel --bench sharing` (`VESSEL_BENCH_ONLY=qemu`, `vessel-pool`
//! or `vessel` picks steps by name). Not a test: it prints what it measured. The L1 side is
//! `benches/sharing.sh`.

#[path = "../tests/boxed/mod.rs"]
mod boxed;
mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const VMMS: [&str; 3] = ["qemu", "vessel", "vessel-pool"];

/// One `AT=` line of a run.
#[derive(Clone, Copy)]
struct Sample {
    at: u32,
    cost_mib: f64,
    saved_mib: f64,
    reclaimed_pct: f64,
    ksmd_cpu_s: f64,
}

fn samples(output: &str) -> Vec<Sample> {
    output
        .lines()
        .filter_map(|l| {
            let field = |key: &str| -> Option<f64> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))?
                    .parse()
                    .ok()
            };
            Some(Sample {
                at: field("AT=")? as u32,
                cost_mib: field("COST_MIB=")?,
                saved_mib: field("SAVED_MIB=")?,
                reclaimed_pct: field("RECLAIMED_PCT=")?,
                ksmd_cpu_s: field("KSMD_CPU_S=")?,
            })
        })
        .collect()
}

fn main() {
    let guests: u32 = std::env::var("VESSEL_BENCH_GUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10);
    let dir = std::env::temp_dir().join(format!("vessel-bench-sharing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sharing.sh");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(2560)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/sharing.sh")
        .timeout(Duration::from_secs(2400));
    let steps: Vec<(String, String)> = VMMS
        .iter()
        .map(|v| (v.to_string(), format!("sh /sharing.sh {v} {guests}")))
        .collect();
    let run = common::each_in_own_box(&bx, &steps);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "page-sharing benchmark: {guests} identical Linux guests of 128 MiB, each writing the same 48 MiB, in an L1 of 2560 MiB; one box per VMM"
    );
    let mut series = Vec::new();
    for vmm in VMMS {
        let step = match run.get(vmm) {
            Ok(s) if s.output.contains("VMM_DONE=") => s,
            Ok(s) => {
                eprintln!("bench: {vmm} did not finish:\n{}", s.output);
                continue;
            }
            Err(e) => {
                eprintln!("bench: {vmm}: {e}");
                continue;
            }
        };
        let filled = common::try_figure(step, "FILLED_AFTER_S=").unwrap_or(f64::NAN);
        println!("{vmm}: every guest filled {filled:.0} s after the first started");
        series.push((vmm, samples(&step.output)));
    }
    let header: String = series
        .iter()
        .map(|(vmm, _)| format!("{:>30}", format!("{vmm}: cost/saved MiB, %, ksmd s")))
        .collect();
    println!("{:>5}{header}", "s");
    for at in (0..=180).step_by(10) {
        let cells: String = series
            .iter()
            .map(|(_, s)| {
                s.iter()
                    .find(|x| x.at == at)
                    .map_or(format!("{:>30}", "-"), |x| {
                        format!(
                            "{:>30}",
                            format!(
                                "{:.0}/{:.0}, {:.0}%, {:.1}",
                                x.cost_mib, x.saved_mib, x.reclaimed_pct, x.ksmd_cpu_s
                            )
                        )
                    })
            })
            .collect();
        println!("{at:>5}{cells}");
    }
    // The ratios against QEMU at the end: what the guests cost the host, and ksmd's CPU.
    let last = |name: &str| {
        series
            .iter()
            .find(|s| s.0 == name)
            .and_then(|s| s.1.last().copied())
    };
    if let Some(q) = last("qemu") {
        for vmm in ["vessel", "vessel-pool"] {
            if let Some(v) = last(vmm) {
                println!(
                    "{vmm} against qemu after {} s: cost {:.2}x, reclaimed {:.0}% against {:.0}%, ksmd CPU {:.2}x",
                    v.at,
                    v.cost_mib / q.cost_mib,
                    v.reclaimed_pct,
                    q.reclaimed_pct,
                    v.ksmd_cpu_s / q.ksmd_cpu_s
                );
            }
        }
    }
}
