//! A domain definition as the daemon stores it and the API takes it: `vessel run`'s flags as
//! JSON (`kernel`, `initrd`, `cmdline`, `vcpus`, `memory`, `disk`, `net`, `on_reboot`) plus a
//! `name`. `disk` and `net` hold the same strings as `--disk` and `--net`. Unknown fields are
//! refused, so a typo never silently means a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmm::{DomainConfig, NetBackendConfig, OnReboot};

/// A domain's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainDef {
    /// Its unique name: 1 to 32 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`.
    pub name: String,
    /// Guest kernel: a bzImage or an ELF vmlinux with a PVH note.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory, as `--memory` takes it ("256M").
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Virtual block devices, as `--disk` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<String>,
    /// Virtual network interfaces, as `--net` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<String>,
    /// What a guest reboot does: "restart" or "exit" (stop the domain).
    #[serde(default = "default_on_reboot")]
    pub on_reboot: String,
}

fn default_cmdline() -> String {
    "console=ttyS0".into()
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> String {
    "256M".into()
}
fn default_on_reboot() -> String {
    "restart".into()
}

/// Whether `name` is a valid domain name.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl DomainDef {
    /// Parses a definition from JSON, with a message that says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<DomainDef, String> {
        let def: DomainDef =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid domain definition: {e}"))?;
        def.to_config()?;
        Ok(def)
    }

    /// Records the format of every disk given without `format=`, found from the file's first
    /// bytes: once, when the domain is defined, so that no later boot, restart or daemon
    /// restart guesses a format from bytes its guest may have written.
    pub fn pin_disk_formats(&mut self) -> Result<(), String> {
        let mut disks = self.to_config()?.disks;
        for i in vmm::pin_disk_formats(&mut disks).map_err(|e| e.to_string())? {
            if let (Some(text), Some(format)) = (self.disk.get_mut(i), disks[i].format) {
                *text = vmm::config::disk_with_format(text, format);
            }
        }
        Ok(())
    }

    /// The VMM configuration this definition means; checks every field and every value that
    /// needs neither the host's files nor KVM ([`vmm::DomainConfig::check`]).
    pub fn to_config(&self) -> Result<DomainConfig, String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "invalid domain name '{}': use 1 to 32 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                self.name
            ));
        }
        let memory = vmm::parse_size(&self.memory).map_err(|e| format!("memory: {e}"))?;
        let disks = self
            .disk
            .iter()
            .enumerate()
            .map(|(i, d)| vmm::parse_disk(d, i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut nets = self
            .net
            .iter()
            .map(|n| vmm::parse_net(n).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, net) in nets.iter_mut().enumerate() {
            if let NetBackendConfig::Switch(switch) = &net.backend {
                if net.mac_generated {
                    // Stable per domain and VIF: two domains never share a generated address.
                    net.mac = vmm::config::generated_mac(&format!(
                        "switch={switch}/{}/{index}",
                        self.name
                    ));
                }
            }
        }
        let on_reboot = match self.on_reboot.as_str() {
            "restart" => OnReboot::Restart,
            "exit" => OnReboot::Exit,
            other => {
                return Err(format!(
                    "on_reboot must be \"restart\" or \"exit\", not \"{other}\""
                ))
            }
        };
        let cfg = DomainConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.vcpus,
            memory,
            on_reboot,
            disks,
            nets,
        };
        // The same check `vessel run` makes of what needs neither host files nor KVM.
        cfg.check().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// The same definition with every relative host path made absolute against the current
    /// working directory: `kernel`, `initrd`, the `path=` of each disk and the `socket=` and
    /// `peer=` of each VIF. Every other key of a disk or VIF string is kept as given, in its
    /// place. The CLI sends definitions this way, so a relative path means what it means in
    /// the user's shell, not in the daemon's working directory.
    pub fn with_absolute_paths(mut self) -> std::io::Result<DomainDef> {
        self.kernel = std::path::absolute(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            self.initrd = Some(std::path::absolute(initrd)?);
        }
        for disk in &mut self.disk {
            *disk = absolute_values(disk, &["path"])?;
        }
        for net in &mut self.net {
            *net = absolute_values(net, &["socket", "peer"])?;
        }
        Ok(self)
    }

    /// What the daemon checks before it stores a definition: everything [`Self::to_config`]
    /// checks, and the memory against the host's RAM. (Files and KVM's vCPU limit are checked
    /// when the domain starts.)
    pub fn check_to_store(&self) -> Result<(), String> {
        let cfg = self.to_config()?;
        vmm::config::check_host_memory(cfg.memory).map_err(|e| e.to_string())
    }
}

