//! `vessel daemon`: domain 0, the control plane. Each domain runs in a confined process of its
//! own ([`process`]); the daemon opens their host files, runs the virtual switch, keeps their
//! definitions and control groups, and serves the HTTP/JSON API on a Unix socket (mode 0600).
//!
//! Each connection gets its own thread (at most [`MAX_CONNECTIONS`] at once; more are answered
//! 503) and is answered by [`api::handle`]. A connection holds its slot only for bounded time:
//! each request must arrive whole within the request timeout of its first byte, and a
//! connection that sends nothing for as long is closed, so slow or silent clients cannot lock
//! the others out. A domain that crashes ends in its own `crashed` state; the daemon and the
//! other domains go on. Logs go through `tracing` (one line per request and per state change).

pub mod api;
pub mod cgroup;
mod console;
mod deadline;
pub mod metrics;
pub mod net;
pub mod process;
pub mod registry;
mod store;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use vmm::wire::Confinement;

use crate::def::DomainDef;
use crate::http::{self, Response};
use process::{DomainProcess, LaunchPlan};
use registry::Registry;

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
    /// Serve the debugging hooks (`POST /v1/domains/NAME/debug/forbidden-call`), for the
    /// tests of domain confinement; without this they answer 404.
    #[arg(long, hide = true)]
    debug_hooks: bool,
}

fn parse_cgroup_parent(s: &str) -> Result<String, String> {
    if vmm::spec::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("a control group name is 1 to 32 letters, digits, '_', '.' or '-'".into())
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 3600")),
    }
}

/// The daemon's shared state.
pub struct Daemon {
    /// Every domain.
    pub registry: Registry,
    /// Where domain processes' channel sockets are (`STATE_DIR/run`).
    pub run_dir: PathBuf,
    /// Where domain processes' own messages go (`STATE_DIR/logs`).
    pub log_dir: PathBuf,
    /// The virtual switch between the domains' VIFs.
    pub switch: Arc<vswitch::SwitchHandle>,
    /// When the daemon started.
    pub started: Instant,
    /// Whether the debugging hooks are served.
    pub debug_hooks: bool,
    /// Where domains' control groups are.
    pub cgroups: Arc<cgroup::Cgroups>,
}

impl Daemon {
    /// Defines domain `def` and, if `start`, starts it. The start is claimed together with
    /// the definition, so no other request can start (or delete) the domain in between; if it
    /// cannot start, the definition this call made goes too, and nothing else.
    pub fn create(&self, def: DomainDef, start: bool) -> Result<(), Response> {
        let name = def.name().to_string();
        self.registry
            .define(def, start)
            .map_err(api::registry_error_response)?;
        if !start {
            return Ok(());
        }
        match self.launch(&name) {
            Ok(instance) => self.finish_start(&name, Ok(instance)),
            Err(resp) => {
                // Still claimed by this call: nobody else has started or deleted it.
                let _ = self.registry.undefine_claimed(&name);
                Err(resp)
            }
        }
    }

    /// Starts domain `name`, or answers why not.
    pub fn start(&self, name: &str) -> Result<(), Response> {
        let claimed = self.registry.with(name, |e| {
            if e.state().is_active() || e.starting {
                false
            } else {
                e.starting = true;
                true
            }
        });
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                return Err(Response::error(
                    409,
                    &format!("domain '{name}' is already running"),
                ))
            }
            Err(e) => return Err(api::registry_error_response(e)),
        }
        let started = self.launch(name);
        self.finish_start(name, started)
    }

    /// Starts a domain process for domain `name`, whose start the caller has claimed (its
    /// entry's `starting` flag); the claim is left for the caller to release. The daemon opens
    /// every host file the domain needs, with its checks, and hands the descriptors over.
    fn launch(&self, name: &str) -> Result<DomainProcess, Response> {
        let (id, def, console) = self
            .registry
            .with(name, |e| (e.id, e.def.clone(), e.console.clone()))
            .map_err(api::registry_error_response)?;
        let ports = net::port_provider(&self.switch, name);
        let fail = |e: vmm::DomainError| {
            Response::error(
                api::start_error_status(&e),
                &format!("domain '{name}' cannot start: {e}"),
            )
        };
        let cfg = def.spec().clone();
        let hv = hv::Hypervisor::open().map_err(|e| fail(e.into()))?;
        vmm::validate(&cfg, &hv).map_err(fail)?;
        let resources = vmm::resources::Resources::open(&cfg, Some(&ports)).map_err(fail)?;
        DomainProcess::launch(LaunchPlan {
            name,
            spec: cfg,
            resources,
            socket: self.run_dir.join(format!("{name}.sock")),
            log: self.log_dir.join(format!("{name}.log")),
            confine: Some(Confinement {
                uid: DOMAIN_ID_BASE + id,
                gid: DOMAIN_ID_BASE + id,
            }),
            console,
            on_spawn: self.enter_group(name),
            on_end: self.leave_group(name),
        })
        .map_err(|why| Response::error(500, &format!("domain '{name}' cannot start: {why}")))
    }

    /// Releases the claim on domain `name`'s start, keeping the instance if it started.
    fn finish_start(
        &self,
        name: &str,
        started: Result<DomainProcess, Response>,
    ) -> Result<(), Response> {
        let stored = self.registry.with(name, move |e| {
            e.starting = false;
            started.map(|instance| e.instance = Some(Arc::new(instance)))
        });
        stored.map_err(api::registry_error_response)?
    }
}

