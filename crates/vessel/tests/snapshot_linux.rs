//! Save and restore with real Linux guests, in the host box (issue 14): under `vessel daemon`,
//! guest a counts in a loop and streams a line a second to guest b over one TCP connection
//! through the switch. `vessel save a FILE` stops a; `vessel restore FILE` a few seconds later
//! brings it back: its counter goes on from where it was, its boot id is the same and its
//! uptime did not go back (it did not boot again), the same connection carries lines again,
//! and its wall clock is right. The L1 side is `tests/box_scripts/snapshot.sh`.

mod boxed;

use boxed::{
    box_with_vessel, figure, guest_tools, one, run_until_no_guest_crash, values, DOMAINS_LIB,
};

#[test]
fn a_saved_linux_guest_restores_with_its_programs_connection_and_clock() {
    let dir = std::env::temp_dir().join(format!("vessel-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/snapshot.sh");
    let out = run_until_no_guest_crash(2, "snapshot", || {
        box_with_vessel(900)
            .memory_mib(1024)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/snapshot.sh")
            .step("snapshot", "sh /snapshot.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &out;
    println!("{out}");

    assert_eq!(values(out, "REACHABLE="), ["1", "2"], "{out}");
    assert_eq!(one(out, "COUNTING="), "a", "{out}");
    let save = values(out, "SAVE ");
    assert!(
        save.iter()
            .any(|l| l.starts_with("domain 'a' saved to /tmp/a.snap")),
        "{out}"
    );
    assert_eq!(one(out, "STATE_AFTER_SAVE="), "shutoff", "{out}");
    assert_eq!(
        one(out, "SAVED_ANSWERS="),
        "no",
        "a saved domain runs no more:\n{out}"
    );
    let restore = values(out, "RESTORE ");
    assert!(
        restore
            .iter()
            .any(|l| l.starts_with("domain 'a' (id ") && l.ends_with("is running")),
        "{out}"
    );
    let snapshot = figure(out, "SNAPSHOT_BYTES=");
    let answers_after = figure(out, "ANSWERS_AFTER=");
    eprintln!(
        "snapshot of a 160 MiB guest: {:.1} MiB, saved in {:.1} s, restored in {:.1} s; it \
         answered L1's ping {answers_after:.2} s after `vessel restore` began",
        snapshot / 1048576.0,
        figure(out, "SAVE_SECONDS="),
        figure(out, "RESTORE_SECONDS=")
    );
    assert!(
        snapshot < 160.0 * 1048576.0,
        "all-zero pages were left out: {snapshot} bytes for 160 MiB:\n{out}"
    );

    // The guest did not boot again: same boot id, uptime on from where it was, the counter on.
    assert_eq!(one(out, "BOOT_ID1="), one(out, "BOOT_ID2="), "{out}");
    // Its uptime went on, and by at least the time it spent saved (its clocks moved on).
    let (up1, up2) = (figure(out, "UPTIME1="), figure(out, "UPTIME2="));
    assert!(
        up2 >= up1 + 5.0,
        "uptime went from {up1} to {up2} across a save of at least 5 s:\n{out}"
    );
    let (count1, count2) = (figure(out, "COUNT1="), figure(out, "COUNT2="));
    assert!(
        count2 > count1,
        "the counter went from {count1} to {count2}:\n{out}"
    );
    // The connection to b carried lines after the restore (its sender never reconnects).
    let (lines1, lines_saved, lines2) = (
        figure(out, "LINES1="),
        figure(out, "LINES_SAVED="),
        figure(out, "LINES2="),
    );
    assert!(
        lines_saved >= lines1 && lines2 >= lines_saved + 3.0,
        "b had {lines1} lines before the save, {lines_saved} while a was saved, {lines2} after \
         the restore:\n{out}"
    );
    // The wall clock: kvmclock moved on by the time a spent saved.
    let clocks = one(out, "CLOCKS ");
    let field = |k: &str| -> f64 {
        clocks
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {clocks:?}:\n{out}"))
    };
    let skew = field("guest=") - field("l1=");
    eprintln!("the restored guest's wall clock is {skew:+.0} s from L1's");
    assert!(
        skew.abs() <= 3.0,
        "the restored guest's wall clock is {skew} s off L1's:\n{out}"
    );
}
