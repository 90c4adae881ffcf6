//! Vessel's control plane, domain 0: everything the daemon does for its domains, whatever
//! carries the requests to it.
//!
//! A [`ControlPlane`] keeps the domains' definitions ([`DomainDef`], in its state directory),
//! runs each domain in a confined process of its own and drives it over its channel, gives each
//! a control group, runs the virtual switch between their VIFs, and takes every action a user
//! can take on a domain or on the switch. Each action answers with the plane's data (typed
//! reports, never a rendering) or one typed error, [`ControlError`], whose message is what the
//! user reads. It knows nothing of HTTP: the `vessel` binary's API maps routes to these
//! actions and each error to a status.
//!
//! | module | its job |
//! |---|---|
//! | `plane` | the [`ControlPlane`]: opening the state directory, the switch and control groups |
//! | `lifecycle` | define, start, create, delete |
//! | `actions` | pause, unpause, reboot, shut down, destroy, the console, the debug hook |
//! | `report` | list, info and the figures behind the metrics |
//! | `fleet` | all domains at once: re-attach and autostart at startup, shut down at exit |
//! | `host` | the host and what runs on it, for `vessel host-info` |
//! | `switch` | switch ports for VIFs; the switch's ports, rules and policy |
//! | `def` | a domain definition: a named, valid specification |
//! | `registry` | the domains by name, under one lock held only briefly |
//! | `store` | definition files, written durably |
//! | `process` | a domain process seen from the plane: launch, attach, calls over its channel |
//! | `cgroup` | a control group per domain: accounting, CPU weight and cap |
//! | `bvt` | Borrowed Virtual Time's arithmetic, pure |
//! | `scheduler` | the CPU scheduler: measures the domains each interval, steers their weights |
//! | `thread_clock` | a process's threads' run and wait times, read cheaply every interval |
//! | `cpu` | `vessel sched`: scheduling parameters shown and changed |
//! | `rates` | disk and switch port rate limits changed while domains run |
//! | `memory` | a domain's memory as its balloon shows it; `vessel mem-set` |
//! | `allocation` | the memory policy: who holds how much of the memory pool |
//! | `reclaim` | the pool's free state and the means it picks: balloon, host swapping |
//! | `sharing` | content-based page sharing (KSM) driven by the plane |
//! | `migration` | live migration: sending a domain to a daemon, and receiving one |
//! | `error` | [`ControlError`] |
#![forbid(unsafe_code)]

mod actions;
pub mod allocation;
pub mod bvt;
mod cgroup;
mod cpu;
mod def;
mod error;
mod fleet;
mod host;
mod lifecycle;
mod memory;
pub mod migration;
mod plane;
mod process;
mod rates;
pub mod reclaim;
mod registry;
mod report;
pub mod scheduler;
pub mod sharing;
mod store;
mod switch;
mod thread_clock;

pub use cgroup::GroupStats;
pub use cpu::DomainSched;
pub use def::{spec_from_json, DomainDef};
pub use error::{ControlError, StartError};
pub use host::{HostInfo, KvmInfo};
pub use memory::{DomainMemory, GuestMemoryStats, MemoryReport, MemoryView};
pub use plane::{Config, ControlPlane, DOMAIN_ID_BASE};
pub use process::DOMAIN_VERB;
pub use rates::{guest_disk_name, DiskRateChange, DiskReport, PortRate};
pub use report::{DomainInfo, DomainSummary, GroupInfo, ProcessInfo};
pub use switch::SWITCH_NAME;
