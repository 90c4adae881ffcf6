//! The [`ControlPlane`] itself: what it holds, and opening it (the state directory and the
//! definitions in it, the virtual switch and its uplink, the control groups, the directories of
//! the domains' channels and logs).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::Cgroups;
use crate::registry::Registry;
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
}

/// Domain 0: the domains, their processes and groups, and the switch between them.
///
/// A domain process is this same executable run with the hidden verb [`crate::DOMAIN_VERB`]
/// (it hands its channel to `vmm::domain_process::serve`): the program that opens a control
/// plane serves that verb.
pub struct ControlPlane {
    /// Every domain.
    pub(crate) registry: Registry,
    /// Where domain processes' channel sockets are (`STATE_DIR/run`).
    pub(crate) run_dir: PathBuf,
    /// Where domain processes' own messages go (`STATE_DIR/logs`).
    pub(crate) log_dir: PathBuf,
    /// The virtual switch between the domains' VIFs.
    pub(crate) switch: Arc<vswitch::SwitchHandle>,
    /// When the control plane started.
    pub(crate) started: Instant,
    /// Whether the debugging hooks are served.
    pub(crate) debug_hooks: bool,
    /// Where domains' control groups are.
    pub(crate) cgroups: Arc<Cgroups>,
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
        Ok(ControlPlane {
            registry,
            run_dir: private_dir(&config.state_dir.join("run"))?,
            log_dir: private_dir(&config.state_dir.join("logs"))?,
            switch,
            started: Instant::now(),
            debug_hooks: config.debug_hooks,
            cgroups: Arc::new(cgroups),
        })
    }

    /// A control plane on `state_dir` without control groups (they are the host's, shared by
    /// every test), for the unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(state_dir: &Path, debug_hooks: bool) -> ControlPlane {
        let (registry, _) = Registry::open(state_dir).unwrap();
        ControlPlane {
            registry,
            run_dir: private_dir(&state_dir.join("run")).unwrap(),
            log_dir: private_dir(&state_dir.join("logs")).unwrap(),
            switch: Arc::new(vswitch::Switch::start().unwrap()),
            started: Instant::now(),
            debug_hooks,
            cgroups: Arc::new(Cgroups::None),
        }
    }

    /// A fresh state directory for a unit test called `tag`.
    #[cfg(test)]
    pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vessel-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// How long the control plane has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Domain `name`'s channel socket.
    pub(crate) fn socket_of(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.sock"))
    }

    /// What moves a new domain process of `name` into its control group.
    pub(crate) fn enter_group(&self, name: &str) -> Box<dyn FnOnce(u32) + Send> {
        let (cgroups, name) = (self.cgroups.clone(), name.to_string());
        Box::new(move |pid| {
            if let Err(e) = cgroups.enter(&name, pid) {
                tracing::warn!("domain '{name}' runs outside its control group: {e}");
            }
        })
    }

    /// What removes domain `name`'s control group once its process has ended.
    pub(crate) fn leave_group(&self, name: &str) -> Box<dyn FnOnce() + Send> {
        let (cgroups, name) = (self.cgroups.clone(), name.to_string());
        Box::new(move || {
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
