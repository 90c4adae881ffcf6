//! Each domain in its own confined process under the daemon, with the `mini` guest on
//! /dev/kvm: the process runs as a user of its own with no capabilities, `no_new_privs` and
//! namespaces of its own; killing one domain's process crashes that domain only; domains
//! outlive a killed daemon and a new daemon attaches to them (state, console kept meanwhile,
//! pause, counters, destroy); SIGTERM to the daemon powers every domain off through its button
//! (stopping those that ignore it after `--shutdown-timeout`) and exits 0; SIGQUIT leaves them
//! running; `autostart` domains start with the daemon; a restarted daemon hands running
//! domains new switch ports for their VIFs (issue 11), and a paused domain's devices make no
//! progress.

mod common;

use std::time::Duration;

use common::daemon::{last_tick, mini, tmpdir, wait_for, TestDaemon};
use common::{alive, mini_kernel, proc_status, require_kvm};
use serde_json::{json, Value};

fn ticking(d: &TestDaemon, name: &str) -> u64 {
    let before = last_tick(&d.console(name));
    wait_for(&format!("{name} to tick"), Duration::from_secs(10), || {
        last_tick(&d.console(name)) > before
    });
    last_tick(&d.console(name))
}

#[test]
fn each_domain_is_a_confined_process_of_its_own() {
    require_kvm();
    let d = TestDaemon::start(&tmpdir("confined"));
    d.ok("POST", "/v1/domains", Some(&mini("a", "tick", "16M")));
    d.ok("POST", "/v1/domains", Some(&mini("b", "tick", "16M")));
    let (a, b) = (d.pid_of("a"), d.pid_of("b"));
    assert_ne!(a, b);
    let daemon = d.child.id();
    for pid in [a, b] {
        assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
        for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            assert_eq!(
                proc_status(pid, caps).as_deref(),
                Some("0000000000000000"),
                "{caps} of {pid}"
            );
        }
        let uid = proc_status(pid, "Uid").unwrap();
        assert!(!uid.starts_with("0\t"), "the domain runs as root: {uid}");
        for ns in ["mnt", "net", "ipc", "uts"] {
            let of = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
            assert_ne!(of(pid), of(daemon), "{ns} namespace shared with the daemon");
        }
        // Its root holds nothing of the host: one read-only tmpfs.
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
        assert_eq!(mounts.lines().count(), 1, "{mounts}");
        assert!(mounts.starts_with("tmpfs / tmpfs ro"), "{mounts}");
    }
    assert_ne!(proc_status(a, "Uid"), proc_status(b, "Uid"), "a user each");
}

#[test]
fn killing_a_domain_process_crashes_that_domain_only() {
    require_kvm();
    let d = TestDaemon::start(&tmpdir("kill-one"));
    d.ok("POST", "/v1/domains", Some(&mini("victim", "tick", "16M")));
    d.ok("POST", "/v1/domains", Some(&mini("other", "tick", "16M")));
    ticking(&d, "other");
    common::send_signal(d.pid_of("victim"), "KILL");
    wait_for("the victim to be crashed", Duration::from_secs(10), || {
        d.ok("GET", "/v1/domains/victim", None)["state"] == "crashed"
    });
    let info = d.ok("GET", "/v1/domains/victim", None);
    assert!(
        info["message"]
            .as_str()
            .is_some_and(|m| m.contains("signal 9")),
        "{info}"
    );
    ticking(&d, "other");
    assert_eq!(d.ok("GET", "/v1/domains/other", None)["state"], "running");
    // The crashed domain starts again, in a new process.
    d.ok("POST", "/v1/domains/victim/start", None);
    ticking(&d, "victim");
}

/// A call waiting on a domain process that dies fails when it dies, not at its timeout.
#[test]
fn a_call_to_a_domain_process_that_dies_fails_at_once() {
    require_kvm();
    let d = TestDaemon::start(&tmpdir("dies-mid-call"));
    d.ok("POST", "/v1/domains", Some(&mini("frozen", "tick", "16M")));
    let pid = d.pid_of("frozen");
    // Stopped, it cannot answer; the pause waits for it.
    common::send_signal(pid, "STOP");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        common::send_signal(pid, "KILL");
    });
    let started = std::time::Instant::now();
    let (status, v) = d.call("POST", "/v1/domains/frozen/pause", None);
    let waited = started.elapsed();
    killer.join().unwrap();
    assert!(status >= 400, "{status} {v}");
    assert!(
        waited < Duration::from_secs(5),
        "the pause waited {waited:?} for a dead process: {v}"
    );
    wait_for("the domain to be crashed", Duration::from_secs(10), || {
        d.ok("GET", "/v1/domains/frozen", None)["state"] == "crashed"
    });
}

