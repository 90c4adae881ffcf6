//! Memory balloon benchmark: Vessel against QEMU (`-M microvm`, `virtio-balloon-device`) on the
//! same Linux guest of 256 MiB, in the host box, one VMM per box. The guest's `memfill` fills
//! 150 MiB and frees it; the VMM process's RSS is read after each. Then the balloon is asked
//! for 128 MiB (`vessel mem-set a 128M`; QEMU's monitor `balloon 128`) and timed until the
//! guest's driver says it holds it, the RSS read again, and the balloon emptied (timed the same
//! way). QEMU runs twice: as it comes (no free page reporting) and with
//! `free-page-reporting=on`, its best way; Vessel's domain has `free_page_reporting` on.
//!
//! Run with `cargo bench -p vessel --bench balloon` (`VESSEL_BENCH_ONLY=vessel`, `qemu`... for
//! one VMM). Not a test: it prints what it measured. The L1 side is `benches/balloon.sh`.

#[path = "../tests/boxed/mod.rs"]
mod boxed;
mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const VMMS: [&str; 3] = ["vessel", "qemu", "qemu-reporting"];

fn main() {
    let dir = std::env::temp_dir().join(format!("vessel-bench-balloon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/balloon.sh");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(1024)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/balloon.sh")
        .timeout(Duration::from_secs(900));
    let steps: Vec<(String, String)> = VMMS
        .iter()
        .map(|v| (v.to_string(), format!("sh /balloon.sh {v}")))
        .collect();
    let run = common::each_in_own_box(&bx, &steps);
    let _ = std::fs::remove_dir_all(&dir);

    println!("balloon benchmark: a 256 MiB Linux guest fills 150 MiB, frees it, is ballooned to 128 MiB and back; one box per VMM");
    println!(
        "{:<16}{:>12}{:>12}{:>14}{:>12}{:>12}",
        "vmm", "RSS filled", "RSS freed", "RSS ballooned", "inflate s", "deflate s"
    );
    let mut inflate = Vec::new();
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
        let mib = |key: &str| common::try_figure(step, key).map_or(f64::NAN, |k| k / 1024.0);
        let secs = |key: &str| common::try_figure(step, key).unwrap_or(f64::NAN);
        let (up, down) = (secs("INFLATE_S="), secs("DEFLATE_S="));
        println!(
            "{vmm:<16}{:>10.0} M{:>10.0} M{:>12.0} M{up:>12.2}{down:>12.2}",
            mib("RSS_FILLED_KIB="),
            mib("RSS_FREED_KIB="),
            mib("RSS_INFLATED_KIB="),
        );
        inflate.push((vmm, up, mib("RSS_FREED_KIB="), mib("RSS_FILLED_KIB=")));
    }
    let find = |name: &str| inflate.iter().find(|i| i.0 == name).copied();
    if let (Some(v), Some(q)) = (find("vessel"), find("qemu-reporting")) {
        println!(
            "vessel / qemu with free page reporting: inflate time {:.2}; memory given back after the guest freed 150 MiB: {:.0} MiB against {:.0} MiB",
            v.1 / q.1,
            v.3 - v.2,
            q.3 - q.2
        );
    }
    if let (Some(v), Some(q)) = (find("vessel"), find("qemu")) {
        println!(
            "vessel / qemu as it comes: inflate time {:.2}; memory given back after the guest freed 150 MiB: {:.0} MiB against {:.0} MiB",
            v.1 / q.1,
            v.3 - v.2,
            q.3 - q.2
        );
    }
}
