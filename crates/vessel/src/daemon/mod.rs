//! `vessel daemon`: domain 0's server. The control plane itself (the domains, their processes,
//! definitions and control groups, the switch, every action and its errors) is the `control`
//! crate's [`ControlPlane`]; this module serves it as an HTTP/JSON API on a Unix socket (mode
//! 0600), and takes the signals that end it.
//!
//! Each connection gets its own thread (at most [`MAX_CONNECTIONS`] at once; more are answered
//! 503) and is answered by [`api::handle`]. A connection holds its slot only for bounded time:
//! each request must arrive whole within the request timeout of its first byte, and a
//! connection that sends nothing for as long is closed, so slow or silent clients cannot lock
//! the others out. Logs go through `tracing` (one line per request here, one per state change
//! from the control plane). With `--metrics-listen`, `GET /metrics` is also served over TCP
//! ([`metrics_listener`]), and nothing else there.

pub mod api;
mod console;
mod deadline;
mod metrics;
mod metrics_listener;
mod net;
mod render;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use control::{Config, ControlPlane};

use crate::http::{self, Response};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The default request timeout: a request (head and body) must arrive whole within this time
/// of its first byte, a connection may wait this long for its next request, and a response
/// must be taken by the client within this time.
const REQUEST_TIMEOUT_SECS: f64 = 10.0;

/// The default API socket.
pub const DEFAULT_SOCKET: &str = "/run/vessel.sock";

#[derive(Args)]
pub struct DaemonArgs {
    /// Where domain definitions are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/vessel")]
    state_dir: PathBuf,
    /// The API's Unix socket (created with mode 0600).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Connect the virtual switch to this host TAP interface (created if missing).
    #[arg(long, value_name = "TAP")]
    uplink: Option<String>,
    /// On SIGTERM or SIGINT, seconds the domains have to power off after their power buttons
    /// are pressed; then those still running are stopped and the daemon exits 0. (SIGQUIT
    /// makes the daemon exit at once and leaves the domains running, for an upgrade.)
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Seconds a client has to send a whole request from its first byte, to send the first
    /// byte of its next one, and to take a response (for tests; docs/api.md).
    #[arg(long, value_name = "SECS", default_value_t = REQUEST_TIMEOUT_SECS,
          value_parser = parse_timeout, hide = true)]
    request_timeout: f64,
    /// The control group (in each hierarchy) that holds the domains' groups.
    #[arg(long, value_name = "NAME", default_value = "vessel", value_parser = parse_cgroup_parent)]
    cgroup_parent: String,
    /// Milliseconds between the CPU scheduler's rounds: it measures every domain and steers
    /// the kernel's weights toward Borrowed Virtual Time's shares (docs/design.md).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    sched_interval: u64,
    /// How the CPU scheduler sets the domains' kernel weights: bvt (Borrowed Virtual Time:
    /// weights steered by each domain's lag and warp), or cgroups (each domain's weight as it
    /// is, as the peers do; for comparison).
    #[arg(long, value_name = "POLICY", default_value = "bvt", value_parser = parse_sched_policy)]
    scheduler: control::scheduler::Policy,
    /// The memory all domains together may hold (default: the host's memory less an eighth, at
    /// least 256 MiB). When the domains were given more, the balloons take memory back from the
    /// domains with the fewest --shares per page they hold, never below their --reservation; a
    /// domain whose reservation does not fit is not started.
    #[arg(long, value_name = "SIZE", value_parser = vmm::spec::parse_size)]
    memory_pool: Option<u64>,
    /// Keep identical pages of the domains' memory once, copied when written (the kernel's
    /// KSM, started and steered by the daemon: it scans faster as free memory falls, and its
    /// settings are put back when the daemon exits): on or off.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    page_sharing: bool,
    /// The idle memory tax, 0 to 0.99 (0 turns it off): when memory is taken back, a page a
    /// domain holds but does not use counts 1/(1 - tax) times a page it uses, so idle memory
    /// goes first (VMware ESX's rule; each domain's use is sampled, see --working-set-period).
    #[arg(long, value_name = "RATE", default_value = "0.75", value_parser = parse_idle_tax)]
    idle_tax: control::allocation::IdleTax,
    /// Seconds between samples of each domain's working set: at the start of a period 100 of
    /// its pages, chosen at random, are taken away from it, and the share it touches again
    /// before the end estimates the share of its memory it uses. 0 turns sampling off.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    working_set_period: u64,
    /// Serve the debugging hooks (`POST /v1/domains/NAME/debug/forbidden-call` and
    /// `.../debug/panic`), for the tests of domain confinement and of failing threads; without
    /// this they answer 404.
    #[arg(long, hide = true)]
    debug_hooks: bool,
    /// Also serve GET /metrics (Prometheus text, and nothing else) over TCP on ADDR:PORT, for
    /// a scraper that must not hold the control socket, e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_cgroup_parent(s: &str) -> Result<String, String> {
    if vmm::spec::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("a control group name is 1 to 32 letters, digits, '_', '.' or '-'".into())
    }
}

