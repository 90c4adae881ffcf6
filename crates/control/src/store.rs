//! The definition files, `STATE_DIR/domains/NAME.json`: private (directories the control plane
//! creates are 0700, files 0600), written so that a crash at any point leaves either no
//! file or the whole new one (a temporary file, `fsync`, rename, `fsync` of the directory),
//! removed durably, and never written over a file the control plane did not load.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::def::DomainDef;

/// A definition file that is there but was not loaded.
#[derive(Debug)]
pub struct Unloaded {
    /// The name its file name gives (`NAME` of `NAME.json`).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Why it was not loaded.
    pub why: String,
}

/// The definition files of one state directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens `state_dir/domains`, creating what is missing with mode 0700.
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let dir = state_dir.join("domains");
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Store { dir })
    }

    /// The file of domain `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every definition in the directory, in file name order, and the files that are there but
    /// do not hold the definition their name says (unreadable, not a valid definition, or
    /// another domain's).
    pub fn load(&self) -> io::Result<(Vec<DomainDef>, Vec<Unloaded>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut defs = Vec::new();
        let mut unloaded = Vec::new();
        for file in files {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parsed = std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| DomainDef::from_json(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(def) if def.name() == name => defs.push(def),
                Ok(def) => unloaded.push(Unloaded {
                    name,
                    file,
                    why: format!(
                        "it holds domain '{}', not the one its name says",
                        def.name()
                    ),
                }),
                Err(why) => unloaded.push(Unloaded { name, file, why }),
            }
        }
        Ok((defs, unloaded))
    }

    /// Whether anything is at domain `name`'s file.
    pub fn exists(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.path_of(name)).is_ok()
    }

    /// Writes `def` to its file, durably: a temporary file of mode 0600 in the same directory,
    /// written and synced, renamed into place, then the directory synced. The caller makes sure
    /// no file of that name is there (see [`Store::exists`]).
    pub fn write(&self, def: &DomainDef) -> io::Result<()> {
        let path = self.path_of(def.name());
        let tmp = self.dir.join(format!(".{}.json.tmp", def.name()));
        // A temporary file left by a crash is this daemon's own: start afresh.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut bytes = serde_json::to_vec_pretty(def).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| self.sync_dir());
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Removes domain `name`'s file, durably (a file already gone is fine).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path_of(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes the directory's entries (a rename, a removal) durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn scratch() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vessel-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn def(name: &str) -> DomainDef {
        DomainDef::from_json(format!(r#"{{"name":"{name}","kernel":"/k"}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn files_are_private_whole_and_leave_no_temporary_behind() {
        let state = scratch();
        let store = Store::open(&state).unwrap();
        assert_eq!(mode(&state), 0o700, "the state directory the daemon made");
        assert_eq!(mode(&state.join("domains")), 0o700);
        store.write(&def("web")).unwrap();
        let file = store.path_of("web");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            DomainDef::from_json(&std::fs::read(&file).unwrap()).unwrap(),
            def("web")
        );
        let names: Vec<String> = std::fs::read_dir(state.join("domains"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["web.json"], "no temporary file left");
        let (defs, unloaded) = store.load().unwrap();
        assert_eq!((defs, unloaded.len()), (vec![def("web")], 0));
        store.remove("web").unwrap();
        store.remove("web").unwrap();
        assert!(!store.exists("web"));
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn definitions_written_by_the_previous_daemon_load() {
        // As the daemon before the typed specification wrote them: every field, strings as
        // given (keys in the user's order, `format=` appended), no `autostart`.
        let state = scratch();
        let store = Store::open(&state).unwrap();
        let old = br#"{
  "name": "web",
  "kernel": "/boot/vmlinux",
  "cmdline": "console=ttyS0",
  "vcpus": 2,
  "memory": "256M",
  "disk": [
    "id=root,path=/img/root.qcow2,format=qcow2",
    "path=/img/data.img,readonly=on,format=raw"
  ],
  "net": [
    "switch=vsw0,bps=1M"
  ],
  "on_reboot": "restart"
}
"#;
        std::fs::write(store.path_of("web"), old).unwrap();
        let (defs, unloaded) = store.load().unwrap();
        assert!(unloaded.is_empty(), "{unloaded:?}");
        let spec = defs[0].spec();
        assert_eq!(
            (spec.vcpus, spec.memory, spec.autostart),
            (2, 256 << 20, false)
        );
        assert_eq!(
            serde_json::to_value(&defs[0]).unwrap()["disk"],
            serde_json::json!([
                "path=/img/root.qcow2,format=qcow2,id=root",
                "path=/img/data.img,format=raw,readonly=on"
            ])
        );
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn an_existing_state_directory_keeps_its_mode() {
        let state = scratch();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&state).unwrap();
        assert_eq!(mode(&state), 0o755);
        assert_eq!(mode(&state.join("domains")), 0o700);
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn files_that_are_not_their_definition_are_reported_not_loaded() {
        let state = scratch();
        let store = Store::open(&state).unwrap();
        std::fs::write(store.path_of("bad"), b"{\"name\": ").unwrap();
        store.write(&def("a")).unwrap();
        std::fs::copy(store.path_of("a"), store.path_of("b")).unwrap();
        let (defs, unloaded) = store.load().unwrap();
        assert_eq!(defs, vec![def("a")]);
        let found: Vec<(&str, bool)> = unloaded
            .iter()
            .map(|u| (u.name.as_str(), u.file == store.path_of(&u.name)))
            .collect();
        assert_eq!(found, [("b", true), ("bad", true)]);
        assert!(unloaded[0].why.contains("holds domain 'a'"), "{unloaded:?}");
        assert!(
            unloaded[1].why.contains("invalid domain definition"),
            "{unloaded:?}"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }
}
