//! `vessel run`: one domain in the foreground.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use vmm::{ConsoleInput, DomainConfig, OnReboot, Outcome, RunHandle};

/// The console escape: Ctrl-A followed by `x` stops the domain.
const ESCAPE: u8 = 0x01;

/// The raw-mode terminal, if standard input is one; taken (restored) on the way out.
type SharedTerminal = Arc<Mutex<Option<hv::RawTerminal>>>;

#[derive(Clone, Copy, ValueEnum)]
enum RebootPolicy {
    /// Boot the guest again.
    Restart,
    /// Stop with exit status 2.
    Exit,
}

#[derive(Args)]
pub struct RunArgs {
    /// Guest kernel: a bzImage or an ELF vmlinux with a PVH note.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, with a K, M or G suffix (no suffix: MiB).
    #[arg(long, default_value = "256M", value_parser = parse_memory)]
    memory: u64,
    /// A virtual block device: path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,bps=RATE]
    /// [,iops=N]; repeat for more (vda, vdb...). Without format=, the file's format is found
    /// once, now, and kept across reboots.
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A virtual network interface (eth0, eth1... in order; repeat for more): tap=NAME[,mac=MAC]
    /// for a host TAP interface (created if missing), or socket=PATH,peer=PATH[,mac=MAC] for a
    /// point-to-point link to another domain whose VIF is socket=PEER,peer=PATH. Without mac=,
    /// a stable locally administered address derived from tap=NAME or socket=PATH.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// What a guest reboot does.
    #[arg(long, value_enum, default_value = "restart")]
    on_reboot: RebootPolicy,
    /// Seconds the guest has to power off once SIGTERM or SIGINT has pressed its ACPI power
    /// button; then the domain is stopped at once (exit status 1). 0: no limit.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    vmm::parse_size(s).map_err(|e| e.to_string())
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut disks = args
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| vmm::parse_disk(d, i))
        .collect::<Result<Vec<_>, _>>()?;
    // Once, before the first boot: a reboot reopens each disk in the format found now.
    vmm::pin_disk_formats(&mut disks)?;
    let nets = args
        .nets
        .iter()
        .map(|n| vmm::parse_net(n))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = DomainConfig {
        disks,
        nets,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        memory: args.memory,
        on_reboot: match args.on_reboot {
            RebootPolicy::Restart => OnReboot::Restart,
            RebootPolicy::Exit => OnReboot::Exit,
        },
    };
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = hv::TerminationSignals::block().context("cannot block SIGTERM and SIGINT")?;
    let raw = hv::RawTerminal::enable().context("cannot set the terminal to raw mode")?;
    let terminal: SharedTerminal = Arc::new(Mutex::new(raw));
    let input = ConsoleInput::default();
    spawn_stdin_forwarder(input.clone(), terminal.clone());
    let handle = RunHandle::default();
    let grace = (args.shutdown_timeout > 0).then(|| Duration::from_secs(args.shutdown_timeout));
    let why_destroyed = spawn_shutdown_on_signal(signals, handle.clone(), grace);
    let outcome = vmm::run_with(&cfg, Arc::new(Mutex::new(io::stdout())), &input, &handle);
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
