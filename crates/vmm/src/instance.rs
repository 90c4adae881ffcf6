//! A domain run by the control plane: it boots in its own supervisor thread and is paused,
//! resumed, reset and destroyed from other threads, which also read its state and counters.
//!
//! The supervisor thread builds a machine, runs it, and on a guest reboot builds a fresh one
//! (unless the policy says stop). Whatever the guest does — triple fault, KVM internal error,
//! a device marked broken — ends in this domain's state ([`RunState::Crashed`] with a message),
//! never in the process: even a panic in its threads is caught and reported.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::virtio::Action;
use hv::Hypervisor;

use crate::console::{ConsoleInput, ConsoleSink};
use crate::control::StopReason;
use crate::domain::{check_vcpus, Machine, MachineView, Outcome};
use crate::error::DomainError;
use crate::resources::Resources;
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::spec::{DomainSpec, OnReboot};

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Its vCPUs run.
    Running,
    /// Its vCPUs are parked and its devices quiesced (no guest queue is served; host input is
    /// still taken in, bounded).
    Paused,
    /// It stopped: powered off, destroyed, or rebooted under [`OnReboot::Exit`].
    Shutoff,
    /// It failed; [`Status::message`] says how.
    Crashed,
}

impl RunState {
    /// The state's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutoff => "shutoff",
            RunState::Crashed => "crashed",
        }
    }

    /// Whether the domain has a machine (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Running | RunState::Paused)
    }
}

/// A snapshot of a domain's state.
#[derive(Clone, Debug)]
pub struct Status {
    /// Its state.
    pub state: RunState,
    /// Machines built so far (1 + guest reboots).
    pub boots: u32,
    /// Why it stopped or crashed, once it has.
    pub message: Option<String>,
    /// Paused by the control plane's memory policy ([`Instance::hold_for_memory`]), not by
    /// its user: only the policy lets it run again.
    pub held_for_memory: bool,
    /// How it ended, once it has stopped without crashing.
    pub outcome: Option<Outcome>,
    /// When the current machine started.
    pub since: Instant,
    /// Counts the changes of this status: a later report of it has a larger version.
    pub version: u64,
}

struct Inner {
    status: Status,
    machine: Option<MachineView>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    input: ConsoleInput,
    /// The control plane asked for a reset: boot again whatever the reboot policy.
    reset_wanted: AtomicBool,
    /// The control plane asked for the domain to stop for good (checked under `inner`'s lock
    /// before a machine is published, so a destroy between two boots is never missed).
    destroy_wanted: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, update: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        update(&mut inner);
        inner.status.version += 1;
        drop(inner);
        self.changed.notify_all();
    }
}

/// A domain run by the control plane. Dropping it destroys the domain.
pub struct Instance {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// What every boot builds its machine from (a VIF handed a new switch port keeps it here
    /// for the boots after a reboot).
    resources: Arc<Mutex<Resources>>,
    /// How many disks the domain has (its VIFs' slots follow them and the entropy device).
    disks: usize,
    /// The definition the domain started with: a save checks the one it records against it.
    spec: DomainSpec,
    /// The MSRs a snapshot keeps of each vCPU, or why KVM would not list them.
    msrs_to_save: Result<Vec<u32>, String>,
    /// Held for writing by a save from its pause to its stop; every other change of the
    /// running domain (pause, unpause, reset, power button, device control) holds it for
    /// reading, and is refused while a save holds it, so nothing runs the guest or changes a
    /// device between the state a save took and the stop. (Destroy is not held back.)
    saving: std::sync::RwLock<()>,
    /// Where a migration of the domain is, while one runs.
    migration: Mutex<Option<crate::migration::Progress>>,
    /// Held by a pause, an unpause and a hold for memory from their look at the state to
    /// their change of it, so that a user's pause and the policy's hold never interleave.
    pausing: Mutex<()>,
}

