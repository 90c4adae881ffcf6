//! A domain's life as the control plane runs it: defined (checked, its disks' formats pinned,
//! stored), started (its process launched with the host files the plane opened for it),
//! created (defined and started in one step), deleted (forgotten once stopped).
//!
//! A start is claimed under the registry's lock (the entry's `starting` flag) and the process
//! launched after it, so two starts of one domain cannot race; a create claims the start with
//! the definition, so nothing can start or delete the domain in between, and a create that
//! cannot start removes only its own, still claimed, definition.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmm::wire::Confinement;

use crate::process::{DomainProcess, LaunchPlan};
use crate::{ControlError, ControlPlane, DomainDef, StartError, DOMAIN_ID_BASE};

/// What a domain's first machine is built from.
pub(crate) enum FirstMachine {
    /// Its kernel, booted.
    Boot,
    /// A snapshot (`vessel restore`).
    Snapshot(std::fs::File),
    /// An incoming migration: its connection, read up to the domain's specification.
    Migration(std::fs::File),
}

impl ControlPlane {
    /// Defines domain `def` without starting it: checked against the host's RAM, the format of
    /// each disk given without one found and recorded, then stored.
    pub fn define(&self, def: DomainDef) -> Result<(), ControlError> {
        self.define_and_maybe_start(def, false)
    }

    /// Defines domain `def` (as [`ControlPlane::define`]) and starts it. If it cannot start,
    /// the definition this call made goes too, and nothing else.
    pub fn create(&self, def: DomainDef) -> Result<(), ControlError> {
        self.define_and_maybe_start(def, true)
    }

    fn define_and_maybe_start(&self, mut def: DomainDef, start: bool) -> Result<(), ControlError> {
        // Everything that can be checked without the domain's files or KVM is, before anything
        // is stored: a definition that could never start is refused now, not at its first start.
        def.check_to_store()?;
        def.pin_disk_formats()?;
        let name = def.name().to_string();
        self.registry.define(def, start)?;
        if !start {
            return Ok(());
        }
        match self.launch(&name, FirstMachine::Boot) {
            Ok(process) => self.finish_start(&name, Ok(process)),
            Err(e) => {
                // Still claimed by this call: nobody else has started or deleted it.
                let _ = self.registry.undefine_claimed(&name);
                Err(e)
            }
        }
    }

    /// Starts domain `name`.
    pub fn start(&self, name: &str) -> Result<(), ControlError> {
        self.claim_start(name)?;
        let started = self.launch(name, FirstMachine::Boot);
        self.finish_start(name, started)
    }

