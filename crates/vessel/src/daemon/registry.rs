//! The daemon's domains: their definitions (persisted in the state directory), their running
//! instances and their console logs.
//!
//! Definitions live in `STATE_DIR/domains/NAME.json`, written atomically (a temporary file,
//! then a rename), so a restarted daemon lists every domain that was defined and can start it
//! again. Long operations (pause, destroy) run on a clone of the instance handle, never under
//! the registry's lock, and readers take a copy of what they need ([`EntryView`]) under the
//! lock and read counters after releasing it, so one slow domain does not hold up the API for
//! the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm::{ConsoleLog, Instance, RunState, Status};

use crate::def::DomainDef;

/// One domain known to the daemon.
pub struct Entry {
    /// Its id while this daemon runs (the daemon itself is domain 0).
    pub id: u32,
    /// Its definition.
    pub def: DomainDef,
    /// Its current or last instance.
    pub instance: Option<Arc<Instance>>,
    /// Its console output, kept across starts.
    pub console: ConsoleLog,
    /// A start is under way (set under the lock, so two starts cannot race).
    pub starting: bool,
}

impl Entry {
    /// Its state: that of its instance, or shut off if it never ran.
    pub fn status(&self) -> Option<Status> {
        self.instance.as_ref().map(|i| i.status())
    }

    /// Its run state name.
    pub fn state(&self) -> RunState {
        self.status().map_or(RunState::Shutoff, |s| s.state)
    }

    fn view(&self) -> EntryView {
        EntryView {
            id: self.id,
            def: self.def.clone(),
            instance: self.instance.clone(),
        }
    }
}

/// What a reader needs of a domain, copied under the registry's lock so that the slow part of
/// an answer (counters, `/proc` reads) is done after the lock is released.
#[derive(Clone)]
pub struct EntryView {
    /// Its id.
    pub id: u32,
    /// Its definition.
    pub def: DomainDef,
    /// Its current or last instance.
    pub instance: Option<Arc<Instance>>,
}

impl EntryView {
    /// Its state: that of its instance, or shut off if it never ran.
    pub fn status(&self) -> Option<Status> {
        self.instance.as_ref().map(|i| i.status())
    }

    /// Its run state.
    pub fn state(&self) -> RunState {
        self.status().map_or(RunState::Shutoff, |s| s.state)
    }
}

/// Every domain, by name.
pub struct Registry {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    domains: BTreeMap<String, Entry>,
    next_id: u32,
}

/// A registry operation that cannot be done; the API maps it to a status.
#[derive(Debug)]
pub enum RegistryError {
    /// No such domain.
    NotFound(String),
    /// The name is taken.
    Exists(String),
    /// The domain is running, paused or starting.
    Active(String),
    /// The state directory cannot be written.
    Storage(String),
}

impl Registry {
    /// Opens the state directory `state_dir` (created if missing) and loads the definitions in
    /// it. A definition file that no longer parses is reported and skipped, never deleted.
    pub fn open(state_dir: &Path) -> std::io::Result<(Registry, Vec<String>)> {
        let dir = state_dir.join("domains");
        std::fs::create_dir_all(&dir)?;
        let mut domains = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut next_id = 1;
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| DomainDef::from_json(&b));
            match parsed {
                Ok(def) if path.file_stem().and_then(|s| s.to_str()) == Some(def.name.as_str()) => {
                    domains.insert(
                        def.name.clone(),
                        Entry {
                            id: next_id,
                            def,
                            instance: None,
                            console: ConsoleLog::default(),
                            starting: false,
                        },
                    );
                    next_id += 1;
                }
                Ok(def) => warnings.push(format!(
                    "{}: holds domain '{}', not the one its name says; skipped",
                    path.display(),
                    def.name
                )),
                Err(e) => warnings.push(format!("{}: {e}; skipped", path.display())),
            }
        }
        Ok((
            Registry {
                dir,
                inner: Mutex::new(Inner { domains, next_id }),
            },
            warnings,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Adds and persists a new definition; returns its id. With `claim_start`, the new entry
    /// is marked as starting (see [`Entry::starting`]) in the same step, so no other request
    /// can start or delete it before the caller does.
    pub fn define(&self, def: DomainDef, claim_start: bool) -> Result<u32, RegistryError> {
        let mut inner = self.lock();
        if inner.domains.contains_key(&def.name) {
            return Err(RegistryError::Exists(def.name));
        }
        let bytes = serde_json::to_vec_pretty(&def).unwrap_or_default();
        let path = self.path_of(&def.name);
        let tmp = self.dir.join(format!(".{}.json.tmp", def.name));
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| RegistryError::Storage(format!("writing {}: {e}", path.display())))?;
        let id = inner.next_id;
        inner.next_id += 1;
        inner.domains.insert(
            def.name.clone(),
            Entry {
                id,
                def,
                instance: None,
                console: ConsoleLog::default(),
                starting: claim_start,
            },
        );
        Ok(id)
    }

    /// Forgets a stopped domain (shut off or crashed, not starting) and deletes its file.
    pub fn undefine_stopped(&self, name: &str) -> Result<(), RegistryError> {
        self.undefine_if(name, |e| {
            if e.state().is_active() || e.starting {
                Err(RegistryError::Active(name.into()))
            } else {
                Ok(())
            }
        })
    }

    /// Forgets a domain whose start the caller claimed and that did not start.
    pub fn undefine_claimed(&self, name: &str) -> Result<(), RegistryError> {
        self.undefine_if(name, |e| {
            if e.starting && e.instance.is_none() {
                Ok(())
            } else {
                Err(RegistryError::Active(name.into()))
            }
        })
    }

    /// Forgets a definition and deletes its file, if `allowed` says so (checked under the
    /// same lock, so nothing changes in between).
    fn undefine_if(
        &self,
        name: &str,
        allowed: impl FnOnce(&Entry) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut inner = self.lock();
        match inner.domains.get(name) {
            None => return Err(RegistryError::NotFound(name.into())),
            Some(e) => allowed(e)?,
        }
        let path = self.path_of(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RegistryError::Storage(format!(
                    "removing {}: {e}",
                    path.display()
                )))
            }
        }
        inner.domains.remove(name);
        Ok(())
    }

    /// Runs `f` on domain `name` under the lock.
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Entry) -> T) -> Result<T, RegistryError> {
        let mut inner = self.lock();
        inner
            .domains
            .get_mut(name)
            .map(f)
            .ok_or_else(|| RegistryError::NotFound(name.into()))
    }

    /// A copy of domain `name` for a reader (taken under the lock, used after it).
    pub fn view(&self, name: &str) -> Result<EntryView, RegistryError> {
        self.with(name, |e| e.view())
    }

    /// A copy of every domain, in name order, for a reader.
    pub fn views(&self) -> Vec<EntryView> {
        self.lock().domains.values().map(Entry::view).collect()
    }

    /// The instance of domain `name`, if it has one.
    pub fn instance(&self, name: &str) -> Result<Option<Arc<Instance>>, RegistryError> {
        self.with(name, |e| e.instance.clone())
    }
}
