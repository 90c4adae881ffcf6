//! Save and restore benchmark (issue 14): Vessel against QEMU (`-M microvm`) on the same Linux
//! guest of 256 MiB that wrote 128 MiB of its memory (not zeros), in the host box, one VMM per
//! box. Each VMM saves the guest to a file (stopping it) and restores it from that file:
//! `vessel save` and `vessel restore` through the daemon; QEMU's monitor `stop` and `migrate
//! "exec:cat > FILE"`, then a new QEMU with `-incoming "exec:cat FILE"` until it runs (QEMU
//! is polled through its monitor every 0.1-0.2 s; Vessel's verbs answer when done). Prints the
//! seconds each took and the file's size, and Vessel's ratios to QEMU.
//!
//! Run with `cargo bench -p vessel --bench snapshot` (`VESSEL_BENCH_ONLY=vessel` or `qemu` for
//! one VMM). Not a test: it prints what it measured. The L1 side is `benches/snapshot.sh`.

#[path = "../tests/boxed/mod.rs"]
mod boxed;
mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const VMMS: [&str; 2] = ["vessel", "qemu"];

fn main() {
    let dir = std::env::temp_dir().join(format!("vessel-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/snapshot.sh");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(1024)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/snapshot.sh")
        .timeout(Duration::from_secs(900));
    let steps: Vec<(String, String)> = VMMS
        .iter()
        .map(|v| (v.to_string(), format!("sh /snapshot.sh {v}")))
        .collect();
    let run = common::each_in_own_box(&bx, &steps);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "save/restore benchmark: a 256 MiB Linux guest that wrote 128 MiB, saved to a file and \
         restored from it; one box per VMM"
    );
    println!(
        "{:<10}{:>10}{:>12}{:>14}",
        "vmm", "save s", "restore s", "file MiB"
    );
    let mut figures = Vec::new();
    for vmm in VMMS {
        let step = match run.get(vmm) {
            Ok(s) if s.output.contains("RESTORED=running") => s,
            Ok(s) => {
                eprintln!("bench: {vmm} did not finish:\n{}", s.output);
                continue;
            }
            Err(e) => {
                eprintln!("bench: {vmm}: {e}");
                continue;
            }
        };
        let get = |key: &str| common::try_figure(step, key).unwrap_or(f64::NAN);
        let (save, restore, mib) = (
            get("SAVE_S="),
            get("RESTORE_S="),
            get("SNAPSHOT_BYTES=") / 1048576.0,
        );
        println!("{vmm:<10}{save:>10.2}{restore:>12.2}{mib:>14.1}");
        if let Ok(create) = common::try_figure(step, "CREATE_S=") {
            println!(
                "  (vessel create of the same domain from its kernel, to its first instruction: \
                 {create:.2} s)"
            );
        }
        figures.push((vmm, save, restore, mib));
    }
    if let [(_, vs, vr, vm), (_, qs, qr, qm)] = figures[..] {
        println!(
            "vessel / qemu: save time {:.2}, restore time {:.2}, file size {:.2}",
            vs / qs,
            vr / qr,
            vm / qm
        );
    }
}
