//! Page-sharing benchmark: Vessel against QEMU (`-M microvm`) with three Linux guests of 224 MiB
//! in an L1 of 768 MiB (so its free memory is short), in the host box, one VMM per box. Each
//! guest's `samefill` writes the same 128 MiB; then KSM's savings are read every 10 s for 120 s.
//! QEMU's guest RAM is mergeable by default and KSM runs at the kernel's own rate (started by
//! hand, as a host administrator would); Vessel's daemon starts KSM and steers its rate by the
//! host's free state.
//!
//! Run with `cargo bench -p vessel --bench sharing` (`VESSEL_BENCH_ONLY=vessel` or `qemu` for
//! one VMM). Not a test: it prints what it measured. The L1 side is `benches/sharing.sh`.

#[path = "../tests/boxed/mod.rs"]
mod boxed;
mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const VMMS: [&str; 2] = ["vessel", "qemu"];

/// The `AT=s SAVED_MIB=x ...` lines of a run: (seconds, MiB saved, % available, pages a batch).
fn samples(output: &str) -> Vec<(u32, f64, f64, f64)> {
    output
        .lines()
        .filter_map(|l| {
            let field = |key: &str| -> Option<f64> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))?
                    .parse()
                    .ok()
            };
            Some((
                field("AT=")? as u32,
                field("SAVED_MIB=")?,
                field("AVAIL_PCT=")?,
                field("SCAN=")?,
            ))
        })
        .collect()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vessel-bench-sharing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sharing.sh");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(768)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/sharing.sh")
        .timeout(Duration::from_secs(1200));
    let steps: Vec<(String, String)> = VMMS
        .iter()
        .map(|v| (v.to_string(), format!("sh /sharing.sh {v}")))
        .collect();
    let run = common::each_in_own_box(&bx, &steps);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "page-sharing benchmark: three 224 MiB Linux guests write the same 128 MiB each in an L1 of 768 MiB; MiB KSM saved, seconds after they filled; one box per VMM"
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
        let rss = common::try_figure(step, "RSS_TOTAL_KIB=").map_or(f64::NAN, |k| k / 1024.0);
        let avail = common::try_figure(step, "FILLED_AVAIL_PCT=").unwrap_or(f64::NAN);
        println!(
            "{vmm}: {avail:.0}% of L1's memory available once filled; VMM processes' RSS at the end {rss:.0} MiB"
        );
        series.push((vmm, samples(&step.output)));
    }
    println!(
        "{:>6}{:>14}{:>10}{:>14}{:>10}{:>10}",
        "s", "vessel MiB", "scan", "qemu MiB", "scan", "ratio"
    );
    let find = |name: &str| series.iter().find(|s| s.0 == name).map(|s| s.1.clone());
    let (v, q) = (
        find("vessel").unwrap_or_default(),
        find("qemu").unwrap_or_default(),
    );
    for at in (10..=120).step_by(10) {
        let pick = |s: &[(u32, f64, f64, f64)]| s.iter().find(|x| x.0 == at).copied();
        let (vs, qs) = (pick(&v), pick(&q));
        let cell = |x: Option<(u32, f64, f64, f64)>| {
            x.map_or(("-".to_string(), "-".to_string()), |x| {
                (format!("{:.0}", x.1), format!("{:.0}", x.3))
            })
        };
        let ratio = match (vs, qs) {
            (Some(a), Some(b)) if b.1 > 0.0 => format!("{:.2}", a.1 / b.1),
            _ => "-".into(),
        };
        let ((vm, vscan), (qm, qscan)) = (cell(vs), cell(qs));
        println!("{at:>6}{vm:>14}{vscan:>10}{qm:>14}{qscan:>10}{ratio:>10}");
    }
}
