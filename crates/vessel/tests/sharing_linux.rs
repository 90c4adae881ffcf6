//! Page sharing with real Linux guests, in the host box: two domains of 160 MiB booting the
//! same kernel and initramfs under `vessel daemon` (page sharing on, its default). The daemon
//! starts the kernel's KSM and marks each domain's guest RAM mergeable; identical pages of the
//! two guests are then kept once, and `vessel info`, `vessel mem` and `/metrics` say how much.
//! After a SIGTERM the daemon has put KSM's settings back as it found them. The L1 side is
//! `tests/box_scripts/sharing.sh`.

mod boxed;

use boxed::{
    box_with_vessel, figure, guest_tools, one, run_until_no_guest_crash, values, DOMAINS_LIB,
};

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn identical_pages_of_two_guests_are_kept_once() {
    let dir = std::env::temp_dir().join(format!("vessel-sharing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/sharing.sh");
    let out = run_until_no_guest_crash(2, "sharing", || {
        box_with_vessel(900)
            .memory_mib(1024)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/sharing.sh")
            .step("sharing", "sh /sharing.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &out;
    println!("{out}");

    assert_eq!(values(out, "REACHABLE="), ["1", "2"], "{out}");
    assert_eq!(
        one(out, "KSM_RUN_DURING="),
        "1",
        "the daemon started KSM:\n{out}"
    );
    assert!(
        figure(out, "MERGEABLE_MAPPINGS=") >= 1.0,
        "d1's guest RAM is not marked mergeable:\n{out}"
    );
    let (d1, d2) = (
        figure(out, "SHARED_D1=") / MIB,
        figure(out, "SHARED_D2=") / MIB,
    );
    let saved = figure(out, "SAVED=") / MIB;
    eprintln!(
        "shared: d1 {d1:.1} MiB, d2 {d2:.1} MiB after {} s; the host saved {saved:.1} MiB",
        one(out, "SHARE_SECONDS=")
    );
    assert!(
        d1 >= 8.0 && d2 >= 8.0,
        "page sharing merged {d1:.1} and {d2:.1} MiB of two guests booting the same kernel:\n{out}"
    );
    assert!(saved >= 8.0, "the host saved {saved:.1} MiB:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("MEM page sharing  : on, ")),
        "vessel mem says page sharing is on:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("METRIC vessel_domain_memory_shared_bytes{domain=\"d1\"}")),
        "/metrics has d1's shared bytes:\n{out}"
    );
    assert_eq!(one(out, "DAEMON_GONE="), "yes", "{out}");
    assert_eq!(
        one(out, "KSM_AFTER="),
        one(out, "KSM_BEFORE="),
        "KSM's settings are back as the daemon found them:\n{out}"
    );
}
