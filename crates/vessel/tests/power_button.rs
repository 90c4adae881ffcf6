//! Guest-cooperative shutdown with a real Linux guest in the host box: SIGTERM to `vessel run`
//! presses the ACPI power button (a Generic Event Device whose `_EVT` notifies a `PNP0C0C`
//! button). The guest's own drivers and daemons act on it: Linux's GED and button drivers turn
//! it into a KEY_POWER press, busybox acpid runs the guest's power-button action, `poweroff`
//! asks init, and init shuts down in order and powers off through ACPI S5. A guest that ignores
//! the button is stopped once `--shutdown-timeout` has gone by.
//!
//! L1 reacts to the guest's own output (no timed polling on L1's clock, which TCG makes slow
//! and irregular): SIGTERM goes to Vessel the moment the guest says it is ready.

mod boxed;

use boxed::box_with_vessel;

/// A step that boots the guest with `guest` as its command and `flags` for `vessel run`, sends
/// Vessel SIGTERM as soon as the guest prints a line starting with `ready`, and prints
/// `VESSEL-RC=N`, Vessel's exit status. The guest command may hold no quotes.
fn sigterm_step(flags: &str, guest: &str, ready: &str) -> String {
    let vessel = format!(
        "vessel run --kernel /assets/bzImage --initrd /assets/initramfs.cpio.gz --memory 256M \
         {flags} --cmdline 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null"
    );
    format!(
        "({vessel}; echo VESSEL-RC=$?) 2>&1 | while read -r line; do echo \"$line\"; \
         case \"$line\" in {ready}*) kill -TERM $(pidof vessel); echo L1-SENT-SIGTERM;; esac; done"
    )
}

#[test]
fn sigterm_powers_off_a_guest_that_handles_the_power_button() {
    // The generous timeout is for TCG: the guest needs a few seconds of its time to shut down.
    let handled = sigterm_step(
        "--shutdown-timeout 300",
        "echo POWER-READY; sleep 600; echo NOT-INTERRUPTED",
        "POWER-READY",
    );
    // The guest stops its acpid: the button press reaches nobody who acts on it.
    let ignored = sigterm_step(
        "--shutdown-timeout 5",
        "kill $(cat /run/acpid.pid); echo ACPID-STOPPED; sleep 600; echo NOT-INTERRUPTED",
        "ACPID-STOPPED",
    );
    let run = box_with_vessel(900)
        .step("handled", &handled)
        .step("ignored", &ignored)
        .run()
        .unwrap_or_else(|e| panic!("host box failed: {e}"));

    let step = run.step("handled");
    let out = &step.output;
    eprintln!("power_button: handled step {:.1} s in L1", step.seconds);
    assert!(out.contains("L1-SENT-SIGTERM"), "{out}");
    assert!(
        out.contains("SIGTERM: pressed the guest's power button"),
        "Vessel says what it did:\n{out}"
    );
    // The guest's own path, in order: acpid's action, init's orderly shutdown, the kernel's
    // power-off.
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("the guest printed no {needle:?}:\n{out}"))
    };
    assert!(at("VESSEL-GUEST-POWER-BUTTON") < at("init: power-off requested"));
    assert!(at("init: power-off requested") < at("VESSEL-GUEST-SHUTDOWN"));
    assert!(
        !out.contains("NOT-INTERRUPTED") && !out.contains("VESSEL-CMD-EXIT"),
        "init stopped the guest's command without waiting for it:\n{out}"
    );
    assert!(
        out.contains("VESSEL-RC=0"),
        "Vessel exits 0 when the guest powers off:\n{out}"
    );

    let step = run.step("ignored");
    let out = &step.output;
    eprintln!("power_button: ignored step {:.1} s in L1", step.seconds);
    assert!(out.contains("L1-SENT-SIGTERM"), "{out}");
    assert!(
        !out.contains("VESSEL-GUEST-POWER-BUTTON") && !out.contains("VESSEL-GUEST-SHUTDOWN"),
        "a guest without acpid ignores the button:\n{out}"
    );
    assert!(
        out.contains("the guest did not power off within 5 s of the power button"),
        "Vessel says why it stopped the domain:\n{out}"
    );
    assert!(out.contains("VESSEL-RC=1"), "{out}");
}
