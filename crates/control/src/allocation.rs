//! The memory policy: how much of its memory each running domain may hold when the **memory
//! pool** (`vessel daemon --memory-pool`, by default the host's memory less a margin) is smaller
//! than what the domains were given. ESX's rule (Waldspurger, OSDI 2002): memory is taken back
//! first from the domain with the fewest shares per page it holds, never below its reservation
//! (nor below the least a domain keeps, 16 MiB); taking back is the balloon's work.
//!
//! [`allocate`] is the rule, a pure function. [`MemoryPolicy`] applies it: a thread of the
//! daemon recomputes every domain's target every [`INTERVAL`] and sets the balloons whose target
//! moved. A target set by hand (`vessel mem-set`) caps what the policy gives that domain until
//! the domain stops. Starting a domain whose reservation does not fit in what the pool has not
//! reserved for the running domains is refused ([`MemoryPolicy::admit`]).
//!
//! The **idle memory tax** ([`IdleTax`], the daemon's `--idle-tax`, ESX's default 0.75): a page
//! a domain holds but does not use counts `1 / (1 - tax)` times a page it uses when shares per
//! page are compared, so idle memory is taken back first, from whoever holds it, even from a
//! domain with more shares. What a domain uses is its working-set estimate (sampled in its
//! process, `vmm::working_set`); until every running domain has one (a domain has its first
//! after one sampling period), nobody is taxed. A domain's last estimate stands while its
//! process has none (after a reboot, a migration in, or a round it did not answer).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use vmm::layout::MIN_MEMORY;
use vmm::RunState;

use crate::memory::{MemoryReport, ProcessMemory};
use crate::reclaim::Holding;
use crate::registry::{EntryView, Registry};
use crate::sharing::FreeState;

/// How often the policy recomputes the targets.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// The step in which memory is taken back.
const STEP: u64 = 1 << 20;
/// The least change of target worth a balloon request: smaller ones are the working-set
/// estimates' noise (an estimate is a share of what the domain holds, and what it holds
/// follows its balloon), and asking for them kept balloons moving by a few MiB every round.
const REQUEST_STEP: u64 = crate::reclaim::SLACK;

/// One domain's claim, as [`allocate`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its memory (the most it may hold).
    pub memory: u64,
    /// What it always keeps.
    pub reservation: u64,
    /// Its shares.
    pub shares: u32,
    /// The memory it actively uses, as sampled (`None`: not known yet, all it holds).
    pub active: Option<u64>,
}

/// The idle memory tax: the share, 0 to 0.99, of an idle page's worth that is taxed away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleTax(f64);

impl IdleTax {
    /// ESX's default, and the daemon's.
    pub const DEFAULT: IdleTax = IdleTax(0.75);
    /// No tax: idle pages cost what used ones do.
    pub const NONE: IdleTax = IdleTax(0.0);

    /// The tax `rate` (0 to 0.99).
    pub fn new(rate: f64) -> Result<IdleTax, String> {
        if (0.0..=0.99).contains(&rate) {
            Ok(IdleTax(rate))
        } else {
            Err(format!(
                "the idle memory tax must be from 0 to 0.99, not {rate}"
            ))
        }
    }

    /// The rate.
    pub fn rate(self) -> f64 {
        self.0
    }

    /// What an idle page costs, in used pages: `1 / (1 - tax)`.
    fn idle_cost(self) -> f64 {
        1.0 / (1.0 - self.0)
    }
}

