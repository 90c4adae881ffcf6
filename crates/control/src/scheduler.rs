//! The daemon's CPU scheduler: Borrowed Virtual Time across every domain's vCPUs, with the host
//! kernel as the dispatcher.
//!
//! Every interval (`vessel daemon --sched-interval`, 100 ms by default) it reads what each
//! running domain's threads did ([`crate::thread_clock`]: time run, time spent ready but
//! waiting for a CPU), hands that to [`crate::bvt`], and writes the kernel weights BVT asks for
//! into the domains' control groups where they moved by more than [`HYSTERESIS`]; a cap goes
//! to the group's bandwidth control once, when it is set. The waiting time is also what KVM reports to a guest as steal time, so a guest's
//! `/proc/stat` and `vessel sched` agree on who waited.
//!
//! Without control groups it still measures (so `vessel sched` shows shares), but cannot act:
//! the daemon said so once at start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use vmm::SchedParams;

use crate::bvt::{Bvt, DomainView, Usage};
use crate::cgroup::Cgroups;
use crate::registry::Registry;
use crate::thread_clock::ThreadClocks;

/// A kernel weight is written again only when it moved by more than this fraction (writing one
/// makes the kernel reweigh the group on every CPU).
const HYSTERESIS: f64 = 0.05;

/// The scheduler's interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// A running domain, as the scheduler needs it.
#[derive(Clone, Debug)]
pub struct Running {
    /// Its name (its group's name).
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its parameters.
    pub params: SchedParams,
}

/// One domain's CPU over the scheduler's last interval, with its BVT state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedReport {
    /// BVT's view of it.
    pub bvt: DomainView,
    /// The interval, in nanoseconds.
    pub interval_ns: u64,
    /// The kernel weight written to its group (in the kernel's units), if it has one.
    pub group_weight: Option<u64>,
}

impl SchedReport {
    /// CPU it used, in percent of one host CPU.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.bvt.last.run_ns as f64 / self.interval_ns.max(1) as f64
    }

    /// Time its threads waited for a CPU, in percent of one host CPU (what its guest sees as
    /// steal time, plus its I/O threads' waits).
    pub fn wait_percent(&self) -> f64 {
        100.0 * self.bvt.last.wait_ns as f64 / self.interval_ns.max(1) as f64
    }
}

struct State {
    bvt: Bvt,
    /// Each domain's process's thread clocks.
    seen: BTreeMap<String, ThreadClocks>,
    /// What was last written to each domain's group: (kernel weight, cap).
    written: BTreeMap<String, (u64, u32)>,
    last_sample: Option<Instant>,
    interval_ns: u64,
}

/// How the scheduler sets the groups' kernel weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Borrowed Virtual Time: each domain's weight, steered every interval by its lag and
    /// warp.
    #[default]
    Bvt,
    /// Each domain's weight as it is, never steered: what the peers do (one group per VM with
    /// a CPU weight), for comparison. Measured all the same.
    CgroupsOnly,
}

/// The scheduler: BVT's accounts, what it measured and what it wrote.
pub struct Scheduler {
    cgroups: Arc<Cgroups>,
    policy: Policy,
    state: Mutex<State>,
}

impl Scheduler {
    /// A scheduler acting on `cgroups` by `policy`.
    pub fn new(cgroups: Arc<Cgroups>, policy: Policy) -> Scheduler {
        Scheduler {
            cgroups,
            policy,
            state: Mutex::new(State {
                bvt: Bvt::new(),
                seen: BTreeMap::new(),
                written: BTreeMap::new(),
                last_sample: None,
                interval_ns: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the scheduler's thread, which runs a [`Scheduler::tick`] every `interval` over
    /// the running domains of `registry`, until the registry is gone.
    pub fn spawn(self: &Arc<Self>, registry: Weak<Registry>, interval: Duration) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                let running = running_domains(&registry);
                drop(registry);
                me.tick(&running);
            });
    }

    /// Takes domain `name` (just moved into its group) into account and sets its group's
    /// weight and cap at once; also how a change of its parameters takes effect.
    pub fn admit(&self, name: &str, vcpus: u32, params: SchedParams) {
        let mut state = self.lock();
        state.bvt.set(name, vcpus, params);
        self.apply(&mut state);
    }

    /// Forgets domain `name` (its process has ended).
    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        state.bvt.remove(name);
        state.seen.remove(name);
        state.written.remove(name);
    }

