//! A control group per domain: its CPU and memory accounting, its kernel CPU weight (set by
//! the [`crate::scheduler`]) and its cap (and the memory work's limits, later).
//!
//! The daemon finds what the host offers, once: cgroup v2 with the `cpu` and `memory`
//! controllers (mounting cgroup2 at `/sys/fs/cgroup` itself where nothing is mounted there, as
//! in the host box's busybox L1), or else cgroup v1's `cpu`, `cpuacct` and `memory`
//! hierarchies (these development machines' kernel), or else nothing, which it says once. Its
//! groups live under a parent group in each hierarchy (`vessel`, or `--cgroup-parent`); a
//! domain's is `vessel/NAME`. A domain
//! process is moved into its group as soon as it is spawned, before it maps guest memory; the
//! group is removed when the process has ended, and empty groups a previous daemon left behind
//! are removed at start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The period over which a cap is enforced, in microseconds: a capped domain runs at most
/// `cap`% of it, so it waits at most one period minus its quota.
pub const CAP_PERIOD_US: u64 = 100_000;

/// Where the daemon's groups are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2: `BASE/NAME` has the `cpu` and `memory` controllers.
    V2 {
        /// `<mount>/vessel`.
        base: PathBuf,
    },
    /// cgroup v1: one base per hierarchy.
    V1 {
        /// `<cpu mount>/vessel`.
        cpu: PathBuf,
        /// `<cpuacct mount>/vessel` (may be the same hierarchy as `cpu`).
        cpuacct: PathBuf,
        /// `<memory mount>/vessel`.
        memory: PathBuf,
    },
    /// No usable cgroups: domains run without groups.
    None,
}

/// A domain's CPU time and memory, from its group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// CPU time of every thread of the domain process, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory charged to the group (guest RAM the guest touched, the VMM's own), in bytes.
    pub memory_bytes: u64,
}

/// The mount points of each cgroup filesystem, from `/proc/self/mountinfo`: (v2 mount, v1
/// mounts with their controllers).
fn mounts() -> (Option<PathBuf>, Vec<(PathBuf, Vec<String>)>) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mut v2, mut v1) = (None, Vec::new());
    for line in info.lines() {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPEROPTIONS"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).map(PathBuf::from);
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        match (fstype, mount) {
            (Some("cgroup2"), Some(m)) => v2 = v2.or(Some(m)),
            (Some("cgroup"), Some(m)) => {
                let controllers = options.split(',').map(str::to_string).collect();
                v1.push((m, controllers));
            }
            _ => {}
        }
    }
    (v2, v1)
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

impl Cgroups {
    /// Finds (or, where nothing is mounted, sets up) the groups the daemon uses, under a group
    /// called `parent` in each hierarchy; the second value is a note for the log when domains
    /// will run without groups.
    pub fn detect(parent: &str) -> (Cgroups, Option<String>) {
        let (mut v2, mut v1) = mounts();
        if v2.is_none() && v1.is_empty() {
            // Nothing mounted (a minimal init): mount cgroup2 where it belongs.
            let root = Path::new("/sys/fs/cgroup");
            let mounted = std::fs::create_dir_all(root).is_ok()
                && std::process::Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(root)
                    .status()
                    .is_ok_and(|s| s.success());
            if mounted {
                (v2, v1) = mounts();
            }
        }
        if let Some(root) = v2 {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("cpu") && has("memory") {
                let base = root.join(parent);
                let ready = write(&root.join("cgroup.subtree_control"), "+cpu +memory")
                    .and_then(|()| std::fs::create_dir_all(&base))
                    .and_then(|()| write(&base.join("cgroup.subtree_control"), "+cpu +memory"));
                match ready {
                    Ok(()) => return (Cgroups::V2 { base }, None),
                    Err(e) => {
                        return (
                            Cgroups::None,
                            Some(format!(
                                "cannot set up cgroup v2 groups under {}: {e}; domains run without groups",
                                root.display()
                            )),
                        )
                    }
                }
            }
        }
        let find = |c: &str| {
            v1.iter()
                .find(|(_, cs)| cs.iter().any(|x| x == c))
                .map(|(m, _)| m.join(parent))
        };
        if let (Some(cpu), Some(cpuacct), Some(memory)) =
            (find("cpu"), find("cpuacct"), find("memory"))
        {
            let made = [&cpu, &cpuacct, &memory]
                .iter()
                .try_for_each(std::fs::create_dir_all);
            return match made {
                Ok(()) => (
                    Cgroups::V1 {
                        cpu,
                        cpuacct,
                        memory,
                    },
                    None,
                ),
                Err(e) => (
                    Cgroups::None,
                    Some(format!(
                        "cannot create cgroup v1 groups: {e}; domains run without groups"
                    )),
                ),
            };
        }
        (
            Cgroups::None,
            Some("no cgroup v2 with cpu and memory, nor cgroup v1 cpu, cpuacct and memory hierarchies: domains run without groups".into()),
        )
    }

