//! A domain process seen from the control plane: started (the same binary's hidden `domain`
//! verb, with its channel listener as descriptor 3, its host resources handed over as
//! descriptors), or found again after a daemon restart; then driven by calls over its channel
//! ([`vmm::wire`]).
//!
//! One reader thread per domain takes what the process sends: replies (to the call waiting for
//! them), state changes, console output (into the domain's console log). When the channel
//! closes, the process has ended, or left us: a domain that was running is then `crashed`,
//! with the process's exit status when it was our child.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::virtio::Action;
use hv::channel::{Channel, Listener};
use vmm::resources::{PortLease, Resources};
use vmm::wire::{self, Call, Confinement, MachineStats, Note, Request, StatusReport};
use vmm::{ConsoleLog, RunState, Status};

/// How long a call waits for its reply (a pause waits for every vCPU to park: 15 s at most).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// `base`, and the time `memory` bytes of guest RAM take to write or read at 20 MB/s (a slow
/// disk): how long a save or a restore of a domain that size may take.
pub fn with_memory(base: Duration, memory: u64) -> Duration {
    base + Duration::from_secs(memory / 20_000_000)
}
/// How long a counters call waits: an unresponsive domain must not hold up the API.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a launch may take (building the machine, loading the kernel and initrd).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a migration, sent or received, to end.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a domain's state stands, as its process last said.
struct Seen {
    status: Status,
    /// The channel closed: the process is gone (or no longer ours).
    gone: bool,
}

struct Shared {
    name: String,
    seen: Mutex<Seen>,
    changed: Condvar,
    pending: Mutex<HashMap<u64, SyncSender<Note>>>,
    console: ConsoleLog,
    child: Mutex<Option<Child>>,
    /// The host resources the daemon opened for the domain: held while its process runs (its
    /// switch ports stay on the switch; its socket files are removed when they go).
    resources: Mutex<Option<Resources>>,
    /// Switch ports handed to the domain since it started (a restarted daemon's new ports for
    /// its VIFs): held, like its resources, while its process runs.
    ports: Mutex<Vec<PortLease>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `report` unless it is older than what is known; returns whether it was taken.
    fn update(&self, report: &StatusReport) -> bool {
        let mut seen = self.lock();
        if report.version < seen.status.version {
            return false;
        }
        let changed = report.state != seen.status.state.name()
            || report.boots != seen.status.boots
            || report.held_for_memory != seen.status.held_for_memory;
        seen.status = status_of(report);
        drop(seen);
        self.changed.notify_all();
        changed
    }
}

/// A running domain process.
pub struct DomainProcess {
    shared: Arc<Shared>,
    /// Sends to the process; `None` once its channel has closed (the descriptor goes with it).
    writer: Arc<Mutex<Option<Channel>>>,
    next_id: AtomicU64,
    pid: u32,
}

fn status_of(r: &StatusReport) -> Status {
    let state = match r.state.as_str() {
        "running" => RunState::Running,
        "paused" => RunState::Paused,
        "crashed" => RunState::Crashed,
        _ => RunState::Shutoff,
    };
    let uptime = Duration::from_millis(r.uptime_ms);
    Status {
        state,
        boots: r.boots,
        message: r.message.clone(),
        held_for_memory: r.held_for_memory,
        outcome: None,
        since: Instant::now()
            .checked_sub(uptime)
            .unwrap_or_else(Instant::now),
        version: r.version,
    }
}

/// The error of a call its domain process did not answer in time.
pub const NO_ANSWER: &str = "the domain process did not answer";

/// The hidden verb that runs a domain process.
pub const DOMAIN_VERB: &str = "domain";

/// What [`DomainProcess::launch`] needs to know about the daemon's layout.
pub struct LaunchPlan<'a> {
    /// The domain's name.
    pub name: &'a str,
    /// Its specification.
    pub spec: vmm::spec::DomainSpec,
    /// Its resources, opened by the daemon.
    pub resources: Resources,
    /// Where its channel socket is bound (`STATE_DIR/run/NAME.sock`).
    pub socket: PathBuf,
    /// Where its process's own messages go (`STATE_DIR/logs/NAME.log`).
    pub log: PathBuf,
    /// Its confinement.
    pub confine: Option<Confinement>,
    /// Its console log.
    pub console: ConsoleLog,
    /// Called with the process's pid as soon as it is spawned, before the domain starts (it
    /// moves the process into the domain's control group).
    pub on_spawn: Box<dyn FnOnce(u32) + Send>,
    /// Called once the process has ended (it removes the domain's control group).
    pub on_end: Box<dyn FnOnce() + Send>,
}

