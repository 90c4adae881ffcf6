//! The control plane's domains: their definitions (persisted in the state directory), their
//! running instances and their console logs.
//!
//! Definitions live in `STATE_DIR/domains/NAME.json` ([`crate::store`]: written durably,
//! mode 0600), so a restarted control plane lists every domain that was defined and can start
//! it again. A file there that it could not load is never written over: creating its domain is
//! refused ([`ControlError::Unloaded`]) with the file's name, until someone moves it away.
//!
//! Nothing slow happens under the registry's lock: a definition's file is written or removed
//! while its name is reserved (so no other request can take or see it half made), long
//! operations (pause, destroy) run on a clone of the instance handle, and readers take a copy
//! of what they need ([`EntryView`]) under the lock and read counters after releasing it, so
//! one slow domain, or a slow disk, does not hold up the API for the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm::{ConsoleLog, RunState, Status};

use crate::def::DomainDef;
use crate::process::DomainProcess;
use crate::store::Store;
use crate::ControlError;

/// One domain known to the control plane.
pub struct Entry {
    /// Its id while this control plane runs (the control plane itself is domain 0).
    pub id: u32,
    /// Its definition.
    pub def: DomainDef,
    /// Its current or last instance.
    pub instance: Option<Arc<DomainProcess>>,
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

    fn new(id: u32, def: DomainDef, starting: bool) -> Entry {
        Entry {
            id,
            def,
            instance: None,
            console: ConsoleLog::default(),
            starting,
        }
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
    pub instance: Option<Arc<DomainProcess>>,
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
    store: Store,
    inner: Mutex<Inner>,
}

struct Inner {
    domains: BTreeMap<String, Entry>,
    /// Names whose file is being written or removed: taken, but not (or no longer) listed.
    reserved: BTreeSet<String>,
    /// Definition files found at start that could not be loaded, by name: why.
    unloaded: BTreeMap<String, String>,
    next_id: u32,
}

impl Registry {
    /// Opens the state directory `state_dir` (what is missing is created, mode 0700) and loads
    /// the definitions in it. A definition file that does not load is reported, skipped and
    /// kept: never deleted, and never written over.
    pub fn open(state_dir: &Path) -> std::io::Result<(Registry, Vec<String>)> {
        let store = Store::open(state_dir)?;
        let (defs, unloaded) = store.load()?;
        let mut warnings = Vec::new();
        let mut inner = Inner {
            domains: BTreeMap::new(),
            reserved: BTreeSet::new(),
            unloaded: BTreeMap::new(),
            next_id: 1,
        };
        for def in defs {
            let id = inner.next_id;
            inner.next_id += 1;
            inner
                .domains
                .insert(def.name().to_string(), Entry::new(id, def, false));
        }
        for u in unloaded {
            warnings.push(format!(
                "{}: {}; skipped (creating domain '{}' is refused until the file is moved away)",
                u.file.display(),
                u.why,
                u.name
            ));
            inner.unloaded.insert(u.name, u.why);
        }
        Ok((
            Registry {
                store,
                inner: Mutex::new(inner),
            },
            warnings,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds and persists a new definition; returns its id. With `claim_start`, the new entry
    /// is marked as starting (see [`Entry::starting`]) in the same step, so no other request
    /// can start or delete it before the caller does. Refused if the name is taken, or if a
    /// file the daemon did not load is where the definition would go.
    pub fn define(&self, def: DomainDef, claim_start: bool) -> Result<u32, ControlError> {
        let name = def.name().to_string();
        {
            let mut inner = self.lock();
            if inner.domains.contains_key(&name) || inner.reserved.contains(&name) {
                return Err(ControlError::Exists(name));
            }
            if self.store.exists(&name) {
                let why = inner
                    .unloaded
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| "it appeared after the daemon started".to_string());
                return Err(ControlError::Unloaded {
                    file: self.store.path_of(&name).display().to_string(),
                    why,
                });
            }
            inner.reserved.insert(name.clone());
        }
        // Not under the lock: the file is synced to disk, which may take a while.
        let written = self.store.write(&def);
        let mut inner = self.lock();
        inner.reserved.remove(&name);
        written.map_err(|e| {
            ControlError::Internal(format!(
                "writing {}: {e}",
                self.store.path_of(&name).display()
            ))
        })?;
        inner.unloaded.remove(&name);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.domains.insert(name, Entry::new(id, def, claim_start));
        Ok(id)
    }

    /// Replaces domain `name`'s definition with what `change` makes of it, and persists it.
    /// The one exception to "nothing slow under the lock": the file is written while the lock
    /// is held, so no create, delete or other change of the same domain can come between; it
    /// is a rare, deliberate act (`vessel sched`), not a path the guests' traffic takes.
    pub fn redefine(
        &self,
        name: &str,
        change: impl FnOnce(&DomainDef) -> Result<DomainDef, ControlError>,
    ) -> Result<DomainDef, ControlError> {
        let mut inner = self.lock();
        let entry = inner
            .domains
            .get_mut(name)
            .ok_or_else(|| ControlError::NoSuchDomain(name.into()))?;
        let def = change(&entry.def)?;
        self.store.write(&def).map_err(|e| {
            ControlError::Internal(format!(
                "writing {}: {e}",
                self.store.path_of(name).display()
            ))
        })?;
        entry.def = def.clone();
        Ok(def)
    }

    /// Forgets a stopped domain (shut off or crashed, not starting) and deletes its file.
    pub fn undefine_stopped(&self, name: &str) -> Result<(), ControlError> {
        self.undefine_if(name, |e| {
            if e.state().is_active() || e.starting {
                Err(ControlError::Active(name.into()))
            } else {
                Ok(())
            }
        })
    }

    /// Forgets a domain whose start the caller claimed and that did not start.
    pub fn undefine_claimed(&self, name: &str) -> Result<(), ControlError> {
        self.undefine_if(name, |e| {
            if e.starting && e.instance.is_none() {
                Ok(())
            } else {
                Err(ControlError::Active(name.into()))
            }
        })
    }

    /// Forgets a definition and deletes its file, if `allowed` says so (checked under the
    /// same lock that takes the entry out, so nothing changes in between). The name stays
    /// reserved while the file is removed; if that fails, the entry comes back.
    fn undefine_if(
        &self,
        name: &str,
        allowed: impl FnOnce(&Entry) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let entry = {
            let mut inner = self.lock();
            match inner.domains.get(name) {
                None => return Err(ControlError::NoSuchDomain(name.into())),
                Some(e) => allowed(e)?,
            }
            inner.reserved.insert(name.to_string());
            inner.domains.remove(name)
        };
        let removed = self.store.remove(name);
        let mut inner = self.lock();
        inner.reserved.remove(name);
        if let Err(e) = removed {
            if let Some(entry) = entry {
                inner.domains.insert(name.to_string(), entry);
            }
            return Err(ControlError::Internal(format!(
                "removing {}: {e}",
                self.store.path_of(name).display()
            )));
        }
        Ok(())
    }

    /// Runs `f` on domain `name` under the lock.
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Entry) -> T) -> Result<T, ControlError> {
        let mut inner = self.lock();
        inner
            .domains
            .get_mut(name)
            .map(f)
            .ok_or_else(|| ControlError::NoSuchDomain(name.into()))
    }