/// `spec` (`key=value,...`, as `--disk` and `--net` take it) with the values of `keys` made
/// absolute; everything else, empty values and parts that are not `key=value` included, as
/// given (the parser reports those).
fn absolute_values(spec: &str, keys: &[&str]) -> std::io::Result<String> {
    let parts = spec
        .split(',')
        .map(|part| match part.split_once('=') {
            Some((key, value)) if keys.contains(&key) && !value.is_empty() => {
                let path = std::path::absolute(Path::new(value))?;
                Ok(format!("{key}={}", path.display()))
            }
            _ => Ok(part.to_string()),
        })
        .collect::<std::io::Result<Vec<String>>>()?;
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_made_absolute_and_everything_else_is_kept() {
        // Built directly: `format=` is a key this version does not parse, and the rewrite
        // must keep any key it does not know as it is.
        let def = DomainDef {
            name: "a".into(),
            kernel: "k/vmlinux".into(),
            initrd: Some("./initrd.img".into()),
            cmdline: default_cmdline(),
            vcpus: 1,
            memory: default_memory(),
            disk: vec![
                "id=root,path=root.img,readonly=on,format=raw".into(),
                "path=/abs.img".into(),
            ],
            net: vec![
                "socket=a.sock,peer=../b.sock,mac=02:00:00:00:00:01".into(),
                "switch=vsw0,bps=1M".into(),
                "tap=tap0".into(),
            ],
            on_reboot: default_on_reboot(),
        };
        let cwd = std::env::current_dir().unwrap();
        let abs = def.with_absolute_paths().unwrap();
        assert_eq!(abs.kernel, cwd.join("k/vmlinux"));
        assert_eq!(abs.initrd, Some(cwd.join("initrd.img")));
        assert_eq!(
            abs.disk,
            [
                format!(
                    "id=root,path={},readonly=on,format=raw",
                    cwd.join("root.img").display()
                ),
                "path=/abs.img".to_string(),
            ]
        );
        assert_eq!(
            abs.net,
            [
                format!(
                    "socket={},peer={},mac=02:00:00:00:00:01",
                    cwd.join("a.sock").display(),
                    cwd.join("../b.sock").display()
                ),
                "switch=vsw0,bps=1M".to_string(),
                "tap=tap0".to_string(),
            ]
        );
        // Malformed parts are left for the parser to report.
        assert_eq!(
            absolute_values("path=,x,y=1", &["path"]).unwrap(),
            "path=,x,y=1"
        );
    }

    #[test]
    fn a_minimal_definition_takes_the_run_defaults() {
        let def = DomainDef::from_json(br#"{"name":"web-1","kernel":"/k"}"#).unwrap();
        let cfg = def.to_config().unwrap();
        assert_eq!((cfg.vcpus, cfg.memory), (1, 256 << 20));
        assert_eq!(cfg.cmdline, "console=ttyS0");
        assert_eq!(cfg.on_reboot, OnReboot::Restart);
        let again: DomainDef = serde_json::from_slice(&serde_json::to_vec(&def).unwrap()).unwrap();
        assert_eq!(again, def);
    }

    #[test]
    fn switch_ports_get_per_domain_macs() {
        let a = DomainDef::from_json(br#"{"name":"a","kernel":"/k","net":["switch=vsw0"]}"#)
            .unwrap()
            .to_config()
            .unwrap();
        let b = DomainDef::from_json(br#"{"name":"b","kernel":"/k","net":["switch=vsw0"]}"#)
            .unwrap()
            .to_config()
            .unwrap();
        assert_ne!(a.nets[0].mac, b.nets[0].mac);
        let given = DomainDef::from_json(
            br#"{"name":"c","kernel":"/k","net":["switch=vsw0,mac=02:00:00:00:00:09"]}"#,
        )
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(given.nets[0].mac, [2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn disk_formats_are_found_once_and_recorded() {
        let dir = std::env::temp_dir().join(format!("vessel-def-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("a.img");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let q = dir.join("b.qcow2");
        devices::image::qcow2::create(&q, Some(1 << 20), None).unwrap();
        let json = format!(
            r#"{{"name":"d","kernel":"/k","disk":["path={},id=root","path={}","path={},format=raw"]}}"#,
            raw.display(),
            q.display(),
            q.display()
        );
        let mut def = DomainDef::from_json(json.as_bytes()).unwrap();
        def.pin_disk_formats().unwrap();
        assert_eq!(
            def.disk,
            [
                format!("path={},id=root,format=raw", raw.display()),
                format!("path={},format=qcow2", q.display()),
                format!("path={},format=raw", q.display()),
            ]
        );
        let formats: Vec<_> = def
            .to_config()
            .unwrap()
            .disks
            .iter()
            .map(|d| d.format)
            .collect();
        assert!(formats.iter().all(Option::is_some), "{formats:?}");
        let mut missing = DomainDef::from_json(
            format!(
                r#"{{"name":"e","kernel":"/k","disk":["path={}/nope"]}}"#,
                dir.display()
            )
            .as_bytes(),
        )
        .unwrap();
        let err = missing.pin_disk_formats().unwrap_err();
        assert!(
            err.contains("--disk disk0") && err.contains("nope"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_beyond_the_host_is_refused_before_it_is_stored() {
        let def = DomainDef::from_json(br#"{"name":"a","kernel":"/k","memory":"17179869183G"}"#)
            .expect("well formed, and within every limit that does not depend on the host");
        let err = def.check_to_store().unwrap_err();
        assert!(err.contains("more than this host's"), "{err}");
        let fine = DomainDef::from_json(br#"{"name":"a","kernel":"/k","memory":"16M"}"#).unwrap();
        assert!(fine.check_to_store().is_ok());
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        for (json, says) in [
            (r#"{"name":"a"}"#, "missing field `kernel`"),
            (
                r#"{"name":"a","kernel":"/k","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"name":"a","kernel":"/k","vcpus":"two"}"#,
                "invalid type",
            ),
            (r#"{"name":"","kernel":"/k"}"#, "invalid domain name"),
            (r#"{"name":"-x","kernel":"/k"}"#, "invalid domain name"),
            (r#"{"name":"a/b","kernel":"/k"}"#, "invalid domain name"),
            (r#"{"name":"a","kernel":"/k","memory":"lots"}"#, "memory"),
            (
                r#"{"name":"a","kernel":"/k","disk":["file=x"]}"#,
                "invalid --disk",
            ),
            (
                r#"{"name":"a","kernel":"/k","net":["bridge=x"]}"#,
                "invalid --net",
            ),
            (
                r#"{"name":"a","kernel":"/k","on_reboot":"later"}"#,
                "on_reboot",
            ),
            (r#"{"name":"a","kernel":"/k","vcpus":0}"#, "at least 1"),
            (
                r#"{"name":"a","kernel":"/k","vcpus":4294967295}"#,
                "more than a domain can have",
            ),
            (
                r#"{"name":"a","kernel":"/k","vcpus":4294967296}"#,
                "invalid value",
            ),
            (r#"{"name":"a","kernel":"/k","memory":"8M"}"#, "too small"),
            (
                r#"{"name":"a","kernel":"/k","memory":"17179869184G"}"#,
                "invalid size",
            ),
            (r#"[1,2]"#, "invalid domain definition"),
            (r#"{"name":"a","#, "invalid domain definition"),
        ] {
            let err = DomainDef::from_json(json.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}