/// The answer to a change asked for while a save (or a migration) runs.
pub const BEING_SAVED: &str = "the domain is being saved";
/// Why a domain the memory policy holds cannot be unpaused by its user.
const HELD_FOR_MEMORY: &str = "the memory policy holds the domain: the memory pool is low and \
    it holds more than its target; it runs again once the pool is no longer low or it is back \
    at its target";

/// What [`Instance::save`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaveReport {
    /// Bytes of the snapshot.
    pub bytes: u64,
    /// Pages of guest RAM it holds.
    pub pages: u64,
    /// Pages left out because they held only zeros.
    pub zero_pages: u64,
}

/// Longest wait for the vCPUs to park on a pause, or to leave on a destroy.
const TRANSITION_TIMEOUT: Duration = Duration::from_secs(15);

impl Instance {
    /// Builds the first machine of `cfg` on the host resources `res` (opened and checked by
    /// whoever opened them) and starts it; with a snapshot among the resources, the first
    /// machine is the one the snapshot holds, and it runs on from where it was saved. Errors
    /// in building the machine are returned here;
    /// later failures show in [`Instance::status`]. Console output goes to `sink`; `on_stop`
    /// hears the final state once the domain stops for good.
    pub fn start(
        cfg: DomainSpec,
        mut res: Resources,
        sink: ConsoleSink,
        on_stop: Box<dyn FnOnce(&Status) + Send>,
    ) -> Result<Instance, DomainError> {
        let kvm = res
            .kvm
            .try_clone()
            .map_err(DomainError::host("duplicating /dev/kvm"))?;
        let hv = Hypervisor::from_file(kvm, res.flavour)?;
        check_vcpus(&cfg, &hv)?;
        hv::install_kick_handler()?;
        let msrs_to_save = hv.msrs_to_save().map_err(|e| e.to_string());
        let migrated_in = res.migration.is_some();
        let first = match (res.snapshot.take(), res.migration.take()) {
            (Some(file), _) => restore_machine(&hv, &cfg, &res, &sink, file)?,
            (None, Some(conn)) => {
                let (machine, paused) = crate::migration::receive(&hv, &cfg, &res, &sink, conn)?;
                // Paused on the sender, paused here: its vCPUs park before they run.
                if paused {
                    machine.view().control.want_pause(true);
                }
                machine
            }
            (None, None) => Machine::build(&hv, &cfg, &res, &sink)?,
        };
        let disks = cfg.disks.len();
        if migrated_in {
            announce_vifs(
                first.view().io,
                (0..cfg.nets.len()).map(|i| disks + crate::virtio::FIXED_DEVICES + i),
            );
        }
        let spec = cfg.clone();
        let res = Arc::new(Mutex::new(res));
        let resources = res.clone();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                status: Status {
                    state: RunState::Running,
                    boots: 1,
                    message: None,
                    held_for_memory: false,
                    outcome: None,
                    since: Instant::now(),
                    version: 0,
                },
                machine: Some(first.view()),
            }),
            changed: Condvar::new(),
            input: ConsoleInput::default(),
            reset_wanted: AtomicBool::new(false),
            destroy_wanted: AtomicBool::new(false),
        });
        let s = shared.clone();
        let supervisor = std::thread::Builder::new()
            .name("domain".into())
            .spawn(move || {
                let s2 = s.clone();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    supervise(&s2, hv, cfg, res, sink, first)
                }));
                let ending = result.unwrap_or_else(|_| {
                    Err("internal error: the domain's supervisor panicked".to_string())
                });
                s.set(|i| {
                    i.machine = None;
                    i.status.held_for_memory = false;
                    match ending {
                        Ok(outcome) => {
                            i.status.state = RunState::Shutoff;
                            i.status.message = Some(outcome.describe().to_string());
                            i.status.outcome = Some(outcome);
                        }
                        Err(crash) => {
                            i.status.state = RunState::Crashed;
                            i.status.message = Some(crash);
                        }
                    }
                });
                on_stop(&s.lock().status);
            })
            .map_err(DomainError::host("starting the domain's thread"))?;
        Ok(Instance {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
            resources,
            disks,
            spec,
            msrs_to_save,
            saving: std::sync::RwLock::new(()),
            migration: Mutex::new(None),
            pausing: Mutex::new(()),
        })
    }

    /// Checks that `spec`, a definition a save records or a migration sends (`what`), describes
    /// this very machine: its memory, vCPUs, disks and VIFs.
    fn check_shape(&self, spec: &DomainSpec, what: &str) -> Result<(), String> {
        let shape = |s: &DomainSpec| (s.memory, s.vcpus, s.disks.len(), s.nets.len());
        if shape(spec) != shape(&self.spec) {
            return Err(format!(
                "the definition to {what} differs from the running domain in memory, vCPUs, \
                 disks or VIFs"
            ));
        }
        Ok(())
    }

    /// Holds back a save while another change of the domain is made; refused while one runs.
    fn change(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>, String> {
        match self.saving.try_read() {
            Ok(guard) => Ok(guard),
            // A panic while it was held (caught by the supervisor) does not stop changes.
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(BEING_SAVED.to_string()),
        }
    }

    /// Saves the domain to `out` and stops it there (`vessel save`): a running domain is
    /// paused first (its vCPUs parked, its devices quiesced, so the snapshot is one instant of
    /// it and nothing the guest sees happens after it), then its vCPUs, interrupt controllers,
    /// clock, devices and memory are written, the file is synced, and the domain stops with
    /// [`Outcome::Saved`]. If anything fails the domain is left as it was (running again if
    /// it was running) and the error says what failed.
    pub fn save(&self, out: std::fs::File, spec: DomainSpec) -> Result<SaveReport, String> {
        // The definition recorded must describe this very machine.
        self.check_shape(&spec, "record")?;
        let _saving = self.saving.write().unwrap_or_else(|e| e.into_inner());
        let was_running = match self.status().state {
            RunState::Running => true,
            RunState::Paused => false,
            other => return Err(format!("the domain is {}", other.name())),
        };
        if was_running {
            if let Err(e) = self.transition(RunState::Running, RunState::Paused, true) {
                // A pause that came too late is lifted (and never left wanted): the domain
                // runs on, as it was.
                if let Some(m) = self.machine() {
                    m.control.want_pause(false);
                }
                let _ = self.transition(RunState::Paused, RunState::Running, false);
                return Err(e);
            }
        }
        let machine = self.machine().ok_or("the domain has no machine")?;
        match self.write_snapshot(&machine, &spec, out) {
            Ok(report) => {
                // The machine whose state was taken stops (no other could have been built
                // meanwhile: resets wait for the save).
                machine.control.stop(StopReason::Saved);
                self.join_supervisor();
                Ok(report)
            }
            Err(e) => {
                if was_running {
                    let _ = self.transition(RunState::Paused, RunState::Running, false);
                }
                Err(e)
            }
        }
    }

    /// Migrates the running (or paused) domain over `conn`, a connection to a daemon that
    /// awaits it (`vessel migrate`; [`crate::migration`]): its memory is copied while it
    /// runs, then it pauses for the rest and its state, and once the receiver is ready it
    /// stops here with [`Outcome::Migrated`]. Until then any failure leaves it running here
    /// (or paused, as it was) and says why. `spec` is the definition to send.
    pub fn migrate(
        &self,
        conn: OwnedFd,
        spec: DomainSpec,
        params: crate::migration::MigrateParams,
    ) -> Result<crate::migration::MigrationReport, String> {
        self.check_shape(&spec, "send")?;
        let msrs = self
            .msrs_to_save
            .as_ref()
            .map_err(|e| format!("KVM would not list the MSRs to save: {e}"))?
            .clone();
        let _saving = self.saving.write().unwrap_or_else(|e| e.into_inner());
        let status = self.status();
        let was_running = match status.state {
            RunState::Running => true,
            RunState::Paused => false,
            other => return Err(format!("the domain is {}", other.name())),
        };
        // One the memory policy holds runs on the target (whose own policy decides), and
        // stays held here if the migration fails.
        let run_there = was_running || status.held_for_memory;
        let machine = self.machine().ok_or("the domain has no machine")?;
        let conn = std::net::TcpStream::from(conn);
        let mut sender = crate::migration::Sender::start(&conn, &machine, &spec, params)?;
        let mut paused = false;
        let set_progress = |p: Option<crate::migration::Progress>| {
            *self.migration.lock().unwrap_or_else(|e| e.into_inner()) = p;
        };
        let sent = (|| {
            sender.precopy(&|p| set_progress(Some(p)))?;
            // The guest's blackout begins with the pause asked for.
            let paused_at = Instant::now();
            if was_running {
                self.transition(RunState::Running, RunState::Paused, true)?;
                paused = true;
            }
            sender.mark("paused");
            // A guest that rebooted meanwhile runs on a machine of its own, whose memory
            // was never sent.
            if !self
                .machine()
                .is_some_and(|now| Arc::ptr_eq(&now.memory, &machine.memory))
            {
                return Err("the guest rebooted during the migration".to_string());
            }
            let saved = machine
                .parts
                .capture(&spec, &msrs)
                .map_err(|e| format!("taking the machine's state: {e}"))?;
            sender.mark("state taken");
            sender.finish(&saved)?;
            sender.go(!run_there)?;
            Ok::<_, String>(paused_at)
        })();
        sender.stop_logging();
        set_progress(None);
        let paused_at = match sent {
            Ok(at) => at,
            Err(e) => {
                if paused || was_running {
                    // A pause that came too late is lifted too (and never left wanted).
                    machine.control.want_pause(false);
                    let _ = self.transition(RunState::Paused, RunState::Running, false);
                }
                return Err(e);
            }
        };
        // The receiver was told to run it: this copy never runs again.
        machine.control.stop(StopReason::Migrated);
        let report = sender.await_running(paused_at);
        self.join_supervisor();
        Ok(report)
    }

    /// Where a migration of the domain is, while one runs.
    pub fn migration_progress(&self) -> Option<crate::migration::Progress> {
        *self.migration.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_snapshot(
        &self,
        machine: &MachineView,
        spec: &DomainSpec,
        out: std::fs::File,
    ) -> Result<SaveReport, String> {
        let msrs = self
            .msrs_to_save
            .as_ref()
            .map_err(|e| format!("KVM would not list the MSRs to save: {e}"))?;
        let saved = machine
            .parts
            .capture(spec, msrs)
            .map_err(|e| format!("taking the machine's state: {e}"))?;
        let failed = |e: &dyn std::fmt::Display| format!("writing the snapshot: {e}");
        let mut writer = SnapshotWriter::new(std::io::BufWriter::with_capacity(1 << 20, out))
            .map_err(|e| failed(&e))?;
        writer.machine(&saved).map_err(|e| failed(&e))?;
        let memory = writer
            .memory(
                &machine.memory,
                &crate::layout::ram_regions(self.spec.memory),
            )
            .map_err(|e| failed(&e))?;
        let file = writer
            .finish()
            .map_err(|e| failed(&e))?
            .into_inner()
            .map_err(|e| failed(&e.into_error()))?;
        file.sync_all().map_err(|e| failed(&e))?;
        // The file is new (the control plane creates it): its length is what was written.
        let bytes = file.metadata().map_err(|e| failed(&e))?.len();
        Ok(SaveReport {
            bytes,
            pages: memory.pages,
            zero_pages: memory.zero_pages,
        })
    }

    fn join_supervisor(&self) {
        let handle = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Applies a control `action` to the running machine's device in slot `slot`, with the
    /// descriptors it carries, on the machine's I/O thread. A VIF given a new switch port keeps
    /// it for the machines of later boots too.
    pub fn device_control(
        &self,
        slot: usize,
        action: Action,
        fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let _change = self.change()?;
        let machine = {
            let inner = self.shared.lock();
            match inner.machine.clone() {
                Some(m) if inner.status.state.is_active() => m,
                _ => return Err(format!("the domain is {}", inner.status.state.name())),
            }
        };
        let vif = crate::virtio::vif_index(self.disks, slot);
        let keep = match (&action, vif, fds.first()) {
            (Action::ReplaceBackend { port }, Some(index), Some(fd)) => {
                let dup = fd
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate the port's descriptor: {e}"))?;
                Some((index, UnixDatagram::from(dup), port.clone()))
            }
            _ => None,
        };
        machine.io.control(slot, action, fds)?;
        if let Some((index, socket, port)) = keep {
            self.resources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace_port(index, socket, &port)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Asks the host to page out about `bytes` of the running or paused machine's resident
    /// guest memory, at random (host swapping: see `hv::paging`); returns the resident bytes
    /// it advised.
    pub fn page_out(&self, bytes: u64) -> Result<u64, String> {
        let machine = {
            let inner = self.shared.lock();
            match inner.machine.clone() {
                Some(m) if inner.status.state.is_active() => m,
                _ => return Err(format!("the domain is {}", inner.status.state.name())),
            }
        };
        Ok(hv::paging::page_out(&machine.memory, bytes))
    }

    /// The domain's state now.
    pub fn status(&self) -> Status {
        self.shared.lock().status.clone()
    }

    /// The running machine, if any (for counters and the console UART).
    pub fn machine(&self) -> Option<MachineView> {
        self.shared.lock().machine.clone()
    }

    /// Feeds the guest's console.
    pub fn console_input(&self) -> &ConsoleInput {
        &self.shared.input
    }

    /// Parks every vCPU. Only a running domain can be paused; pausing one the memory policy
    /// holds makes the pause its user's (the policy no longer lets it run).
    pub fn pause(&self) -> Result<(), String> {
        let _change = self.change()?;
        let _pausing = self.pausing.lock().unwrap_or_else(|e| e.into_inner());
        if self.status().held_for_memory {
            self.shared.set(|i| i.status.held_for_memory = false);
            return Ok(());
        }
        self.transition(RunState::Running, RunState::Paused, true)
    }

    /// Lets a paused domain run again; refused while the memory policy holds it.
    pub fn unpause(&self) -> Result<(), String> {
        let _change = self.change()?;
        let _pausing = self.pausing.lock().unwrap_or_else(|e| e.into_inner());
        if self.status().held_for_memory {
            return Err(HELD_FOR_MEMORY.into());
        }
        self.transition(RunState::Paused, RunState::Running, false)
    }

    /// The control plane's memory policy holds a running domain (`true`) or lets the domain
    /// it holds run again (`false`): ESX blocks the virtual machines above their targets while
    /// free memory is low, so that they allocate nothing more while the host pages them out.
    /// A held domain is paused (its vCPUs parked; its memory can still be paged out, merged
    /// and sampled no more) and says it is held; its user's unpause is refused, its user's
    /// pause makes the pause theirs. Holding a domain that does not run, or letting go of one
    /// the policy does not hold, does nothing.
    pub fn hold_for_memory(&self, hold: bool) -> Result<(), String> {
        let _change = self.change()?;
        let _pausing = self.pausing.lock().unwrap_or_else(|e| e.into_inner());
        let status = self.status();
        if hold {
            if status.state != RunState::Running || status.held_for_memory {
                return Ok(());
            }
            self.transition(RunState::Running, RunState::Paused, true)?;
            self.shared.set(|i| {
                i.status.held_for_memory = i.status.state == RunState::Paused;
            });
            Ok(())
        } else {
            if !status.held_for_memory {
                return Ok(());
            }
            self.shared.set(|i| i.status.held_for_memory = false);
            self.transition(RunState::Paused, RunState::Running, false)
        }
    }

    fn transition(&self, from: RunState, to: RunState, pause: bool) -> Result<(), String> {
        let inner = self.shared.lock();
        if inner.status.state != from {
            return Err(format!(
                "the domain is {}, not {}",
                inner.status.state.name(),
                from.name()
            ));
        }
        let Some(machine) = inner.machine.clone() else {
            return Err("the domain has no machine".into());
        };
        machine.control.want_pause(pause);
        let (inner, left_in_time) = self.wait_while(inner, TRANSITION_TIMEOUT, |s| s.state == from);
        if !left_in_time {
            return Err(format!("the domain did not become {} in time", to.name()));
        }
        if inner.status.state == to {
            Ok(())
        } else {
            Err(format!("the domain is {} now", inner.status.state.name()))
        }
    }

    /// Resets the domain: a fresh machine boots, whatever the reboot policy (a hard reset, as a
    /// reset button; the guest is not asked).
    pub fn reset(&self) -> Result<(), String> {
        let _change = self.change()?;
        let inner = self.shared.lock();
        let Some(machine) = inner
            .machine
            .as_ref()
            .filter(|_| inner.status.state.is_active())
        else {
            return Err(format!("the domain is {}", inner.status.state.name()));
        };
        self.shared.reset_wanted.store(true, Ordering::SeqCst);
        machine.control.want_pause(false);
        machine.control.stop(StopReason::Reset);
        Ok(())
    }

    /// Presses the domain's ACPI power button: a guest that handles it powers off cleanly.
    pub fn press_power_button(&self) -> Result<(), String> {
        let _change = self.change()?;
        let inner = self.shared.lock();
        match inner.machine.as_ref() {
            Some(machine) if inner.status.state.is_active() => machine
                .power_button
                .press()
                .map_err(|e| format!("cannot press the power button: {e}")),
            _ => Err(format!("the domain is {}", inner.status.state.name())),
        }
    }

    /// Stops the domain at once (its vCPUs leave the guest, its memory is freed) and waits for
    /// it. Destroying a stopped domain does nothing.
    pub fn destroy(&self) {
        {
            let inner = self.shared.lock();
            self.shared.destroy_wanted.store(true, Ordering::SeqCst);
            if let Some(machine) = &inner.machine {
                machine.control.stop(StopReason::Destroyed);
            }
        }
        self.join_supervisor();
    }

    /// Waits (at most `timeout`) until the domain's state, boot count or message differ from
    /// `last`; returns the status then.
    pub fn wait_status_change(&self, last: &Status, timeout: Duration) -> Status {
        let inner = self.shared.lock();
        let same = |s: &Status| {
            s.state == last.state && s.boots == last.boots && s.message == last.message
        };
        self.wait_while(inner, timeout, same).0.status.clone()
    }

    /// Waits (at most `timeout`) until the domain has stopped; returns whether it has.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let inner = self.shared.lock();
        self.wait_while(inner, timeout, |s| s.state.is_active()).1
    }

    /// Waits (at most `timeout`) while `cond` holds of the status; returns the guard and
    /// whether `cond` stopped holding in time.
    fn wait_while<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        timeout: Duration,
        cond: impl Fn(&Status) -> bool,
    ) -> (MutexGuard<'a, Inner>, bool) {
        let deadline = Instant::now() + timeout;
        while cond(&inner.status) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (inner, false);
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        (inner, true)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The supervisor: runs machines until the domain stops for good; returns how it ended, or
/// why it crashed.
fn supervise(
    shared: &Arc<Shared>,
    hv: Hypervisor,
    cfg: DomainSpec,
    res: Arc<Mutex<Resources>>,
    sink: ConsoleSink,
    first: Machine,
) -> Result<Outcome, String> {
    let mut next = Some(first);
    loop {
        let machine = match next.take() {
            Some(m) => m,
            None => match Machine::build(
                &hv,
                &cfg,
                &res.lock().unwrap_or_else(|e| e.into_inner()),
                &sink,
            ) {
                Ok(m) => m,
                Err(e) => return Err(format!("rebuilding after a reboot: {e}")),
            },
        };
        let view = machine.view();
        {
            let mut inner = shared.lock();
            if shared.destroy_wanted.load(Ordering::SeqCst) {
                return Ok(Outcome::Destroyed);
            }
            if inner.machine.is_none() {
                inner.status.boots += 1;
            }
            inner.machine = Some(view.clone());
            inner.status.state = RunState::Running;
            inner.status.held_for_memory = false;
            inner.status.since = Instant::now();
            inner.status.version += 1;
        }
        shared.changed.notify_all();
        shared.input.attach(view.serial.clone());
        let reason = machine.run(&|paused| {
            shared.set(|i| {
                if i.status.state.is_active() {
                    i.status.state = if paused {
                        RunState::Paused
                    } else {
                        RunState::Running
                    };
                }
            })
        });
        shared.input.detach();
        let reset_wanted = shared.reset_wanted.swap(false, Ordering::SeqCst);
        match reason {
            Ok(StopReason::Reset) if reset_wanted || cfg.on_reboot == OnReboot::Restart => {
                shared.set(|i| i.machine = None);
            }
            Ok(StopReason::Reset) => return Ok(Outcome::Rebooted),
            Ok(StopReason::PowerOff) => return Ok(Outcome::PoweredOff),
            Ok(StopReason::Destroyed) => return Ok(Outcome::Destroyed),
            Ok(StopReason::Saved) => return Ok(Outcome::Saved),
            Ok(StopReason::Migrated) => return Ok(Outcome::Migrated),
            Ok(StopReason::Crash(msg)) => return Err(msg),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Has the VIFs in `slots` announce their MAC addresses a few times over the next half
/// second (a migrated domain's network finds it behind its new port; a broadcast may be lost,
/// so it is repeated, as QEMU repeats its own).
fn announce_vifs(io: crate::virtio::IoHandle, slots: impl Iterator<Item = usize>) {
    let slots: Vec<usize> = slots.collect();
    if slots.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            for wait_ms in [0, 50, 150, 300] {
                std::thread::sleep(Duration::from_millis(wait_ms));
                for &slot in &slots {
                    let _ = io.control(slot, Action::Announce, Vec::new());
                }
            }
        });
}

/// The machine the snapshot `file` holds, for the domain `cfg` (which must have its shape:
/// memory, vCPUs, disks, VIFs and balloon features).
fn restore_machine(
    hv: &Hypervisor,
    cfg: &DomainSpec,
    res: &Resources,
    sink: &ConsoleSink,
    file: std::fs::File,
) -> Result<Machine, DomainError> {
    let snap = |e: crate::snapshot::SnapshotError| DomainError::Snapshot(e.to_string());
    let mut reader =
        SnapshotReader::new(std::io::BufReader::with_capacity(1 << 20, file)).map_err(snap)?;
    let mut saved = Some(reader.machine().map_err(snap)?);
    let shape = |s: &DomainSpec| {
        (
            s.memory,
            s.vcpus,
            s.disks.len(),
            s.nets.len(),
            s.free_page_reporting,
        )
    };
    if saved.as_ref().map(|s| shape(&s.spec)) != Some(shape(cfg)) {
        return Err(DomainError::Snapshot(
            "the domain to restore differs from the saved one in memory, vCPUs, disks, VIFs or \
             balloon features"
                .into(),
        ));
    }
    Machine::restore(hv, cfg, res, sink, &mut |memory, ram| {
        reader.memory(memory, ram)?;
        saved.take().ok_or_else(|| {
            crate::snapshot::SnapshotError::Malformed("its memory was asked for twice".into())
        })
    })
}
