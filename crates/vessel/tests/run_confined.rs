//! `vessel run` confines its domain as the daemon confines its own (issue 11), with the `mini`
//! guest on /dev/kvm: the domain runs in a child process with a user of its own, no
//! capabilities, `no_new_privs`, a seccomp filter and namespaces of its own; signals sent to
//! `vessel run` reach it; a call outside a thread's filter kills the domain, and `vessel run`
//! says so, restores what it holds and removes its socket link's file; killing `vessel run`
//! kills its domain; without root it confines what it can.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    alive, children, mini_kernel, proc_status, require_kvm, require_root, run_command_reacting,
    send_signal, Finished, TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `vessel run --kernel MINI --cmdline SCENARIO ARGS`, under `prefix` (a command that execs
/// it, such as setpriv) if given; `react` sees the console so far, `vessel run`'s pid and its
/// domain's pid (once it has one), and returns true to kill `vessel run`.
fn run_mini(
    prefix: &[&str],
    scenario: &str,
    args: &[&str],
    react: &mut dyn FnMut(&str, u32, Option<u32>) -> bool,
) -> Finished {
    require_kvm();
    let kernel = mini_kernel();
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(common::VESSEL);
            c
        }
        None => Command::new(common::VESSEL),
    };
    cmd.args([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        scenario,
    ])
    .args(args);
    run_command_reacting(cmd, TIMEOUT, &mut |out, pid| {
        let domain = children(pid).first().copied();
        react(out, pid, domain)
    })
}

/// Asserts what every confined domain process shows, whoever runs it.
fn assert_confined(pid: u32) {
    assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(proc_status(pid, "Seccomp").as_deref(), Some("2"));
    for caps in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            proc_status(pid, caps).as_deref(),
            Some("0000000000000000"),
            "{caps} of {pid}"
        );
    }
}

#[test]
fn run_confines_its_domain_as_the_daemon_confines_its_own() {
    require_root();
    let mut seen = None;
    let run = run_mini(&[], "button", &[], &mut |out, pid, domain| {
        if seen.is_none() && out.contains("waiting for the power button") {
            let domain = domain.expect("vessel run has no child process");
            assert_confined(domain);
            assert_eq!(
                proc_status(domain, "CapBnd").as_deref(),
                Some("0000000000000000")
            );
            // Its own user, from the run range, by its pid.
            let uid = proc_status(domain, "Uid").unwrap();
            let want = 1_000_000 + domain;
            assert_eq!(uid, format!("{want}\t{want}\t{want}\t{want}"));
            for ns in ["mnt", "net", "ipc", "uts"] {
                let of = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
                assert_ne!(of(domain), of(pid), "{ns} namespace shared with vessel run");
            }
            let mounts = std::fs::read_to_string(format!("/proc/{domain}/mounts")).unwrap();
            assert_eq!(mounts.lines().count(), 1, "{mounts}");
            assert!(mounts.starts_with("tmpfs / tmpfs ro"), "{mounts}");
            // vessel run itself is what holds the terminal and the files: not confined.
            assert_eq!(proc_status(pid, "Seccomp").as_deref(), Some("0"));
            seen = Some(domain);
            // A signal sent to vessel run reaches the domain: its power button.
            send_signal(pid, "TERM");
        }
        false
    });
    run.assert_code(0);
    assert!(seen.is_some(), "the guest never waited:\n{}", run.report());
    assert!(
        run.stdout.contains("mini: power button pressed"),
        "{}",
        run.report()
    );
}

#[test]
fn one_signal_to_both_processes_presses_the_power_button_once() {
    // `kill $(pidof vessel)` signals vessel run and its domain's process alike: the domain takes
    // the one its parent passes on and leaves its own, so the guest powers off in order instead
    // of being stopped by "a second signal".
    let mut sent = false;
    let run = run_mini(&[], "button", &[], &mut |out, pid, domain| {
        if !sent && out.contains("waiting for the power button") {
            let domain = domain.expect("vessel run has no child process");
            send_signal(domain, "TERM");
            send_signal(pid, "TERM");
            sent = true;
        }
        false
    });
    run.assert_code(0);
    assert!(sent, "the guest never waited:\n{}", run.report());
    assert!(
        run.stdout.contains("mini: power button pressed"),
        "{}",
        run.report()
    );
    assert!(!run.stderr.contains("again"), "{}", run.report());
    assert!(
        run.stderr.contains("is left to `vessel run`"),
        "{}",
        run.report()
    );
}

#[test]
fn a_call_outside_a_threads_filter_ends_the_run_with_a_clear_error() {
    for thread in ["vcpu", "io", "control"] {
        let dir = TempDir::new(&format!("forbidden-{thread}"));
        let own = dir.path().join("own.sock");
        let net = format!(
            "socket={},peer={}",
            own.display(),
            dir.path().join("peer.sock").display()
        );
        let run = run_mini(
            &[],
            "tick",
            &["--net", &net, "--debug-forbidden-call", thread],
            &mut |_, _, _| false,
        );
        run.assert_one_line_error(&[
            "the domain's process was killed by a system call its seccomp filter does not allow",
            "SIGSYS",
        ]);
        assert!(
            !own.exists(),
            "{thread}: the socket link's file is left behind"
        );
    }
}

