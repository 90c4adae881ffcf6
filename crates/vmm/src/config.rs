//! A domain's configuration, as the user gives it, and its validation.
//!
//! [`DomainConfig::check`] is the one check of everything that needs neither the host's files
//! nor KVM (vCPU count, memory size, command line, number of devices); `vessel run` and the
//! daemon's start run it through [`crate::validate`], and the daemon also runs it when a
//! definition is stored, with [`check_host_memory`].

use std::path::PathBuf;

use devices::image::{self, Format};

use crate::error::DomainError;
use crate::layout::{CMDLINE_MAX, MAX_VCPUS, MIN_MEMORY};
use crate::virtio::VIRTIO_MAX_DEVICES;

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
    /// Virtual network interfaces, in the order the guest sees them (eth0, eth1...).
    pub nets: Vec<NetConfig>,
}

impl DomainConfig {
    /// Checks every setting that needs neither the host's files nor KVM: vCPUs from 1 to
    /// [`MAX_VCPUS`], memory at least [`MIN_MEMORY`] and a multiple of 4 KiB, a command line
    /// shorter than [`CMDLINE_MAX`], and no more virtio devices (disks, the entropy device,
    /// network interfaces) than a domain has room for. Each failure names the setting.
    pub fn check(&self) -> Result<(), DomainError> {
        let bad = |msg: String| Err(DomainError::Config(msg));
        if self.vcpus == 0 {
            return bad("--vcpus must be at least 1".into());
        }
        if self.vcpus > MAX_VCPUS {
            return bad(format!(
                "--vcpus {} is more than a domain can have ({MAX_VCPUS})",
                self.vcpus
            ));
        }
        if self.memory < MIN_MEMORY {
            return bad(format!(
                "--memory {} MiB is too small: a domain needs at least {} MiB",
                self.memory >> 20,
                MIN_MEMORY >> 20
            ));
        }
        if !self.memory.is_multiple_of(4096) {
            return bad("--memory must be a multiple of 4 KiB".into());
        }
        if self.cmdline.len() >= CMDLINE_MAX {
            return bad(format!(
                "--cmdline is {} bytes; the limit is {}",
                self.cmdline.len(),
                CMDLINE_MAX - 1
            ));
        }
        // The entropy device is always there.
        let devices = self.disks.len() + 1 + self.nets.len();
        if devices > VIRTIO_MAX_DEVICES {
            return bad(format!(
                "too many devices: {} --disk and {} --net with the entropy device make {devices} \
                 virtio devices; a domain has room for {VIRTIO_MAX_DEVICES}",
                self.disks.len(),
                self.nets.len()
            ));
        }
        Ok(())
    }
}

/// Checks `memory` bytes of guest RAM against the host's RAM (when it can be read).
pub fn check_host_memory(memory: u64) -> Result<(), DomainError> {
    match host_memory() {
        Some(host) if memory > host => Err(DomainError::Config(format!(
            "--memory {} MiB is more than this host's {} MiB of RAM",
            memory >> 20,
            host >> 20
        ))),
        _ => Ok(()),
    }
}

/// One virtual block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file (a regular file or a block device).
    pub path: PathBuf,
    /// Its format (`format=`): given, or found once by [`pin_disk_formats`] before the
    /// domain first boots, and from then on never guessed again.
    pub format: Option<Format>,
    /// Whether the guest may only read it.
    pub readonly: bool,
    /// A name for the device (also the serial the guest reads).
    pub id: String,
    /// Data rate limit in bytes per second (0: none).
    pub bytes_per_sec: u64,
    /// Request rate limit in operations per second (0: none).
    pub ops_per_sec: u64,
}

/// A `--disk` argument that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --disk '{given}': {why} (expected path=FILE[,format=raw|qcow2][,readonly=on|off][,id=NAME][,bps=RATE][,iops=N])")]
pub struct DiskError {
    given: String,
    why: String,
}