/// Each claim's target in a pool of `pool` bytes: its whole memory if they all fit; otherwise
/// memory is taken back a mebibyte at a time from the domain with the fewest shares per byte it
/// still holds (its idle bytes counted at the tax's cost), down to its floor (its reservation,
/// and at least [`MIN_MEMORY`]), until they fit or every domain is at its floor.
pub fn allocate(pool: u64, claims: &[Claim], tax: IdleTax) -> Vec<u64> {
    let mut targets: Vec<u64> = claims.iter().map(|c| c.memory).collect();
    let floors: Vec<u64> = claims
        .iter()
        .map(|c| c.reservation.max(MIN_MEMORY).min(c.memory))
        .collect();
    let taxed = claims.iter().all(|c| c.active.is_some());
    let mut excess = targets.iter().sum::<u64>().saturating_sub(pool);
    while excess > 0 {
        // The fewest shares per byte held, idle bytes counted at their cost:
        // shares_i / (active_i + cost * idle_i) smallest. Until every domain has an estimate,
        // none is taxed: one not yet sampled would count as all active, and the others, by
        // comparison, as idle.
        let cost = |i: usize| {
            let used = match claims[i].active {
                Some(a) if taxed => a.min(targets[i]),
                _ => targets[i],
            };
            used as f64 + tax.idle_cost() * (targets[i] - used) as f64
        };
        let victim = (0..claims.len())
            .filter(|&i| targets[i] > floors[i])
            .min_by(|&i, &j| {
                let lhs = f64::from(claims[i].shares) * cost(j);
                let rhs = f64::from(claims[j].shares) * cost(i);
                lhs.total_cmp(&rhs).then(i.cmp(&j))
            });
        let Some(i) = victim else { break };
        let take = STEP.min(targets[i] - floors[i]).min(excess);
        targets[i] -= take;
        excess -= take;
    }
    targets
}

/// The policy as the daemon runs it.
pub struct MemoryPolicy {
    pool: u64,
    tax: IdleTax,
    count_sharing: AtomicBool,
    state: Mutex<PolicyState>,
}

#[derive(Default)]
struct PolicyState {
    /// Targets set by hand, by domain.
    manual: HashMap<String, u64>,
    /// What the policy last computed, by domain.
    computed: HashMap<String, u64>,
    /// Domains whose balloon was last asked for less than their whole memory (the others'
    /// balloons are empty, and the policy leaves them alone while it gives them everything).
    ballooned: HashSet<String>,
    /// The domain processes (by pid) that did not answer a hold (an older binary's,
    /// attached to after an upgrade, ignores the request): never asked again, so that a
    /// round does not wait for them.
    unholdable: HashSet<u32>,
    /// Each domain's last working-set estimate, by domain: it stands while its process has
    /// none (a new boot, a migration in, a process that did not answer this round), so that
    /// one domain's gap does not lift the tax from every other.
    estimates: HashMap<String, u64>,
    /// The pool's free state, as the last round found it.
    pool: PoolStatus,
}

impl PolicyState {
    /// The working-set estimates of domains `names` (running now; the others are forgotten)
    /// whose processes said `fresh` this round: each fresh one, else the domain's last.
    fn estimates(&mut self, names: &[&str], fresh: &[Option<u64>]) -> Vec<Option<u64>> {
        self.estimates
            .retain(|name, _| names.contains(&name.as_str()));
        names
            .iter()
            .zip(fresh)
            .map(|(name, fresh)| match fresh {
                Some(bytes) => {
                    self.estimates.insert(name.to_string(), *bytes);
                    Some(*bytes)
                }
                None => self.estimates.get(*name).copied(),
            })
            .collect()
    }
}

impl MemoryPolicy {
    /// A policy for a pool of `pool` bytes, with the idle memory tax `tax`.
    pub fn new(pool: u64, tax: IdleTax) -> Arc<MemoryPolicy> {
        Arc::new(MemoryPolicy {
            pool,
            tax,
            count_sharing: AtomicBool::new(false),
            state: Mutex::new(PolicyState::default()),
        })
    }

    /// The pool.
    pub fn pool(&self) -> u64 {
        self.pool
    }

    /// The idle memory tax.
    pub fn tax(&self) -> IdleTax {
        self.tax
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PolicyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the policy every [`INTERVAL`] on `registry`'s running domains, until it is gone.
    pub fn spawn(self: &Arc<Self>, registry: Weak<Registry>) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("memory-policy".into())
            .spawn(move || loop {
                std::thread::sleep(INTERVAL);
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                let active = active_domains(&registry);
                drop(registry);
                me.tick(&active);
            });
    }

    /// Memory the running domains reserve, leaving out `except` if given.
    pub fn reserved(registry: &Registry, except: Option<&str>) -> u64 {
        active_domains(registry)
            .iter()
            .filter(|v| Some(v.def.name()) != except)
            .map(|v| v.def.spec().memory_alloc.reservation)
            .sum()
    }