    /// Saves running or paused domain `name` to a new file at `path` (never written over) and
    /// stops it there: it is then shut off with the message "saved", its definition kept.
    /// Returns what was written. A save the domain refuses or fails leaves the domain as it
    /// was and removes the file it began; one the domain does not answer in time (its memory
    /// at 20 MB/s, and a minute) keeps the file, which it may still be writing, and says so.
    pub fn save(&self, name: &str, path: &Path) -> Result<vmm::SaveReport, ControlError> {
        let process = self.active_process(name)?;
        // The definition as kept now, with what changed since the start (rate limits).
        let spec = self.registry.with(name, |e| e.def.spec().clone())?;
        let memory = spec.memory;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                ControlError::Invalid(format!(
                    "cannot create the snapshot {}: {e}",
                    path.display()
                ))
            })?;
        let refused = |why: String| ControlError::Refused {
            name: name.to_string(),
            why,
        };
        let timeout = crate::process::with_memory(Duration::from_secs(60), memory);
        match process.save(&file, spec, timeout) {
            Ok(Ok(report)) => {
                process.wait_gone(Duration::from_secs(10));
                Ok(report)
            }
            Ok(Err(why)) => {
                let _ = std::fs::remove_file(path);
                Err(refused(why))
            }
            // Kept either way: a save that completed just before its answer was lost is the
            // only copy of the guest.
            Err(no_answer) if process.wait_gone(Duration::from_secs(2)) => Err(refused(format!(
                "{no_answer}; {} is kept, though it may be incomplete: the domain's state says \
                 whether it was saved",
                path.display()
            ))),
            Err(no_answer) => Err(refused(format!(
                "{no_answer}; {} is kept, as the domain may still be writing it: its state \
                 says whether it was saved",
                path.display()
            ))),
        }
    }

    /// Brings back the domain saved at `path` (as `name`, or the name it was saved with): it
    /// runs on from where it was saved. A domain of that name must be stopped, and is
    /// redefined as the snapshot says (its definition as it was comes back if the restore
    /// fails); otherwise the domain is defined (and forgotten again if the restore fails). Its
    /// disks must be at the same paths (shared storage), and its shape (memory, vCPUs, disks,
    /// VIFs) is the snapshot's. Returns the domain's name.
    pub fn restore(&self, path: &Path, name: Option<&str>) -> Result<String, ControlError> {
        // Opened once: the daemon reads the definition with positional reads, so the domain
        // process reads the same file from its start.
        let file = devices::host_file::open(
            path,
            devices::host_file::Access::ReadOnly,
            devices::host_file::Accept::Regular,
        )
        .map_err(|e| {
            ControlError::Invalid(format!("cannot open the snapshot {}: {e}", path.display()))
        })?;
        let mut spec = vmm::snapshot::SnapshotReader::new(vmm::snapshot::ReadAt::new(&file))
            .and_then(|mut r| r.spec())
            .map_err(|e| ControlError::Invalid(format!("{}: {e}", path.display())))?;
        if let Some(name) = name {
            spec.name = Some(name.to_string());
        }
        let mut def = DomainDef::new(spec)?;
        def.check_to_store()?;
        def.pin_disk_formats()?;
        let name = def.name().to_string();
        // Claim the start: of a stopped domain redefined as saved, or of a new definition.
        let before = match self.registry.view(&name) {
            Ok(_) => {
                self.claim_start(&name)?;
                let old = self.registry.with(&name, |e| e.def.clone())?;
                if let Err(e) = self.registry.redefine(&name, |_| Ok(def.clone())) {
                    let _ = self.registry.with(&name, |e| e.starting = false);
                    return Err(e);
                }
                Some(old)
            }
            Err(_) => {
                self.registry.define(def, true)?;
                None
            }
        };
        let started = self.launch(&name, FirstMachine::Snapshot(file));
        if started.is_err() {
            match before {
                None => {
                    let _ = self.registry.undefine_claimed(&name);
                    return started.map(|_| name);
                }
                Some(old) => {
                    let _ = self.registry.redefine(&name, |_| Ok(old));
                }
            }
        }
        self.finish_start(&name, started)?;
        Ok(name)
    }

    /// Claims the start of defined domain `name` (its entry's `starting` flag), unless it is
    /// running, paused or starting already.
    pub(crate) fn claim_start(&self, name: &str) -> Result<(), ControlError> {
        let claimed = self.registry.with(name, |e| {
            if e.state().is_active() || e.starting {
                false
            } else {
                e.starting = true;
                true
            }
        })?;
        if claimed {
            Ok(())
        } else {
            Err(ControlError::AlreadyRunning(name.to_string()))
        }
    }

    /// Forgets a stopped domain (shut off or crashed, not starting) and deletes its file.
    pub fn delete(&self, name: &str) -> Result<(), ControlError> {
        self.registry.undefine_stopped(name)
    }

    /// Starts a domain process for domain `name`, whose start the caller has claimed (its
    /// entry's `starting` flag); the claim is left for the caller to release. The control
    /// plane opens every host file the domain needs, with its checks, and hands the
    /// descriptors over.
    pub(crate) fn launch(
        &self,
        name: &str,
        first: FirstMachine,
    ) -> Result<DomainProcess, ControlError> {
        let (id, def, console) = self
            .registry
            .with(name, |e| (e.id, e.def.clone(), e.console.clone()))?;
        let cannot_start = |cause: StartError| ControlError::CannotStart {
            name: name.to_string(),
            cause,
        };
        let ports = crate::switch::port_provider(&self.switch, name);
        let spec = def.spec().clone();
        let hv =
            hv::Hypervisor::open().map_err(|e| cannot_start(vmm::DomainError::from(e).into()))?;
        vmm::validate(&spec, &hv).map_err(|e| cannot_start(e.into()))?;
        self.memory_policy
            .admit(&self.registry, name, spec.memory_alloc.reservation)
            .map_err(|why| cannot_start(StartError::Memory(why)))?;
        let mut resources = vmm::resources::Resources::open(&spec, Some(&ports))
            .map_err(|e| cannot_start(e.into()))?;
        resources.page_sharing = self.page_sharing();
        resources.working_set_period = self.working_set_period;
        match first {
            FirstMachine::Boot => {}
            FirstMachine::Snapshot(file) => resources.snapshot = Some(file),
            FirstMachine::Migration(conn) => resources.migration = Some(conn),
        }
        DomainProcess::launch(LaunchPlan {
            name,
            spec,
            resources,
            socket: self.socket_of(name),
            log: self.log_dir.join(format!("{name}.log")),
            confine: Some(Confinement {
                uid: DOMAIN_ID_BASE + id,
                gid: DOMAIN_ID_BASE + id,
            }),
            console,
            on_spawn: self.enter_group(&def),
            on_end: self.leave_group(name),
        })
        .map_err(|why| cannot_start(StartError::Process(why)))
    }

    /// Releases the claim on domain `name`'s start, keeping the process if it started.
    pub(crate) fn finish_start(
        &self,
        name: &str,
        started: Result<DomainProcess, ControlError>,
    ) -> Result<(), ControlError> {
        self.registry.with(name, move |e| {
            e.starting = false;
            started.map(|process| e.instance = Some(Arc::new(process)))
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, kernel: &str) -> DomainDef {
        DomainDef::from_json(format!(r#"{{"name":"{name}","kernel":"{kernel}"}}"#).as_bytes())
            .unwrap()
    }

    fn names(plane: &ControlPlane) -> Vec<String> {
        plane
            .list()
            .iter()
            .map(|d| d.def.name().to_string())
            .collect()
    }

    #[test]
    fn a_definition_is_checked_stored_and_kept_until_deleted() {
        let state = ControlPlane::scratch_dir("define");
        {
            let plane = ControlPlane::for_tests(&state, false);
            plane.define(def("a", "/ka")).unwrap();
            plane.define(def("b", "/kb")).unwrap();
            let err = plane.define(def("a", "/other")).unwrap_err();
            assert!(matches!(err, ControlError::Exists(_)), "{err}");
            let huge =
                DomainDef::from_json(br#"{"name":"c","kernel":"/k","memory":"100000G"}"#).unwrap();
            let err = plane.define(huge).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{err}");
            assert!(err.to_string().contains("more than this host's"), "{err}");
            let summary = &plane.list()[0];
            assert_eq!((summary.id, summary.state()), (1, vmm::RunState::Shutoff));
            assert!(summary.status.is_none() && summary.stats.is_none());
            plane.delete("b").unwrap();
            let err = plane.delete("b").unwrap_err();
            assert_eq!(err.to_string(), "no domain named 'b'");
            assert_eq!(names(&plane), ["a"]);
        }
        let again = ControlPlane::for_tests(&state, false);
        assert_eq!(
            names(&again),
            ["a"],
            "a new control plane finds what was defined"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_domain_being_started_cannot_be_started_again_or_deleted() {
        let state = ControlPlane::scratch_dir("claimed");
        let plane = ControlPlane::for_tests(&state, false);
        // Defined with its start claimed, as a create does before it launches the process.
        plane.registry.define(def("a", "/k"), true).unwrap();
        let err = plane.start("a").unwrap_err();
        assert!(matches!(err, ControlError::AlreadyRunning(_)), "{err}");
        assert_eq!(err.to_string(), "domain 'a' is already running");
        let err = plane.delete("a").unwrap_err();
        assert!(matches!(err, ControlError::Active(_)), "{err}");
        assert_eq!(err.to_string(), "domain 'a' is running: destroy it first");
        assert!(matches!(
            plane.start("nobody"),
            Err(ControlError::NoSuchDomain(_))
        ));
        std::fs::remove_dir_all(&state).unwrap();
    }

    /// A domain whose kernel is missing cannot start (whether or not this host has KVM, which
    /// is checked first); the failed start leaves no claim behind.
    #[test]
    fn a_start_that_fails_says_why_and_releases_its_claim() {
        let state = ControlPlane::scratch_dir("start");
        let plane = ControlPlane::for_tests(&state, false);
        plane.define(def("a", "/nonexistent/kernel")).unwrap();
        for _ in 0..2 {
            let err = plane.start("a").unwrap_err();
            assert!(
                matches!(err, ControlError::CannotStart { .. }),
                "not held as starting: {err}"
            );
            assert!(
                err.to_string().starts_with("domain 'a' cannot start: "),
                "{err}"
            );
        }
        assert_eq!(plane.list()[0].state(), vmm::RunState::Shutoff);
        plane.delete("a").unwrap();
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_create_that_cannot_start_leaves_nothing_behind() {
        let state = ControlPlane::scratch_dir("create");
        let plane = ControlPlane::for_tests(&state, false);
        let err = plane.create(def("b", "/nonexistent/kernel")).unwrap_err();
        assert!(matches!(err, ControlError::CannotStart { .. }), "{err}");
        assert!(matches!(
            plane.info("b"),
            Err(ControlError::NoSuchDomain(_))
        ));
        assert!(!state.join("domains/b.json").exists());
        // The name is free again.
        plane.define(def("b", "/k")).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
    }
}