/// Runs the daemon until a signal ends it (see [`DaemonArgs::shutdown_timeout`]).
pub fn daemon(args: DaemonArgs) -> anyhow::Result<std::process::ExitCode> {
    crate::logging::init();
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = hv::TerminationSignals::block().context("cannot block termination signals")?;
    let (registry, warnings) = Registry::open(&args.state_dir).with_context(|| {
        format!(
            "cannot use the state directory {}",
            args.state_dir.display()
        )
    })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let switch = Arc::new(vswitch::Switch::start().context("cannot start the virtual switch")?);
    if let Some(tap) = &args.uplink {
        let (file, name) = hv::tap::open_tap(tap)
            .with_context(|| format!("cannot open the uplink TAP interface {tap}"))?;
        switch
            .set_uplink(file, &name)
            .with_context(|| format!("cannot attach {name} to the switch"))?;
    }
    let listener = bind_private(&args.socket)?;
    tracing::info!(
        "serving the API on {} (state in {})",
        args.socket.display(),
        args.state_dir.display()
    );
    let (cgroups, note) = cgroup::Cgroups::detect(&args.cgroup_parent);
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    let run_dir = private_dir(&args.state_dir.join("run"))?;
    let log_dir = private_dir(&args.state_dir.join("logs"))?;
    let daemon = Arc::new(Daemon {
        registry,
        run_dir,
        log_dir,
        switch,
        started: Instant::now(),
        debug_hooks: args.debug_hooks,
        cgroups: Arc::new(cgroups),
    });
    daemon.reattach_and_autostart();
    spawn_signal_thread(
        signals,
        daemon.clone(),
        args.socket.clone(),
        Duration::from_secs(args.shutdown_timeout),
    );
    let timeout = Duration::from_secs_f64(args.request_timeout);
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
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
            continue;
        }
        let (daemon, active) = (daemon.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                serve_connection(&daemon, stream, timeout);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::warn!("cannot start a connection thread");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

impl Daemon {
    /// Finds the domain processes an earlier daemon left running (their channel sockets in
    /// the run directory) and attaches to them; then starts the domains marked `autostart`
    /// that are not running.
    fn reattach_and_autostart(&self) {
        for view in self.registry.views() {
            let name = view.def.name().to_string();
            let socket = self.run_dir.join(format!("{name}.sock"));
            if !socket.exists() {
                continue;
            }
            let console = match self.registry.with(&name, |e| e.console.clone()) {
                Ok(c) => c,
                Err(_) => continue,
            };
            match DomainProcess::attach(&name, &socket, console, self.leave_group(&name)) {
                Some(process) => {
                    tracing::info!("domain '{name}' runs (process {}): attached", process.pid());
                    self.hand_new_ports(&name, view.def.spec(), &process);
                    let process = Arc::new(process);
                    let _ = self.registry.with(&name, |e| e.instance = Some(process));
                }
                None => {
                    // Nobody listens: the process ended while no daemon was there.
                    let _ = std::fs::remove_file(&socket);
                }
            }
        }
        let running: Vec<String> = self
            .registry
            .views()
            .into_iter()
            .filter(|v| v.state().is_active())
            .map(|v| v.def.name().to_string())
            .collect();
        self.cgroups.remove_stale(&running);
        for view in self.registry.views() {
            if view.def.spec().autostart && !view.state().is_active() {
                let name = view.def.name().to_string();
                match self.start(&name) {
                    Ok(()) => tracing::info!("domain '{name}' started (autostart)"),
                    Err(resp) => tracing::info!(
                        "domain '{name}' (autostart) cannot start: {}",
                        String::from_utf8_lossy(&resp.body).trim()
                    ),
                }
            }
        }
    }

    /// What moves a new domain process of `name` into its control group.
    fn enter_group(&self, name: &str) -> Box<dyn FnOnce(u32) + Send> {
        let (cgroups, name) = (self.cgroups.clone(), name.to_string());
        Box::new(move |pid| {
            if let Err(e) = cgroups.enter(&name, pid) {
                tracing::warn!("domain '{name}' runs outside its control group: {e}");
            }
        })
    }

    /// What removes domain `name`'s control group once its process has ended.
    fn leave_group(&self, name: &str) -> Box<dyn FnOnce() + Send> {
        let (cgroups, name) = (self.cgroups.clone(), name.to_string());
        Box::new(move || {
            if !cgroups.remove(&name) {
                tracing::warn!("domain '{name}''s control group could not be removed");
            }
        })
    }

    /// Gives the `switch=` VIFs of a domain found running after a restart new ports on this
    /// daemon's switch (the ports of the daemon that started it went with that daemon): each
    /// VIF's device is handed its new port's socket while the domain runs on, so its
    /// networking works again.
    fn hand_new_ports(&self, name: &str, spec: &vmm::DomainSpec, process: &DomainProcess) {
        if !process.status().state.is_active() {
            return;
        }
        let ports = net::port_provider(&self.switch, name);
        for (index, vif) in spec.nets.iter().enumerate() {
            let vmm::spec::NetBackendSpec::Switch { name: switch, rate } = &vif.backend else {
                continue;
            };
            let slot = vmm::virtio::vif_slot(spec.disks.len(), index);
            let handed = ports(switch, index, *rate).and_then(|lease| {
                let port = lease.name.clone();
                process.hand_port(slot, lease).map(|()| port)
            });
            match handed {
                Ok(port) => tracing::info!("domain '{name}': eth{index} is on port {port} again"),
                Err(e) => tracing::warn!("domain '{name}': eth{index} has no switch port: {e}"),
            }
        }
    }

    /// Shuts every running domain down: presses each power button, waits at most `grace`
    /// for them to power off, then stops those still running.
    fn shut_down_domains(&self, grace: Duration) {
        let running: Vec<(String, Arc<DomainProcess>)> = self
            .registry
            .views()
            .into_iter()
            .filter_map(|v| {
                let p = v.instance.clone()?;
                p.status()
                    .state
                    .is_active()
                    .then(|| (v.def.name().to_string(), p))
            })
            .collect();
        for (name, p) in &running {
            if let Err(e) = p.press_power_button() {
                tracing::info!("domain '{name}': {e}");
            }
        }
        let deadline = Instant::now() + grace;
        for (name, p) in &running {
            let left = deadline.saturating_duration_since(Instant::now());
            if !p.wait_stopped(left) {
                tracing::info!(
                    "domain '{name}' did not power off within {} s: stopping it",
                    grace.as_secs()
                );
                p.destroy();
            }
            p.wait_gone(Duration::from_secs(10));
        }
    }
}

/// Takes the daemon's termination signals: SIGTERM or SIGINT shuts every domain down (power
/// buttons, then at most `grace`) and exits 0; SIGQUIT exits at once, leaving the domains
/// running for the next daemon to attach to.
fn spawn_signal_thread(
    signals: hv::TerminationSignals,
    daemon: Arc<Daemon>,
    socket: PathBuf,
    grace: Duration,
) {
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.wait(None) {
                Ok(Some(hv::TerminationSignal::Quit)) => {
                    tracing::info!("SIGQUIT: exiting; the domains keep running");
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(0);
                }
                Ok(Some(signal)) => {
                    tracing::info!("{signal}: shutting the domains down");
                    daemon.shut_down_domains(grace);
                    daemon.cgroups.remove_parents();
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

/// The first uid (and gid) of domain processes: domain `id` runs as `DOMAIN_ID_BASE + id`.
pub const DOMAIN_ID_BASE: u32 = 200_000;

/// `dir`, created (mode 0700) if missing.
fn private_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_path_buf())
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
fn serve_connection(daemon: &Daemon, stream: UnixStream, timeout: Duration) {
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
            console::serve(daemon, &req, reader, writer);
            return;
        }
        let close = req.wants_close();
        let started = Instant::now();
        let resp = api::handle(daemon, &req);
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