    /// What the targets may add up to: the pool less its free reserve
    /// ([`crate::reclaim::reserve`]).
    pub fn allocatable(&self) -> u64 {
        self.pool - crate::reclaim::reserve(self.pool).min(self.pool)
    }

    /// Whether domain `name` with `reservation` may start: `Err` says why not.
    pub fn admit(&self, registry: &Registry, name: &str, reservation: u64) -> Result<(), String> {
        let reserved = Self::reserved(registry, Some(name));
        if reserved + reservation > self.allocatable() {
            return Err(format!(
                "it reserves {} MiB of memory, and only {} MiB of the memory pool ({} MiB, of \
                 which {} MiB is kept free) is not reserved by running domains",
                reservation >> 20,
                self.allocatable().saturating_sub(reserved) >> 20,
                self.pool >> 20,
                (self.pool - self.allocatable()) >> 20
            ));
        }
        Ok(())
    }

    /// The target to give domain `name` of `memory` bytes now that a target of `manual` was
    /// set by hand: the lower of that and the policy's.
    pub fn set_manual(&self, name: &str, memory: u64, manual: u64) -> u64 {
        let mut state = self.lock();
        state.manual.insert(name.to_string(), manual);
        state.ballooned.insert(name.to_string());
        manual.min(state.computed.get(name).copied().unwrap_or(memory))
    }

    /// One round: every active domain's target, and the balloons whose target moved.
    fn tick(&self, active: &[EntryView]) {
        // Each domain's memory as its process says it now: asked once a round.
        let reports: Vec<Option<MemoryReport>> = active
            .iter()
            .map(|v| {
                let process = v.instance.as_ref()?;
                let stats = process.stats()?;
                Some(MemoryReport::of(
                    v.def.spec(),
                    &stats,
                    ProcessMemory::of(process.pid()),
                ))
            })
            .collect();
        let names: Vec<&str> = active.iter().map(|v| v.def.name()).collect();
        let fresh: Vec<Option<u64>> = reports
            .iter()
            .map(|r| r.and_then(|r| r.active_estimate_bytes))
            .collect();
        let estimates = self.lock().estimates(&names, &fresh);
        let claims: Vec<Claim> = active
            .iter()
            .zip(estimates)
            .map(|(v, active)| {
                let spec = v.def.spec();
                Claim {
                    memory: spec.memory,
                    reservation: spec.memory_alloc.reservation,
                    shares: spec.memory_alloc.shares,
                    active,
                }
            })
            .collect();
        // The targets leave the free reserve of the pool's high state unallocated, as ESX's
        // leave its minimum free memory: domains at their targets leave the pool high.
        let policy = allocate(self.allocatable(), &claims, self.tax);
        // Each domain's target, and whether its balloon must be asked for it.
        let targets: Vec<(u64, bool)> = {
            let mut state = self.lock();
            // Domains that stopped are forgotten, their targets set by hand with them.
            state
                .manual
                .retain(|name, _| names.contains(&name.as_str()));
            state
                .ballooned
                .retain(|name| names.contains(&name.as_str()));
            state.computed.clear();
            active
                .iter()
                .zip(policy)
                .map(|(view, policy)| {
                    let name = view.def.name();
                    state.computed.insert(name.to_string(), policy);
                    let target = state.manual.get(name).map_or(policy, |m| policy.min(*m));
                    // A domain given everything, whose balloon was left empty: nothing to ask.
                    let whole = target == view.def.spec().memory;
                    (target, !whole || state.ballooned.contains(name))
                })
                .collect()
        };
        let short = self.lock().pool.state != FreeState::High;
        for ((view, &(target, ask)), report) in active.iter().zip(&targets).zip(&reports) {
            if !ask {
                continue;
            }
            // Until its balloon has been set, a domain counts as ballooned (a target the device
            // did not take is asked again next round).
            if apply(view, report.as_ref(), target, self.pool, short)
                && target == view.def.spec().memory
            {
                self.lock().ballooned.remove(view.def.name());
            } else {
                self.lock().ballooned.insert(view.def.name().to_string());
            }
        }
        self.reclaim(active, &reports, &targets);
    }

