//! `vessel run`: one domain in the foreground, confined as the daemon confines its domains.
//!
//! The command checks the specification and opens every host file the domain needs (with the
//! same checks as the daemon), then forks. The child is the domain: while it still has one
//! thread it confines itself (as root: its own mount, network, IPC and UTS namespaces, an
//! empty root, its own unprivileged user; otherwise what an unprivileged process can do:
//! `no_new_privs` and Landlock), installs the seccomp filters of its threads, and runs the
//! domain as the daemon's domain processes do ([`vmm::Instance`]: one supervisor of a domain's
//! life for both), its console on the terminal. The parent holds what a confined process
//! cannot do: it restores the terminal, removes the socket files the domain's links bound,
//! passes on the signals sent to it, and turns the child's end (even a kill by its seccomp
//! filter) into a message and the exit status.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vmm::resources::Resources;
use vmm::{ConsoleInput, DomainError, DomainSpec, Instance, Outcome, RunState};

/// The console escape: Ctrl-A followed by `x` stops the domain.
const ESCAPE: u8 = 0x01;

/// The first uid (and gid) of `vessel run`'s confined domains: the one whose process has pid
/// `p` runs as `RUN_ID_BASE + p` (the daemon's domains use 200000 and up, by domain id;
/// Linux pids stay below 2^22).
const RUN_ID_BASE: u32 = 1_000_000;

/// The exit status of a domain stopped from its console (Ctrl-A x), as for SIGINT.
const STOPPED_FROM_CONSOLE: u8 = 130;

/// `vessel run`: a domain's specification (the same flags as `vessel create`), or a saved
/// domain to restore, and how long a shutdown may take.
#[derive(Args)]
#[command(override_usage = "vessel run [OPTIONS] --kernel <PATH>\n       \
                            vessel run [OPTIONS] --restore <FILE>")]
pub struct RunArgs {
    #[command(flatten)]
    spec: Option<DomainSpec>,
    /// Restore the domain `vessel save` saved in FILE (its definition is the one it was saved
    /// with), instead of booting one: it runs on from where it was.
    #[arg(long, value_name = "FILE", conflicts_with = "DomainSpec")]
    restore: Option<std::path::PathBuf>,
    /// Seconds the guest has to power off once SIGTERM or SIGINT has pressed its ACPI power
    /// button; then the domain is stopped at once (exit status 1). 0: no limit.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Once the domain runs, make a thread of this kind call what its seccomp filter forbids
    /// (for the tests of confinement: the kernel kills the domain).
    #[arg(long, value_name = "THREAD", hide = true)]
    debug_forbidden_call: Option<vmm::wire::ThreadKind>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (mut spec, snapshot) = match (args.spec, &args.restore) {
        (_, Some(path)) => {
            let (spec, file) = open_snapshot(path)?;
            (spec, Some(file))
        }
        (Some(spec), None) => (spec, None),
        // Unreachable through clap: without --restore, --kernel is required.
        (None, None) => anyhow::bail!("give --kernel, or --restore FILE"),
    };
    // What needs neither files nor KVM first: a bad value is named before any file is read.
    spec.validate()?;
    // Once, before the first boot: a reboot reopens each disk in the format found now.
    vmm::pin_disk_formats(&mut spec)?;
    let hv = hv::Hypervisor::open()?;
    vmm::validate(&spec, &hv)?;
    drop(hv);
    let mut resources = Resources::open(&spec, None)?;
    resources.snapshot = snapshot;
    // Before the fork and any thread: both processes, and every thread, have them blocked.
    let signals = hv::TerminationSignals::block().context("cannot block SIGTERM and SIGINT")?;
    let terminal = hv::RawTerminal::enable().context("cannot set the terminal to raw mode")?;
    let interactive = terminal.is_some();
    let parent = std::process::id();
    let grace = (args.shutdown_timeout > 0).then(|| Duration::from_secs(args.shutdown_timeout));
    let forked = hv::process::fork_alone().context("cannot start the domain's process");
    match forked {
        Ok(hv::process::Forked::Child) => {
            // The parent restores the terminal.
            std::mem::forget(terminal);
            resources.leave_socket_files();
            let code = domain(
                spec,
                resources,
                Child {
                    parent,
                    signals,
                    interactive,
                    grace,
                    forbidden_call: args.debug_forbidden_call,
                },
            );
            let _ = io::stdout().flush();
            std::process::exit(code.into());
        }
        Ok(hv::process::Forked::Parent(child)) => {
            let status = supervise_child(child, signals);
            drop(terminal);
            // Removes the socket files the domain's links bound.
            drop(resources);
            status
        }
        Err(e) => {
            drop(terminal);
            Err(e)
        }
    }
}

