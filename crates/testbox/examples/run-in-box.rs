//! Runs one command inside the host box with a Vessel binary packed at `/bin/vessel`, showing
//! the box console live, and exits with the command's status.
//!
//! `cargo run -p testbox --example run-in-box -- VESSEL_BINARY [ARGS...]` runs
//! `vessel ARGS...` in L1, where `/assets/bzImage`, `/assets/vmlinux` and
//! `/assets/initramfs.cpio.gz` are the guest assets. This is how the README's first command
//! boots a guest on a host whose own KVM cannot (kvm_pvm).

use std::process::ExitCode;
use std::time::Duration;

use testbox::{Assets, HostBox};

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(vessel) = args.next() else {
        eprintln!("usage: run-in-box VESSEL_BINARY [VESSEL ARGS...]");
        return ExitCode::from(2);
    };
    let command: Vec<String> = std::iter::once("vessel".to_string())
        .chain(args.map(|a| shell_quote(&a)))
        .collect();
    let assets = match Assets::locate() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("run-in-box: {e}");
            return ExitCode::from(1);
        }
    };
    // Show the console while it runs: that is the point of a demo.
    std::env::set_var("VESSEL_BOX_VERBOSE", "1");
    let run = HostBox::new(&assets)
        .binary(&vessel, "/bin/vessel")
        .timeout(Duration::from_secs(600))
        .step("vessel", &format!("{} </dev/null", command.join(" ")))
        .run();
    match run {
        Ok(run) => {
            let step = run.step("vessel");
            eprintln!(
                "run-in-box: vessel exited with status {} after {:.1} s of box time",
                step.exit_code, step.seconds
            );
            ExitCode::from(u8::try_from(step.exit_code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("run-in-box: {e}");
            ExitCode::from(1)
        }
    }
}