impl DomainProcess {
    /// Starts a domain process and launches the domain in it; returns once its first machine
    /// is built (or why it could not be).
    pub fn launch(plan: LaunchPlan<'_>) -> Result<DomainProcess, String> {
        let (listener, socket) = {
            // Not while an ended process's socket is being removed (see `SOCKET_FILES`).
            let mut files = SOCKET_FILES.lock().unwrap_or_else(|e| e.into_inner());
            let _ = std::fs::remove_file(&plan.socket);
            let listener = Listener::bind(&plan.socket)
                .map_err(|e| format!("cannot bind {}: {e}", plan.socket.display()))?;
            (listener, OwnedSocket::take(&mut files, &plan.socket))
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&plan.log)
            .map_err(|e| format!("cannot open {}: {e}", plan.log.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find vessel: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(DOMAIN_VERB)
            .env("VESSEL_DOMAIN_CHANNEL", &plan.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let listener_fd = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        let child = hv::process::spawn_with_channel(cmd, listener_fd)
            .map_err(|e| format!("cannot start the domain process: {e}"))?;
        drop(listener);
        let pid = child.id();
        (plan.on_spawn)(pid);
        let fail = |child: Child, why: String| {
            kill_child(child);
            why
        };
        let channel = match Channel::connect(&plan.socket) {
            Ok(c) => c,
            Err(e) => return Err(fail(child, format!("cannot reach the domain process: {e}"))),
        };
        let memory = plan.spec.memory;
        let (manifest, fds) = plan.resources.to_wire();
        let launch = Call {
            id: 0,
            request: Request::Launch {
                name: plan.name.to_string(),
                spec: Box::new(plan.spec),
                manifest,
                confine: plan.confine,
            },
        };
        if let Err(e) = channel.send(&wire::encode(&launch), &fds) {
            return Err(fail(child, format!("cannot launch the domain: {e}")));
        }
        // A restore reads the guest's memory from its snapshot before it answers; an
        // incoming migration takes as long as the sender's rounds (the domain process gives
        // up on a sender silent for `vmm::migration::PEER_TIMEOUT`).
        let timeout = if plan.resources.migration.is_some() {
            MIGRATION_TIMEOUT
        } else if plan.resources.snapshot.is_some() {
            with_memory(LAUNCH_TIMEOUT, memory)
        } else {
            LAUNCH_TIMEOUT
        };
        let hello = match await_hello(&channel, timeout) {
            Ok(h) => h,
            Err(why) => return Err(fail(child, why)),
        };
        // The snapshot and the migration's connection were the first machine's: not kept
        // open for the domain's life.
        let mut resources = plan.resources;
        resources.snapshot = None;
        resources.migration = None;
        Ok(Self::connected(
            plan.name,
            pid,
            channel,
            hello,
            plan.console,
            Some(child),
            Some(resources),
            Box::new(move || {
                socket.remove();
                (plan.on_end)();
            }),
        ))
    }

    /// Attaches to the domain process listening at `socket` (one an earlier daemon started);
    /// `None` if none answers there.
    pub fn attach(
        name: &str,
        socket: &Path,
        console: ConsoleLog,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> Option<DomainProcess> {
        let channel = Channel::connect(socket).ok()?;
        let call = Call {
            id: 0,
            request: Request::Attach,
        };
        channel.send(&wire::encode(&call), &[]).ok()?;
        let hello = await_hello(&channel, Duration::from_secs(10)).ok()?;
        let owned = OwnedSocket::take(
            &mut SOCKET_FILES.lock().unwrap_or_else(|e| e.into_inner()),
            socket,
        );
        let on_end: Box<dyn FnOnce() + Send> = Box::new(move || {
            owned.remove();
            on_end();
        });
        let pid = match &hello {
            Note::Hello { pid, .. } => *pid,
            _ => return None,
        };
        Some(Self::connected(
            name, pid, channel, hello, console, None, None, on_end,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn connected(
        name: &str,
        pid: u32,
        channel: Channel,
        hello: Note,
        console: ConsoleLog,
        child: Option<Child>,
        resources: Option<Resources>,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> DomainProcess {
        let status = match &hello {
            Note::Hello { status, .. } => status_of(status),
            _ => status_of(&StatusReport {
                state: "running".into(),
                boots: 1,
                message: None,
                held_for_memory: false,
                uptime_ms: 0,
                version: 0,
            }),
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            seen: Mutex::new(Seen {
                status,
                gone: false,
            }),
            changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            console,
            child: Mutex::new(child),
            resources: Mutex::new(resources),
            ports: Mutex::new(Vec::new()),
        });
        let writer = channel.try_clone().unwrap_or_else(|_| {
            // A socket that cannot be duplicated cannot be served: the reader sees it close.
            channel.shutdown();
            Channel::pair().map(|(a, _)| a).expect("a socket pair")
        });
        let writer = Arc::new(Mutex::new(Some(writer)));
        let (s, w) = (shared.clone(), writer.clone());
        let _ = std::thread::Builder::new()
            .name(format!("dom-{name}"))
            .spawn(move || {
                read_loop(&s, &channel);
                drop(channel);
                drop(w.lock().unwrap_or_else(|e| e.into_inner()).take());
                on_end();
            });
        DomainProcess {
            shared,
            writer,
            next_id: AtomicU64::new(1),
            pid,
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The domain's state as last reported.
    pub fn status(&self) -> Status {
        self.shared.lock().status.clone()
    }

    /// Sends a call and waits at most `timeout` for its reply.
    fn call(&self, request: Request, timeout: Duration) -> Result<Note, String> {
        self.call_with(request, &[], timeout)
    }

    /// Sends a call with descriptors `fds` and waits at most `timeout` for its reply.
    fn call_with(
        &self,
        request: Request,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Note, String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = sync_channel(1);
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // Registered before this check, so a reader that ends later fails this call at once.
        let gone = self.shared.lock().gone;
        let sent = match self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(w) => w.send(&wire::encode(&Call { id, request }), fds),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        };
        let answer = match sent {
            _ if gone => Err("the domain process is gone".to_string()),
            Err(e) => Err(format!("the domain process is gone: {e}")),
            Ok(()) => rx.recv_timeout(timeout).map_err(|e| match e {
                RecvTimeoutError::Timeout => NO_ANSWER.to_string(),
                RecvTimeoutError::Disconnected => {
                    "the domain process ended before it answered".to_string()
                }
            }),
        };
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        answer
    }

    /// A call whose reply only says whether it worked.
    fn act(&self, request: Request) -> Result<(), String> {
        self.act_with(request, &[])
    }

    /// [`DomainProcess::act`], handing the process descriptors `fds` with the call.
    fn act_with(&self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        if !self.status().state.is_active() {
            return Err(format!("the domain is {}", self.status().state.name()));
        }
        match self.call_with(request, fds, CALL_TIMEOUT)? {
            Note::Reply { error: None, .. } => Ok(()),
            Note::Reply { error: Some(e), .. } => Err(e),
            _ => Err("the domain process answered out of turn".into()),
        }
    }

    /// Parks every vCPU. Only a running domain can be paused.
    pub fn pause(&self) -> Result<(), String> {
        self.act(Request::Pause)
    }

    /// Lets a paused domain run again.
    pub fn unpause(&self) -> Result<(), String> {
        self.act(Request::Unpause)
    }

    /// The memory policy holds the running domain, paused (`hold`), or lets the domain it
    /// holds run again.
    pub fn hold_for_memory(&self, hold: bool) -> Result<(), String> {
        self.act(Request::HoldForMemory { hold })
    }

    /// A hard reset.
    pub fn reset(&self) -> Result<(), String> {
        self.act(Request::Reset)
    }

    /// Presses the ACPI power button. A domain the memory policy holds is let go first, so
    /// that its guest hears the button (the policy may hold it again while it shuts down).
    pub fn press_power_button(&self) -> Result<(), String> {
        if self.status().held_for_memory {
            self.hold_for_memory(false)?;
        }
        self.act(Request::PowerButton)
    }

    /// Applies a control `action` to the running domain's device in slot `slot` (its rate
    /// limits, its backend, its link), handing over the descriptors the action carries.
    pub fn device_control(
        &self,
        slot: usize,
        action: Action,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), String> {
        self.act_with(Request::DeviceControl { slot, action }, fds)
    }

    /// Asks the process to have the host page out about `bytes` of its guest's resident
    /// memory, chosen at random (host swapping, the memory policy's last resort).
    pub fn page_out(&self, bytes: u64) -> Result<(), String> {
        self.act(Request::PageOut { bytes })
    }

    /// Puts the VIF in slot `slot` of the running domain on the switch port
    /// `lease`, and keeps the port for as long as the process runs.
    pub fn hand_port(&self, slot: usize, lease: PortLease) -> Result<(), String> {
        let action = Action::ReplaceBackend {
            port: lease.name.clone(),
        };
        self.device_control(slot, action, &[lease.socket.as_fd()])?;
        self.shared
            .ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lease);
        Ok(())
    }

    /// Saves the domain to `file` (opened for writing by the control plane) and stops it
    /// there; its process ends after. The outer error says the process did not answer within
    /// `timeout` (it may still be saving); the inner one, why it refused or failed.
    pub fn save(
        &self,
        file: &std::fs::File,
        spec: vmm::DomainSpec,
        timeout: Duration,
    ) -> Result<Result<vmm::SaveReport, String>, String> {
        if !self.status().state.is_active() {
            return Ok(Err(format!("the domain is {}", self.status().state.name())));
        }
        Ok(
            match self.call_with(
                Request::Save {
                    spec: Box::new(spec),
                },
                &[file.as_fd()],
                timeout,
            )? {
                Note::Reply {
                    error: None,
                    saved: Some(report),
                    ..
                } => Ok(report),
                Note::Reply { error: Some(e), .. } => Err(e),
                _ => Err("the domain process answered a save without saying what it wrote".into()),
            },
        )
    }

    /// Migrates the domain over `conn` (a connection to a daemon awaiting it); its process
    /// ends once the receiver runs it. The outer error says the process did not answer in
    /// time; the inner one, why the migration failed (the domain runs on here).
    pub fn migrate(
        &self,
        conn: &std::net::TcpStream,
        spec: vmm::DomainSpec,
        params: vmm::migration::MigrateParams,
    ) -> Result<Result<vmm::migration::MigrationReport, String>, String> {
        if !self.status().state.is_active() {
            return Ok(Err(format!("the domain is {}", self.status().state.name())));
        }
        Ok(
            match self.call_with(
                Request::Migrate {
                    spec: Box::new(spec),
                    params,
                },
                &[conn.as_fd()],
                MIGRATION_TIMEOUT,
            )? {
                Note::Reply {
                    error: None,
                    migrated: Some(report),
                    ..
                } => Ok(*report),
                Note::Reply { error: Some(e), .. } => Err(e),
                _ => Err("the domain process answered a migration without a report".into()),
            },
        )
    }

    /// Stops the domain at once and waits (a little) for its process to end.
    pub fn destroy(&self) {
        if self.act(Request::Destroy).is_err() {
            // Unresponsive: the process goes anyway.
            if let Some(child) = self
                .shared
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                let _ = child.kill();
            } else if let Ok(p) = hv::process::Pidfd::open(self.pid) {
                let _ = p.kill();
            }
        }
        self.wait_gone(Duration::from_secs(10));
    }

    /// Waits at most `timeout` until the process has ended (its channel closed, its resources
    /// released: its switch ports are off the switch); returns whether it has.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.lock();
        while !seen.gone {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self
                .shared
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits at most `timeout` until the domain has stopped; returns whether it has.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.lock();
        while seen.status.state.is_active() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self
                .shared
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The running machine's counters, if it answers in time.
    pub fn stats(&self) -> Option<MachineStats> {
        if !self.status().state.is_active() {
            return None;
        }
        match self.call(Request::Stats, STATS_TIMEOUT) {
            Ok(Note::Reply { stats, .. }) => stats,
            _ => None,
        }
    }

    /// Sends console input to the guest (dropped unless the domain runs).
    pub fn console_input(&self, bytes: &[u8]) {
        if self.status().state.is_active() {
            if let Some(w) = self
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                let _ = w.send(&wire::console(wire::CONSOLE_IN, bytes), &[]);
            }
        }
    }
}

impl DomainProcess {
    /// Asks the process to make a system call its thread of `kind` may not (the seccomp
    /// tests' hook): the kernel kills the process.
    pub fn forbidden_call(&self, thread: wire::ThreadKind) -> Result<(), String> {
        self.act(Request::ForbiddenCall { thread })
    }

    /// Asks the process to make a vCPU or its I/O thread panic (the tests' hook for a thread
    /// that fails): the domain ends crashed, naming the thread.
    pub fn panic(&self, thread: wire::ThreadKind) -> Result<(), String> {
        self.act(Request::Panic { thread })
    }
}

/// Who owns each domain's channel socket path: the generation of the process that bound it (or
/// was attached to through it) last. Held while a path is replaced and bound, or checked and
/// removed. A domain started again at once (a reboot) binds the path its ended process's cleanup
/// is about to remove, and the new socket file may even get the old one's inode number, so only
/// the owner of the newest generation removes the file (a full-suite run, then a `daemon` test,
/// saw the new process's socket gone: "cannot reach the domain process").
static SOCKET_FILES: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());
/// The last generation given out.
static SOCKET_GENERATION: AtomicU64 = AtomicU64::new(0);

/// A domain's channel socket file, as one process of the domain took it: removed once the
/// process has ended, unless a newer process of the domain has taken the path since.
struct OwnedSocket {
    path: PathBuf,
    generation: u64,
}

impl OwnedSocket {
    /// Takes `path` (just bound, or attached to) for a new generation; `files` is
    /// [`SOCKET_FILES`], held.
    fn take(files: &mut BTreeMap<PathBuf, u64>, path: &Path) -> OwnedSocket {
        let generation = SOCKET_GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        files.insert(path.to_path_buf(), generation);
        OwnedSocket {
            path: path.to_path_buf(),
            generation,
        }
    }

    fn remove(&self) {
        let mut files = SOCKET_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if files.get(&self.path) == Some(&self.generation) {
            let _ = std::fs::remove_file(&self.path);
            files.remove(&self.path);
        }
    }
}

fn kill_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the answer to a launch or an attach.
fn await_hello(channel: &Channel, timeout: Duration) -> Result<Note, String> {
    let _ = channel.set_read_timeout(Some(timeout));
    let answer = match channel.recv() {
        Ok(Some((bytes, _))) => wire::decode::<Note>(&bytes),
        Ok(None) => Err("the domain process ended before it answered".into()),
        Err(e) => Err(format!("the domain process did not answer: {e}")),
    };
    let _ = channel.set_read_timeout(None);
    match answer? {
        hello @ Note::Hello { .. } => Ok(hello),
        Note::Reply { error: Some(e), .. } => Err(e),
        _ => Err("the domain process answered out of turn".into()),
    }
}

/// Takes everything the process sends until its channel closes.
fn read_loop(shared: &Arc<Shared>, channel: &Channel) {
    loop {
        let bytes = match channel.recv() {
            Ok(Some((bytes, _))) => bytes,
            Ok(None) | Err(_) => break,
        };
        match bytes.first() {
            Some(&wire::CONSOLE_OUT) => {
                use std::io::Write;
                let _ = shared.console.clone().write_all(&bytes[1..]);
            }
            Some(&wire::CONSOLE_REPLAY) => shared.console.replace(&bytes[1..]),
            Some(b'{') => match wire::decode::<Note>(&bytes) {
                Ok(Note::Status(report)) => {
                    if shared.update(&report) {
                        tracing_state(&shared.name, &shared.lock().status);
                    }
                }
                Ok(note @ Note::Reply { .. }) => {
                    let Note::Reply { id, status, .. } = &note else {
                        continue;
                    };
                    // A reply may be the first to say the state changed (a stats call
                    // answered between the guest's power-off and the process's own note of
                    // it): the change is logged whichever tells it first.
                    if let Some(report) = status {
                        if shared.update(report) {
                            tracing_state(&shared.name, &shared.lock().status);
                        }
                    }
                    let waiter = shared
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id);
                    if let Some(tx) = waiter {
                        let _ = tx.try_send(note);
                    }
                }
                Ok(Note::Hello { .. }) => {}
                Err(e) => tracing::info!("domain '{}': {e}", shared.name),
            },
            _ => {}
        }
    }
    // The channel closed: the process ended (or another control plane took it over). Its
    // resources go (its switch ports leave the switch).
    let exit = reap(shared);
    drop(
        shared
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    shared
        .ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    // Calls still waiting for a reply get none: they fail now rather than at their timeout.
    shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let mut seen = shared.lock();
    seen.gone = true;
    if seen.status.state.is_active() {
        seen.status.state = RunState::Crashed;
        seen.status.message = Some(match exit {
            Some(how) => format!("the domain process ended ({how})"),
            None => "the domain process ended".into(),
        });
        tracing_state(&shared.name, &seen.status);
    }
    drop(seen);
    shared.changed.notify_all();
}

/// Waits for the process if it is our child; says how it ended.
fn reap(shared: &Shared) -> Option<String> {
    let mut slot = shared.child.lock().unwrap_or_else(|e| e.into_inner());
    let child = slot.as_mut()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return Some(match (status.code(), status.signal()) {
                    (_, Some(sig)) => format!("killed by signal {sig}"),
                    (Some(code), _) => format!("exit status {code}"),
                    _ => status.to_string(),
                });
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn tracing_state(name: &str, status: &Status) {
    match status.message.as_deref().filter(|m| !m.is_empty()) {
        Some(why) => tracing::info!("domain '{name}' is {}: {why}", status.state.name()),
        None => tracing::info!("domain '{name}' is {}", status.state.name()),
    }
}