fn parse_sched_policy(s: &str) -> Result<control::scheduler::Policy, String> {
    match s {
        "bvt" => Ok(control::scheduler::Policy::Bvt),
        "cgroups" => Ok(control::scheduler::Policy::CgroupsOnly),
        _ => Err(format!("'{s}' is not a scheduler: give bvt or cgroups")),
    }
}

fn parse_idle_tax(s: &str) -> Result<control::allocation::IdleTax, String> {
    let rate = s
        .parse::<f64>()
        .map_err(|_| format!("'{s}' is not a number from 0 to 0.99"))?;
    control::allocation::IdleTax::new(rate)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}' is neither on nor off")),
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 3600")),
    }
}

/// Runs the daemon until a signal ends it (see [`DaemonArgs::shutdown_timeout`]).
pub fn daemon(args: DaemonArgs) -> anyhow::Result<std::process::ExitCode> {
    crate::logging::init();
    // A few descriptors per domain (its channel, its threads' clocks for the scheduler).
    if let Err(e) = hv::process::raise_open_files_limit() {
        tracing::warn!("cannot raise the limit on open files: {e}");
    }
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = hv::TerminationSignals::block().context("cannot block termination signals")?;
    // Before the control plane touches anything: a port that is taken stops the daemon here.
    let metrics = match args.metrics_listen {
        Some(addr) => Some((
            addr,
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for metrics scrapes on {addr}"))?,
        )),
        None => None,
    };
    let plane = Arc::new(ControlPlane::open(&Config {
        state_dir: args.state_dir.clone(),
        uplink: args.uplink.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        debug_hooks: args.debug_hooks,
        sched_interval: std::time::Duration::from_millis(args.sched_interval),
        sched_policy: args.scheduler,
        page_sharing: args.page_sharing,
        memory_pool: args.memory_pool,
        idle_tax: args.idle_tax,
        working_set_period: std::time::Duration::from_secs(args.working_set_period),
    })?);
    if let Some((addr, tcp)) = metrics {
        metrics_listener::spawn(plane.clone(), tcp)
            .context("cannot start the metrics listener's thread")?;
        tracing::info!("serving GET /metrics on {addr}");
    }
    let listener = bind_private(&args.socket)?;
    tracing::info!(
        "serving the API on {} (state in {})",
        args.socket.display(),
        args.state_dir.display()
    );
    plane.reattach_and_autostart();
    spawn_signal_thread(
        signals,
        plane.clone(),
        args.socket.clone(),
        Duration::from_secs(args.shutdown_timeout),
    );
    let timeout = Duration::from_secs_f64(args.request_timeout);
    serve_connections(
        listener.incoming(),
        MAX_CONNECTIONS,
        "api",
        |mut stream: UnixStream| {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = http::write_response(
                &mut stream,
                &Response::error(503, "too many connections"),
                true,
            );
            // Take what the client already sent (without waiting, and at most a request's
            // head): a socket closed with unread bytes resets the connection, and the client
            // might lose the answer.
            if stream.set_nonblocking(true).is_ok() {
                let mut sink = [0u8; 4096];
                for _ in 0..http::MAX_HEAD / sink.len() {
                    if !matches!(std::io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        },
        move |stream| serve_connection(&plane, stream, timeout),
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Serves each connection of `incoming` on a thread of its own named `name`, at most `max` at
/// once; a connection beyond that is handed to `refuse` (which answers 503) on this thread.
fn serve_connections<S: Send + 'static>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    max: usize,
    name: &str,
    refuse: impl Fn(S),
    serve: impl Fn(S) + Send + Sync + 'static,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let serve = Arc::new(serve);
    for stream in incoming {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(stream);
            continue;
        }
        let (serve, done) = (serve.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                serve(stream);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The connection went with the closure: its slot is free again.
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a connection thread");
        }
    }
}

/// Takes the daemon's termination signals: SIGTERM or SIGINT shuts every domain down (power
/// buttons, then at most `grace`) and exits 0; SIGQUIT exits at once, leaving the domains
/// running for the next daemon to attach to.
fn spawn_signal_thread(
    signals: hv::TerminationSignals,
    plane: Arc<ControlPlane>,
    socket: PathBuf,
    grace: Duration,
) {
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.wait(None) {
                Ok(Some(hv::TerminationSignal::Quit)) => {
                    tracing::info!("SIGQUIT: exiting; the domains keep running");
                    // KSM goes back to how the daemon found it until the next daemon starts.
                    plane.stop_page_sharing();
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(0);
                }
                Ok(Some(signal)) => {
                    tracing::info!("{signal}: shutting the domains down");
                    plane.shut_down_all(grace);
                    plane.stop_page_sharing();
                    let _ = std::fs::remove_file(&socket);
                    tracing::info!("every domain is down; exiting");
                    std::process::exit(0);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("signals are not taken: {e}");
                    return;
                }
            }
        });
}

/// Binds the API socket so that it is never reachable with wider permissions than 0600: it is
/// bound inside a fresh private directory, restricted, then renamed into place (replacing a
/// stale socket, never any other kind of file).
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket",
            path.display()
        );
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is serving {}", path.display());
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(".vessel-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let staged = private.join("sock");
    let bound = UnixListener::bind(&staged)
        .and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path)?;
            Ok(l)
        })
        .with_context(|| format!("cannot bind the API socket {}", path.display()));
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Serves requests on one connection until the client closes it, errs, or runs out of time:
/// each request must arrive whole within `timeout` of its first byte (else 408 and the
/// connection is closed), the connection may wait `timeout` for a request's first byte, and
/// each response must be taken within `timeout`.
fn serve_connection(plane: &ControlPlane, stream: UnixStream, timeout: Duration) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = deadline::DeadlineStream::new(writer);
    let mut reader = BufReader::new(deadline::DeadlineStream::new(stream));
    loop {
        // Idle until the next request's first byte (or one already buffered).
        reader
            .get_mut()
            .set_deadline(Some(Instant::now() + timeout));
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(_) => {}
        }
        reader
            .get_mut()
            .set_deadline(Some(Instant::now() + timeout));
        let req = match http::read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let message = if e.status == 408 {
                    format!(
                        "the request did not arrive whole within {} s of its first byte",
                        timeout.as_secs_f64()
                    )
                } else {
                    e.message
                };
                writer.set_deadline(Some(Instant::now() + timeout));
                let _ =
                    http::write_response(&mut writer, &Response::error(e.status, &message), true);
                return;
            }
        };
        if console::wants_upgrade(&req) {
            // A console stream lives as long as the client stays attached.
            reader.get_mut().set_deadline(None);
            writer.set_deadline(None);
            console::serve(plane, &req, reader, writer);
            return;
        }
        let close = req.wants_close();
        let started = Instant::now();
        let resp = api::handle(plane, &req);
        tracing::info!(
            "{} {} {} ({:.1} ms)",
            req.method,
            req.path,
            resp.status,
            started.elapsed().as_secs_f64() * 1000.0
        );
        writer.set_deadline(Some(Instant::now() + timeout));
        if http::write_response(&mut writer, &resp, close).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Vessel {
        #[command(subcommand)]
        command: Verb,
    }

    #[derive(clap::Subcommand)]
    enum Verb {
        Daemon(DaemonArgs),
    }

    /// The shipped systemd unit starts the daemon with arguments it takes.
    #[test]
    fn the_systemd_unit_runs_a_daemon_command_line() {
        let unit = include_str!("../../../../contrib/vessel.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert!(words[0].ends_with("/vessel"), "{exec}");
        let Verb::Daemon(args) = Vessel::try_parse_from(&words)
            .unwrap_or_else(|e| panic!("{exec}: {e}"))
            .command;
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/vessel"));
        assert_eq!(args.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(unit.contains("KillMode=process"));
        let stop: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .and_then(|v| v.parse().ok())
            .expect("TimeoutStopSec");
        assert!(
            stop > args.shutdown_timeout,
            "systemd must wait longer than the daemon"
        );
    }
}
