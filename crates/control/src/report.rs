//! What the control plane reports about its domains: a summary of each (`list`, and the
//! figures behind the metrics) and everything about one (`info`). Reports are data; rendering
//! them (JSON, Prometheus text) is the front end's job.
//!
//! A report is made from a copy of the registry's entry taken under its lock; the slow part
//! (asking the domain process for its counters, reading its control group) comes after the lock
//! is released, so one slow domain does not hold up the others.

use std::path::PathBuf;

use vmm::wire::MachineStats;
use vmm::{RunState, Status};

use crate::cgroup::GroupStats;
use crate::memory::MemoryReport;
use crate::registry::EntryView;
use crate::{ControlError, ControlPlane, DomainDef};

/// A domain, as `list` shows it.
#[derive(Clone, Debug)]
pub struct DomainSummary {
    /// Its id while this control plane runs.
    pub id: u32,
    /// Its definition.
    pub def: DomainDef,
    /// Its state as its process last reported it; `None` if it has not run since the control
    /// plane started.
    pub status: Option<Status>,
    /// Its machine's counters, if it runs (or is paused) and its process answered in time.
    pub stats: Option<MachineStats>,
    /// Its memory, when it has counters.
    pub memory: Option<MemoryReport>,
}

impl DomainSummary {
    /// Its run state (shut off if it has not run).
    pub fn state(&self) -> RunState {
        self.status.as_ref().map_or(RunState::Shutoff, |s| s.state)
    }
}

/// A domain, as `info` shows it: its summary, and its process while it runs.
#[derive(Clone, Debug)]
pub struct DomainInfo {
    /// What `list` shows.
    pub summary: DomainSummary,
    /// Its process, if the domain is running or paused.
    pub process: Option<ProcessInfo>,
}

/// A running domain's process.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    /// Its process id.
    pub pid: u32,
    /// Its control group, if it has one.
    pub cgroup: Option<GroupInfo>,
}

/// A domain's control group.
#[derive(Clone, Debug)]
pub struct GroupInfo {
    /// Its path (in the first hierarchy).
    pub path: PathBuf,
    /// The CPU time and memory charged to it.
    pub stats: GroupStats,
}

impl ControlPlane {
    /// Every domain, in name order.
    pub fn list(&self) -> Vec<DomainSummary> {
        self.registry.views().into_iter().map(summarize).collect()
    }

    /// Everything about domain `name`.
    pub fn info(&self, name: &str) -> Result<DomainInfo, ControlError> {
        let view = self.registry.view(name)?;
        let process = view.instance.clone();
        let summary = summarize(view);
        let process = process
            .filter(|p| p.status().state.is_active())
            .map(|p| ProcessInfo {
                pid: p.pid(),
                cgroup: self.group_info(summary.def.name()),
            });
        Ok(DomainInfo { summary, process })
    }

    /// Domain `name`'s control group, if it has one.
    fn group_info(&self, name: &str) -> Option<GroupInfo> {
        Some(GroupInfo {
            path: self.cgroups.path(name)?,
            stats: self.cgroups.stats(name)?,
        })
    }
}

/// The summary of `view`: its process's counters first (they may take a while), then its state.
fn summarize(view: EntryView) -> DomainSummary {
    let stats = view.instance.as_ref().and_then(|p| p.stats());
    let memory = view.instance.as_ref().zip(stats.as_ref()).map(|(p, m)| {
        MemoryReport::of(
            view.def.spec(),
            m,
            crate::memory::ProcessMemory::of(p.pid()),
        )
    });
    DomainSummary {
        id: view.id,
        status: view.status(),
        def: view.def,
        stats,
        memory,
    }
}
