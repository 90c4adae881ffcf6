//! A domain's specification: everything a user says about a domain, typed, with its defaults
//! and its checks, in one place.
//!
//! [`DomainSpec`] is at once `vessel run`'s and `vessel create`'s flags (with the `clap`
//! feature it derives `clap::Args`, which both flatten), the JSON body of the daemon's
//! `POST /v1/domains` and the definition files the daemon keeps (serde). Inside it is typed:
//! memory in bytes, disks and VIFs as [`DiskSpec`] and [`NetSpec`], the reboot policy as
//! [`OnReboot`]. On the outside, disks and VIFs stay the strings `--disk` and `--net` take
//! (their `FromStr` parses one, their `Display` writes the canonical one back) and memory the
//! sizes `--memory` takes ("256M"), so the JSON is what docs/api.md describes.
//!
//! [`DomainSpec::validate`] checks everything that needs neither the host's files nor KVM; it
//! reads nothing and opens nothing. What depends on the host (KVM's vCPU limit, the host's RAM,
//! the kernel, initrd and disk files) is checked by [`crate::domain::validate`].

use std::fmt;
use std::marker::PhantomData;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use devices::image::Format;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::{CMDLINE_MAX, MAX_MEMORY, MAX_VCPUS, MIN_MEMORY};
use crate::mem_alloc::{AllocError, MemoryAlloc};
use crate::sched::{SchedError, SchedParams};
use crate::virtio::{FIXED_DEVICES, VIRTIO_MAX_DEVICES};

/// The kernel command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// vCPUs when none are given.
pub const DEFAULT_VCPUS: u32 = 1;
/// Guest memory when none is given, as `--memory` takes it.
pub const DEFAULT_MEMORY: &str = "256M";
// The other defaults: `on_reboot` is `OnReboot::default()` (restart), `autostart` false,
// `sched` `SchedParams::default()` (crate::sched), no initrd, disks or VIFs.

/// Everything needed to define and boot one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// The domain's name: 1 to 32 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`. The
    /// daemon's domains have one; `vessel run`'s needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub name: Option<String>,
    /// Guest kernel: a bzImage or an ELF vmlinux with a PVH note.
    #[cfg_attr(feature = "clap", arg(long, value_name = "PATH"))]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "PATH"))]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    #[cfg_attr(feature = "clap", arg(long, default_value = DEFAULT_CMDLINE))]
    pub cmdline: String,
    /// Number of virtual CPUs.
    #[serde(default = "default_vcpus")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_VCPUS))]
    pub vcpus: u32,
    /// Guest memory: a number with an optional K, M, G or T suffix (binary; also KiB, MiB,
    /// GiB, TiB; decimals like 1.5G allowed); a bare number is MiB.
    #[serde(default = "default_memory", with = "size_text")]
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "SIZE", default_value = DEFAULT_MEMORY, value_parser = parse_size)
    )]
    pub memory: u64,
    /// A virtual block device, repeat for more (vda, vdb...):
    /// path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,bps=RATE][,iops=N]. Without
    /// format=, the file's format is found once, when the domain is defined (by `vessel run`:
    /// before the first boot), and kept.
    #[serde(rename = "disk", default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "clap", arg(long = "disk", value_name = "SPEC"))]
    pub disks: Vec<DiskSpec>,
    /// A virtual network interface (eth0, eth1... in order; repeat for more): tap=NAME[,mac=MAC]
    /// for a host TAP interface (created if missing); socket=PATH,peer=PATH[,mac=MAC] for a
    /// point-to-point link to another domain whose VIF is socket=PEER,peer=PATH; under
    /// `vessel daemon`, switch=vsw0[,mac=MAC][,bps=RATE] for a port of its virtual switch (bps:
    /// the most bytes per second the switch sends it). Without mac=, a stable locally
    /// administered address. Each may add offloads=off: the guest is then offered no checksum
    /// offload or TSO (on by default).
    #[serde(rename = "net", default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "clap", arg(long = "net", value_name = "SPEC"))]
    pub nets: Vec<NetSpec>,
    /// Offer the guest free page reporting: its balloon driver then hands back memory as the
    /// guest frees it, and the host discards it at once (off by default, as in QEMU).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub free_page_reporting: bool,
    /// What a guest reboot does.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t))]
    pub on_reboot: OnReboot,
    /// Whether the daemon should start the domain when the daemon starts. (`vessel run` has
    /// no use for it.)
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub autostart: bool,
    /// How the domain shares the host's CPUs with the daemon's other domains (`vessel
    /// create`'s --weight, --cap, --warp...; `vessel run` has no other domains and takes none).
    #[serde(default, skip_serializing_if = "SchedParams::is_default")]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub sched: SchedParams,
    /// What the domain keeps of its memory when the host is short: its reservation and shares
    /// (`vessel create`'s --reservation and --shares; `vessel run` takes none).
    #[serde(default, skip_serializing_if = "MemoryAlloc::is_default")]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub memory_alloc: MemoryAlloc,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

fn default_memory() -> u64 {
    // Cannot fail: `the_defaults_are_those_of_the_docs` parses the constant.
    parse_size(DEFAULT_MEMORY).expect("DEFAULT_MEMORY is a size")
}

/// What to do when the guest reboots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum OnReboot {
    /// Boot the domain again from its kernel (a fresh machine, same specification).
    #[default]
    Restart,
    /// Stop, as if the guest had powered off, but report the reboot (`vessel run`: exit
    /// status 2).
    Exit,
}

impl FromStr for OnReboot {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<OnReboot, SpecError> {
        match text {
            "restart" => Ok(OnReboot::Restart),
            "exit" => Ok(OnReboot::Exit),
            other => Err(SpecError::OnReboot(other.to_string())),
        }
    }
}

impl TryFrom<String> for OnReboot {
    type Error = SpecError;

    fn try_from(text: String) -> Result<OnReboot, SpecError> {
        text.parse()
    }
}

/// One virtual block device: `path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,bps=RATE]
/// [,iops=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file (a regular file or a block device).
    pub path: PathBuf,
    /// Its format (`format=`): given, or found once by [`crate::domain::pin_disk_formats`]
    /// before the domain first boots, and from then on never guessed again.
    pub format: Option<Format>,
    /// Whether the guest may only read it.
    pub readonly: bool,
    /// A name for the device (also the serial the guest reads); without one, `diskN` for the
    /// Nth disk (see [`DiskSpec::id_at`]).
    pub id: Option<String>,
    /// Data rate limit in bytes per second (0: none).
    pub bytes_per_sec: u64,
    /// Request rate limit in operations per second (0: none).
    pub ops_per_sec: u64,
}

