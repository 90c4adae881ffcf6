//! Live migration benchmark (issue 14): Vessel against QEMU (`-M microvm`) on the same Linux
//! guest of 256 MiB that wrote 128 MiB of its memory (not zeros), migrated between two
//! instances of the VMM in the same L1 over the loopback, in the host box, one box per step:
//! an idle guest, and one dirtying a 32 MiB working set at a steady pace (up to 40 MiB/s).
//! Both with a downtime target of 60 ms and no bandwidth cap. Vessel: `vessel migrate` between
//! two daemons (its report); QEMU: `-incoming tcp:` and the monitor's `migrate` (its `info
//! migrate`). Prints each one's total time, downtime, bytes sent and rounds, and Vessel's
//! ratios to QEMU.
//!
//! Run with `cargo bench -p vessel --bench migration` (`VESSEL_BENCH_ONLY=vessel-idle` and
//! the like for one step). Not a test: it prints what it measured. The L1 side is
//! `benches/migration.sh`.

#[path = "../tests/boxed/mod.rs"]
mod boxed;
mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const VMMS: [&str; 2] = ["vessel", "qemu"];
const GUESTS: [&str; 2] = ["idle", "busy"];

fn main() {
    let dir = std::env::temp_dir().join(format!("vessel-bench-migration-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/migration.sh");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(1024)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/migration.sh")
        .timeout(Duration::from_secs(900));
    let mut steps = Vec::new();
    for guest in GUESTS {
        for vmm in VMMS {
            steps.push((
                format!("{vmm}-{guest}"),
                format!("sh /migration.sh {vmm} {guest}"),
            ));
        }
    }
    let run = common::each_in_own_box(&bx, &steps);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "live migration benchmark: a 256 MiB Linux guest that wrote 128 MiB, between two \
         instances of the VMM in one L1 (loopback TCP), 60 ms downtime target; one box per step"
    );
    println!(
        "{:<8}{:<8}{:>10}{:>14}{:>12}{:>8}{:>10}",
        "guest", "vmm", "total ms", "downtime ms", "MiB sent", "rounds", "wall s"
    );
    for guest in GUESTS {
        let mut figures = Vec::new();
        for vmm in VMMS {
            let name = format!("{vmm}-{guest}");
            let step = match run.get(&name) {
                Ok(s) if s.output.contains("MIGRATED=running") => s,
                Ok(s) => {
                    eprintln!("bench: {name} did not finish:\n{}", s.output);
                    continue;
                }
                Err(e) => {
                    eprintln!("bench: {name}: {e}");
                    continue;
                }
            };
            let get = |key: &str| common::try_figure(step, key).unwrap_or(f64::NAN);
            let (total, downtime, mib, rounds, wall) = (
                get("REPORT_total_ms="),
                get("REPORT_downtime_ms="),
                get("REPORT_bytes=") / 1048576.0,
                get("REPORT_rounds="),
                get("WALL_S="),
            );
            println!(
                "{guest:<8}{vmm:<8}{total:>10.0}{downtime:>14.0}{mib:>12.1}{rounds:>8.0}{wall:>10.2}"
            );
            figures.push((total, downtime, mib));
        }
        if let [(vt, vd, vm), (qt, qd, qm)] = figures[..] {
            println!(
                "{guest}: vessel / qemu: total time {:.2}, downtime {:.2}, bytes {:.2}",
                vt / qt,
                vd / qd,
                vm / qm
            );
        }
    }
}