/// The saved domain at `path`: its definition (read from the file with positional reads,
/// checked) and the file, for the domain to read from its start.
fn open_snapshot(path: &std::path::Path) -> anyhow::Result<(DomainSpec, std::fs::File)> {
    use devices::host_file::{self, Accept, Access};
    let file = host_file::open(path, Access::ReadOnly, Accept::Regular)
        .with_context(|| format!("cannot open the snapshot {}", path.display()))?;
    let spec = vmm::snapshot::SnapshotReader::new(vmm::snapshot::ReadAt::new(&file))
        .and_then(|mut r| r.spec())
        .with_context(|| path.display().to_string())?;
    Ok((spec, file))
}

/// The parent: passes the termination signals sent to it on to the domain's process (not the
/// terminal's, which reach both), waits for that process to end and reports how it did.
fn supervise_child(child: u32, signals: hv::TerminationSignals) -> anyhow::Result<ExitCode> {
    let pidfd = hv::process::Pidfd::open(child).context("cannot watch the domain's process")?;
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.wait_received(None) {
                Ok(Some(r)) if r.from_process => {
                    if pidfd.signal(r.signal.number()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        });
    if let Err(e) = spawned {
        eprintln!("vessel: warning: SIGTERM and SIGINT will not reach the domain: {e}");
    }
    let status = hv::process::wait_child(child).context("cannot wait for the domain's process")?;
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let signal = status.signal().unwrap_or(0);
    let why = if hv::process::killed_by_seccomp(&status) {
        "a system call its seccomp filter does not allow (SIGSYS): a bug in Vessel, or a \
         guest exploiting one"
            .to_string()
    } else {
        format!("signal {signal}")
    };
    eprintln!("vessel: error: the domain's process was killed by {why}");
    Ok(ExitCode::from(1))
}

/// What the domain's process is given besides the domain.
struct Child {
    /// `vessel run`'s pid.
    parent: u32,
    /// SIGTERM and SIGINT, blocked.
    signals: hv::TerminationSignals,
    /// Whether standard input is a terminal (in raw mode: Ctrl-A x stops the domain).
    interactive: bool,
    /// How long the guest has to power off after its power button.
    grace: Option<Duration>,
    /// The debugging hook: a thread kind to make a forbidden call.
    forbidden_call: Option<vmm::wire::ThreadKind>,
}

/// The child: confines itself, runs the domain to its end and returns the exit status (0
/// powered off, 1 stopped or failed, 2 rebooted under `--on-reboot exit`).
fn domain(spec: DomainSpec, resources: Resources, child: Child) -> u8 {
    let Child {
        parent,
        signals,
        interactive,
        grace,
        forbidden_call,
    } = child;
    if let Err(e) = confine(&resources, parent) {
        eprintln!("vessel: error: {e}");
        return 1;
    }
    let stdout: vmm::ConsoleSink = Arc::new(Mutex::new(io::stdout()));
    let instance = match Instance::start(spec, resources, stdout, Box::new(|_| {})) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            eprintln!("vessel: error: {e}");
            return 1;
        }
    };
    spawn_stdin_forwarder(instance.console_input().clone(), interactive);
    let why_destroyed = spawn_shutdown_on_signal(signals, instance.clone(), grace, parent);
    if let Some(kind) = forbidden_call {
        vmm::confinement::request_forbidden_call(kind.into());
    }
    let mut last = instance.status();
    while last.state.is_active() {
        let now = instance.wait_status_change(&last, Duration::from_secs(3600));
        if now.boots > last.boots {
            eprintln!("vessel: guest rebooted; starting it again");
        }
        last = now;
    }
    match (last.state, last.outcome) {
        (RunState::Shutoff, Some(Outcome::PoweredOff)) => 0,
        (RunState::Shutoff, Some(Outcome::Rebooted)) => {
            eprintln!("vessel: guest rebooted (--on-reboot exit)");
            2
        }
        (RunState::Shutoff, _) => {
            let why = why_destroyed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            eprintln!(
                "vessel: {}",
                why.as_deref().unwrap_or("the domain was stopped")
            );
            1
        }
        _ => {
            let crash = DomainError::Crashed(last.message.unwrap_or_default());
            eprintln!("vessel: error: {crash}");
            1
        }
    }
}