impl DiskSpec {
    /// A read-write disk on `path`, format to be found, no id, no limits.
    pub fn new(path: impl Into<PathBuf>) -> DiskSpec {
        DiskSpec {
            path: path.into(),
            format: None,
            readonly: false,
            id: None,
            bytes_per_sec: 0,
            ops_per_sec: 0,
        }
    }

    /// Its id when it is disk number `index`: the one given, or `disk{index}`.
    pub fn id_at(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("disk{index}"))
    }
}

/// The longest disk id (the virtio-blk serial is 20 bytes).
const DISK_ID_MAX: usize = 20;

impl FromStr for DiskSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<DiskSpec, SpecError> {
        let err = |why: String| SpecError::Disk {
            given: text.to_string(),
            why,
        };
        let mut path = None;
        let mut disk = DiskSpec::new("");
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
            match key {
                "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
                "path" => return Err(err("path is empty".into())),
                "format" => {
                    disk.format = match Format::from_name(value) {
                        Some(f) if Format::DISK_FORMATS.contains(&f) => Some(f),
                        Some(_) => {
                            return Err(err(format!(
                                "format {value} is retired: convert the image with `vessel image convert`"
                            )))
                        }
                        None => {
                            return Err(err(format!("format must be raw or qcow2, not '{value}'")))
                        }
                    }
                }
                "readonly" => {
                    disk.readonly = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(err(format!("readonly must be on or off, not '{value}'"))),
                    }
                }
                "id" if !value.is_empty() && value.len() <= DISK_ID_MAX && value.is_ascii() => {
                    disk.id = Some(value.to_string())
                }
                "id" => {
                    return Err(err(format!(
                        "id must be 1 to {DISK_ID_MAX} ASCII characters"
                    )))
                }
                "bps" => {
                    disk.bytes_per_sec = parse_rate(value).ok_or_else(|| {
                        err(format!(
                            "bps must be bytes per second with an optional K, M, G or T suffix (binary; decimals if the bytes come out whole), not '{value}'"
                        ))
                    })?
                }
                "iops" => {
                    disk.ops_per_sec = value
                        .parse()
                        .map_err(|_| err(format!("iops must be a whole number, not '{value}'")))?
                }
                other => return Err(err(format!("unknown key '{other}'"))),
            }
        }
        disk.path = path.ok_or_else(|| err("path= is missing".into()))?;
        Ok(disk)
    }
}

/// The canonical string: `path=` first, then only what differs from the defaults, in the
/// order of the syntax above.
impl fmt::Display for DiskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if let Some(format) = self.format {
            write!(f, ",format={format}")?;
        }
        if self.readonly {
            f.write_str(",readonly=on")?;
        }
        if let Some(id) = &self.id {
            write!(f, ",id={id}")?;
        }
        if self.bytes_per_sec > 0 {
            write!(f, ",bps={}", format_rate(self.bytes_per_sec))?;
        }
        if self.ops_per_sec > 0 {
            write!(f, ",iops={}", self.ops_per_sec)?;
        }
        Ok(())
    }
}

/// The host side of a virtual network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A host TAP interface, created if it does not exist (`tap=NAME`).
    Tap(String),
    /// A Unix datagram socket bound at `path`, linked to the one bound at `peer`
    /// (`socket=PATH,peer=PATH`).
    Socket {
        /// This end's socket path.
        path: PathBuf,
        /// The other end's socket path.
        peer: PathBuf,
    },
    /// A port on the daemon's virtual switch of this name (`switch=NAME[,bps=RATE]`; only
    /// under `vessel daemon`).
    Switch {
        /// The switch.
        name: String,
        /// The port's rate in bytes per second: the switch sends the VIF at most this much,
        /// like a link of that speed (`None`: no limit).
        rate: Option<u64>,
    },
}

/// One virtual network interface (VIF): `tap=NAME`, `socket=PATH,peer=PATH` or
/// `switch=NAME[,bps=RATE]`, each with an optional `mac=MAC` and `offloads=off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// Where its frames go.
    pub backend: NetBackendSpec,
    /// Its MAC address, if given; else one is generated from the backend
    /// (`crate::net::vif_mac`).
    pub mac: Option<[u8; 6]>,
    /// Whether the VIF offers the guest checksum and segmentation offloads (`offloads=on`, the
    /// default; `off` makes it a NIC without them, as an old guest's driver would see one).
    pub offloads: bool,
}

/// The longest TAP or switch name (Linux's IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

impl FromStr for NetSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<NetSpec, SpecError> {
        let err = |why: String| SpecError::Net {
            given: text.to_string(),
            why,
        };
        let (mut tap, mut socket, mut peer, mut mac) = (None, None, None, None);
        let (mut switch, mut rate, mut offloads) = (None, None, true);
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
            if value.is_empty() {
                return Err(err(format!("{key} is empty")));
            }
            match key {
                "tap" => {
                    let ok = value.len() <= IFNAME_MAX
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
                    if !ok {
                        return Err(err(format!(
                            "a TAP name is 1 to {IFNAME_MAX} printable characters without '/' or ':'"
                        )));
                    }
                    tap = Some(value.to_string());
                }
                "switch" => {
                    if !(value.len() <= IFNAME_MAX
                        && value.bytes().all(|b| b.is_ascii_alphanumeric()))
                    {
                        return Err(err(format!(
                            "a switch name is 1 to {IFNAME_MAX} letters and digits"
                        )));
                    }
                    switch = Some(value.to_string());
                }
                "socket" => socket = Some(PathBuf::from(value)),
                "peer" => peer = Some(PathBuf::from(value)),
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
                            "bps must be bytes per second with an optional K, M, G or T suffix (binary; decimals if the bytes come out whole), not '{value}'"
                        ))
                    })?;
                    rate = Some(bps);
                }
                "offloads" => {
                    offloads = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(err(format!("offloads is on or off, not '{value}'"))),
                    }
                }
                other => return Err(err(format!("unknown key '{other}'"))),
            }
        }
        let backend = match (tap, socket, peer, switch) {
            (None, None, None, Some(name)) => NetBackendSpec::Switch {
                name,
                rate: rate.filter(|&bps| bps > 0),
            },
            (_, _, _, Some(_)) => return Err(err("give one of tap=, socket= or switch=".into())),
            _ if rate.is_some() => return Err(err("bps= applies to switch ports only".into())),
            (Some(name), None, None, None) => NetBackendSpec::Tap(name),
            (None, Some(path), Some(peer), None) if !same_path(&path, &peer) => {
                NetBackendSpec::Socket { path, peer }
            }
            (None, Some(_), Some(_), None) => {
                return Err(err("socket and peer are the same path".into()))
            }
            (None, Some(_), None, None) => return Err(err("socket= needs peer=".into())),
            (None, None, _, None) => return Err(err("tap=, socket= or switch= is missing".into())),
            _ => return Err(err("give either tap= or socket=, not both".into())),
        };
        Ok(NetSpec {
            backend,
            mac,
            offloads,
        })
    }
}