    /// A copy of domain `name` for a reader (taken under the lock, used after it).
    pub fn view(&self, name: &str) -> Result<EntryView, ControlError> {
        self.with(name, |e| e.view())
    }

    /// A copy of every domain, in name order, for a reader.
    pub fn views(&self) -> Vec<EntryView> {
        self.lock().domains.values().map(Entry::view).collect()
    }

    /// The instance of domain `name`, if it has one.
    pub fn instance(&self, name: &str) -> Result<Option<Arc<DomainProcess>>, ControlError> {
        self.with(name, |e| e.instance.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vessel-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn def(name: &str, kernel: &str) -> DomainDef {
        DomainDef::from_json(format!(r#"{{"name":"{name}","kernel":"{kernel}"}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn a_definition_file_that_did_not_load_is_never_written_over() {
        let state = scratch("unloaded");
        std::fs::create_dir_all(state.join("domains")).unwrap();
        let corrupt = state.join("domains/web.json");
        std::fs::write(&corrupt, b"{\"name\": \"web\", \"kern").unwrap();
        let (registry, warnings) = Registry::open(&state).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("web.json"), "{warnings:?}");
        let err = registry.define(def("web", "/k"), false).unwrap_err();
        match &err {
            ControlError::Unloaded { file, why } => {
                assert!(file.ends_with("domains/web.json"), "{err:?}");
                assert!(why.contains("invalid domain definition"), "{err:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read(&corrupt).unwrap(),
            b"{\"name\": \"web\", \"kern"
        );
        assert!(registry.views().is_empty());
        // Once the file is moved away, the name can be defined.
        std::fs::rename(&corrupt, state.join("domains/web.json.saved")).unwrap();
        registry.define(def("web", "/k"), false).unwrap();
        // A file that appears after the start is not written over either.
        std::fs::write(state.join("domains/late.json"), b"{}").unwrap();
        assert!(matches!(
            registry.define(def("late", "/k"), false),
            Err(ControlError::Unloaded { .. })
        ));
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn defined_domains_come_back_and_deleted_ones_do_not() {
        let state = scratch("reload");
        {
            let (registry, _) = Registry::open(&state).unwrap();
            registry.define(def("a", "/ka"), false).unwrap();
            registry.define(def("b", "/kb"), true).unwrap();
            assert!(matches!(
                registry.define(def("a", "/other"), false),
                Err(ControlError::Exists(_))
            ));
            assert!(matches!(
                registry.undefine_stopped("b"),
                Err(ControlError::Active(_))
            ));
            registry.undefine_claimed("b").unwrap();
            registry.define(def("c", "/kc"), false).unwrap();
            registry.undefine_stopped("c").unwrap();
        }
        let (registry, warnings) = Registry::open(&state).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<(String, std::path::PathBuf)> = registry
            .views()
            .into_iter()
            .map(|v| (v.def.name().to_string(), v.def.spec().kernel.clone()))
            .collect();
        assert_eq!(names, [("a".to_string(), "/ka".into())]);
        std::fs::remove_dir_all(&state).unwrap();
    }
}
