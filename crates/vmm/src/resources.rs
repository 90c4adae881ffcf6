//! What a domain takes from the host, opened once with Vessel's checks: `/dev/kvm`, the kernel,
//! the initrd, every file of every disk's chain, every VIF's descriptor and the entropy source.
//! `vessel run` opens them before it confines itself; the daemon opens them and hands them to
//! a domain process ([`Resources::to_wire`], [`Resources::from_wire`]). Every boot of the
//! domain, reboots included, builds its machine from these alone: no host path is opened
//! after the domain starts.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use devices::host_file::{self, Accept, Access};
use devices::image::{Handed, HandedFile, Recording};
use devices::net_backend::{NetBackend, PairBackend, SocketBackend, TapBackend};
use hv::KvmFlavour;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::net::PortProvider;
use crate::spec::{DomainSpec, NetBackendSpec, NetSpec};

/// A switch port's descriptor, and what keeps the port on its switch while held.
pub struct PortLease {
    /// The domain's end of the port's socket pair.
    pub socket: UnixDatagram,
    /// The port's name.
    pub name: String,
    /// Removes the port from its switch when dropped (held by whoever owns the domain).
    pub release: Option<Box<dyn Send + Sync>>,
}

/// The host side of one VIF.
pub enum NetResource {
    /// A TAP interface's queue.
    Tap {
        /// The open `/dev/net/tun` attached to it.
        file: File,
        /// The interface's name.
        name: String,
    },
    /// One end of a socket link: bound at `path`, sending to `peer`.
    Socket {
        /// The bound socket.
        socket: UnixDatagram,
        /// Where it is bound.
        path: PathBuf,
        /// The other end's path.
        peer: PathBuf,
        /// The (device, inode) of the socket file this bind created, when this side made it:
        /// only that file is removed when the resources go.
        created: Option<(u64, u64)>,
    },
    /// A port on the daemon's switch.
    Port(PortLease),
}

/// Everything a domain needs from the host (see the module's doc).
pub struct Resources {
    /// `/dev/kvm`.
    pub kvm: File,
    /// What kind of KVM it is.
    pub flavour: KvmFlavour,
    /// The kernel image.
    pub kernel: File,
    /// The initial ramdisk.
    pub initrd: Option<File>,
    /// Each disk's files: the image and its backing chain, as opened.
    pub disks: Vec<Vec<HandedFile>>,
    /// Each VIF's host side, in order.
    pub nets: Vec<NetResource>,
    /// The host's random pool (`/dev/urandom`), for the entropy device.
    pub entropy: File,
    /// Whether the host may keep the domain's identical pages once (its RAM is marked for the
    /// kernel's same-page merging; the daemon's `--page-sharing`).
    pub page_sharing: bool,
    /// How often the domain's working set is sampled (the daemon's `--working-set-period`;
    /// zero: never).
    pub working_set_period: std::time::Duration,
    /// A saved domain to restore instead of booting the kernel (`vessel restore`): the first
    /// machine is built from it, later boots from the kernel as usual.
    pub snapshot: Option<File>,
    /// An incoming migration to build the first machine from instead (`vessel
    /// migrate-receive`): the connection, its stream read up to the domain's specification.
    pub migration: Option<File>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

impl Resources {
    /// Opens everything `cfg` names, with Vessel's checks (regular files for the kernel and
    /// initrd, formats as recorded and chains as they say for disks); switch ports come from
    /// `ports`.
    pub fn open(cfg: &DomainSpec, ports: Option<&PortProvider>) -> Result<Resources, DomainError> {
        let (kvm, flavour) = hv::Hypervisor::open_device()?;
        let (kernel, _) = crate::kernel::probe(&cfg.kernel)?;
        let initrd = match &cfg.initrd {
            None => None,
            Some(path) => Some(crate::domain::open_initrd(path)?),
        };
        let mut disks = Vec::with_capacity(cfg.disks.len());
        for (index, disk) in cfg.disks.iter().enumerate() {
            let recording = Recording::default();
            drop(crate::virtio::open_disk_with(
                &recording,
                disk,
                &disk.id_at(index),
            )?);
            disks.push(recording.into_files());
        }
        let mut nets = Vec::with_capacity(cfg.nets.len());
        for (index, net) in cfg.nets.iter().enumerate() {
            nets.push(open_net(net, index, ports)?);
        }
        let entropy = host_file::open(
            Path::new("/dev/urandom"),
            Access::ReadOnly,
            Accept::CharacterDevice,
        )
        .map_err(DomainError::host("opening /dev/urandom"))?;
        Ok(Resources {
            kvm,
            flavour,
            kernel,
            initrd,
            disks,
            nets,
            entropy,
            page_sharing: false,
            working_set_period: std::time::Duration::ZERO,
            snapshot: None,
            migration: None,
        })
    }

