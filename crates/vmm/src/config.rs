//! A domain's configuration, as the user gives it, and its validation.

use std::path::PathBuf;

/// What to do when the guest reboots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnReboot {
    /// Boot the domain again from its kernel (a fresh machine, same configuration).
    #[default]
    Restart,
    /// Stop, as if the guest had powered off, but report the reboot.
    Exit,
}

/// Everything needed to boot one domain.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    /// The kernel: a bzImage or an ELF vmlinux with a PVH entry note.
    pub kernel: PathBuf,
    /// An optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=KVM's limit).
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Reboot policy.
    pub on_reboot: OnReboot,
    /// Virtual block devices, in the order the guest sees them (vda, vdb...).
    pub disks: Vec<DiskConfig>,
}

/// One virtual block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub readonly: bool,
    /// A name for the device (also the serial the guest reads).
    pub id: String,
}

/// A `--disk` argument that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --disk '{given}': {why} (expected path=FILE[,readonly=on|off][,id=NAME])")]
pub struct DiskError {
    given: String,
    why: String,
}

/// Parses `path=FILE[,readonly=on][,id=NAME]`; `index` names an unnamed disk (`disk0`...).
pub fn parse_disk(text: &str, index: usize) -> Result<DiskConfig, DiskError> {
    let err = |why: String| DiskError {
        given: text.to_string(),
        why,
    };
    let (mut path, mut readonly, mut id) = (None, false, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "readonly" => {
                readonly = match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(err(format!("readonly must be on or off, not '{value}'"))),
                }
            }
            "id" if !value.is_empty() && value.len() <= 20 && value.is_ascii() => {
                id = Some(value.to_string())
            }
            "id" => return Err(err("id must be 1 to 20 ASCII characters".into())),
            "path" => return Err(err("path is empty".into())),
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    Ok(DiskConfig {
        path: path.ok_or_else(|| err("path= is missing".into()))?,
        readonly,
        id: id.unwrap_or_else(|| format!("disk{index}")),
    })
}

/// A size argument that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid size '{0}': expected a number with an optional K, M or G suffix (no suffix means MiB), e.g. 256M")]
pub struct SizeError(pub String);

/// Parses `256M`, `1G`, `65536K` or `512` (MiB) into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 30),
        _ => (t, 20),
    };
    let n: u64 = digits.parse().map_err(|_| SizeError(text.to_string()))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| SizeError(text.to_string()))
}

/// The host's physical memory in bytes (MemTotal), if it can be read.
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse() {
        let d = parse_disk("path=/x.img,readonly=on,id=root", 0).unwrap();
        assert_eq!(
            (d.path.to_str().unwrap(), d.readonly, d.id.as_str()),
            ("/x.img", true, "root")
        );
        assert_eq!(parse_disk("path=a", 3).unwrap().id, "disk3");
        for bad in [
            "",
            "readonly=on",
            "path=a,ro=on",
            "path=a,readonly=maybe",
            "path=",
            "a.img",
            "path=a,id=",
        ] {
            assert!(parse_disk(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("65536K").unwrap(), 64 << 20);
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        for bad in ["", "M", "12Q", "-1M", "0", "99999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
