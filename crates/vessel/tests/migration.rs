//! Live migration between two daemons (`vessel migrate`, `vessel migrate-receive`, issue 14),
//! on this machine's `/dev/kvm` with the `mini` test guest: the guest moves while it runs and
//! goes on from where it was on the receiver (its tick counter continues, it does not boot
//! again), the sender forgets it; and every failure (nobody listening, a receiver that
//! refuses, a receiver killed mid-way) leaves it running on the sender.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{last_tick, mini, tmpdir, wait_for, TestDaemon};
use common::{kill_domain_processes_under, require_kvm, VESSEL};
use serde_json::Value;

/// A TCP port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The token the tests' receivers are given.
const TOKEN: &str = "t0ken";

/// `vessel migrate-receive tcp:127.0.0.1:PORT --token TOKEN ARGS` against `d`, in the
/// background.
fn receive(d: &TestDaemon, port: u16, args: &[&str]) -> Child {
    Command::new(VESSEL)
        .args([
            "migrate-receive",
            &format!("tcp:127.0.0.1:{port}"),
            "--token",
            TOKEN,
        ])
        .args(args)
        .env("VESSEL_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `vessel migrate NAME tcp:127.0.0.1:PORT --token TOKEN ARGS` against `d`, retried while
/// the receiver is not listening yet (at most 10 s): its exit code, stdout and stderr.
fn migrate(d: &TestDaemon, name: &str, port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let to = format!("tcp:127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = vec!["migrate", name, to.as_str(), "--token", TOKEN];
        all.extend_from_slice(args);
        let (code, out, err) = d.cli(&all);
        if code == Some(0) || !err.contains("cannot connect") || Instant::now() > deadline {
            return (code, out, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finished(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_running_domain_moves_to_another_daemon_and_runs_on_there() {
    require_kvm();
    let (dir_a, dir_b) = (tmpdir("migrate-a"), tmpdir("migrate-b"));
    let a = TestDaemon::start(&dir_a);
    let b = TestDaemon::start(&dir_b);
    // fattick writes 32 MiB of guest RAM, then ticks forever.
    a.ok("POST", "/v1/domains", Some(&mini("t", "fattick", "64M")));
    wait_for("the guest to tick", Duration::from_secs(30), || {
        last_tick(&a.console("t")) >= 3
    });

    // Nobody listens: the domain runs on.
    let port = free_port();
    let to = format!("tcp:127.0.0.1:{port}");
    let (code, _, err) = a.cli(&["migrate", "t", &to, "--token", TOKEN]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(a.state("t"), "running");
    let (code, _, err) = a.cli(&["migrate", "t", "127.0.0.1:1", "--token", TOKEN]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not tcp:HOST:PORT"), "{err}");
    let (code, _, err) = a.cli(&["migrate", "t", &to, "--token", "two words"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("token"), "{err}");

    // A receiver that refuses it (a domain of that name exists there) says why, and the
    // domain runs on where it was.
    b.ok("POST", "/v1/domains", Some(&mini("t", "tick", "16M")));
    let receiver = receive(&b, port, &[]);
    let (code, _, err) = migrate(&a, "t", port, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("exists"), "{err}");
    let (code, out) = finished(receiver);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(a.state("t"), "running");
    let tick = last_tick(&a.console("t"));
    wait_for("the guest to tick on", Duration::from_secs(30), || {
        last_tick(&a.console("t")) > tick + 1
    });
    b.ok("POST", "/v1/domains/t/destroy", None);
    b.ok("DELETE", "/v1/domains/t", None);

    // A sender without the receiver's token is refused, and the receiver waits on.
    let moved_at = last_tick(&a.console("t"));
    let port = free_port();
    let receiver = receive(&b, port, &[]);
    // (b awaited one migration before: the one it refused.)
    wait_for("the receiver to listen", Duration::from_secs(20), || {
        b.log().matches("awaiting a migration").count() == 2
    });
    let to = format!("tcp:127.0.0.1:{port}");
    let (code, _, err) = a.cli(&["migrate", "t", &to, "--token", "not-it"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not the migration's token"), "{err}");
    assert_eq!(a.state("t"), "running");

    // The migration.
    let (code, out, err) = migrate(&a, "t", port, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    eprintln!("{out}");
    assert!(out.starts_with("domain 't' migrated to "), "{out}");
    let (code, received) = finished(receiver);
    assert_eq!(code, Some(0), "{received}");
    assert!(received.contains("domain 't' (id "), "{received}");
    // The sender forgot it; the receiver runs it, from where it was.
    let listed = a.ok("GET", "/v1/domains", None);
    assert!(
        listed.as_array().unwrap().iter().all(|v| v["name"] != "t"),
        "the sender still lists it: {listed}"
    );
    assert_eq!(b.state("t"), "running");
    wait_for(
        "the guest to tick on the receiver",
        Duration::from_secs(30),
        || last_tick(&b.console("t")) > moved_at + 2,
    );
    let there = b.console("t");
    assert!(
        !there.contains("mini: ticking") && !there.contains("mini: touched"),
        "the migrated guest booted again:\n{there}"
    );
    let first: u64 = there
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mini: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tick on the receiver:\n{there}"));
    assert!(
        first + 1 >= moved_at,
        "the counter went from {moved_at} on the sender to {first} on the receiver"
    );
    let report: Vec<&str> = out.split_whitespace().collect();
    let downtime: u64 = report
        .iter()
        .position(|w| *w == "downtime")
        .and_then(|i| report[i + 1].parse().ok())
        .unwrap_or_else(|| panic!("no downtime in {out}"));
    assert!(downtime < 2000, "{out}");

    // Back again, slowly (1 MiB/s for 32 MiB), with the receiver's domain process killed
    // mid-way: the domain runs on where it was.
    let port = free_port();
    let receiver = receive(&a, port, &[]);
    wait_for("the receiver to listen", Duration::from_secs(20), || {
        a.log().contains("awaiting a migration")
    });
    let migrating = {
        let socket = b.socket.clone();
        std::thread::spawn(move || {
            Command::new(VESSEL)
                .args([
                    "migrate",
                    "t",
                    &format!("tcp:127.0.0.1:{port}"),
                    "--token",
                    TOKEN,
                    "--bandwidth",
                    "1",
                ])
                .env("VESSEL_SOCKET", socket)
                .output()
                .unwrap()
        })
    };
    wait_for(
        "the receiver's domain process",
        Duration::from_secs(20),
        || a.log().contains("receiving a migration"),
    );
    // Long enough for two progress lines or more (the sender reports every 2 MiB: 2 s here).
    std::thread::sleep(Duration::from_secs(5));
    assert!(kill_domain_processes_under(&dir_a) >= 1);
    let out = migrating.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    eprintln!("{err}");
    // Its progress lines while the first round went (the sender reports every 2 MiB, 2 s
    // here; the command prints at most one line a second).
    let under_way: Vec<f64> = err
        .lines()
        .filter_map(|l| l.strip_prefix("migrating 't': round 1 under way, "))
        .filter_map(|l| l.strip_suffix(" MiB sent")?.parse().ok())
        .collect();
    assert!(
        under_way.len() >= 2
            && under_way.windows(2).all(|w| w[0] <= w[1])
            && under_way[0] < under_way[under_way.len() - 1],
        "{err}"
    );
    let (code, received) = finished(receiver);
    assert_eq!(code, Some(1), "{received}");
    assert_eq!(b.state("t"), "running");
    let tick = last_tick(&b.console("t"));
    wait_for(
        "the guest to tick on after",
        Duration::from_secs(30),
        || last_tick(&b.console("t")) > tick + 1,
    );
    // The receiver that failed keeps nothing of it.
    let listed: Value = a.ok("GET", "/v1/domains", None);
    assert!(
        listed.as_array().unwrap().iter().all(|v| v["name"] != "t"),
        "the receiver kept a definition: {listed}"
    );

    // A paused domain arrives paused, and runs on when unpaused.
    b.ok("POST", "/v1/domains/t/pause", None);
    let port = free_port();
    let receiver = receive(&a, port, &[]);
    let (code, out, err) = migrate(&b, "t", port, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, received) = finished(receiver);
    assert_eq!(code, Some(0), "{received}");
    assert!(received.contains("domain 't' (id "), "{received}");
    wait_for(
        "the domain to be paused on arrival",
        Duration::from_secs(10),
        || a.state("t") == "paused",
    );
    let still = last_tick(&a.console("t"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(last_tick(&a.console("t")), still, "a paused domain ticked");
    a.ok("POST", "/v1/domains/t/unpause", None);
    wait_for(
        "the guest to tick after the unpause",
        Duration::from_secs(30),
        || last_tick(&a.console("t")) > tick + 2,
    );
}
