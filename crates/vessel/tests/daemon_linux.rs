//! Domain 0 with real Linux guests, in the host box, through the daemon's API only (the
//! `vessel` CLI is its client): four domains on the daemon's virtual switch, every pair
//! pinging, a drop rule on ICMP between two of them, a rate-limit rule on a TCP transfer, pause
//! and unpause, a guest that crashes, and destroy giving the memory back. (A UDP flood against
//! a TCP victim is not here: under TCG, L1 itself resets during a 40 s flood among four guests;
//! the switch's fairness is tested by vswitch's own threaded and deterministic DRR tests.) The L1 side is `tests/box_scripts/four_domains.sh`; guests run
//! `tests/guest/agent.sh`, which L1 reaches through the switch's uplink TAP.

mod boxed;

use boxed::{box_with_vessel, guest_tools};

fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .collect()
}

fn one<'a>(out: &'a str, key: &str) -> &'a str {
    values(out, key)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {key} line:\n{out}"))
}

/// Seconds between the two uptimes of a `KEY=start,end` line.
fn seconds(out: &str, key: &str) -> f64 {
    let (s, e) = one(out, key).split_once(',').unwrap();
    e.parse::<f64>().unwrap() - s.parse::<f64>().unwrap()
}

#[test]
fn four_domains_on_the_switch_through_the_api() {
    let dir = std::env::temp_dir().join(format!("vessel-4dom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/box_scripts/four_domains.sh"
    );
    let run = box_with_vessel(1800)
        .memory_mib(2048)
        .file(&tools, "/tools.cpio.gz")
        .file(script, "/four_domains.sh")
        .step("four-domains", "sh /four_domains.sh")
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let step = run.step("four-domains");
    eprintln!("four-domains step: {:.1} s", step.seconds);
    let out = &step.output;
    println!("{out}");

    assert_eq!(values(out, "CREATED="), ["a", "b", "c", "d"], "{out}");
    let listed: Vec<&str> = values(out, "LIST ")
        .into_iter()
        .filter(|l| l.contains("running"))
        .collect();
    assert_eq!(listed.len(), 4, "list shows four running domains:\n{out}");
    assert_eq!(values(out, "REACHABLE=").len(), 4, "{out}");
    // Every ordered pair talks through the switch.
    assert_eq!(values(out, "PAIR=").len(), 12, "{out}");
    assert!(values(out, "NOPAIR=").is_empty(), "{out}");
    // The drop rule stops ICMP from a to b (so neither direction's ping completes), nothing else.
    assert_eq!(values(out, "DROPNOPAIR="), ["1-2", "2-1"], "{out}");
    assert_eq!(values(out, "DROPPAIR=").len(), 10, "{out}");
    // The rate limit: 1 MiB at 200 KB/s.
    assert_eq!(one(out, "RATE_SECONDS_BYTES="), "1048576", "{out}");
    let rate = 1048576.0 / seconds(out, "RATE_SECONDS=");
    assert!(
        (0.35 * 200_000.0..=1.3 * 200_000.0).contains(&rate),
        "the rate-limited transfer ran at {rate:.0} B/s, not near 200000:\n{out}"
    );
    // Pause.
    assert_eq!(
        one(out, "PAUSED_PING="),
        "silent",
        "a paused guest answers nothing:\n{out}"
    );
    let counts: Vec<u64> = one(out, "COUNTS=")
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let (paused_progress, running_progress) = (counts[1] - counts[0], counts[2] - counts[1]);
    assert!(
        running_progress >= 3 && paused_progress < running_progress,
        "the guest's counter moved {paused_progress} across a 6 s pause and {running_progress} in 3 s running:\n{out}"
    );
    // Crash isolation.
    let info_c: Vec<&str> = values(out, "INFO_C");
    assert!(
        info_c.iter().any(|l| l.contains(r#""state": "crashed""#)),
        "{out}"
    );
    assert!(
        info_c
            .iter()
            .any(|l| l.contains(r#""message""#) && l.contains("triple-faulted")),
        "{out}"
    );
    assert_eq!(values(out, "AFTER_CRASH="), ["1-4"], "{out}");
    // Destroy gives the guest's memory back.
    let before: u64 = one(out, "DAEMON_RSS_BEFORE_DESTROY=").parse().unwrap();
    let after: u64 = one(out, "DAEMON_RSS_AFTER_DESTROY=").parse().unwrap();
    assert!(
        after + 32 * 1024 < before,
        "destroying d freed too little: {before} -> {after} KiB:\n{out}"
    );
}