    /// The pool's free state after this round, and the means it picks beyond the balloons
    /// ([`crate::reclaim`]): host swapping in hard and low.
    fn reclaim(
        &self,
        active: &[EntryView],
        reports: &[Option<MemoryReport>],
        targets: &[(u64, bool)],
    ) {
        let saved = if self.count_sharing.load(Ordering::Relaxed) {
            crate::sharing::saved_bytes()
        } else {
            0
        };
        let held = reports
            .iter()
            .map(|r| r.map_or(0, |r| r.resident_bytes))
            .sum::<u64>()
            .saturating_sub(saved);
        let free = i64::try_from(i128::from(self.pool) - i128::from(held)).unwrap_or(i64::MAX);
        let (before, state) = {
            let mut s = self.lock();
            let before = s.pool.state;
            s.pool.state = crate::reclaim::pool_state(before, free, self.pool);
            s.pool.free_bytes = free;
            (before, s.pool.state)
        };
        if state != before {
            tracing::info!(
                target: "control",
                "memory pool: {before:?} -> {state:?} ({} MiB of {} MiB free)",
                free >> 20,
                self.pool >> 20
            );
        }
        let free_swap = if matches!(state, FreeState::Hard | FreeState::Low) {
            crate::reclaim::host_free_swap()
        } else {
            0
        };
        let can_swap = free_swap > 0;
        if matches!(state, FreeState::Hard | FreeState::Low)
            && !can_swap
            && matches!(before, FreeState::High | FreeState::Soft)
        {
            tracing::warn!(
                "memory pool {state:?}: this host has no free swap, so only the domains' \
                 balloons take memory back"
            );
        }
        let holdings: Vec<Holding> = reports
            .iter()
            .zip(targets)
            .map(|(r, &(target, _))| Holding {
                resident: r.map_or(0, |r| r.resident_bytes.saturating_sub(r.shared_bytes)),
                target,
            })
            .collect();
        let holds = crate::reclaim::holds(state, &holdings, free_swap);
        self.lock().unholdable.retain(|pid| {
            active
                .iter()
                .any(|v| v.instance.as_ref().is_some_and(|p| p.pid() == *pid))
        });
        for ((view, &hold), h) in active.iter().zip(&holds).zip(&holdings) {
            self.hold_for_memory(view, hold, *h, state);
        }
        if !matches!(state, FreeState::Hard | FreeState::Low) {
            return;
        }
        let page_outs = crate::reclaim::page_outs(state, &holdings, can_swap);
        for ((view, &bytes), h) in active.iter().zip(&page_outs).zip(&holdings) {
            let (name, Some(process)) = (view.def.name(), &view.instance) else {
                continue;
            };
            if bytes == 0 {
                continue;
            }
            tracing::info!(
                target: "control",
                "domain '{name}': paging out {} MiB (it holds {} MiB for a target of {} MiB; \
                 memory pool {state:?})",
                bytes >> 20,
                h.resident >> 20,
                h.target >> 20
            );
            if let Err(why) = process.page_out(bytes) {
                tracing::warn!("domain '{name}': cannot page out: {why}");
            }
        }
    }

    /// Holds `view`'s running domain for the memory policy (`hold`: it holds `h`, more than
    /// its target, in the low state), or lets it run again if the policy held it and no
    /// longer does; logs what it did.
    fn hold_for_memory(&self, view: &EntryView, hold: bool, h: Holding, state: FreeState) {
        let (name, Some(process)) = (view.def.name(), &view.instance) else {
            return;
        };
        let status = process.status();
        let done = match (hold, status.held_for_memory) {
            (true, false) if status.state == RunState::Running => "held",
            (false, true) => "let go of",
            _ => return,
        };
        if self.lock().unholdable.contains(&process.pid()) {
            return;
        }
        match process.hold_for_memory(hold) {
            Ok(()) => tracing::info!(
                target: "control",
                "domain '{name}': {done} it (it holds {} MiB for a target of {} MiB; memory \
                 pool {state:?})",
                h.resident >> 20,
                h.target >> 20
            ),
            // A save or a migration holds its own pause; the next round asks again.
            Err(why) if why == vmm::instance::BEING_SAVED => {
                tracing::debug!("domain '{name}': not {done} now: {why}")
            }
            Err(why) => {
                tracing::warn!("domain '{name}': could not be {done}: {why}");
                if why == crate::process::NO_ANSWER {
                    self.lock().unholdable.insert(process.pid());
                }
            }
        }
    }

