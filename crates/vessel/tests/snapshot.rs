//! Saving a domain to a file and restoring it (`vessel save`, `vessel restore`, issue 14), on
//! this machine's `/dev/kvm` with the `mini` test guest, through a daemon and its CLI: the
//! restored guest runs on from where it was saved (its tick counter continues, it does not
//! boot again), its memory comes back, and damaged or hostile snapshots are refused with a
//! clear error that starts nothing.

mod common;

use std::time::Duration;

use common::daemon::{last_tick, mini, tmpdir, wait_for, TestDaemon};
use common::{require_kvm, run_command_reacting, send_signal, VESSEL};
use serde_json::Value;

/// The resident memory of process `pid`, in KiB.
fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn a_saved_domain_restores_and_runs_on_from_where_it_was() {
    require_kvm();
    let dir = tmpdir("snapshot");
    let d = TestDaemon::start(&dir);
    // fattick writes every page of guest RAM from 16 MiB to 48 MiB, then ticks forever. Its
    // disk's rate is changed while it runs: the snapshot records the definition as it is then.
    let disk = dir.join("t.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut def: Value = serde_json::from_str(&mini("t", "fattick", "64M")).unwrap();
    def["disk"] = serde_json::json!([format!("path={},format=raw", disk.display())]);
    d.ok("POST", "/v1/domains", Some(&def.to_string()));
    d.cli_ok(&["disk", "set", "t", "vda", "--bps", "1M"]);
    wait_for("the guest to tick", Duration::from_secs(30), || {
        last_tick(&d.console("t")) >= 3
    });
    let snap = dir.join("t.snap");
    let out = d.cli_ok(&["save", "t", snap.to_str().unwrap()]);
    assert!(out.starts_with("domain 't' saved to "), "{out}");
    let before = d.console("t");
    let saved_at = last_tick(&before);
    let info = d.ok("GET", "/v1/domains/t", None);
    assert_eq!(info["state"], "shutoff", "{info}");
    assert!(
        info["message"].as_str().unwrap_or("").contains("saved"),
        "{info}"
    );
    // The 32 MiB the guest wrote are in the file; most of the rest of its 64 MiB is zeros,
    // left out.
    let size = std::fs::metadata(&snap).unwrap().len();
    assert!(
        (32 << 20..48 << 20).contains(&size),
        "a 64 MiB guest that wrote 32 MiB saved {size} bytes"
    );

    // Restored, the guest runs on: its counter continues past where it was saved, and it
    // does not boot again.
    // The rate changed at run time comes back with the domain (its definition is the one
    // the snapshot recorded).
    d.ok("DELETE", "/v1/domains/t", None);
    let out = d.cli_ok(&["restore", snap.to_str().unwrap()]);
    assert!(out.starts_with("domain 't' (id "), "{out}");
    let disks = d.ok("GET", "/v1/domains/t", None)["definition"]["disk"].to_string();
    assert!(disks.contains("bps=1M"), "the restored definition: {disks}");
    assert!(out.trim_end().ends_with("is running"), "{out}");
    wait_for(
        "the restored guest to tick",
        Duration::from_secs(30),
        || last_tick(&d.console("t")) > saved_at + 2,
    );
    // The console shows what the restored guest printed (its new process's output).
    let after = d.console("t");
    let since = after.strip_prefix(before.as_str()).unwrap_or(&after);
    assert!(
        !since.contains("mini: ticking") && !since.contains("mini: touched"),
        "the restored guest booted again:\n{since}"
    );
    let first_tick_after: u64 = since
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mini: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tick after the restore:\n{since}"));
    eprintln!(
        "saved at tick {saved_at} ({size} bytes); the restored guest's first tick: \
         {first_tick_after}"
    );
    assert!(
        first_tick_after + 1 >= saved_at,
        "the counter went back from {saved_at} to {first_tick_after}:\n{since}"
    );
    // Its memory came back: the pages it wrote are resident in its new process.
    let pid = d.ok("GET", "/v1/domains/t", None)["pid"]
        .as_u64()
        .expect("a running domain has a process") as u32;
    let rss = rss_kib_of(pid).expect("the domain process");
    assert!(rss >= 30 * 1024, "the restored domain holds {rss} KiB");

    // A snapshot is never written over; a running domain is not restored over.
    let (code, _, err) = d.cli(&["save", "t", snap.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(d.state("t"), "running");
    let (code, _, err) = d.cli(&["restore", snap.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already running"), "{err}");
    let (status, v) = d.call("POST", "/v1/restore", Some(r#"{"path":"t.snap"}"#));
    assert_eq!(status, 400, "a relative path: {v}");

    // Damaged snapshots are refused, by what is wrong, and start nothing (t stops first, so
    // that its disk is free and only the snapshot can be what is refused).
    d.ok("POST", "/v1/domains/t/destroy", None);
    let bytes = std::fs::read(&snap).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("flipped", flipped, "damaged"),
        ("cut", bytes[..bytes.len() / 3].to_vec(), "truncated"),
        (
            "stranger",
            b"#!/bin/sh\necho hello\n".to_vec(),
            "not a Vessel snapshot",
        ),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, content, why) in cases {
        let path = dir.join(format!("{name}.snap"));
        std::fs::write(&path, content).unwrap();
        let (code, _, err) = d.cli(&["restore", path.to_str().unwrap(), "--name", name]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
        let listed: Value = d.ok("GET", "/v1/domains", None);
        let running = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["name"] == name && v["state"] == "running")
            .count();
        assert_eq!(running, 0, "{name}: {listed}");
    }

    // The same snapshot in the foreground: `vessel run --restore` runs the guest on from where
    // it was saved, its console on standard output; SIGTERM presses its power button, which
    // this guest ignores, so it is stopped a second later (exit status 1).
    let mut cmd = std::process::Command::new(VESSEL);
    cmd.args(["run", "--shutdown-timeout", "1", "--restore"])
        .arg(&snap);
    let mut signalled = false;
    let run = run_command_reacting(cmd, Duration::from_secs(60), &mut |out, pid| {
        if !signalled && last_tick(out) > saved_at + 2 {
            send_signal(pid, "TERM");
            signalled = true;
        }
        false
    });
    assert!(
        signalled,
        "the foreground restore never ticked on:\n{}",
        run.report()
    );
    run.assert_code(1);
    assert!(
        !run.stdout.contains("mini: ticking"),
        "the guest booted again:\n{}",
        run.report()
    );
    let first: u64 = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mini: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        first + 1 >= saved_at,
        "the foreground restore's counter went back from {saved_at} to {first}:\n{}",
        run.report()
    );
    // --restore takes no definition flags.
    let mut cmd = std::process::Command::new(VESSEL);
    cmd.args(["run", "--kernel", "/k", "--restore"]).arg(&snap);
    let run = run_command_reacting(cmd, Duration::from_secs(10), &mut |_, _| false);
    assert_eq!(run.code(), Some(1), "{}", run.report());
    assert!(
        run.stderr.contains("cannot be used with"),
        "{}",
        run.report()
    );
}