/// Confines the calling process, which has one thread: as root, the sandbox the daemon's
/// domains get (its own user, from [`RUN_ID_BASE`]); otherwise what an unprivileged process
/// can do. Then it dies with `parent`, and its threads get their seccomp filters.
fn confine(resources: &Resources, parent: u32) -> anyhow::Result<()> {
    let id = RUN_ID_BASE + std::process::id();
    if hv::process::is_root() {
        hv::sandbox::Sandbox {
            uid: id,
            gid: id,
            binds: resources.socket_dirs(),
        }
        .enter()?;
    } else {
        hv::sandbox::confine_unprivileged()?;
        eprintln!(
            "vessel: note: not root, so the domain has no namespaces or user of its own: it is \
             confined by no_new_privs, no capabilities, Landlock and seccomp"
        );
    }
    hv::process::die_with_parent(parent).context("cannot tie the domain to vessel run")?;
    vmm::confinement::confine_threads()?;
    Ok(())
}

/// Guest-cooperative shutdown: the first SIGTERM or SIGINT presses the guest's ACPI power
/// button (a guest that handles it powers off, and `vessel run` exits 0); a second one, or
/// `grace` going by without a power-off, stops the domain at once. Returns where the reason for
/// that stop is left, for the exit message.
///
/// The signals taken are the terminal's (the kernel's) and those `parent`, the `vessel run`
/// process, passes on. One another process sends this process directly is not taken: it
/// reaches the parent too when it was meant for `vessel run` (`kill $(pidof vessel)` signals
/// both), and the parent passes it on, so taking both would count one signal twice.
fn spawn_shutdown_on_signal(
    signals: hv::TerminationSignals,
    instance: Arc<Instance>,
    grace: Option<Duration>,
    parent: u32,
) -> Arc<Mutex<Option<String>>> {
    let why = Arc::new(Mutex::new(None));
    let why2 = why.clone();
    let next = move |timeout: Option<Duration>| {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            match signals.wait_received(left) {
                Ok(Some(r)) if r.from_process && r.sender != Some(parent) => eprintln!(
                    "vessel: {} sent to the domain's process by process {} is left to `vessel \
                     run` (process {parent}), which passes on the signals it gets",
                    r.signal,
                    r.sender.unwrap_or(0)
                ),
                other => return other.map(|r| r.map(|r| r.signal)),
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let first = match next(None) {
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
            match instance.press_power_button() {
                Ok(()) => eprintln!(
                    "vessel: {first}: pressed the guest's power button ({limit}; \
                     a second signal stops it at once)"
                ),
                Err(e) => eprintln!("vessel: {first}: {e}"),
            }
            let reason = match next(grace) {
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
            instance.destroy();
        });
    if let Err(e) = spawned {
        eprintln!("vessel: warning: SIGTERM and SIGINT will be ignored: {e}");
    }
    why
}

/// Copies standard input to the guest console until end of file. On a terminal, Ctrl-A x
/// stops the domain (the parent restores the terminal).
fn spawn_stdin_forwarder(input: ConsoleInput, interactive: bool) {
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
                if !interactive {
                    input.send(&buf[..n]);
                    continue;
                }
                for &b in &buf[..n] {
                    if escaped {
                        escaped = false;
                        match b {
                            b'x' => {
                                eprintln!("\r\nvessel: stopped from the console");
                                let _ = io::stdout().flush();
                                std::process::exit(STOPPED_FROM_CONSOLE.into());
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
            }
        });
    if let Err(e) = spawned {
        eprintln!("vessel: warning: no console input: {e}");
    }
}