    /// The pool's free state as the last round found it.
    pub fn pool_status(&self) -> PoolStatus {
        self.lock().pool.clone()
    }

    /// Whether the memory page sharing saves counts as free in the pool (the daemon's page
    /// sharing is on).
    pub fn count_page_sharing(&self, on: bool) {
        self.count_sharing.store(on, Ordering::Relaxed);
    }
}

/// The memory pool's free state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// ESX's free state with hysteresis ([`crate::reclaim::pool_state`]).
    pub state: FreeState,
    /// The pool less the guest memory the host holds for the running domains, with what page
    /// sharing saves added back (negative: they hold more than the pool).
    pub free_bytes: i64,
}

/// Whether a balloon that keeps `now` of `memory` bytes must be asked to keep `target`: not
/// for the same, nor for a step below [`REQUEST_STEP`] (but always for all of `memory`, and,
/// while the pool is `short`, for any step down).
fn worth_asking(now: u64, target: u64, memory: u64, short: bool) -> bool {
    let small = target.abs_diff(now) < REQUEST_STEP && !(short && target < now);
    target != now && (!small || target == memory)
}

/// Sets domain `view`'s balloon so that it keeps `target`, unless its balloon already asks for
/// that (a new boot starts with an empty balloon, so what the device says is what counts), or
/// for less than [`REQUEST_STEP`] more or less. While the pool is `short` (not high), a target
/// below the balloon's is asked for however small the step: balloons left a few MiB short of
/// their targets, domain after domain, kept the pool from ever rising to high again. Whether
/// the balloon asks for `target` (or near enough) now. `report` is the domain's memory as read
/// this round (`None`: no answer).
fn apply(
    view: &EntryView,
    report: Option<&MemoryReport>,
    target: u64,
    pool: u64,
    short: bool,
) -> bool {
    let (name, spec) = (view.def.name(), view.def.spec());
    let (Some(process), Some(report)) = (&view.instance, report) else {
        return false;
    };
    if !worth_asking(report.target_bytes, target, spec.memory, short) {
        return true;
    }
    let action = devices::virtio::Action::SetBalloonTarget {
        bytes: spec.memory - target,
    };
    match process.device_control(vmm::virtio::balloon_slot(spec.disks.len()), action, &[]) {
        Ok(()) => {
            tracing::info!(
                target: "control",
                "domain '{name}': memory target {} MiB of {} MiB (memory pool {} MiB)",
                target >> 20,
                spec.memory >> 20,
                pool >> 20
            );
            true
        }
        Err(why) => {
            tracing::warn!("domain '{name}': cannot set its balloon: {why}");
            false
        }
    }
}

/// The running and paused domains.
fn active_domains(registry: &Registry) -> Vec<EntryView> {
    registry
        .views()
        .into_iter()
        .filter(|v| v.state().is_active())
        .collect()
}

