//! The [`ControlPlane`] itself: what it holds, and opening it (the state directory and the
//! definitions in it, the virtual switch and its uplink, the control groups, the directories of
//! the domains' channels and logs, page sharing).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::allocation::MemoryPolicy;
use crate::cgroup::Cgroups;
use crate::registry::Registry;
use crate::scheduler::{Policy, Scheduler};
use crate::sharing::{PageSharing, KSM_DIR};
use crate::ControlError;

/// The first uid (and gid) of domain processes: domain `id` runs as `DOMAIN_ID_BASE + id`.
pub const DOMAIN_ID_BASE: u32 = 200_000;

/// How a control plane is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where definitions are kept (`domains/`), and the domains' channels (`run/`) and the
    /// messages of their processes (`logs/`).
    pub state_dir: PathBuf,
    /// A host TAP interface to connect the switch to (created if missing).
    pub uplink: Option<String>,
    /// The control group (in each hierarchy) that holds the domains' groups.
    pub cgroup_parent: String,
    /// Whether the debugging hooks are served (the confinement tests' deliberate bad call).
    pub debug_hooks: bool,
    /// How often the CPU scheduler measures the domains and steers their weights.
    pub sched_interval: Duration,
    /// How the CPU scheduler sets the kernel's weights.
    pub sched_policy: Policy,
    /// Whether identical pages of the domains' memory are kept once (see [`crate::sharing`]).
    pub page_sharing: bool,
    /// The memory all domains together may hold (`None`: the host's memory less a margin; see
    /// [`crate::allocation`]).
    pub memory_pool: Option<u64>,
    /// The idle memory tax (see [`crate::allocation`]).
    pub idle_tax: crate::allocation::IdleTax,
    /// How often each domain's working set is sampled (zero: never; see `vmm::working_set`).
    pub working_set_period: Duration,
}

/// Domain 0: the domains, their processes and groups, and the switch between them.
///
/// A domain process is this same executable run with the hidden verb [`crate::DOMAIN_VERB`]
/// (it hands its channel to `vmm::domain_process::serve`): the program that opens a control
/// plane serves that verb.
pub struct ControlPlane {
    /// Every domain.
    pub(crate) registry: Arc<Registry>,
    /// Where domain processes' channel sockets are (`STATE_DIR/run`).
    pub(crate) run_dir: PathBuf,
    /// Where domain processes' own messages go (`STATE_DIR/logs`).
    pub(crate) log_dir: PathBuf,
    /// The virtual switch between the domains' VIFs.
    pub(crate) switch: Arc<vswitch::SwitchHandle>,
    /// When the control plane started.
    pub(crate) started: Instant,
    /// The same, on the wall clock.
    pub(crate) started_at: SystemTime,
    /// Whether the debugging hooks are served.
    pub(crate) debug_hooks: bool,
    /// Where domains' control groups are.
    pub(crate) cgroups: Arc<Cgroups>,
    /// The CPU scheduler.
    pub(crate) scheduler: Arc<Scheduler>,
    /// The memory policy over the memory pool.
    pub(crate) memory_policy: Arc<MemoryPolicy>,
    /// How often each domain's working set is sampled.
    pub(crate) working_set_period: Duration,
    /// Page sharing, if on and the host can (until [`ControlPlane::stop_page_sharing`]).
    pub(crate) sharing: Mutex<Option<PageSharing>>,
}

