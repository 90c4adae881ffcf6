//! The memory pool with real Linux guests, in the host box: `vessel daemon --memory-pool 400M`
//! runs two domains of 256 MiB, one with 1000 shares and one with 3000. The targets may add up
//! to the pool less its free reserve (24 MiB, the high state's 6%): 136 MiB short; the memory
//! policy takes exactly that back from the domain with the fewest shares per page, through its
//! guest's own balloon driver, and the other keeps all of its memory. When the
//! other is destroyed, the first gets its memory back. The L1 side is
//! `tests/box_scripts/pool.sh`.

mod boxed;

use boxed::{
    box_with_vessel, figure, guest_tools, one, run_until_no_guest_crash, values, DOMAINS_LIB,
};

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn the_domain_with_the_fewest_shares_per_page_gives_back_what_the_pool_lacks() {
    let dir = std::env::temp_dir().join(format!("vessel-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/pool.sh");
    let out = run_until_no_guest_crash(2, "pool", || {
        box_with_vessel(900)
            .memory_mib(1024)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/pool.sh")
            .step("pool", "sh /pool.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &out;
    println!("{out}");

    assert_eq!(values(out, "REACHABLE="), ["1", "2"], "{out}");
    let mib = |key: &str| figure(out, key) / MIB;
    eprintln!(
        "pool 400 MiB (376 for the targets) for 2 x 256: a (1000 shares) targeted {:.0} MiB with {:.0} in its balloon, \
         b (3000 shares) {:.0} MiB with {:.0}",
        mib("a_target="),
        mib("a_balloon="),
        mib("b_target="),
        mib("b_balloon=")
    );
    assert_eq!(
        one(out, "A_BALLOONED="),
        "yes",
        "a's guest never gave back 136 MiB:\n{out}"
    );
    assert_eq!(mib("a_target="), 120.0, "{out}");
    assert_eq!(mib("b_target="), 256.0, "{out}");
    assert_eq!(mib("b_balloon="), 0.0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("MEM memory pool   : 400 MiB, 0 MiB reserved")),
        "{out}"
    );
    assert_eq!(one(out, "DESTROYED="), "b", "{out}");
    assert_eq!(
        one(out, "A_DEFLATED="),
        "yes",
        "a did not get its memory back once b was gone:\n{out}"
    );
    assert_eq!(mib("a_target_after="), 256.0, "{out}");
}