/// The canonical string: the backend's keys, then `mac=` if given, then a switch port's
/// `bps=`, then `offloads=off` if so.
impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            NetBackendSpec::Tap(name) => write!(f, "tap={name}")?,
            NetBackendSpec::Socket { path, peer } => {
                write!(f, "socket={},peer={}", path.display(), peer.display())?
            }
            NetBackendSpec::Switch { name, .. } => write!(f, "switch={name}")?,
        }
        if let Some(mac) = self.mac {
            write!(f, ",mac={}", format_mac(mac))?;
        }
        if let NetBackendSpec::Switch {
            rate: Some(rate), ..
        } = &self.backend
        {
            write!(f, ",bps={}", format_rate(*rate))?;
        }
        if !self.offloads {
            write!(f, ",offloads=off")?;
        }
        Ok(())
    }
}

/// Why a specification, or a piece of one, is not valid. Each message names the setting as
/// the command line does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Scheduling parameters out of range.
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// A memory reservation or shares out of range.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A name that is not a valid domain name.
    #[error("invalid domain name '{0}': use 1 to 32 letters, digits, '_', '.' or '-', not starting with '.' or '-'")]
    Name(String),
    /// No vCPUs.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than a domain can have.
    #[error("--vcpus {0} is more than a domain can have ({MAX_VCPUS})")]
    TooManyVcpus(u32),
    /// Less memory than a domain needs (bytes).
    #[error("--memory {} MiB is too small: a domain needs at least {} MiB", .0 >> 20, MIN_MEMORY >> 20)]
    TooLittleMemory(u64),
    /// More memory than a domain's address space holds (bytes).
    #[error("--memory {} MiB is more than a domain can have ({} GiB: x86-64 guest-physical addresses end at 4 PiB)", .0 >> 20, MAX_MEMORY >> 30)]
    TooMuchMemory(u64),
    /// Memory that is not a whole number of pages (bytes).
    #[error("--memory must be a multiple of 4 KiB")]
    UnalignedMemory(u64),
    /// A command line too long for the boot protocol (its length).
    #[error("--cmdline is {0} bytes; the limit is {limit}", limit = CMDLINE_MAX - 1)]
    LongCmdline(usize),
    /// A command line with a NUL byte, which would end it early.
    #[error("--cmdline contains a NUL byte")]
    NulInCmdline,
    /// More virtio devices than a domain has slots for.
    #[error("too many devices: {disks} --disk and {nets} --net with the entropy device and the balloon make {} virtio devices; a domain has room for {VIRTIO_MAX_DEVICES}", disks + nets + FIXED_DEVICES)]
    TooManyDevices {
        /// Disks asked for.
        disks: usize,
        /// VIFs asked for.
        nets: usize,
    },
    /// Two disks with one id.
    #[error("--disk {0}: two disks have this id (the guest reads it as the disk's serial)")]
    DuplicateDiskId(String),
    /// One file given as two disks, at least one of them writable.
    #[error("--disk {first} and --disk {second} are the same file {path}: only read-only disks may share one")]
    SharedDisk {
        /// The first disk's id.
        first: String,
        /// The second disk's id.
        second: String,
        /// The file.
        path: String,
    },
    /// Two VIFs given one MAC.
    #[error("--net: two VIFs are given the MAC {0}")]
    DuplicateMac(String),
    /// Two VIFs on one TAP interface or one socket path.
    #[error("--net {0}: two VIFs cannot both use it")]
    SharedBackend(String),
    /// A `--disk` string that does not parse.
    #[error("invalid --disk '{given}': {why} (expected path=FILE[,format=raw|qcow2][,readonly=on|off][,id=NAME][,bps=RATE][,iops=N])")]
    Disk {
        /// The string.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// A `--net` string that does not parse.
    #[error("invalid --net '{given}': {why} (expected tap=NAME[,mac=MAC], socket=PATH,peer=PATH[,mac=MAC] or switch=NAME[,mac=MAC][,bps=RATE], each [,offloads=off])")]
    Net {
        /// The string.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// A size that does not parse.
    #[error("invalid size '{0}': expected a number (decimals allowed if the bytes come out whole) with an optional K, M, G or T suffix, also written KiB, MiB, GiB, TiB (no suffix means MiB), e.g. 256M or 1.5GiB")]
    Size(String),
    /// A reboot policy that is not one.
    #[error("on_reboot must be \"restart\" or \"exit\", not \"{0}\"")]
    OnReboot(String),
}

impl DomainSpec {
    /// A specification of a domain booting `kernel`, with every default.
    pub fn new(kernel: impl Into<PathBuf>) -> DomainSpec {
        DomainSpec {
            name: None,
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory: default_memory(),
            disks: Vec::new(),
            nets: Vec::new(),
            free_page_reporting: false,
            on_reboot: OnReboot::default(),
            autostart: false,
            sched: SchedParams::default(),
            memory_alloc: MemoryAlloc::default(),
        }
    }

    /// Checks every setting that needs neither the host's files nor KVM, reading nothing: the
    /// name (when there is one), vCPUs from 1 to [`MAX_VCPUS`], memory from [`MIN_MEMORY`] to
    /// [`MAX_MEMORY`] in whole pages, a command line shorter than [`CMDLINE_MAX`] without NUL,
    /// no more virtio devices (disks, the entropy device, VIFs) than a domain has room for,
    /// every disk and VIF expressible as the string `--disk` or `--net` takes, and no two
    /// devices that would clash: disks with one id, a file given as two disks unless both are
    /// read-only, VIFs given one MAC, or two VIFs on one TAP interface or socket path.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(SpecError::Name(name.clone()));
            }
        }
        if self.vcpus == 0 {
            return Err(SpecError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(SpecError::TooManyVcpus(self.vcpus));
        }
        if self.memory < MIN_MEMORY {
            return Err(SpecError::TooLittleMemory(self.memory));
        }
        if self.memory > MAX_MEMORY {
            return Err(SpecError::TooMuchMemory(self.memory));
        }
        if !self.memory.is_multiple_of(4096) {
            return Err(SpecError::UnalignedMemory(self.memory));
        }
        if self.cmdline.len() >= CMDLINE_MAX {
            return Err(SpecError::LongCmdline(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(SpecError::NulInCmdline);
        }
        // The entropy device and the balloon are always there.
        if self.disks.len() + FIXED_DEVICES + self.nets.len() > VIRTIO_MAX_DEVICES {
            return Err(SpecError::TooManyDevices {
                disks: self.disks.len(),
                nets: self.nets.len(),
            });
        }
        self.sched.validate(self.vcpus)?;
        self.memory_alloc.validate(self.memory)?;
        self.check_disks()?;
        self.check_nets()
    }

    fn check_disks(&self) -> Result<(), SpecError> {
        for disk in &self.disks {
            let bad = |why: &str| SpecError::Disk {
                given: disk.to_string(),
                why: why.to_string(),
            };
            check_expressible(&disk.path).map_err(bad)?;
            // Every field as the parser would take it (an id's length, a retired format...).
            disk.to_string().parse::<DiskSpec>()?;
        }
        for (j, b) in self.disks.iter().enumerate() {
            for (i, a) in self.disks[..j].iter().enumerate() {
                if a.id_at(i) == b.id_at(j) {
                    return Err(SpecError::DuplicateDiskId(b.id_at(j)));
                }
                if same_path(&a.path, &b.path) && !(a.readonly && b.readonly) {
                    return Err(SpecError::SharedDisk {
                        first: a.id_at(i),
                        second: b.id_at(j),
                        path: b.path.display().to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_nets(&self) -> Result<(), SpecError> {
        for net in &self.nets {
            let bad = |why: &str| SpecError::Net {
                given: net.to_string(),
                why: why.to_string(),
            };
            if let NetBackendSpec::Socket { path, peer } = &net.backend {
                check_expressible(path).map_err(bad)?;
                check_expressible(peer).map_err(bad)?;
            }
            net.to_string().parse::<NetSpec>()?;
        }
        for (j, b) in self.nets.iter().enumerate() {
            for a in &self.nets[..j] {
                if let (Some(x), Some(y)) = (a.mac, b.mac) {
                    if x == y {
                        return Err(SpecError::DuplicateMac(format_mac(x)));
                    }
                }
                match (&a.backend, &b.backend) {
                    (NetBackendSpec::Tap(x), NetBackendSpec::Tap(y)) if x == y => {
                        return Err(SpecError::SharedBackend(format!("tap={y}")))
                    }
                    (
                        NetBackendSpec::Socket { path: x, .. },
                        NetBackendSpec::Socket { path: y, .. },
                    ) if same_path(x, y) => {
                        return Err(SpecError::SharedBackend(format!("socket={}", y.display())))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The same specification with every relative host path made absolute against the
    /// current working directory: the kernel, the initrd, each disk's `path` and each VIF's
    /// `socket` and `peer`. The CLI sends definitions to the daemon this way, so a relative
    /// path means what it means in the user's shell, not in the daemon's working directory.
    pub fn with_absolute_paths(mut self) -> std::io::Result<DomainSpec> {
        self.kernel = std::path::absolute(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            self.initrd = Some(std::path::absolute(initrd)?);
        }
        for disk in &mut self.disks {
            disk.path = std::path::absolute(&disk.path)?;
        }
        for net in &mut self.nets {
            if let NetBackendSpec::Socket { path, peer } = &mut net.backend {
                *path = std::path::absolute(&*path)?;
                *peer = std::path::absolute(&*peer)?;
            }
        }
        Ok(self)
    }
}

/// Whether `path` can be written in a `--disk` or `--net` string and read back: UTF-8, and
/// without the `,` that separates keys.
fn check_expressible(path: &Path) -> Result<(), &'static str> {
    match path.to_str() {
        None => Err("the path is not UTF-8"),
        Some(text) if text.contains(',') => Err("the path contains ',', which separates keys"),
        Some("") => Err("the path is empty"),
        Some(_) => Ok(()),
    }
}

/// Whether two paths name the same file as far as their text says (`a/./b` is `a/b`; links
/// and `..` are not followed: nothing is read).
fn same_path(a: &Path, b: &Path) -> bool {
    let not_dot = |c: &Component<'_>| *c != Component::CurDir;
    a.components()
        .filter(not_dot)
        .eq(b.components().filter(not_dot))
}

/// Whether `name` is a valid domain name: 1 to 32 of `A-Z a-z 0-9 _ . -`, not starting with
/// `.` or `-` (it names a file and a switch port).
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The one reading of an amount of bytes wherever Vessel takes one (sizes and rates): a
/// number, with decimals if the result is a whole number of bytes (`1.5G`), and an optional
/// binary suffix `K`, `M`, `G` or `T`, also written `KiB`, `MiB`, `GiB`, `TiB` (any case);
/// without one, the number counts units of `2^bare_shift` bytes (MiB for sizes, bytes for
/// rates).
fn parse_bytes(text: &str, bare_shift: u32) -> Option<u64> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let shift = match &lower[number_end..] {
        "" => bare_shift,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return None,
    };
    let (whole, fraction) = lower[..number_end]
        .split_once('.')
        .unwrap_or((&lower[..number_end], ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 12 {
        return None;
    }
    let unit = 1u128 << shift;
    let mut bytes = whole.parse::<u128>().ok()?.checked_mul(unit)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let part = fraction.parse::<u128>().ok()? * unit;
        if !part.is_multiple_of(scale) {
            return None;
        }
        bytes = bytes.checked_add(part / scale)?;
    }
    u64::try_from(bytes).ok()
}

/// A byte rate, read as [`parse_bytes`] reads it with bare numbers in bytes (`1000000`,
/// `10M`, `1.5MiB`).
pub fn parse_rate(text: &str) -> Option<u64> {
    parse_bytes(text, 0)
}

/// `bytes` with the largest binary suffix that keeps it exact, or none (then it means bytes,
/// as [`parse_rate`] reads it).
fn format_rate(bytes: u64) -> String {
    match exact_unit(bytes) {
        Some((n, unit)) => format!("{n}{unit}"),
        None => bytes.to_string(),
    }
}

/// `bytes` as a count of the largest of G, M and K it is a whole number of.
fn exact_unit(bytes: u64) -> Option<(u64, char)> {
    [(30, 'G'), (20, 'M'), (10, 'K')]
        .into_iter()
        .find(|&(shift, _)| bytes != 0 && bytes.is_multiple_of(1 << shift))
        .map(|(shift, unit)| (bytes >> shift, unit))
}

/// Parses a size (`256M`, `1.5G`, `2GiB`, `1T`, `65536K`, or `512`: a bare number is MiB) into
/// bytes, as [`parse_bytes`] reads it; zero is not a size.
pub fn parse_size(text: &str) -> Result<u64, SpecError> {
    parse_bytes(text, 20)
        .filter(|&b| b > 0)
        .ok_or_else(|| SpecError::Size(text.to_string()))
}

/// `bytes` as [`parse_size`] reads it back (`256M`, `1G`, `1536K`), if it is a whole number of
/// KiB.
pub fn format_size(bytes: u64) -> Option<String> {
    exact_unit(bytes).map(|(n, unit)| format!("{n}{unit}"))
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

/// `mac` written `xx:xx:xx:xx:xx:xx` (lower case).
pub fn format_mac(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The stable MAC of a VIF without `mac=`: locally administered unicast, `02` followed by the
/// first five bytes of the 64-bit FNV-1a hash of `key` (see `crate::net::vif_mac` for the
/// keys), so the same specification always gives the guest the same address.
pub fn generated_mac(key: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Deserializes a `T` from a string through its `FromStr`; `expecting` says what the string
/// should look like, `field` names it in the error (or is empty when the error names it).
struct ParsedText<T> {
    expecting: &'static str,
    field: &'static str,
    _of: PhantomData<T>,
}

impl<T> ParsedText<T> {
    fn new(expecting: &'static str, field: &'static str) -> ParsedText<T> {
        ParsedText {
            expecting,
            field,
            _of: PhantomData,
        }
    }
}

impl<T: FromStr> Visitor<'_> for ParsedText<T>
where
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(|e| match self.field {
            "" => E::custom(e),
            field => E::custom(format_args!("{field}: {e}")),
        })
    }
}

impl Serialize for DiskSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DiskSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DiskSpec, D::Error> {
        d.deserialize_str(ParsedText::new("a --disk string such as \"path=FILE\"", ""))
    }
}

impl Serialize for NetSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NetSpec, D::Error> {
        d.deserialize_str(ParsedText::new(
            "a --net string such as \"switch=vsw0\"",
            "",
        ))
    }
}

/// Memory in bytes, written as `--memory` takes it ("256M").
pub(crate) mod size_text {
    use super::*;

    /// A size in bytes, parsed by [`parse_size`].
    struct Size(u64);

    impl FromStr for Size {
        type Err = SpecError;

        fn from_str(text: &str) -> Result<Size, SpecError> {
            parse_size(text).map(Size)
        }
    }

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        match format_size(*bytes) {
            Some(text) => s.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format_args!(
                "memory: {bytes} bytes is not a whole number of KiB"
            ))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_str(ParsedText::<Size>::new("a size such as \"256M\"", "memory"))
            .map(|Size(bytes)| bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(text: &str) -> DiskSpec {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn net(text: &str) -> NetSpec {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// The message of `spec`'s validation error.
    fn refusal(spec: &DomainSpec) -> String {
        spec.validate()
            .expect_err("the specification was accepted")
            .to_string()
    }

    #[test]
    fn the_defaults_are_those_of_the_docs() {
        let spec = DomainSpec::new("/k");
        assert_eq!(spec.cmdline, "console=ttyS0");
        assert_eq!((spec.vcpus, spec.memory), (1, 256 << 20));
        assert_eq!(parse_size(DEFAULT_MEMORY), Ok(256 << 20));
        assert_eq!(spec.on_reboot, OnReboot::Restart);
        assert!(!spec.autostart && spec.name.is_none() && spec.initrd.is_none());
        assert!(spec.disks.is_empty() && spec.nets.is_empty());
        assert_eq!(spec.validate(), Ok(()));
        // The JSON defaults are the same ones.
        let parsed: DomainSpec = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(parsed, spec);
    }

    #[test]
    fn disks_parse() {
        let d = disk("path=/x.img,readonly=on,id=root");
        assert_eq!(
            (d.path.to_str().unwrap(), d.readonly, d.id.as_deref()),
            ("/x.img", true, Some("root"))
        );
        assert_eq!(d.id_at(3), "root");
        assert_eq!(disk("path=a").id_at(3), "disk3");
        assert_eq!(disk("path=a").format, None);
        assert_eq!(disk("path=a,format=qcow2").format, Some(Format::Qcow2));
        assert_eq!(disk("path=a,format=raw").format, Some(Format::Raw));
        let limited = disk("path=a,bps=2M,iops=100");
        assert_eq!((limited.bytes_per_sec, limited.ops_per_sec), (2 << 20, 100));
        assert_eq!(disk("path=a=b").path, Path::new("a=b"));
        for (bad, says) in [
            ("path=a,bps=fast", "bps must be bytes per second"),
            ("path=a,iops=-1", "iops must be a whole number"),
            ("path=a,bps=99999999999G", "bps must be"),
            ("path=a,format=vslcow", "format vslcow is retired"),
            (
                "path=a,format=vmdk",
                "format must be raw or qcow2, not 'vmdk'",
            ),
            ("path=a,format=", "format must be raw or qcow2"),
            ("", "'' is not key=value"),
            ("readonly=on", "path= is missing"),
            ("path=a,ro=on", "unknown key 'ro'"),
            ("path=a,readonly=maybe", "readonly must be on or off"),
            ("path=", "path is empty"),
            ("a.img", "'a.img' is not key=value"),
            ("path=a,id=", "id must be 1 to 20 ASCII characters"),
            ("path=a,id=abcdefghijklmnopqrstu", "id must be 1 to 20"),
        ] {
            let err = bad.parse::<DiskSpec>().unwrap_err().to_string();
            let prefix = format!("invalid --disk '{bad}': ");
            assert!(
                err.starts_with(&prefix) && err[prefix.len()..].contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_disk_is_written_back_canonically_and_reads_back_the_same() {
        for (given, canonical) in [
            ("path=/a", "path=/a"),
            (
                "id=vda,path=/d.img,readonly=on",
                "path=/d.img,readonly=on,id=vda",
            ),
            (
                "iops=7,bps=1048576,format=qcow2,readonly=off,path=rel/x",
                "path=rel/x,format=qcow2,bps=1M,iops=7",
            ),
            ("path=/a,bps=1536", "path=/a,bps=1536"),
            (
                "path=/a,bps=3072,readonly=yes",
                "path=/a,readonly=on,bps=3K",
            ),
            ("path=/a,bps=0,iops=0", "path=/a"),
        ] {
            let d = disk(given);
            assert_eq!(d.to_string(), canonical, "{given}");
            assert_eq!(disk(canonical), d, "{canonical} reads back");
        }
    }

    #[test]
    fn vifs_parse_and_are_written_back_canonically() {
        let n = net("tap=tap0,mac=52:54:00:AB:cd:01");
        assert_eq!(n.backend, NetBackendSpec::Tap("tap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        assert_eq!(n.to_string(), "tap=tap0,mac=52:54:00:ab:cd:01");
        let s = net("peer=b.sock,socket=/tmp/a.sock");
        assert_eq!(
            s.backend,
            NetBackendSpec::Socket {
                path: "/tmp/a.sock".into(),
                peer: "b.sock".into()
            },
            "paths are kept as given: the parser reads nothing, not even the directory"
        );
        assert_eq!(s.to_string(), "socket=/tmp/a.sock,peer=b.sock");
        let p = net("bps=2M,switch=vsw0,mac=02:00:00:00:00:42");
        assert_eq!(
            p.backend,
            NetBackendSpec::Switch {
                name: "vsw0".into(),
                rate: Some(2 << 20)
            }
        );
        assert_eq!(p.to_string(), "switch=vsw0,mac=02:00:00:00:00:42,bps=2M");
        assert_eq!(
            net("switch=vsw0,bps=1000000").to_string(),
            "switch=vsw0,bps=1000000"
        );
        assert_eq!(
            net("switch=vsw0,bps=0").to_string(),
            "switch=vsw0",
            "0: no rate"
        );
        // Rates are read as every size is: decimals, T, the KiB spellings.
        assert_eq!(
            net("switch=vsw0,bps=1.5M").to_string(),
            "switch=vsw0,bps=1536K"
        );
        assert_eq!(
            net("switch=vsw0,bps=2MiB").to_string(),
            "switch=vsw0,bps=2M"
        );
        assert!(net("tap=t").offloads, "on by default");
        assert!(!net("offloads=off,switch=vsw0").offloads);
        assert_eq!(net("tap=t,offloads=on"), net("tap=t"));
        for text in [
            "tap=t",
            "switch=vsw0",
            "socket=/a,peer=/b,mac=02:00:00:00:00:01",
            "switch=vsw0,bps=1M,offloads=off",
        ] {
            assert_eq!(net(text).to_string(), text);
            assert_eq!(net(&net(text).to_string()), net(text));
        }
        for (bad, says) in [
            ("", "'' is not key=value"),
            ("tap=", "tap is empty"),
            ("tap=a/b", "a TAP name is 1 to 15"),
            ("tap=waytoolongname16", "a TAP name is 1 to 15"),
            (
                "tap=t,socket=/a,peer=/b",
                "give either tap= or socket=, not both",
            ),
            ("socket=/a", "socket= needs peer="),
            ("socket=/a,peer=/a", "socket and peer are the same path"),
            ("socket=a,peer=./a", "socket and peer are the same path"),
            ("peer=/a", "tap=, socket= or switch= is missing"),
            ("tap=t,mac=01:00:00:00:00:01", "not a unicast MAC"),
            ("tap=t,mac=00:00:00:00:00:00", "not a unicast MAC"),
            ("tap=t,mac=02:00:00:00:00", "not a unicast MAC"),
            ("tap=t,mac=02:00:00:00:00:01:02", "not a unicast MAC"),
            ("tap=t,mac=2:0:0:0:0:1", "not a unicast MAC"),
            ("tap=t,speed=10", "unknown key 'speed'"),
            ("tap=t,bps=1M", "bps= applies to switch ports only"),
            ("tap=t,bps=0", "bps= applies to switch ports only"),
            ("switch=vsw0,tap=t", "give one of"),
            ("switch=vsw-0", "a switch name is"),
            ("switch=vsw0,bps=-5", "bps must be"),
            ("switch=vsw0,bps=1.5Q", "bps must be"),
            ("switch=vsw0,bps=M", "bps must be"),
            ("switch=vsw0,bps=0.1K", "bps must be"),
            ("switch=vsw0,bps=99999999T", "bps must be"),
            ("bridge=br0", "unknown key 'bridge'"),
            ("tap", "'tap' is not key=value"),
            ("tap=t,offloads=no", "offloads is on or off"),
        ] {
            let err = bad.parse::<NetSpec>().unwrap_err().to_string();
            let prefix = format!("invalid --net '{bad}': ");
            assert!(
                err.starts_with(&prefix) && err[prefix.len()..].contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_suffixes_and_are_written_back() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("65536K"), Ok(64 << 20));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(" 64M "), Ok(64 << 20));
        for bad in [
            "",
            "M",
            "12Q",
            "-1M",
            "0",
            "0.0G",
            "99999999999999999G",
            "16777216T",
            "0.1K",
            "1..5G",
            ".5G",
            "1.G5",
            "1 G",
            "1GB",
            "1e3M",
        ] {
            assert_eq!(parse_size(bad), Err(SpecError::Size(bad.into())), "{bad}");
        }
        assert_eq!(parse_rate("1000000"), Some(1_000_000));
        assert_eq!(parse_rate("10M"), Some(10 << 20));
        assert_eq!(parse_rate("1.5MiB"), Some(3 << 19));
        assert_eq!(parse_rate("0"), Some(0));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(format_size(256 << 20).as_deref(), Some("256M"));
        assert_eq!(format_size(2 << 30).as_deref(), Some("2G"));
        assert_eq!(format_size(1536 << 10).as_deref(), Some("1536K"));
        assert_eq!(format_size(4097), None);
        for bytes in [16 << 20, 3 << 30, 4100 << 10, MAX_MEMORY] {
            assert_eq!(parse_size(&format_size(bytes).unwrap()), Ok(bytes));
        }
    }

    /// The checks of what needs neither files nor KVM: each absurd value refused with a
    /// message that names it (the command-line tests that used to need /dev/kvm and the
    /// daemon's store-time tests, as unit tests).
    #[test]
    fn validate_refuses_each_absurd_value_and_names_it() {
        let base = || DomainSpec::new("/nonexistent/vmlinux");
        let with = |f: &dyn Fn(&mut DomainSpec)| {
            let mut spec = base();
            f(&mut spec);
            spec
        };
        let disks = |n: usize| (0..n).map(|i| disk(&format!("path=/img/{i}"))).collect();
        let nets = |n: usize| (0..n).map(|i| net(&format!("tap=t{i}"))).collect();
        let cases: Vec<(DomainSpec, &str)> = vec![
            (with(&|s| s.name = Some(String::new())), "invalid domain name ''"),
            (with(&|s| s.name = Some("-x".into())), "invalid domain name '-x'"),
            (with(&|s| s.name = Some("a/b".into())), "invalid domain name 'a/b'"),
            (with(&|s| s.name = Some("x".repeat(33))), "invalid domain name"),
            (with(&|s| s.vcpus = 0), "--vcpus must be at least 1"),
            (
                with(&|s| s.vcpus = 256),
                "--vcpus 256 is more than a domain can have (255)",
            ),
            (
                with(&|s| s.vcpus = 100_000),
                "--vcpus 100000 is more than a domain can have (255)",
            ),
            (
                with(&|s| s.vcpus = u32::MAX),
                "--vcpus 4294967295 is more than a domain can have",
            ),
            (
                with(&|s| s.memory = 1 << 20),
                "--memory 1 MiB is too small: a domain needs at least 16 MiB",
            ),
            (with(&|s| s.memory = 8 << 20), "--memory 8 MiB is too small"),
            (
                with(&|s| s.memory = (256 << 20) + 1),
                "--memory must be a multiple of 4 KiB",
            ),
            (
                with(&|s| s.memory = parse_size("17179869183G").unwrap()),
                "is more than a domain can have (4194303 GiB",
            ),
            (
                with(&|s| s.memory = MAX_MEMORY + 4096),
                "guest-physical addresses end at 4 PiB",
            ),
            (
                with(&|s| s.cmdline = "x".repeat(CMDLINE_MAX)),
                "--cmdline is 2048 bytes; the limit is 2047",
            ),
            (
                with(&|s| s.cmdline = "x".repeat(1_000_000)),
                "--cmdline is 1000000 bytes",
            ),
            (
                with(&|s| s.cmdline = "console=ttyS0\0 init=/evil".into()),
                "--cmdline contains a NUL byte",
            ),
            (
                with(&|s| s.disks = disks(18)),
                "too many devices: 18 --disk and 0 --net with the entropy device and the balloon make 20 virtio devices; a domain has room for 19",
            ),
            (with(&|s| s.disks = disks(10_000)), "too many devices"),
            (
                with(&|s| {
                    s.disks = disks(10);
                    s.nets = nets(8);
                }),
                "make 20 virtio devices",
            ),
        ];
        for (spec, says) in cases {
            let err = refusal(&spec);
            assert!(err.contains(says), "{err} (want {says:?})");
        }
        let most = with(&|s| {
            s.name = Some(format!("_{}", "a.b-".repeat(7) + "xyz"));
            s.vcpus = MAX_VCPUS;
            s.memory = MAX_MEMORY;
            s.cmdline = "x".repeat(CMDLINE_MAX - 1);
            s.disks = disks(9);
            s.nets = nets(8);
        });
        assert_eq!(most.name.as_ref().unwrap().len(), 32);
        assert_eq!(most.validate(), Ok(()), "the limits themselves are allowed");
        assert_eq!(with(&|s| s.memory = MIN_MEMORY).validate(), Ok(()));
    }

    #[test]
    fn validate_refuses_devices_that_would_clash() {
        let spec = |disks: &[&str], nets: &[&str]| DomainSpec {
            disks: disks.iter().map(|d| disk(d)).collect(),
            nets: nets.iter().map(|n| net(n)).collect(),
            ..DomainSpec::new("/k")
        };
        for (disks, nets, says) in [
            (
                &["path=/a,id=root", "path=/b,id=root"][..],
                &[][..],
                "--disk root: two disks have this id",
            ),
            (
                &["path=/a", "path=/b,id=disk0"],
                &[],
                "--disk disk0: two disks have this id",
            ),
            (
                &["path=/a", "path=/b", "path=/a,readonly=on"],
                &[],
                "--disk disk0 and --disk disk2 are the same file /a: only read-only disks may share one",
            ),
            (
                &["path=img/a,readonly=on", "path=./img//a"],
                &[],
                "are the same file",
            ),
            (
                &[],
                &["tap=a,mac=02:00:00:00:00:01", "switch=vsw0,mac=02:00:00:00:00:01"],
                "--net: two VIFs are given the MAC 02:00:00:00:00:01",
            ),
            (&[], &["tap=t0", "tap=t0"], "--net tap=t0: two VIFs cannot both use it"),
            (
                &[],
                &["socket=/s,peer=/p1", "socket=/x/../s,peer=/p2", "socket=//s,peer=/p3"],
                "--net socket=//s: two VIFs cannot both use it",
            ),
        ] {
            let err = refusal(&spec(disks, nets));
            assert!(err.contains(says), "{disks:?} {nets:?}: {err} (want {says:?})");
        }
        // What may share: read-only disks on one file, switch ports, the two ends of a link.
        let fine = spec(
            &["path=/base,readonly=on", "path=/base,readonly=on,id=again"],
            &[
                "switch=vsw0",
                "switch=vsw0",
                "socket=/a,peer=/b",
                "socket=/b,peer=/a",
            ],
        );
        assert_eq!(fine.validate(), Ok(()));
    }

    /// A typed disk or VIF made in code (not parsed) must still be one the strings can say,
    /// since it is stored and sent as its string.
    #[test]
    fn validate_refuses_disks_and_vifs_no_string_can_say() {
        let with_disk = |d: DiskSpec| DomainSpec {
            disks: vec![d],
            ..DomainSpec::new("/k")
        };
        let with_net = |n: NetSpec| DomainSpec {
            nets: vec![n],
            ..DomainSpec::new("/k")
        };
        let cases = [
            (
                with_disk(DiskSpec::new("/a,b/x")),
                "invalid --disk 'path=/a,b/x': the path contains ','",
            ),
            (with_disk(DiskSpec::new("")), "the path is empty"),
            (
                with_disk(DiskSpec {
                    id: Some("x".repeat(21)),
                    ..DiskSpec::new("/a")
                }),
                "id must be 1 to 20 ASCII characters",
            ),
            (
                with_disk(DiskSpec {
                    format: Some(Format::VesselCow),
                    ..DiskSpec::new("/a")
                }),
                "format vslcow is retired",
            ),
            (
                with_net(NetSpec {
                    backend: NetBackendSpec::Socket {
                        path: "/run/a,b".into(),
                        peer: "/p".into(),
                    },
                    mac: None,
                    offloads: true,
                }),
                "the path contains ','",
            ),
            (
                with_net(NetSpec {
                    backend: NetBackendSpec::Tap("no/slash".into()),
                    mac: None,
                    offloads: true,
                }),
                "a TAP name is",
            ),
            (
                with_net(NetSpec {
                    backend: NetBackendSpec::Tap("t".into()),
                    mac: Some([1, 0, 0, 0, 0, 1]),
                    offloads: true,
                }),
                "not a unicast MAC",
            ),
            (
                with_net(NetSpec {
                    backend: NetBackendSpec::Socket {
                        path: "/s".into(),
                        peer: "/./s".into(),
                    },
                    mac: None,
                    offloads: true,
                }),
                "socket and peer are the same path",
            ),
        ];
        for (spec, says) in cases {
            let err = refusal(&spec);
            assert!(err.contains(says), "{err} (want {says:?})");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/img/\xff"));
            let err = refusal(&with_disk(DiskSpec::new(path)));
            assert!(err.contains("the path is not UTF-8"), "{err}");
        }
    }

    #[test]
    fn json_is_the_strings_of_the_command_line() {
        let json = r#"{
            "name": "web-1", "kernel": "/k", "initrd": "/i", "cmdline": "quiet",
            "vcpus": 2, "memory": "65536K",
            "disk": ["id=vda,path=/d.img,readonly=on", "path=/e.img,format=raw"],
            "net": ["switch=vsw0,bps=1M", "tap=tap0,mac=02:00:00:00:00:01"],
            "free_page_reporting": true, "on_reboot": "exit", "autostart": true
        }"#;
        let spec: DomainSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.name.as_deref(), Some("web-1"));
        assert_eq!(spec.memory, 64 << 20);
        assert_eq!(spec.disks[0], disk("path=/d.img,readonly=on,id=vda"));
        assert_eq!(
            spec.nets[0].backend,
            NetBackendSpec::Switch {
                name: "vsw0".into(),
                rate: Some(1 << 20)
            }
        );
        assert_eq!((spec.on_reboot, spec.autostart), (OnReboot::Exit, true));
        assert!(spec.free_page_reporting);
        let written = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "name": "web-1", "kernel": "/k", "initrd": "/i", "cmdline": "quiet",
                "vcpus": 2, "memory": "64M",
                "disk": ["path=/d.img,readonly=on,id=vda", "path=/e.img,format=raw"],
                "net": ["switch=vsw0,bps=1M", "tap=tap0,mac=02:00:00:00:00:01"],
                "free_page_reporting": true, "on_reboot": "exit", "autostart": true
            })
        );
        let again: DomainSpec = serde_json::from_value(written).unwrap();
        assert_eq!(again, spec);
        // Without a name, none is written, nor free page reporting when off; autostart always is.
        let plain = serde_json::to_value(DomainSpec::new("/k")).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"kernel": "/k", "cmdline": "console=ttyS0", "vcpus": 1,
                               "memory": "256M", "on_reboot": "restart", "autostart": false})
        );
        let mut odd = DomainSpec::new("/k");
        odd.memory = 4097;
        let err = serde_json::to_string(&odd).unwrap_err().to_string();
        assert!(err.contains("not a whole number of KiB"), "{err}");
    }

    #[test]
    fn bad_json_says_what_is_wrong() {
        for (json, says) in [
            (r#"{}"#, "missing field `kernel`"),
            (
                r#"{"kernel":"/k","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (r#"{"kernel":"/k","cpus":2}"#, "unknown field `cpus`"),
            (r#"{"kernel":"/k","vcpus":"two"}"#, "invalid type"),
            (r#"{"kernel":"/k","vcpus":4294967296}"#, "invalid value"),
            (
                r#"{"kernel":"/k","memory":"lots"}"#,
                "memory: invalid size 'lots'",
            ),
            (
                r#"{"kernel":"/k","memory":256}"#,
                "expected a size such as \"256M\"",
            ),
            (
                r#"{"kernel":"/k","memory":"17179869184G"}"#,
                "memory: invalid size",
            ),
            (
                r#"{"kernel":"/k","disk":["file=x"]}"#,
                "invalid --disk 'file=x': unknown key 'file'",
            ),
            (
                r#"{"kernel":"/k","disk":"path=/a"}"#,
                "invalid type: string",
            ),
            (
                r#"{"kernel":"/k","disk":[1]}"#,
                "expected a --disk string such as \"path=FILE\"",
            ),
            (
                r#"{"kernel":"/k","net":["bridge=x"]}"#,
                "invalid --net 'bridge=x'",
            ),
            (
                r#"{"kernel":"/k","on_reboot":"later"}"#,
                "on_reboot must be \"restart\" or \"exit\", not \"later\"",
            ),
            (r#"{"kernel":"/k","autostart":"yes"}"#, "invalid type"),
            (r#"[1,2]"#, "invalid type"),
        ] {
            let err = serde_json::from_str::<DomainSpec>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn relative_paths_are_made_absolute_and_nothing_else_changes() {
        let spec = DomainSpec {
            initrd: Some("./initrd.img".into()),
            disks: vec![
                disk("id=root,path=root.img,readonly=on,format=raw"),
                disk("path=/abs.img"),
            ],
            nets: vec![
                net("socket=a.sock,peer=../b.sock,mac=02:00:00:00:00:01"),
                net("switch=vsw0,bps=1M"),
                net("tap=tap0"),
            ],
            ..DomainSpec::new("k/vmlinux")
        };
        let cwd = std::env::current_dir().unwrap();
        let abs = spec.clone().with_absolute_paths().unwrap();
        assert_eq!(abs.kernel, cwd.join("k/vmlinux"));
        assert_eq!(abs.initrd, Some(cwd.join("initrd.img")));
        assert_eq!(
            abs.disks,
            [
                DiskSpec {
                    path: cwd.join("root.img"),
                    ..spec.disks[0].clone()
                },
                spec.disks[1].clone(),
            ]
        );
        assert_eq!(
            abs.nets[0],
            NetSpec {
                backend: NetBackendSpec::Socket {
                    path: cwd.join("a.sock"),
                    peer: cwd.join("../b.sock"),
                },
                mac: Some([2, 0, 0, 0, 0, 1]),
                offloads: true,
            }
        );
        assert_eq!(abs.nets[1..], spec.nets[1..]);
        assert_eq!(
            (abs.cmdline, abs.vcpus, abs.memory),
            (spec.cmdline, spec.vcpus, spec.memory)
        );
    }

    #[test]
    fn generated_macs_are_stable_locally_administered_and_differ_by_key() {
        let a = generated_mac("tap=tap0");
        assert_eq!(a, generated_mac("tap=tap0"));
        assert_ne!(a, generated_mac("tap=tap1"));
        assert_eq!(a[0], 0x02);
        assert!(parse_mac(&format_mac(a)) == Some(a));
    }
}