    /// The opener a boot opens disk `index` with: duplicates of the descriptors held here.
    pub fn disk_files(&self, index: usize) -> Result<Handed, DomainError> {
        let files = self
            .disks
            .get(index)
            .ok_or_else(|| DomainError::Config(format!("disk {index} was not opened")))?
            .iter()
            .map(|f| {
                Ok(HandedFile {
                    path: f.path.clone(),
                    readonly: f.readonly,
                    block_size: f.block_size,
                    file: f.file.try_clone()?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(DomainError::host("duplicating a disk's descriptor"))?;
        Ok(Handed::new(files))
    }

    /// A backend for VIF `index` for one boot, on a duplicate of its descriptor.
    pub fn net_backend(&self, index: usize) -> Result<Box<dyn NetBackend>, DomainError> {
        let dup = DomainError::host("duplicating a VIF's descriptor");
        Ok(match self.nets.get(index) {
            None => return Err(DomainError::Config(format!("VIF {index} was not opened"))),
            Some(NetResource::Tap { file, name }) => Box::new(TapBackend::new(
                file.try_clone().map_err(dup)?,
                name.clone(),
            )),
            Some(NetResource::Socket {
                socket, path, peer, ..
            }) => Box::new(
                SocketBackend::on_bound(socket.try_clone().map_err(dup)?, path, peer)
                    .map_err(DomainError::host("setting up a socket link"))?,
            ),
            Some(NetResource::Port(lease)) => Box::new(
                PairBackend::new(lease.socket.try_clone().map_err(dup)?, &lease.name)
                    .map_err(DomainError::host("setting up a switch port"))?,
            ),
        })
    }

    /// Puts VIF `index` on a new switch port's socket (the old one is closed): what later boots
    /// of the domain use, after the running machine's VIF was handed the same port.
    pub fn replace_port(
        &mut self,
        index: usize,
        socket: UnixDatagram,
        name: &str,
    ) -> Result<(), DomainError> {
        match self.nets.get_mut(index) {
            Some(slot @ NetResource::Port(_)) => {
                *slot = NetResource::Port(PortLease {
                    socket,
                    name: name.to_string(),
                    release: None,
                });
                Ok(())
            }
            Some(_) => Err(DomainError::Config(format!(
                "VIF {index} is not on a switch port"
            ))),
            None => Err(DomainError::Config(format!("no VIF {index}"))),
        }
    }

    /// The manifest and descriptors that carry these resources to a domain process, in the
    /// order [`Resources::from_wire`] takes them back.
    pub fn to_wire(&self) -> (Manifest, Vec<BorrowedFd<'_>>) {
        let mut fds = vec![self.kvm.as_fd(), self.kernel.as_fd()];
        if let Some(initrd) = &self.initrd {
            fds.push(initrd.as_fd());
        }
        let mut disks = Vec::new();
        for files in &self.disks {
            let mut entries = Vec::new();
            for f in files {
                entries.push(DiskFileEntry {
                    path: f.path.clone(),
                    readonly: f.readonly,
                    block_size: f.block_size,
                });
                fds.push(f.file.as_fd());
            }
            disks.push(entries);
        }
        let mut nets = Vec::new();
        for net in &self.nets {
            nets.push(match net {
                NetResource::Tap { file, name } => {
                    fds.push(file.as_fd());
                    NetEntry::Tap { name: name.clone() }
                }
                NetResource::Socket {
                    socket, path, peer, ..
                } => {
                    fds.push(socket.as_fd());
                    NetEntry::Socket {
                        path: path.clone(),
                        peer: peer.clone(),
                    }
                }
                NetResource::Port(lease) => {
                    fds.push(lease.socket.as_fd());
                    NetEntry::Port {
                        name: lease.name.clone(),
                    }
                }
            });
        }
        fds.push(self.entropy.as_fd());
        if let Some(snapshot) = &self.snapshot {
            fds.push(snapshot.as_fd());
        }
        if let Some(migration) = &self.migration {
            fds.push(migration.as_fd());
        }
        let manifest = Manifest {
            flavour: self.flavour.name().into(),
            initrd: self.initrd.is_some(),
            disks,
            nets,
            page_sharing: self.page_sharing,
            working_set_period_ms: self.working_set_period.as_millis() as u64,
            snapshot: self.snapshot.is_some(),
            migration: self.migration.is_some(),
        };
        (manifest, fds)
    }

    /// Resources rebuilt from a manifest and its descriptors (what a domain process received).
    /// Socket files are left to whoever created them.
    pub fn from_wire(manifest: Manifest, fds: Vec<OwnedFd>) -> Result<Resources, DomainError> {
        let bad = |why: &str| DomainError::Config(format!("the resources handed over {why}"));
        let mut fds = fds.into_iter();
        let mut next = || fds.next().ok_or_else(|| bad("lack a descriptor"));
        let flavour = KvmFlavour::from_name(&manifest.flavour)
            .ok_or_else(|| bad("name an unknown KVM flavour"))?;
        let kvm = File::from(next()?);
        let kernel = File::from(next()?);
        let initrd = if manifest.initrd {
            Some(File::from(next()?))
        } else {
            None
        };
        let mut disks = Vec::new();
        for entries in manifest.disks {
            let mut files = Vec::new();
            for e in entries {
                files.push(HandedFile {
                    path: e.path,
                    readonly: e.readonly,
                    block_size: e.block_size,
                    file: File::from(next()?),
                });
            }
            disks.push(files);
        }
        let mut nets = Vec::new();
        for entry in manifest.nets {
            nets.push(match entry {
                NetEntry::Tap { name } => NetResource::Tap {
                    file: File::from(next()?),
                    name,
                },
                NetEntry::Socket { path, peer } => NetResource::Socket {
                    socket: UnixDatagram::from(next()?),
                    path,
                    peer,
                    created: None,
                },
                NetEntry::Port { name } => NetResource::Port(PortLease {
                    socket: UnixDatagram::from(next()?),
                    name,
                    release: None,
                }),
            });
        }
        let entropy = File::from(next()?);
        let snapshot = if manifest.snapshot {
            Some(File::from(next()?))
        } else {
            None
        };
        let migration = if manifest.migration {
            Some(File::from(next()?))
        } else {
            None
        };
        if fds.next().is_some() {
            return Err(bad("carry more descriptors than the manifest names"));
        }
        Ok(Resources {
            kvm,
            flavour,
            kernel,
            initrd,
            disks,
            nets,
            entropy,
            page_sharing: manifest.page_sharing,
            working_set_period: std::time::Duration::from_millis(manifest.working_set_period_ms),
            snapshot,
            migration,
        })
    }

    /// Leaves the socket files this side's binds created to whoever else holds them: dropping
    /// these resources then removes nothing. (`vessel run`'s confined child, which could not
    /// remove them, while its parent can.)
    pub fn leave_socket_files(&mut self) {
        for net in &mut self.nets {
            if let NetResource::Socket { created, .. } = net {
                *created = None;
            }
        }
    }

    /// The directories a confined process must still see: those holding the peers of its
    /// socket links (a datagram is addressed by path).
    pub fn socket_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .nets
            .iter()
            .filter_map(|n| match n {
                NetResource::Socket { peer, .. } => peer.parent().map(Path::to_path_buf),
                _ => None,
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

impl Drop for NetResource {
    fn drop(&mut self) {
        // Only the socket file this side's bind created: if something else was put at the
        // path since, it stays.
        if let NetResource::Socket {
            path,
            created: Some(id),
            ..
        } = self
        {
            if identity(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Opens the host side of `net`, VIF number `index`; switch ports come from `ports`.
fn open_net(
    net: &NetSpec,
    index: usize,
    ports: Option<&PortProvider>,
) -> Result<NetResource, DomainError> {
    match &net.backend {
        NetBackendSpec::Switch { name, rate } => match ports {
            Some(open) => open(name, index, *rate)
                .map(NetResource::Port)
                .map_err(|e| DomainError::Config(format!("--net switch={name}: {e}"))),
            None => Err(DomainError::Config(format!(
                "--net switch={name}: switch ports exist only in domains run by `vessel daemon`"
            ))),
        },
        NetBackendSpec::Tap(name) => {
            let (file, actual) = hv::tap::open_tap(name).map_err(|e| {
                DomainError::Config(format!(
                    "--net tap={name}: cannot open the TAP interface: {e}{}",
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (no /dev/net/tun: load the tun module)"
                    } else {
                        ""
                    }
                ))
            })?;
            Ok(NetResource::Tap { file, name: actual })
        }
        NetBackendSpec::Socket { path, peer } => {
            let socket = SocketBackend::bind_socket(path).map_err(|e| {
                DomainError::Config(format!(
                    "--net socket={}: cannot bind the socket: {e}",
                    path.display()
                ))
            })?;
            // A confined domain process runs as a user of its own: it must be able to send
            // to its peer's socket (frames from anyone but the peer are ignored anyway).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
            Ok(NetResource::Socket {
                created: identity(path),
                socket,
                path: path.clone(),
                peer: peer.clone(),
            })
        }
    }
}

/// One file of a disk in a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFileEntry {
    /// Its path, as opened.
    pub path: PathBuf,
    /// Whether it was opened read-only.
    pub readonly: bool,
    /// Its logical block size if it is a block device (the domain process cannot read sysfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// One VIF in a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetEntry {
    /// A TAP interface.
    Tap {
        /// Its name.
        name: String,
    },
    /// A socket link.
    Socket {
        /// This end's path.
        path: PathBuf,
        /// The peer's path.
        peer: PathBuf,
    },
    /// A switch port.
    Port {
        /// Its name.
        name: String,
    },
}

/// What the descriptors handed to a domain process are, in order: `/dev/kvm`, the kernel, the
/// initrd if any, each disk's files, each VIF's descriptor, the entropy source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// "hardware" or "pvm".
    pub flavour: String,
    /// Whether an initrd descriptor follows the kernel's.
    pub initrd: bool,
    /// Each disk's files.
    pub disks: Vec<Vec<DiskFileEntry>>,
    /// Each VIF.
    pub nets: Vec<NetEntry>,
    /// Whether the domain's RAM is marked for page sharing.
    #[serde(default)]
    pub page_sharing: bool,
    /// How often the domain's working set is sampled, in milliseconds (0: never).
    #[serde(default)]
    pub working_set_period_ms: u64,
    /// Whether a snapshot's descriptor follows the entropy source's (a restore).
    #[serde(default)]
    pub snapshot: bool,
    /// Whether an incoming migration's connection follows (after the snapshot's place).
    #[serde(default)]
    pub migration: bool,
}

/// Borrowed descriptors, owned: for tests and local hand-overs.
pub fn own(fds: &[BorrowedFd<'_>]) -> std::io::Result<Vec<OwnedFd>> {
    fds.iter().map(|f| f.try_clone_to_owned()).collect()
}