/// Asserts that a console holds every tick line whole and in order, from its first tick to its
/// last complete line: no byte was lost or repeated while daemons came and went.
fn assert_ticks_whole(console: &str) {
    let complete = &console[..console.rfind('\n').map_or(0, |end| end + 1)];
    let ticks: Vec<&str> = complete
        .lines()
        .skip_while(|l| !l.starts_with("mini: tick "))
        .collect();
    let first: u64 = ticks
        .first()
        .and_then(|l| l.strip_prefix("mini: tick "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tick line whole: {console:?}"));
    for (i, line) in ticks.iter().enumerate() {
        assert_eq!(
            *line,
            format!("mini: tick {}", first + i as u64),
            "console:\n{console}"
        );
    }
}

#[test]
fn domains_outlive_a_killed_daemon_and_a_new_daemon_attaches_to_them() {
    require_kvm();
    let dir = tmpdir("reattach");
    let d = TestDaemon::start(&dir);
    d.ok("POST", "/v1/domains", Some(&mini("a", "tick", "16M")));
    d.ok("POST", "/v1/domains", Some(&mini("b", "tick", "16M")));
    let (a, b) = (d.pid_of("a"), d.pid_of("b"));
    let seen = ticking(&d, "a");
    d.kill_leaving_domains();
    assert!(alive(a) && alive(b), "a domain died with its daemon");
    // While no daemon is there the guest goes on printing; the new daemon shows it.
    std::thread::sleep(Duration::from_millis(500));
    let d = TestDaemon::start(&dir);
    let list = d.ok("GET", "/v1/domains", None);
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), "running".into()),
            ("b".into(), "running".into())
        ],
        "{list}"
    );
    assert_eq!((d.pid_of("a"), d.pid_of("b")), (a, b), "the same processes");
    let kept = d.console("a");
    assert!(
        last_tick(&kept) > seen,
        "the output printed while no daemon ran is kept: {seen} then {}",
        last_tick(&kept)
    );
    ticking(&d, "a");
    assert_ticks_whole(&d.console("a"));
    d.ok("POST", "/v1/domains/b/pause", None);
    assert_eq!(d.ok("GET", "/v1/domains/b", None)["state"], "paused");
    d.ok("POST", "/v1/domains/b/unpause", None);
    let info = d.ok("GET", "/v1/domains/a", None);
    assert!(
        info["vcpu_stats"][0]["cpu_ns"].as_u64().unwrap() > 0,
        "{info}"
    );
    let metrics = d
        .raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .1;
    assert!(
        metrics.contains("vessel_domain_up{domain=\"b\"} 1"),
        "{metrics}"
    );
    d.ok("POST", "/v1/domains/a/destroy", None);
    wait_for("a's process to end", Duration::from_secs(10), || !alive(a));
    assert!(alive(b));
}

#[test]
fn sigterm_powers_every_domain_off_and_the_daemon_exits_0() {
    require_kvm();
    let mut d = TestDaemon::start_with(&tmpdir("sigterm"), &["--shutdown-timeout", "2"]);
    d.ok(
        "POST",
        "/v1/domains",
        Some(&mini("polite", "button", "16M")),
    );
    d.ok("POST", "/v1/domains", Some(&mini("deaf", "tick", "16M")));
    wait_for(
        "polite to wait for its button",
        Duration::from_secs(10),
        || d.console("polite").contains("waiting for the power button"),
    );
    let (polite, deaf) = (d.pid_of("polite"), d.pid_of("deaf"));
    d.signal("TERM");
    let status = d
        .wait_exit(Duration::from_secs(20))
        .expect("the daemon exits");
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(!alive(polite) && !alive(deaf), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("domain 'polite' is shutoff: the guest powered off"),
        "{log}"
    );
    assert!(
        log.contains("domain 'deaf' did not power off within 2 s: stopping it"),
        "{log}"
    );
}