#[test]
fn a_socket_links_file_goes_when_the_run_ends() {
    let dir = TempDir::new("run-socket-file");
    let own = dir.path().join("own.sock");
    let net = format!(
        "socket={},peer={}",
        own.display(),
        dir.path().join("peer.sock").display()
    );
    let run = run_mini(&[], "hello", &["--net", &net], &mut |_, _, _| false);
    run.assert_code(0);
    assert!(run.stdout.contains("mini: cpl3 sum("), "{}", run.report());
    assert!(!own.exists(), "the socket link's file is left behind");
}

#[test]
fn killing_vessel_run_kills_its_domain() {
    let mut domain = None;
    let run = run_mini(&[], "tick", &[], &mut |out, pid, child| {
        if domain.is_none() && out.contains("mini: tick") {
            domain = child;
            send_signal(pid, "KILL");
        }
        false
    });
    assert!(run.code().is_none(), "{}", run.report());
    let domain = domain.expect("vessel run had no domain process");
    let start = Instant::now();
    while alive(domain) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(domain), "the domain outlived vessel run");
}

#[test]
fn without_root_the_domain_is_confined_as_far_as_a_user_can() {
    require_root();
    // A user other than root who may still open /dev/kvm and the kernel (an ambient
    // CAP_DAC_OVERRIDE), as one in the kvm group could.
    let prefix = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
    ];
    let mut seen = false;
    let run = run_mini(&prefix, "button", &[], &mut |out, pid, domain| {
        if !seen && out.contains("waiting for the power button") {
            let domain = domain.expect("vessel run has no child process");
            assert_confined(domain);
            assert!(proc_status(domain, "Uid").unwrap().starts_with("65534\t"));
            seen = true;
            send_signal(pid, "TERM");
        }
        false
    });
    run.assert_code(0);
    assert!(seen, "the guest never waited:\n{}", run.report());
    assert!(
        run.stderr.contains("not root"),
        "no word on the weaker confinement:\n{}",
        run.report()
    );
}

/// A socket link whose peer is right in /tmp (where the sandbox might have assembled its root)
/// carries the guest's frames out of the confined domain.
#[test]
fn frames_leave_a_confined_domain_through_a_socket_link_in_tmp() {
    use std::os::unix::fs::PermissionsExt;
    let tag = std::process::id();
    let peer = std::env::temp_dir().join(format!("vessel-test-peer-{tag}.sock"));
    let own = std::env::temp_dir().join(format!("vessel-test-own-{tag}.sock"));
    let _ = std::fs::remove_file(&peer);
    let receiver = std::os::unix::net::UnixDatagram::bind(&peer).unwrap();
    std::fs::set_permissions(&peer, std::fs::Permissions::from_mode(0o666)).unwrap();
    receiver.set_nonblocking(true).unwrap();
    let net = format!("socket={},peer={}", own.display(), peer.display());
    let mut frames = 0;
    let mut buf = [0u8; 2048];
    let run = run_mini(&[], "hammer", &["--net", &net], &mut |_, _, _| {
        while receiver.recv(&mut buf).is_ok() {
            frames += 1;
        }
        frames >= 10
    });
    let _ = std::fs::remove_file(&peer);
    assert!(
        frames >= 10,
        "{frames} frames came out of the domain:\n{}",
        run.report()
    );
    // Killed by the test once the frames came; its parent went with the kill, so the file is
    // left: remove it.
    let _ = std::fs::remove_file(&own);
}

/// A domain whose VIF holds frames its guest never took stops cleanly when asked: freeing them
/// at the end makes the C library's allocator look at /proc (which a confined process has
/// not), and that is answered, not punished with a seccomp kill.
#[test]
fn a_domain_holding_undelivered_frames_stops_cleanly() {
    let tag = std::process::id();
    let peer = std::env::temp_dir().join(format!("vessel-test-sender-{tag}.sock"));
    let own = std::env::temp_dir().join(format!("vessel-test-held-{tag}.sock"));
    let _ = std::fs::remove_file(&peer);
    let sender = std::os::unix::net::UnixDatagram::bind(&peer).unwrap();
    sender.set_nonblocking(true).unwrap();
    let net = format!("socket={},peer={}", own.display(), peer.display());
    let frame = [0x5au8; 1514];
    let (mut sent, mut signalled) = (0, 0);
    let run = run_mini(&[], "tick", &["--net", &net], &mut |out, pid, _| {
        if own.exists() && out.contains("mini: tick 1") {
            while sent < 400 && sender.send_to(&frame, &own).is_ok() {
                sent += 1;
            }
            if sent >= 250 && signalled < 2 {
                // The first presses the button (ignored by `tick`), the second stops it.
                send_signal(pid, "TERM");
                signalled += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        false
    });
    let _ = std::fs::remove_file(&peer);
    assert!(sent >= 250, "only {sent} frames went in:\n{}", run.report());
    run.assert_code(1);
    assert!(
        run.stderr.contains("SIGTERM again: stopped the domain"),
        "{}",
        run.report()
    );
    assert!(!run.stderr.contains("SIGSYS"), "{}", run.report());
}