/// Parses `path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,bps=RATE][,iops=N]`; `index`
/// names an unnamed disk (`disk0`...).
pub fn parse_disk(text: &str, index: usize) -> Result<DiskConfig, DiskError> {
    let err = |why: String| DiskError {
        given: text.to_string(),
        why,
    };
    let (mut path, mut readonly, mut id, mut format) = (None, false, None, None);
    let (mut bytes_per_sec, mut ops_per_sec) = (0, 0);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "format" => {
                format = match Format::from_name(value) {
                    Some(f) if Format::DISK_FORMATS.contains(&f) => Some(f),
                    Some(_) => {
                        return Err(err(format!(
                        "format {value} is retired: convert the image with `vessel image convert`"
                    )))
                    }
                    None => return Err(err(format!("format must be raw or qcow2, not '{value}'"))),
                }
            }
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
            "bps" => {
                bytes_per_sec = parse_rate(value).ok_or_else(|| {
                    err(format!(
                    "bps must be bytes per second with an optional K, M or G suffix, not '{value}'"
                ))
                })?
            }
            "iops" => {
                ops_per_sec = value
                    .parse()
                    .map_err(|_| err(format!("iops must be a whole number, not '{value}'")))?
            }
            "path" => return Err(err("path is empty".into())),
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    Ok(DiskConfig {
        path: path.ok_or_else(|| err("path= is missing".into()))?,
        format,
        readonly,
        id: id.unwrap_or_else(|| format!("disk{index}")),
        bytes_per_sec,
        ops_per_sec,
    })
}

/// A byte rate: a number with an optional K, M or G (binary) suffix; no suffix means bytes.
fn parse_rate(text: &str) -> Option<u64> {
    let (digits, shift) = match text.char_indices().last()? {
        (i, c) if c.eq_ignore_ascii_case(&'k') => (&text[..i], 10),
        (i, c) if c.eq_ignore_ascii_case(&'m') => (&text[..i], 20),
        (i, c) if c.eq_ignore_ascii_case(&'g') => (&text[..i], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A disk whose format cannot be found.
#[derive(Debug, thiserror::Error)]
#[error("--disk {id}: {source}")]
pub struct FormatError {
    /// The disk's id.
    pub id: String,
    /// Why.
    #[source]
    pub source: image::ImageError,
}

/// Finds the format of every disk that has none from the file's first bytes: once, for files
/// the user just named (`vessel run`, `vessel create`), so the domain's definition records
/// it and later boots never guess from bytes the guest may since have written. Returns the
/// disks it pinned, by index.
pub fn pin_disk_formats(disks: &mut [DiskConfig]) -> Result<Vec<usize>, FormatError> {
    let mut pinned = Vec::new();
    for (i, disk) in disks.iter_mut().enumerate() {
        if disk.format.is_some() {
            continue;
        }
        disk.format = Some(image::probe_disk(&disk.path).map_err(|source| FormatError {
            id: disk.id.clone(),
            source,
        })?);
        pinned.push(i);
    }
    Ok(pinned)
}

/// `text` (a `--disk` argument without `format=`) with `format=` added.
pub fn disk_with_format(text: &str, format: Format) -> String {
    format!("{text},format={format}")
}

/// The host side of a virtual network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// A host TAP interface, created if it does not exist.
    Tap(String),
    /// A Unix datagram socket bound at `path`, linked to the one bound at `peer` (both absolute).
    Socket {
        /// This end's socket path.
        path: PathBuf,
        /// The other end's socket path.
        peer: PathBuf,
    },
    /// A port on the daemon's virtual switch of this name (only under `vessel daemon`).
    Switch(String),
}

/// One virtual network interface (VIF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Where its frames go.
    pub backend: NetBackendConfig,
    /// Its MAC address: given, or generated from the backend (see [`generated_mac`]).
    pub mac: [u8; 6],
    /// Whether the MAC was generated rather than given (the daemon regenerates switch ports'
    /// MACs from the domain's name, so two domains never share one).
    pub mac_generated: bool,
    /// A switch port's rate in bytes per second (`bps=`, 0 or absent for none): the switch
    /// sends the VIF at most this much, like a link of that speed.
    pub rate: Option<u64>,
}

/// A `--net` argument that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --net '{given}': {why} (expected tap=NAME[,mac=MAC], socket=PATH,peer=PATH[,mac=MAC] or switch=NAME[,mac=MAC][,bps=RATE])")]
pub struct NetError {
    given: String,
    why: String,
}

/// The stable MAC of a VIF without `mac=`: locally administered unicast, `02` followed by the
/// first five bytes of the 64-bit FNV-1a hash of `key` (`tap=NAME`, or `socket=PATH` with the
/// absolute path), so the same command line always gives the guest the same address.
pub fn generated_mac(key: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Parses a MAC address written `xx:xx:xx:xx:xx:xx`; it must be unicast and not all zeros.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && unicast).then_some(mac)
}