    /// One interval: measures every domain in `running`, accounts it and writes the weights.
    pub fn tick(&self, running: &[Running]) {
        let now = Instant::now();
        let mut state = self.lock();
        let elapsed = state
            .last_sample
            .map_or(0, |t| now.duration_since(t).as_nanos() as u64);
        state.last_sample = Some(now);
        // Domains that stopped are forgotten; new ones (or ones whose parameters changed
        // without an admit, such as domains a restarted daemon re-attached) are taken in.
        let names: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
        for gone in state.bvt.names() {
            if !names.contains(&gone.as_str()) {
                state.bvt.remove(&gone);
                state.seen.remove(&gone);
                state.written.remove(&gone);
            }
        }
        let mut usage = BTreeMap::new();
        for r in running {
            state.bvt.set(&r.name, r.vcpus, r.params);
            let used = match state.seen.get_mut(&r.name) {
                Some(clocks) if clocks.pid() == r.pid => clocks.sample(),
                // First sight of this process: a baseline, nothing to account yet.
                _ => {
                    state.seen.insert(r.name.clone(), ThreadClocks::new(r.pid));
                    Usage::default()
                }
            };
            usage.insert(r.name.clone(), used);
        }
        if elapsed > 0 {
            state.bvt.account(elapsed, &usage);
            state.interval_ns = elapsed;
        }
        self.apply(&mut state);
    }

    /// Writes each domain's kernel weight (scaled so the heaviest gets the kernel's largest)
    /// and cap into its group, where they changed.
    fn apply(&self, state: &mut State) {
        let Some(top) = self.cgroups.max_cpu_weight() else {
            return;
        };
        let view = state.bvt.view();
        let wanted = |v: &DomainView| match self.policy {
            Policy::Bvt => v.kernel_weight,
            Policy::CgroupsOnly => f64::from(v.params.weight),
        };
        let heaviest = view.values().map(wanted).fold(f64::MIN_POSITIVE, f64::max);
        let scale = top as f64 / heaviest;
        for (name, v) in &view {
            let weight = ((wanted(v) * scale).round() as u64).clamp(1, top);
            let cap = v.params.cap;
            let (old_weight, old_cap) = state.written.get(name).copied().unwrap_or((0, u32::MAX));
            let moved = old_weight == 0
                || weight.abs_diff(old_weight) as f64 > HYSTERESIS * old_weight as f64;
            if moved {
                if let Err(e) = self.cgroups.set_cpu_weight(name, weight) {
                    tracing::debug!("domain '{name}': cannot set its CPU weight: {e}");
                    continue;
                }
            }
            if cap != old_cap {
                if let Err(e) = self.cgroups.set_cpu_cap(name, cap) {
                    tracing::warn!("domain '{name}': cannot set its CPU cap: {e}");
                    continue;
                }
            }
            let weight = if moved { weight } else { old_weight };
            state.written.insert(name.clone(), (weight, cap));
        }
    }

    /// Every running domain's CPU over the last interval.
    pub fn report(&self) -> BTreeMap<String, SchedReport> {
        let state = self.lock();
        state
            .bvt
            .view()
            .into_iter()
            .map(|(name, bvt)| {
                let group_weight = state.written.get(&name).map(|w| w.0);
                (
                    name,
                    SchedReport {
                        bvt,
                        interval_ns: state.interval_ns,
                        group_weight,
                    },
                )
            })
            .collect()
    }
}

/// The running (or paused) domains of `registry`.
fn running_domains(registry: &Registry) -> Vec<Running> {
    registry
        .views()
        .into_iter()
        .filter_map(|v| {
            let process = v.instance?;
            if !process.status().state.is_active() {
                return None;
            }
            let spec = v.def.spec();
            Some(Running {
                name: v.def.name().to_string(),
                pid: process.pid(),
                vcpus: spec.vcpus,
                params: spec.sched,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_groups_it_measures_and_writes_nothing() {
        let s = Scheduler::new(Arc::new(Cgroups::None), Policy::Bvt);
        let me = Running {
            name: "self".into(),
            pid: std::process::id(),
            vcpus: 1,
            params: SchedParams::default(),
        };
        s.tick(std::slice::from_ref(&me));
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        s.tick(std::slice::from_ref(&me));
        let report = s.report();
        let mine = report["self"];
        assert!(mine.cpu_percent() > 10.0, "{mine:?}");
        assert_eq!(mine.group_weight, None);
        s.tick(&[]);
        assert!(s.report().is_empty(), "a stopped domain is forgotten");
    }
}
