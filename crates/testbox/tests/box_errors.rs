//! The host box's own plumbing: step results (exit codes, output without a final newline,
//! stderr) and the timeout path. No L2 guest: a run takes a few seconds of L1 boot.

use std::time::Duration;

use testbox::{Assets, BoxError, HostBox};

fn assets() -> Assets {
    match Assets::locate() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn step_results_and_timeout() {
    let assets = assets();

    let run = HostBox::new(&assets)
        .cpus(1)
        .memory_mib(512)
        .timeout(Duration::from_secs(120))
        .step("partial line", "printf partial; exit 7")
        .step("stderr", "echo to-stdout; echo to-stderr >&2")
        .step("empty", "true")
        .step("modules", "lsmod | cut -d' ' -f1 | sort | tr '\\n' ' '")
        .run();
    let run = match run {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["partial line", "stderr", "empty", "modules"]);
    let p = run.step("partial line");
    assert_eq!((p.exit_code, p.output.as_str()), (7, "partial\n"));
    let e = run.step_ok("stderr");
    assert_eq!(e.output, "to-stdout\nto-stderr\n");
    assert_eq!(run.step_ok("empty").output, "");
    let m = run.step_ok("modules");
    for module in ["irqbypass", "kvm", "kvm_amd"] {
        assert!(
            m.output.split_whitespace().any(|w| w == module),
            "{module} not loaded: {}",
            m.output
        );
    }
    eprintln!("plain box (1 CPU, no L2): {:.1} s", run.wall.as_secs_f64());

    let err = HostBox::new(&assets)
        .cpus(1)
        .memory_mib(512)
        .timeout(Duration::from_secs(15))
        .step("hang", "echo about-to-hang; sleep 600")
        .run()
        .err();
    match err {
        Some(BoxError::Run { reason, console }) => {
            assert!(reason.contains("timed out"), "{reason}");
            assert!(
                console.contains("about-to-hang"),
                "console so far:\n{console}"
            );
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
}

#[test]
fn an_l1_soft_lockup_stops_the_box_at_once_and_is_retried_once() {
    let assets = assets();
    let started = std::time::Instant::now();
    // The step prints what the L1 kernel prints on a soft lockup, then would wait far longer.
    let run = HostBox::new(&assets)
        .cpus(1)
        .memory_mib(512)
        .timeout(Duration::from_secs(300))
        .step(
            "lockup",
            "echo 'watchdog: BUG: soft lockup - CPU#0 stuck for 23s!'; sleep 250",
        )
        .run();
    match run {
        Err(BoxError::Run { reason, .. }) => {
            assert!(reason.contains("soft lockup"), "{reason}");
        }
        other => panic!("expected a lockup error, got {other:?}"),
    }
    // Two short boxes, not two timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_l1_kernel_panic_resets_the_box_at_once_and_is_retried() {
    let assets = assets();
    let started = std::time::Instant::now();
    // L1's kernel panics (as under TCG it now and then does by itself), then the step would
    // wait far longer: each boot ends at the panic, not at the timeout.
    let run = HostBox::new(&assets)
        .cpus(1)
        .memory_mib(512)
        .timeout(Duration::from_secs(300))
        .step("panic", "echo c > /proc/sysrq-trigger; sleep 250")
        .run();
    match run {
        Err(BoxError::Run { reason, .. }) => {
            assert!(
                reason.starts_with("QEMU exited (exit status: 0)")
                    && reason.contains("Kernel panic - not syncing"),
                "{reason}"
            );
        }
        other => panic!("expected a reset error, got {other:?}"),
    }
    // Three short boxes, not a timeout.
    assert!(
        started.elapsed() < Duration::from_secs(200),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_l1_that_stops_is_stopped_at_its_heartbeat_and_retried() {
    let assets = assets();
    let started = std::time::Instant::now();
    // The step stops L1's heartbeat, as a wedged L1 kernel would, then would wait far longer:
    // each boot ends when the heartbeat has been missing for 20 s, not at the timeout.
    let run = HostBox::new(&assets)
        .cpus(1)
        .memory_mib(512)
        .timeout(Duration::from_secs(300))
        .heartbeat_max(Duration::from_secs(20))
        .step(
            "stop",
            "kill -STOP $(cat /run/box-heartbeat.pid) && echo stopped; sleep 250",
        )
        .run();
    match run {
        Err(BoxError::Run { reason, console }) => {
            assert!(reason.starts_with("L1 stopped"), "{reason}");
            assert!(console.contains("stopped"), "{console}");
            assert!(!console.contains("@@HB"), "heartbeats left in:\n{console}");
        }
        other => panic!("expected a stop error, got {other:?}"),
    }
    // Three short boxes, not a timeout.
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "{:?}",
        started.elapsed()
    );
}