    /// The directories of group `name`, one per hierarchy.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2 { base } => vec![base.join(name)],
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut d = vec![cpu.join(name), cpuacct.join(name), memory.join(name)];
                d.dedup();
                d
            }
            Cgroups::None => Vec::new(),
        }
    }

    /// Creates domain `name`'s group (if missing) and moves process `pid` into it.
    pub fn enter(&self, name: &str, pid: u32) -> std::io::Result<()> {
        for dir in self.dirs(name) {
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The largest kernel weight a group can have here (v2 `cpu.weight`, v1 `cpu.shares`);
    /// `None` without groups.
    pub fn max_cpu_weight(&self) -> Option<u64> {
        match self {
            Cgroups::V2 { .. } => Some(10_000),
            Cgroups::V1 { .. } => Some(262_144),
            Cgroups::None => None,
        }
    }

    /// Sets domain `name`'s kernel CPU weight (clamped to what the kernel takes: v2
    /// `cpu.weight`, v1 `cpu.shares`).
    pub fn set_cpu_weight(&self, name: &str, weight: u64) -> std::io::Result<()> {
        match self {
            Cgroups::V2 { base } => write(
                &base.join(name).join("cpu.weight"),
                &weight.clamp(1, 10_000).to_string(),
            ),
            Cgroups::V1 { cpu, .. } => write(
                &cpu.join(name).join("cpu.shares"),
                &weight.clamp(2, 262_144).to_string(),
            ),
            Cgroups::None => Ok(()),
        }
    }

    /// Caps domain `name` at `percent` of one CPU (0: no cap), by the kernel's bandwidth
    /// control over periods of [`CAP_PERIOD_US`].
    pub fn set_cpu_cap(&self, name: &str, percent: u32) -> std::io::Result<()> {
        let quota = u64::from(percent) * CAP_PERIOD_US / 100;
        match self {
            Cgroups::V2 { base } => {
                let value = if percent == 0 {
                    format!("max {CAP_PERIOD_US}")
                } else {
                    format!("{quota} {CAP_PERIOD_US}")
                };
                write(&base.join(name).join("cpu.max"), &value)
            }
            Cgroups::V1 { cpu, .. } => {
                let dir = cpu.join(name);
                // The quota first when removing it, the period first when setting one, so no
                // step is refused as a quota the period cannot hold.
                if percent == 0 {
                    write(&dir.join("cpu.cfs_quota_us"), "-1")?;
                    write(&dir.join("cpu.cfs_period_us"), &CAP_PERIOD_US.to_string())
                } else {
                    write(&dir.join("cpu.cfs_period_us"), &CAP_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
                }
            }
            Cgroups::None => Ok(()),
        }
    }

    /// The path of domain `name`'s group (the first hierarchy's), for `vessel info`.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.dirs(name).into_iter().next()
    }

    /// Domain `name`'s CPU time and memory, if it has a group.
    pub fn stats(&self, name: &str) -> Option<GroupStats> {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        match self {
            Cgroups::V2 { base } => {
                let dir = base.join(name);
                let usec = read(dir.join("cpu.stat"))?
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())?;
                let memory = read(dir.join("memory.current"))?.trim().parse().ok()?;
                Some(GroupStats {
                    cpu_ns: usec.saturating_mul(1000),
                    memory_bytes: memory,
                })
            }
            Cgroups::V1 {
                cpuacct, memory, ..
            } => Some(GroupStats {
                cpu_ns: read(cpuacct.join(name).join("cpuacct.usage"))?
                    .trim()
                    .parse()
                    .ok()?,
                memory_bytes: read(memory.join(name).join("memory.usage_in_bytes"))?
                    .trim()
                    .parse()
                    .ok()?,
            }),
            Cgroups::None => None,
        }
    }

    /// Removes domain `name`'s group once its processes have gone (waiting a little for the
    /// kernel to see them leave); whether none is left.
    pub fn remove(&self, name: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = self.dirs(name);
        while !left.is_empty() {
            left.retain(|d| match std::fs::remove_dir(d) {
                Ok(()) => false,
                Err(e) => e.kind() != std::io::ErrorKind::NotFound,
            });
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        left.is_empty()
    }

    /// The daemon's parent groups, one per hierarchy.
    fn bases(&self) -> Vec<PathBuf> {
        match self {
            Cgroups::V2 { base } => vec![base.clone()],
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
            } => vec![cpu.clone(), cpuacct.clone(), memory.clone()],
            Cgroups::None => Vec::new(),
        }
    }

    /// Removes the daemon's parent groups if no domain group is left in them.
    pub fn remove_parents(&self) {
        for base in self.bases() {
            let _ = std::fs::remove_dir(base);
        }
    }

    /// Removes the groups of domains not in `running` (left by a daemon that was killed, whose
    /// domains have ended since).
    pub fn remove_stale(&self, running: &[String]) {
        for base in self.bases() {
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !running.contains(&name) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}
