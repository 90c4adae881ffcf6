//! `vessel run`: one domain in the foreground.

use std::io::{self, Read};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vmm::{ConsoleInput, DomainSpec, Outcome, RunHandle};

/// The console escape: Ctrl-A followed by `x` stops the domain.
const ESCAPE: u8 = 0x01;

/// The raw-mode terminal, if standard input is one; taken (restored) on the way out.
type SharedTerminal = Arc<Mutex<Option<hv::RawTerminal>>>;

/// `vessel run`: a domain's specification (the same flags as `vessel create`) and how long a
/// shutdown may take.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    spec: DomainSpec,
    /// Seconds the guest has to power off once SIGTERM or SIGINT has pressed its ACPI power
    /// button; then the domain is stopped at once (exit status 1). 0: no limit.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut spec = args.spec;
    // What needs neither files nor KVM first: a bad value is named before any file is read.
    spec.validate()?;
    // Once, before the first boot: a reboot reopens each disk in the format found now.
    vmm::pin_disk_formats(&mut spec)?;
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = hv::TerminationSignals::block().context("cannot block SIGTERM and SIGINT")?;
    let raw = hv::RawTerminal::enable().context("cannot set the terminal to raw mode")?;
    let terminal: SharedTerminal = Arc::new(Mutex::new(raw));
    let input = ConsoleInput::default();
    spawn_stdin_forwarder(input.clone(), terminal.clone());
    let handle = RunHandle::default();
    let grace = (args.shutdown_timeout > 0).then(|| Duration::from_secs(args.shutdown_timeout));
    let why_destroyed = spawn_shutdown_on_signal(signals, handle.clone(), grace);
    let outcome = vmm::run_with(&spec, Arc::new(Mutex::new(io::stdout())), &input, &handle);
    drop(terminal.lock().unwrap_or_else(|e| e.into_inner()).take());
    match outcome? {
        Outcome::PoweredOff => Ok(ExitCode::SUCCESS),
        Outcome::Rebooted => {
            eprintln!("vessel: guest rebooted (--on-reboot exit)");
            Ok(ExitCode::from(2))
        }
        Outcome::Destroyed => {
            let why = why_destroyed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            eprintln!(
                "vessel: {}",
                why.as_deref().unwrap_or("the domain was stopped")
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Guest-cooperative shutdown: the first SIGTERM or SIGINT presses the guest's ACPI power
/// button (a guest that handles it powers off, and `vessel run` exits 0); a second one, or
/// `grace` going by without a power-off, stops the domain at once. Returns where the reason for
/// that stop is left, for the exit message.
fn spawn_shutdown_on_signal(
    signals: hv::TerminationSignals,
    handle: RunHandle,
    grace: Option<Duration>,
) -> Arc<Mutex<Option<String>>> {
    let why = Arc::new(Mutex::new(None));
    let why2 = why.clone();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let first = match signals.wait(None) {
                Ok(Some(signal)) => signal,
                Ok(None) => return,
                Err(e) => {
                    eprintln!("vessel: warning: SIGTERM and SIGINT will be ignored: {e}");
                    return;
                }
            };
            let limit = grace.map_or("no time limit".into(), |g| {
                format!("{} s to power off", g.as_secs())
            });
            match handle.press_power_button() {
                Ok(()) => eprintln!(
                    "vessel: {first}: pressed the guest's power button ({limit}; \
                     a second signal stops it at once)"
                ),
                Err(e) => eprintln!("vessel: {first}: {e}"),
            }
            let reason = match signals.wait(grace) {
                Ok(Some(second)) => format!(
                    "{second} again: stopped the domain without waiting for the guest to power off"
                ),
                Ok(None) => format!(
                    "the guest did not power off within {} s of the power button \
                     (--shutdown-timeout): stopped the domain",
                    grace.unwrap_or_default().as_secs()
                ),
                Err(e) => format!("waiting for signals failed ({e}): stopped the domain"),
            };
            *why2.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            handle.destroy();
        });
    if let Err(e) = spawned {
        eprintln!("vessel: warning: SIGTERM and SIGINT will be ignored: {e}");
    }
    why
}

/// Copies standard input to the guest console until end of file. On a terminal, Ctrl-A x
/// stops the domain (the terminal is restored by the exit path in `main`).
fn spawn_stdin_forwarder(input: ConsoleInput, terminal: SharedTerminal) {
    let interactive = terminal.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 256];
            let mut escaped = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if interactive {
                    for &b in &buf[..n] {
                        if escaped {
                            escaped = false;
                            match b {
                                b'x' => {
                                    // Restore the terminal before leaving.
                                    drop(terminal.lock().unwrap_or_else(|e| e.into_inner()).take());
                                    eprintln!("\r\nvessel: stopped from the console");
                                    std::process::exit(130);
                                }
                                ESCAPE => input.send(&[ESCAPE]),
                                _ => input.send(&[ESCAPE, b]),
                            }
                        } else if b == ESCAPE {
                            escaped = true;
                        } else {
                            input.send(&[b]);
                        }
                    }
                } else {
                    input.send(&buf[..n]);
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("vessel: warning: no console input: {e}");
    }
}
