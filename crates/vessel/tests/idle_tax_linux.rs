//! The idle memory tax with real Linux guests, in the host box (issue 13). Two phases, each
//! under a fresh `vessel daemon --memory-pool 768M`: two domains of 512 MiB with equal shares
//! both write 100 MiB, then one idles and the other keeps reading its 100 MiB. Each domain
//! process samples its working set (ESX's way, through a userfaultfd). With the tax at its
//! default 0.75, the 303 MiB the targets lack (the pool less its free reserve of 47 MiB)
//! come mostly from the idle domain; with `--idle-tax 0`, half from each, as shares alone say. The busy guest's estimate is within
//! 25% of the 100 MiB it touches, and the idle guest's data reads back as written although its
//! pages were taken away and given back period after period. The L1 side is
//! `tests/box_scripts/idle_tax.sh`.

mod boxed;

use boxed::{
    box_with_vessel, figure, guest_tools, one, run_until_no_guest_crash, values, DOMAINS_LIB,
};

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn idle_memory_is_taken_back_first_under_the_tax_and_not_without_it() {
    let dir = std::env::temp_dir().join(format!("vessel-idle-tax-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/idle_tax.sh");
    // Three boxes: this test's guests crashed by themselves (a triple fault with nothing on
    // their consoles) in 3 of the 5 boxes it ran on 2026-12-07, more than any other test's;
    // every crash is in the retry log, to be told from TCG's (see the notes).
    let out = run_until_no_guest_crash(3, "idle_tax", || {
        box_with_vessel(1500)
            .memory_mib(1024)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/idle_tax.sh")
            .step("idle_tax", "sh /idle_tax.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &out;
    println!("{out}");

    for phase in ["TAX_", "NOTAX_"] {
        let key = |k: &str| format!("{phase}{k}");
        assert_eq!(values(out, &key("REACHABLE=")), ["1", "2"], "{out}");
        assert_eq!(one(out, &key("BUSY=")), "b", "{out}");
        let mib = |k: &str| figure(out, &key(k)) / MIB;
        let (a_share, b_share) = (
            figure(out, &key("a_active_share=")),
            figure(out, &key("b_active_share=")),
        );
        eprintln!(
            "{phase} pool 768 MiB for 2 x 512, equal shares: idle a targeted {:.0} MiB (active \
             {:.0} of {:.0} resident, share {a_share:.2}), busy b {:.0} MiB (active {:.0} of \
             {:.0}, share {b_share:.2}); estimates apart after {} s",
            mib("a_target_bytes="),
            mib("a_active_estimate_bytes="),
            mib("a_resident_bytes="),
            mib("b_target_bytes="),
            mib("b_active_estimate_bytes="),
            mib("b_resident_bytes="),
            one(out, &key("ESTIMATED_AFTER=")),
        );
        // The estimates tell the idle guest from the busy one, and the busy one's is within
        // 25% of the 100 MiB it reads again and again.
        assert!(
            a_share < 0.1 && b_share >= 0.3,
            "{phase}: idle a's share {a_share}, busy b's {b_share}:\n{out}"
        );
        let b_active = mib("b_active_estimate_bytes=");
        assert!(
            (75.0..=125.0).contains(&b_active),
            "{phase}: b touches 100 MiB, estimated {b_active:.0} MiB:\n{out}"
        );
    }
    let mib = |k: &str| figure(out, k) / MIB;
    // Without the tax: shares alone, equal, so half of the targets' 721 MiB each (the pool
    // less its free reserve of 47 MiB, the high state's 6%), to the mebibyte the policy moves.
    assert_eq!(
        (mib("NOTAX_a_target_bytes="), mib("NOTAX_b_target_bytes=")),
        (360.0, 361.0),
        "{out}"
    );
    // With it: idle bytes cost four active ones, so a gives more of the 303: the two even out
    // where B - A = 0.75 (active b - active a): 60 MiB apart for estimates of 20 and 100 MiB
    // (measured with targets of 768 MiB: 354 and 414 with a still at 24). Asked here: at
    // least 16 MiB moved.
    assert!(
        mib("TAX_a_target_bytes=") <= 344.0 && mib("TAX_b_target_bytes=") >= 377.0,
        "with the tax a {} MiB, b {} MiB:\n{out}",
        mib("TAX_a_target_bytes="),
        mib("TAX_b_target_bytes=")
    );
    assert!(
        mib("TAX_a_balloon_bytes=") + 4.0 >= 512.0 - mib("TAX_a_target_bytes="),
        "a's guest did not give back what its target leaves:\n{out}"
    );
    let before = one(out, "TAX_A_SUM_BEFORE=");
    assert_eq!(before.len(), 32, "no checksum of a's data:\n{out}");
    assert_eq!(
        one(out, "TAX_A_SUM_AFTER="),
        before,
        "a's data changed while sampled:\n{out}"
    );
}
