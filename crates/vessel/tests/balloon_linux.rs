//! The memory balloon with a real Linux guest (its own virtio_balloon driver), in the host box:
//! one domain of 256 MiB under the daemon, with `free_page_reporting` on. Memory the guest
//! frees comes back to the host by free page reporting; `vessel mem-set` to 128 MiB inflates the balloon to exactly the
//! difference (the guest's free memory falls by as much, the host holds no more than what the
//! guest kept), and back to 256 MiB deflates it; the guest's own statistics reach `vessel
//! info`; targets above the domain's memory, below the minimum, or for a stopped domain are
//! refused. The L1 side is `tests/box_scripts/balloon.sh`.

mod boxed;

use boxed::{box_with_vessel, figure, guest_tools, one, run_until_no_guest_crash, DOMAINS_LIB};

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn the_balloon_gives_memory_back_and_takes_it_again() {
    let dir = std::env::temp_dir().join(format!("vessel-balloon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/balloon.sh");
    let out = run_until_no_guest_crash(2, "balloon", || {
        box_with_vessel(900)
            .memory_mib(1024)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/balloon.sh")
            .step("balloon", "sh /balloon.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &out;
    println!("{out}");

    assert_eq!(one(out, "CREATED="), "a", "{out}");
    assert_eq!(one(out, "REACHABLE="), "1", "{out}");
    assert_eq!(
        one(out, "DRIVER="),
        "bound",
        "the guest's driver took the balloon:\n{out}"
    );
    let mb = |key: &str| figure(out, key) / MIB;

    // Free page reporting: 150 MiB filled, then freed; the guest reported at least 95 MiB of
    // it (the script waited for 100 MB) and the host holds at least 64 MiB less.
    assert_eq!(one(out, "FILLED="), "150", "{out}");
    assert_eq!(
        one(out, "REPORTED="),
        "yes",
        "free pages were not reported:\n{out}"
    );
    let (filled, freed) = (mb("M1_resident_bytes="), mb("M2_resident_bytes="));
    eprintln!(
        "resident: {:.0} MiB at boot, {filled:.0} filled, {freed:.0} after the guest freed it \
         ({:.0} MiB reported meanwhile)",
        mb("M0_resident_bytes="),
        mb("M2_reported_bytes=") - mb("M1_reported_bytes=")
    );
    assert!(
        filled >= 150.0,
        "the fill left only {filled:.0} MiB resident:\n{out}"
    );
    let reported = mb("M2_reported_bytes=") - mb("M1_reported_bytes=");
    assert!(
        reported >= 95.0,
        "the guest reported {reported:.0} MiB after freeing 150:\n{out}"
    );
    assert!(
        freed <= filled - 64.0,
        "the host still holds {freed:.0} of {filled:.0} MiB after the guest freed 150:\n{out}"
    );

    // mem-set 128M: the balloon holds exactly 128 MiB, the guest's free memory fell by about
    // as much, the host holds no more than the guest kept, and the guest works on.
    assert_eq!(
        one(out, "INFLATED="),
        "yes",
        "the balloon did not reach 128 MiB:\n{out}"
    );
    assert_eq!(mb("M3_target_bytes="), 128.0, "{out}");
    assert_eq!(mb("M3_balloon_bytes="), 128.0, "{out}");
    let fell = (figure(out, "GUEST_FREE_BEFORE=") - figure(out, "GUEST_FREE_INFLATED=")) / 1024.0;
    eprintln!("the guest's free memory fell by {fell:.0} MiB as the balloon took 128");
    assert!(
        (100.0..=160.0).contains(&fell),
        "the guest's free memory fell by {fell:.0} MiB for a balloon of 128:\n{out}"
    );
    for at in ["M3_", "M4_"] {
        let resident = mb(&format!("{at}resident_bytes="));
        let balloon = mb(&format!("{at}balloon_bytes="));
        assert!(
            resident + balloon <= 256.0,
            "{at}: {resident:.0} MiB resident beside a balloon of {balloon:.0} in 256:\n{out}"
        );
    }
    assert_eq!(one(out, "FILLED_INFLATED="), "32", "{out}");
    // The guest's own figures reached `vessel info`.
    for field in ["total_bytes", "free_bytes", "available_bytes"] {
        let line = out
            .lines()
            .find(|l| l.starts_with("INFO4 ") && l.contains(&format!("\"{field}\"")))
            .unwrap_or_else(|| panic!("no guest {field} in info:\n{out}"));
        assert!(!line.contains(": 0"), "guest {field} is 0: {line}\n{out}");
    }

    // Refused targets.
    for key in [
        "REFUSED_ABOVE=",
        "REFUSED_BELOW=",
        "REFUSED_TEXT=",
        "REFUSED_STOPPED=",
    ] {
        assert_ne!(one(out, key), "0", "{key} was accepted:\n{out}");
    }

    // mem-set 256M: the balloon gave everything back, and the guest has its memory again.
    assert_eq!(
        one(out, "DEFLATED="),
        "yes",
        "the balloon did not deflate:\n{out}"
    );
    assert_eq!(mb("M5_target_bytes="), 256.0, "{out}");
    let back = (figure(out, "GUEST_FREE_DEFLATED=") - figure(out, "GUEST_FREE_INFLATED=")) / 1024.0;
    assert!(
        back >= 100.0,
        "the guest got {back:.0} MiB back from a balloon of 128:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("METRIC vessel_domain_memory_balloon_bytes{domain=\"a\"} 0")),
        "{out}"
    );
}