#[test]
fn sigquit_leaves_the_domains_running_and_autostart_domains_start_with_the_daemon() {
    require_kvm();
    let dir = tmpdir("sigquit");
    let mut d = TestDaemon::start(&dir);
    d.ok("POST", "/v1/domains", Some(&mini("stays", "tick", "16M")));
    let mut later: Value = serde_json::from_str(&mini("later", "tick", "16M")).unwrap();
    later["autostart"] = json!(true);
    d.ok("POST", "/v1/domains?start=false", Some(&later.to_string()));
    let stays = d.pid_of("stays");
    d.signal("QUIT");
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits");
    assert_eq!(status.code(), Some(0));
    assert!(alive(stays), "SIGQUIT stopped a domain");
    d.kill_leaving_domains();
    let d = TestDaemon::start(&dir);
    assert_eq!(d.pid_of("stays"), stays);
    wait_for(
        "the autostart domain to run",
        Duration::from_secs(10),
        || d.ok("GET", "/v1/domains/later", None)["state"] == "running",
    );
    ticking(&d, "later");
}

/// A daemon serving the debugging hooks, running `names` (ticking `mini` guests, each with a
/// read-only disk, which gives it an I/O thread waiting for its queue besides its vCPU) and a
/// `bystander`.
fn hooked_daemon_with(dir: &str, names: &[&str]) -> TestDaemon {
    let d = TestDaemon::start_with(&tmpdir(dir), &["--debug-hooks"]);
    let disk = d.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    for name in names {
        let def = json!({
            "name": name,
            "kernel": common::mini_kernel(),
            "cmdline": "tick",
            "memory": "16M",
            "disk": [format!("path={},readonly=on", disk.display())],
        });
        d.ok("POST", "/v1/domains", Some(&def.to_string()));
    }
    d.ok(
        "POST",
        "/v1/domains",
        Some(&mini("bystander", "tick", "16M")),
    );
    d
}

#[test]
fn a_system_call_outside_a_threads_filter_kills_only_that_domain() {
    require_kvm();
    let d = hooked_daemon_with("seccomp", &["v", "i", "c"]);
    for name in ["v", "i", "c"] {
        assert_eq!(
            proc_status(d.pid_of(name), "Seccomp").as_deref(),
            Some("2"),
            "a filter is installed"
        );
    }
    let (status, _) = d.call(
        "POST",
        "/v1/domains/v/debug/forbidden-call?thread=bogus",
        None,
    );
    assert_eq!(status, 400);
    for (name, thread) in [("v", "vcpu"), ("i", "io"), ("c", "control")] {
        let pid = d.pid_of(name);
        d.ok(
            "POST",
            &format!("/v1/domains/{name}/debug/forbidden-call?thread={thread}"),
            None,
        );
        wait_for(
            &format!("{name} to be killed by its {thread} filter"),
            Duration::from_secs(10),
            || d.ok("GET", &format!("/v1/domains/{name}"), None)["state"] == "crashed",
        );
        let info = d.ok("GET", &format!("/v1/domains/{name}"), None);
        assert!(
            info["message"]
                .as_str()
                .is_some_and(|m| m.contains("signal 31")),
            "{thread}: {info}"
        );
        assert!(!alive(pid));
    }
    ticking(&d, "bystander");
    // Without the flag, the hook is not there.
    let plain = TestDaemon::start(&tmpdir("seccomp-off"));
    plain.ok("POST", "/v1/domains", Some(&mini("x", "tick", "16M")));
    let (status, _) = plain.call("POST", "/v1/domains/x/debug/forbidden-call?thread=io", None);
    assert_eq!(status, 404);
    for hook in ["forbidden-call?thread=bogus", "panic?thread=vcpu"] {
        let (status, _) = plain.call("POST", &format!("/v1/domains/x/debug/{hook}"), None);
        assert_eq!(status, 404, "{hook}");
    }
}