/// The memory pool of a host with `total` bytes of memory: all of it but an eighth (at least
/// 256 MiB), which the host keeps for itself and the daemon.
pub fn default_pool(total: u64) -> u64 {
    total.saturating_sub((total / 8).max(256 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn claim(memory: u64, reservation: u64, shares: u32) -> Claim {
        Claim {
            memory: memory * MIB,
            reservation: reservation * MIB,
            shares,
            active: None,
        }
    }

    fn using(claim: Claim, active: u64) -> Claim {
        Claim {
            active: Some(active * MIB),
            ..claim
        }
    }

    fn mib(targets: Vec<u64>) -> Vec<u64> {
        targets.into_iter().map(|t| t / MIB).collect()
    }

    #[test]
    fn small_steps_are_asked_only_downwards_while_the_pool_is_short() {
        let (memory, now) = (512 * MIB, 300 * MIB);
        for short in [false, true] {
            assert!(!worth_asking(now, now, memory, short), "the same target");
            assert!(
                worth_asking(now, now - 4 * MIB, memory, short),
                "a whole step down"
            );
            assert!(
                worth_asking(now, now + 4 * MIB, memory, short),
                "a whole step up"
            );
            assert!(
                !worth_asking(now, now + MIB, memory, short),
                "a small step up"
            );
            assert!(worth_asking(now, memory, memory, short), "everything back");
        }
        assert!(
            !worth_asking(now, now - MIB, memory, false),
            "noise in the high state"
        );
        assert!(
            worth_asking(now, now - MIB, memory, true),
            "every MiB while short"
        );
    }

    #[test]
    fn everything_fits_and_nothing_is_taken() {
        let claims = [claim(256, 0, 1000), claim(512, 0, 1)];
        assert_eq!(
            mib(allocate(1024 * MIB, &claims, IdleTax::DEFAULT)),
            [256, 512]
        );
        assert_eq!(
            mib(allocate(768 * MIB, &claims, IdleTax::DEFAULT)),
            [256, 512]
        );
    }

    #[test]
    fn the_fewest_shares_per_page_give_back_first() {
        // 512 MiB given, 448 in the pool: the domain with a third of the shares gives the 64.
        let claims = [claim(256, 0, 1000), claim(256, 0, 3000)];
        assert_eq!(
            mib(allocate(448 * MIB, &claims, IdleTax::DEFAULT)),
            [192, 256]
        );
        // Short by 256: shares per page even out (1000/P1 = 3000/P2, P1 + P2 = 256).
        assert_eq!(
            mib(allocate(256 * MIB, &claims, IdleTax::DEFAULT)),
            [64, 192]
        );
        // Equal shares: equal memory.
        let equal = [claim(512, 0, 1000), claim(256, 0, 1000)];
        assert_eq!(
            mib(allocate(384 * MIB, &equal, IdleTax::DEFAULT)),
            [192, 192]
        );
    }

    #[test]
    fn reservations_and_the_minimum_are_never_taken() {
        let claims = [claim(256, 160, 1000), claim(256, 0, 3000)];
        assert_eq!(
            mib(allocate(384 * MIB, &claims, IdleTax::DEFAULT)),
            [160, 224]
        );
        // Nothing left to take but the floors: they stay, over the pool.
        let claims = [claim(256, 200, 1), claim(64, 0, 1)];
        assert_eq!(
            mib(allocate(100 * MIB, &claims, IdleTax::DEFAULT)),
            [200, 16]
        );
    }

    #[test]
    fn idle_memory_is_taxed_back_first() {
        // Equal shares and memory; a uses 32 MiB of its 256, b all of its 256; 128 to take.
        let claims = [
            using(claim(256, 0, 1000), 32),
            using(claim(256, 0, 1000), 256),
        ];
        // Without the tax they give equally, as if both used everything.
        assert_eq!(mib(allocate(384 * MIB, &claims, IdleTax::NONE)), [192, 192]);
        // With ESX's 0.75 an idle page costs four used ones: a gives it all.
        assert_eq!(
            mib(allocate(384 * MIB, &claims, IdleTax::DEFAULT)),
            [128, 256]
        );
        // With three times b's shares, a still gives the most: the two even out where
        // 3000 / (32 + 4 (A - 32)) = 1000 / B and A + B = 384, at A = 178.3 MiB (without the
        // tax b gives all 128).
        let rich_idle = [
            using(claim(256, 0, 3000), 32),
            using(claim(256, 0, 1000), 256),
        ];
        assert_eq!(
            mib(allocate(384 * MIB, &rich_idle, IdleTax::DEFAULT)),
            [178, 206]
        );
        assert_eq!(
            mib(allocate(384 * MIB, &rich_idle, IdleTax::NONE)),
            [256, 128]
        );
        // Until every domain has an estimate, nobody is taxed: an idle domain sampled beside
        // one not sampled yet gives no more than shares say.
        let unknown = [using(claim(256, 0, 1000), 32), claim(256, 0, 1000)];
        assert_eq!(
            mib(allocate(384 * MIB, &unknown, IdleTax::DEFAULT)),
            [192, 192]
        );
        assert!(IdleTax::new(1.0).is_err() && IdleTax::new(-0.1).is_err());
    }

    #[test]
    fn a_hundred_domains_share_a_pool_of_half_their_memory() {
        // 100 domains of 256 MiB, every other one with twice the shares; the pool holds half.
        let claims: Vec<Claim> = (0..100)
            .map(|i| claim(256, 0, if i % 2 == 0 { 1000 } else { 2000 }))
            .collect();
        let targets = mib(allocate(12_800 * MIB, &claims, IdleTax::DEFAULT));
        assert_eq!(targets.iter().sum::<u64>(), 12_800);
        // Shares per page even out: 1000 / T1 = 2000 / T2 with T1 + T2 = 256, so 85.3 and
        // 170.7 MiB, to the mebibyte.
        for (i, t) in targets.iter().enumerate() {
            let want = if i % 2 == 0 { 85.3 } else { 170.7 };
            assert!((*t as f64 - want).abs() <= 1.0, "domain {i}: {t} MiB");
        }
        // Half of them idle (8 MiB used of what they hold), half busy (all used), equal
        // shares: every idle domain gives more than any busy one, none goes below the least
        // a domain keeps, and the tax moves nothing between domains alike.
        let claims: Vec<Claim> = (0..100)
            .map(|i| {
                let c = claim(256, 0, 1000);
                if i % 2 == 0 {
                    using(c, 8)
                } else {
                    using(c, 256)
                }
            })
            .collect();
        let targets = mib(allocate(12_800 * MIB, &claims, IdleTax::DEFAULT));
        assert_eq!(targets.iter().sum::<u64>(), 12_800);
        let idle_most = targets.iter().step_by(2).max().unwrap();
        let busy_least = targets.iter().skip(1).step_by(2).min().unwrap();
        assert!(idle_most < busy_least, "{targets:?}");
        assert!(targets.iter().all(|&t| t >= 16), "{targets:?}");
        let spread = |v: Vec<&u64>| *v.iter().max().unwrap() - *v.iter().min().unwrap();
        assert!(
            spread(targets.iter().step_by(2).collect()) <= 1,
            "{targets:?}"
        );
        assert!(
            spread(targets.iter().skip(1).step_by(2).collect()) <= 1,
            "{targets:?}"
        );
    }

    #[test]
    fn the_default_pool_leaves_the_host_a_margin() {
        assert_eq!(default_pool(1024 * MIB), 768 * MIB);
        assert_eq!(default_pool(16 * 1024 * MIB), 14 * 1024 * MIB);
        assert_eq!(default_pool(100 * MIB), 0);
    }

    #[test]
    fn a_domains_last_estimate_stands_until_it_has_a_new_one() {
        let mut state = PolicyState::default();
        assert_eq!(
            state.estimates(&["a", "b"], &[Some(8), None]),
            [Some(8), None]
        );
        // a's process did not answer (or a rebooted): its last estimate stands.
        assert_eq!(
            state.estimates(&["a", "b"], &[None, Some(5)]),
            [Some(8), Some(5)]
        );
        assert_eq!(
            state.estimates(&["a", "b"], &[Some(3), None]),
            [Some(3), Some(5)]
        );
        // b stopped: forgotten, and a b started later starts without one.
        assert_eq!(state.estimates(&["a"], &[None]), [Some(3)]);
        assert_eq!(state.estimates(&["a", "b"], &[None, None]), [Some(3), None]);
    }

    #[test]
    fn a_target_set_by_hand_caps_the_policys() {
        let p = MemoryPolicy::new(1024 * MIB, IdleTax::DEFAULT);
        assert_eq!(p.set_manual("a", 256 * MIB, 128 * MIB), 128 * MIB);
        p.lock().computed.insert("a".into(), 96 * MIB);
        assert_eq!(p.set_manual("a", 256 * MIB, 200 * MIB), 96 * MIB);
    }
}