impl ControlPlane {
    /// Opens the state directory (creating what is missing, mode 0700) and loads the
    /// definitions in it (a file that does not load is reported in the log and kept), starts the
    /// switch (joined to its uplink, if any) and finds the host's control groups. Domains left
    /// running by an earlier control plane are not touched yet:
    /// [`ControlPlane::reattach_and_autostart`] takes them over.
    ///
    /// The switch starts a thread: a caller that blocks signals for its own threads to
    /// inherit does so first.
    pub fn open(config: &Config) -> Result<ControlPlane, ControlError> {
        let (registry, warnings) = Registry::open(&config.state_dir).map_err(|e| {
            ControlError::Internal(format!(
                "cannot use the state directory {}: {e}",
                config.state_dir.display()
            ))
        })?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let switch = Arc::new(vswitch::Switch::start().map_err(|e| {
            ControlError::Internal(format!("cannot start the virtual switch: {e}"))
        })?);
        if let Some(tap) = &config.uplink {
            let (file, name) = hv::tap::open_tap(tap).map_err(|e| {
                ControlError::Internal(format!("cannot open the uplink TAP interface {tap}: {e}"))
            })?;
            switch.set_uplink(file, &name).map_err(|e| {
                ControlError::Internal(format!("cannot attach {name} to the switch: {e}"))
            })?;
        }
        let (cgroups, note) = Cgroups::detect(&config.cgroup_parent);
        if let Some(note) = note {
            tracing::warn!("{note}");
        }
        let (registry, cgroups) = (Arc::new(registry), Arc::new(cgroups));
        let scheduler = Arc::new(Scheduler::new(cgroups.clone(), config.sched_policy));
        scheduler.spawn(Arc::downgrade(&registry), config.sched_interval);
        let pool = config.memory_pool.unwrap_or_else(|| {
            crate::allocation::default_pool(vmm::domain::host_memory().unwrap_or(0))
        });
        tracing::info!("memory pool: {} MiB", pool >> 20);
        let memory_policy = MemoryPolicy::new(pool, config.idle_tax);
        memory_policy.spawn(Arc::downgrade(&registry));
        let sharing = if config.page_sharing {
            PageSharing::start(
                Path::new(KSM_DIR),
                Arc::downgrade(&registry),
                Arc::downgrade(&memory_policy),
            )
            .inspect_err(|why| tracing::warn!("page sharing is off: {why}"))
            .ok()
        } else {
            None
        };
        memory_policy.count_page_sharing(sharing.is_some());
        Ok(ControlPlane {
            registry,
            run_dir: private_dir(&config.state_dir.join("run"))?,
            log_dir: private_dir(&config.state_dir.join("logs"))?,
            switch,
            started: Instant::now(),
            started_at: SystemTime::now(),
            debug_hooks: config.debug_hooks,
            cgroups,
            scheduler,
            memory_policy,
            working_set_period: config.working_set_period,
            sharing: Mutex::new(sharing),
        })
    }

    /// A control plane on `state_dir` without control groups (they are the host's, shared by
    /// every test), for the unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(state_dir: &Path, debug_hooks: bool) -> ControlPlane {
        let (registry, _) = Registry::open(state_dir).unwrap();
        let cgroups = Arc::new(Cgroups::None);
        ControlPlane {
            registry: Arc::new(registry),
            run_dir: private_dir(&state_dir.join("run")).unwrap(),
            log_dir: private_dir(&state_dir.join("logs")).unwrap(),
            switch: Arc::new(vswitch::Switch::start().unwrap()),
            started: Instant::now(),
            started_at: SystemTime::now(),
            debug_hooks,
            scheduler: Arc::new(Scheduler::new(cgroups.clone(), Policy::Bvt)),
            cgroups,
            memory_policy: MemoryPolicy::new(u64::MAX, crate::allocation::IdleTax::DEFAULT),
            working_set_period: Duration::ZERO,
            sharing: Mutex::new(None),
        }
    }

    /// A fresh state directory for a unit test called `tag`.
    #[cfg(test)]
    pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vessel-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Whether the domains started from now on have their memory offered for page sharing.
    pub fn page_sharing(&self) -> bool {
        self.sharing_guard().is_some()
    }

    /// What page sharing does now (`None`: it is off).
    pub fn page_sharing_status(&self) -> Option<crate::sharing::SharingStatus> {
        self.sharing_guard().as_ref().map(PageSharing::status)
    }

    /// Stops steering KSM and puts its settings back as the daemon found them (before the
    /// daemon exits: the process ends without dropping the control plane).
    pub fn stop_page_sharing(&self) {
        drop(self.sharing_guard().take());
    }

    fn sharing_guard(&self) -> std::sync::MutexGuard<'_, Option<PageSharing>> {
        self.sharing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the control plane has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the control plane started, on the wall clock.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Domain `name`'s channel socket.
    pub(crate) fn socket_of(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.sock"))
    }

    /// What moves a new domain process of `def`'s domain into its control group and gives the
    /// group the domain's CPU weight and cap, before the guest runs.
    pub(crate) fn enter_group(&self, def: &crate::DomainDef) -> Box<dyn FnOnce(u32) + Send> {
        let (cgroups, scheduler) = (self.cgroups.clone(), self.scheduler.clone());
        let (name, vcpus, params) = (def.name().to_string(), def.spec().vcpus, def.spec().sched);
        Box::new(move |pid| {
            if let Err(e) = cgroups.enter(&name, pid) {
                tracing::warn!("domain '{name}' runs outside its control group: {e}");
            }
            scheduler.admit(&name, vcpus, params);
        })
    }

    /// What removes domain `name`'s control group once its process has ended.
    pub(crate) fn leave_group(&self, name: &str) -> Box<dyn FnOnce() + Send> {
        let (cgroups, scheduler) = (self.cgroups.clone(), self.scheduler.clone());
        let name = name.to_string();
        Box::new(move || {
            scheduler.forget(&name);
            if !cgroups.remove(&name) {
                tracing::warn!("domain '{name}''s control group could not be removed");
            }
        })
    }
}

/// `dir`, created (mode 0700) if missing.
fn private_dir(dir: &Path) -> Result<PathBuf, ControlError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ControlError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}