/// Parses `tap=NAME[,mac=MAC]` or `socket=PATH,peer=PATH[,mac=MAC]`.
pub fn parse_net(text: &str) -> Result<NetConfig, NetError> {
    let err = |why: String| NetError {
        given: text.to_string(),
        why,
    };
    let (mut tap, mut socket, mut peer, mut mac) = (None, None, None, None);
    let (mut switch, mut rate) = (None, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
        if value.is_empty() {
            return Err(err(format!("{key} is empty")));
        }
        match key {
            "tap" => {
                let ok = value.len() <= 15
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
                if !ok {
                    return Err(err(
                        "a TAP name is 1 to 15 printable characters without '/' or ':'".into(),
                    ));
                }
                tap = Some(value.to_string());
            }
            "switch" => {
                if !(value.len() <= 15 && value.bytes().all(|b| b.is_ascii_alphanumeric())) {
                    return Err(err("a switch name is 1 to 15 letters and digits".into()));
                }
                switch = Some(value.to_string());
            }
            "socket" | "peer" => {
                let path =
                    std::path::absolute(value).map_err(|e| err(format!("{key} path: {e}")))?;
                if key == "socket" {
                    socket = Some(path);
                } else {
                    peer = Some(path);
                }
            }
            "mac" => {
                mac = Some(parse_mac(value).ok_or_else(|| {
                    err(format!(
                        "'{value}' is not a unicast MAC like 02:00:00:00:00:01"
                    ))
                })?)
            }
            "bps" => {
                let bps = parse_rate(value).ok_or_else(|| {
                    err(format!(
                        "bps must be bytes per second with an optional K, M or G suffix, not '{value}'"
                    ))
                })?;
                rate = (bps > 0).then_some(bps);
            }
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    if rate.is_some() && switch.is_none() {
        return Err(err("bps= applies to switch ports only".into()));
    }
    let backend = match (tap, socket, peer, switch) {
        (None, None, None, Some(name)) => NetBackendConfig::Switch(name),
        (_, _, _, Some(_)) => return Err(err("give one of tap=, socket= or switch=".into())),
        (tap, socket, peer, None) => backend_of(tap, socket, peer).map_err(err)?,
    };
    let key = match &backend {
        NetBackendConfig::Tap(name) => format!("tap={name}"),
        NetBackendConfig::Socket { path, .. } => format!("socket={}", path.display()),
        NetBackendConfig::Switch(name) => format!("switch={name}"),
    };
    Ok(NetConfig {
        mac: mac.unwrap_or_else(|| generated_mac(&key)),
        mac_generated: mac.is_none(),
        rate,
        backend,
    })
}

fn backend_of(
    tap: Option<String>,
    socket: Option<PathBuf>,
    peer: Option<PathBuf>,
) -> Result<NetBackendConfig, String> {
    let err = |why: &str| Err(why.to_string());
    Ok(match (tap, socket, peer) {
        (Some(name), None, None) => NetBackendConfig::Tap(name),
        (None, Some(path), Some(peer)) if path != peer => NetBackendConfig::Socket { path, peer },
        (None, Some(_), Some(_)) => return err("socket and peer are the same path"),
        (None, Some(_), None) => return err("socket= needs peer="),
        (None, None, _) => return err("tap=, socket= or switch= is missing"),
        _ => return err("give either tap= or socket=, not both"),
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
        assert_eq!(parse_disk("path=a", 0).unwrap().format, None);
        assert_eq!(
            parse_disk("path=a,format=qcow2", 0).unwrap().format,
            Some(Format::Qcow2)
        );
        assert_eq!(
            parse_disk(&disk_with_format("path=a", Format::Raw), 0)
                .unwrap()
                .format,
            Some(Format::Raw)
        );
        let limited = parse_disk("path=a,bps=2M,iops=100", 0).unwrap();
        assert_eq!((limited.bytes_per_sec, limited.ops_per_sec), (2 << 20, 100));
        for bad in [
            "path=a,bps=fast",
            "path=a,iops=-1",
            "path=a,bps=99999999999G",
            "path=a,format=vslcow",
            "path=a,format=vmdk",
            "path=a,format=",
        ] {
            assert!(parse_disk(bad, 0).is_err(), "{bad}");
        }
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
    fn nets_parse_with_given_or_stable_generated_macs() {
        let n = parse_net("tap=tap0,mac=52:54:00:AB:cd:01").unwrap();
        assert_eq!(n.backend, NetBackendConfig::Tap("tap0".into()));
        assert_eq!(n.mac, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        let a = parse_net("tap=tap0").unwrap();
        assert_eq!(a.mac, parse_net("tap=tap0").unwrap().mac, "stable");
        assert_ne!(a.mac, parse_net("tap=tap1").unwrap().mac);
        assert_eq!(a.mac[0], 0x02, "locally administered unicast");
        let s = parse_net("socket=/tmp/a.sock,peer=/tmp/b.sock").unwrap();
        assert_eq!(
            s.backend,
            NetBackendConfig::Socket {
                path: "/tmp/a.sock".into(),
                peer: "/tmp/b.sock".into()
            }
        );
        let b = parse_net("peer=/tmp/a.sock,socket=/tmp/b.sock").unwrap();
        assert_ne!(s.mac, b.mac, "the two ends differ");
        match parse_net("socket=rel.sock,peer=/p").unwrap().backend {
            NetBackendConfig::Socket { path, .. } => assert!(path.is_absolute()),
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "tap=",
            "tap=a/b",
            "tap=waytoolongname16",
            "tap=t,socket=/a,peer=/b",
            "socket=/a",
            "socket=/a,peer=/a",
            "peer=/a",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:01:02",
            "tap=t,mac=2:0:0:0:0:1",
            "tap=t,speed=10",
            "tap=t,bps=1M",
            "switch=vsw0,bps=-5",
            "switch=vsw0,bps=1.5M",
            "switch=vsw0,bps=M",
            "switch=vsw0,bps=1T",
            "tap",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn switch_ports_take_a_rate() {
        let n = parse_net("switch=vsw0,bps=2M").unwrap();
        assert_eq!(n.backend, NetBackendConfig::Switch("vsw0".into()));
        assert_eq!(n.rate, Some(2 << 20));
        assert_eq!(
            parse_net("switch=vsw0,bps=1000000").unwrap().rate,
            Some(1_000_000)
        );
        assert_eq!(
            parse_net("switch=vsw0,bps=0").unwrap().rate,
            None,
            "0: no rate"
        );
        assert_eq!(parse_net("switch=vsw0").unwrap().rate, None);
    }

    fn config() -> DomainConfig {
        DomainConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory: 256 << 20,
            on_reboot: OnReboot::Restart,
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }

    #[test]
    fn the_check_refuses_each_absurd_value_and_names_it() {
        assert!(config().check().is_ok());
        let disk = parse_disk("path=/d", 0).unwrap();
        let net = parse_net("switch=vsw0").unwrap();
        let cases: Vec<(DomainConfig, &str)> = vec![
            (
                DomainConfig {
                    vcpus: 0,
                    ..config()
                },
                "--vcpus must be at least 1",
            ),
            (
                DomainConfig {
                    vcpus: 256,
                    ..config()
                },
                "--vcpus 256 is more than a domain can have (255)",
            ),
            (
                DomainConfig {
                    vcpus: u32::MAX,
                    ..config()
                },
                "--vcpus 4294967295",
            ),
            (
                DomainConfig {
                    memory: 1 << 20,
                    ..config()
                },
                "--memory 1 MiB is too small",
            ),
            (
                DomainConfig {
                    memory: (256 << 20) + 1,
                    ..config()
                },
                "multiple of 4 KiB",
            ),
            (
                DomainConfig {
                    cmdline: "x".repeat(CMDLINE_MAX),
                    ..config()
                },
                "--cmdline is 2048 bytes; the limit is 2047",
            ),
            (
                DomainConfig {
                    disks: vec![disk.clone(); 19],
                    ..config()
                },
                "too many devices: 19 --disk",
            ),
            (
                DomainConfig {
                    disks: vec![disk.clone(); 10],
                    nets: vec![net.clone(); 9],
                    ..config()
                },
                "make 20 virtio devices",
            ),
        ];
        for (cfg, says) in cases {
            let err = cfg.check().unwrap_err().to_string();
            assert!(err.contains(says), "{err} (want {says:?})");
        }
        let most = DomainConfig {
            vcpus: MAX_VCPUS,
            cmdline: "x".repeat(CMDLINE_MAX - 1),
            disks: vec![disk; 9],
            nets: vec![net; 9],
            ..config()
        };
        assert!(most.check().is_ok(), "the limits themselves are allowed");
        let err = check_host_memory(!0xfff).unwrap_err().to_string();
        assert!(err.contains("more than this host's"), "{err}");
        assert!(check_host_memory(16 << 20).is_ok());
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