#[test]
fn a_thread_that_panics_crashes_only_its_domain_and_says_which() {
    require_kvm();
    let d = hooked_daemon_with("panic", &["v", "i"]);
    let (status, _) = d.call("POST", "/v1/domains/v/debug/panic?thread=control", None);
    assert_eq!(status, 400);
    for (name, thread, says) in [
        ("v", "vcpu", "vCPU 0 failed"),
        ("i", "io", "the I/O thread failed"),
    ] {
        let pid = d.pid_of(name);
        d.ok(
            "POST",
            &format!("/v1/domains/{name}/debug/panic?thread={thread}"),
            None,
        );
        wait_for(
            &format!("{name} to end crashed after its {thread} thread panicked"),
            Duration::from_secs(20),
            || d.ok("GET", &format!("/v1/domains/{name}"), None)["state"] == "crashed",
        );
        let info = d.ok("GET", &format!("/v1/domains/{name}"), None);
        assert!(
            info["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!(
                    "{says}: the debug hook asked this thread to panic"
                ))),
            "{thread}: {info}"
        );
        wait_for("its process to end", Duration::from_secs(10), || {
            !alive(pid)
        });
        // Where it panicked is in the domain's log.
        let log = std::fs::read_to_string(d.dir.join(format!("state/logs/{name}.log")))
            .unwrap_or_default();
        assert!(
            log.contains("panicked at crates/vmm/src/confinement.rs"),
            "{name}'s log: {log}"
        );
    }
    ticking(&d, "bystander");
}

#[test]
fn each_domain_has_a_control_group_that_goes_with_it() {
    require_kvm();
    let dir = tmpdir("cgroup");
    let d = TestDaemon::start(&dir);
    d.ok("POST", "/v1/domains", Some(&mini("fat", "fattick", "64M")));
    wait_for("the guest to touch 32 MiB", Duration::from_secs(20), || {
        d.console("fat").contains("mini: touched")
    });
    let info = d.ok("GET", "/v1/domains/fat", None);
    let group = &info["cgroup"];
    let path = std::path::PathBuf::from(group["path"].as_str().unwrap_or_else(|| {
        panic!("no control group (this host offers cgroup v1 cpu, cpuacct and memory): {info}")
    }));
    assert!(
        path.ends_with(format!("{}/fat", common::daemon::cgroup_parent(&dir))),
        "{info}"
    );
    let pid = d.pid_of("fat");
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "the domain process is in its group: {procs}"
    );
    assert!(
        group["memory_bytes"].as_u64().unwrap() >= 32 << 20,
        "{info}"
    );
    assert!(group["cpu_ns"].as_u64().unwrap() > 0, "{info}");
    d.ok("POST", "/v1/domains/fat/destroy", None);
    wait_for("the group to go", Duration::from_secs(10), || {
        !path.exists()
    });
}

/// A counter of a switch port, from `GET /v1/net/ports` (0 if there is no such port).
fn port_counter(d: &TestDaemon, port: &str, counter: &str) -> u64 {
    let ports = d.ok("GET", "/v1/net/ports", None);
    ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port)
        .and_then(|p| p["counters"][counter].as_u64())
        .unwrap_or(0)
}

/// A counter of a domain's devices of one kind, summed, from `GET /v1/domains/NAME`.
fn device_counter(d: &TestDaemon, name: &str, kind: &str, counter: &str) -> u64 {
    let info = d.ok("GET", &format!("/v1/domains/{name}"), None);
    info["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|dev| dev["kind"] == kind)
        .map(|dev| dev["counters"][counter].as_u64().unwrap_or(0))
        .sum()
}

/// Issue 11: a domain's switch ports live in the daemon, so a daemon restart takes them away
/// while the domain runs on. The new daemon opens fresh ports for the running domain's
/// `switch=` VIFs and hands them to its devices (a device-control call carrying the port's
/// socket): the frames the guest sends reach the switch again, through the same process.
#[test]
fn a_restarted_daemon_hands_running_domains_new_switch_ports() {
    require_kvm();
    let dir = tmpdir("new-ports");
    let d = TestDaemon::start(&dir);
    let def = json!({
        "name": "hn",
        "kernel": mini_kernel(),
        "cmdline": "hammer",
        "memory": "16M",
        "net": ["switch=vsw0"],
    });
    d.ok("POST", "/v1/domains", Some(&def.to_string()));
    wait_for("the guest to hammer", Duration::from_secs(10), || {
        d.console("hn").contains("mini: hammering 1 queues")
    });
    wait_for("frames on the port", Duration::from_secs(10), || {
        port_counter(&d, "hn-eth0", "rx_frames") > 0
    });
    let pid = d.pid_of("hn");
    d.kill_leaving_domains();
    let d = TestDaemon::start(&dir);
    assert_eq!(d.pid_of("hn"), pid, "the same process, never restarted");
    wait_for(
        "frames on the new daemon's port",
        Duration::from_secs(10),
        || port_counter(&d, "hn-eth0", "rx_frames") > 1000,
    );
    // The VIF sends into the new port: its frames are taken, not dropped.
    let sent = |d: &TestDaemon| device_counter(d, "hn", "net", "tx_frames");
    let before = sent(&d);
    wait_for("the VIF to keep sending", Duration::from_secs(10), || {
        sent(&d) > before + 1000
    });
    assert!(
        d.log()
            .contains("domain 'hn': eth0 is on port hn-eth0 again"),
        "{}",
        d.log()
    );
    // A reboot builds the next machine on the new port too (the domain process kept it).
    d.ok("POST", "/v1/domains/hn/reset", None);
    wait_for("the second boot", Duration::from_secs(10), || {
        d.ok("GET", "/v1/domains/hn", None)["boots"] == 2
    });
    let before = port_counter(&d, "hn-eth0", "rx_frames");
    wait_for(
        "frames on the port after the reboot",
        Duration::from_secs(10),
        || port_counter(&d, "hn-eth0", "rx_frames") > before + 1000,
    );
    d.ok("POST", "/v1/domains/hn/destroy", None);
    wait_for("the port to go", Duration::from_secs(10), || {
        !d.ok("GET", "/v1/net/ports", None)
            .to_string()
            .contains("hn-eth0")
    });
}

/// Issue 11: pausing a domain quiesces its devices. The guest keeps its disk's ring full and
/// the disk is rate-limited, so the device always has requests waiting: while the domain is
/// paused the disk completes none (no used-ring progress), and once it runs again it
/// completes them at its rate.
#[test]
fn a_paused_domain_makes_no_device_progress() {
    require_kvm();
    let dir = tmpdir("quiesce");
    let d = TestDaemon::start(&dir);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    let def = json!({
        "name": "hq",
        "kernel": mini_kernel(),
        "cmdline": "hammer",
        "memory": "16M",
        "disk": [format!("path={},iops=40", disk.display())],
    });
    d.ok("POST", "/v1/domains", Some(&def.to_string()));
    wait_for("the guest to hammer", Duration::from_secs(10), || {
        d.console("hq").contains("mini: hammering 1 queues")
    });
    let reads = |d: &TestDaemon| device_counter(d, "hq", "block", "read_ops");
    let start = reads(&d);
    wait_for("reads to complete", Duration::from_secs(10), || {
        reads(&d) > start + 10
    });
    d.ok("POST", "/v1/domains/hq/pause", None);
    let paused = reads(&d);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        reads(&d),
        paused,
        "the disk completed requests while the domain was paused"
    );
    d.ok("POST", "/v1/domains/hq/unpause", None);
    wait_for(
        "reads to go on after the unpause",
        Duration::from_secs(10),
        || reads(&d) > paused + 10,
    );
    d.ok("POST", "/v1/domains/hq/destroy", None);
}

/// Two confined domains linked by sockets right in /tmp (the first place the sandbox would
/// assemble a root in, which must not hide them): the frames one sends reach the other.
#[test]
fn confined_domains_reach_each_other_through_socket_links_in_tmp() {
    require_kvm();
    let d = TestDaemon::start(&tmpdir("socket-links"));
    let tag = std::process::id();
    let path = |n: &str| std::env::temp_dir().join(format!("vessel-test-{n}-{tag}.sock"));
    let (a, b) = (path("a"), path("b"));
    let def = |name: &str, scenario: &str, own: &std::path::Path, peer: &std::path::Path| {
        json!({
            "name": name,
            "kernel": mini_kernel(),
            "cmdline": scenario,
            "memory": "16M",
            "net": [format!("socket={},peer={}", own.display(), peer.display())],
        })
        .to_string()
    };
    let started = std::time::Instant::now();
    d.ok("POST", "/v1/domains", Some(&def("b", "tick", &b, &a)));
    d.ok("POST", "/v1/domains", Some(&def("a", "hammer", &a, &b)));
    let counter = |name: &str, key: &str| {
        let info = d.ok("GET", &format!("/v1/domains/{name}"), None);
        info["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|dev| dev["kind"] == "net")
            .map(|dev| dev["counters"][key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    wait_for("b to take frames from a", Duration::from_secs(20), || {
        counter("b", "rx_pending") > 0
    });
    assert!(counter("a", "tx_frames") > 0);
    eprintln!(
        "socket links: frames through after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    d.ok("POST", "/v1/domains/a/destroy", None);
    d.ok("POST", "/v1/domains/b/destroy", None);
    assert!(!a.exists() && !b.exists(), "the socket files stay");
}
