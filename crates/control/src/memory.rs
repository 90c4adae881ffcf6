//! A domain's memory as its balloon shows it, and the balloon's target changed while the
//! domain runs (`vessel mem-set`, as `xl mem-set`). Every domain has a balloon
//! (`devices::virtio::balloon`): setting a domain's memory below its `--memory` asks the guest
//! to hand the difference back, page by page, and the host's memory behind those pages is
//! freed as they come. The target is the running domain's only: a new boot starts with an
//! empty balloon, the whole of `--memory`.

use serde::Serialize;
use vmm::layout::MIN_MEMORY;
use vmm::wire::MachineStats;
use vmm::DomainSpec;

use crate::sharing::{kib_field, FreeState, SharingStatus};
use crate::{ControlError, ControlPlane};

/// The size of a balloon page.
const PAGE: u64 = devices::virtio::balloon::PAGE_SIZE;

/// What the guest said about its memory, in its balloon's last statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestMemoryStats {
    /// Memory the guest does not use at all.
    pub free_bytes: u64,
    /// Memory the guest could use without swapping (free, and caches it can drop).
    pub available_bytes: u64,
    /// Memory the guest's kernel manages (less than the domain's memory by what the kernel
    /// keeps for itself, and by the balloon).
    pub total_bytes: u64,
    /// Its page cache and other caches.
    pub caches_bytes: u64,
    /// Swapped in since it booted.
    pub swap_in_bytes: u64,
    /// Swapped out since it booted.
    pub swap_out_bytes: u64,
    /// Page faults that needed I/O.
    pub major_faults: u64,
    /// Page faults that did not.
    pub minor_faults: u64,
}

/// A domain process's memory as the host's kernel tells it (`/proc/PID`, which the daemon reads:
/// the confined process has no `/proc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Bytes merged with another page by page sharing (`ksm_merging_pages`).
    pub merged: u64,
    /// Bytes in the host's swap (`VmSwap`).
    pub swapped: u64,
    /// Anonymous memory mapped in the process (`RssAnon`: guest RAM and the VMM's own heap),
    /// if the kernel said.
    pub anon_resident: Option<u64>,
}

impl ProcessMemory {
    /// Process `pid`'s (all zero and unknown if it is gone).
    pub fn of(pid: u32) -> ProcessMemory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        ProcessMemory {
            merged: crate::sharing::merged_bytes(pid),
            swapped: kib_field(&status, "VmSwap:").unwrap_or(0),
            anon_resident: kib_field(&status, "RssAnon:"),
        }
    }
}

/// A running domain's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemoryReport {
    /// What the guest was given (`--memory`): the most it may have.
    pub configured_bytes: u64,
    /// What it always keeps (`--reservation`): the memory policy never takes it back.
    pub reservation_bytes: u64,
    /// Its shares (`--shares`): who gives memory back first when the pool is short.
    pub shares: u32,
    /// What the host wants it to have now: its memory less the balloon's target.
    pub target_bytes: u64,
    /// What the balloon holds, as the guest's driver says: memory the guest gave back.
    pub balloon_bytes: u64,
    /// Guest memory the host holds now (touched and not given back, nor paged out: pages
    /// written to swap and waiting in the swap cache to be freed are not counted).
    pub resident_bytes: u64,
    /// Free memory the guest has reported since it booted, given back to the host.
    pub reported_bytes: u64,
    /// Guest memory that page sharing keeps as one copy with identical pages (of this domain
    /// or others): it costs the host nothing more until written.
    pub shared_bytes: u64,
    /// Memory of its process in the host's swap: guest pages the host paged out when the pool
    /// was short and the balloon too slow (the rest of the process is a few MiB).
    pub swapped_bytes: u64,
    /// The memory the guest actively uses, as sampled (its working set's share of what it
    /// holds, times that), once a sampling period has ended.
    pub active_estimate_bytes: Option<u64>,
    /// The sampling behind that estimate.
    pub working_set: Option<vmm::wire::WorkingSetStats>,
    /// The guest's own figures, once its driver has sent some.
    pub guest: Option<GuestMemoryStats>,
}

impl MemoryReport {
    /// The report of a domain specified as `spec` whose process counted `stats` and looks as
    /// `host` from the host's side.
    pub fn of(spec: &DomainSpec, stats: &MachineStats, host: ProcessMemory) -> MemoryReport {
        let configured = spec.memory;
        let kind = devices::virtio::device_id::name(devices::virtio::device_id::BALLOON);
        let balloon = stats.devices.iter().find(|d| d.kind == kind);
        let counter = |name: &str| -> u64 {
            balloon
                .and_then(|b| b.counters.iter().find(|(n, _)| n == name))
                .map_or(0, |(_, v)| *v)
        };
        let guest = (counter("stats_updates") > 0).then(|| GuestMemoryStats {
            free_bytes: counter("guest_free_bytes"),
            available_bytes: counter("guest_available_bytes"),
            total_bytes: counter("guest_total_bytes"),
            caches_bytes: counter("guest_caches_bytes"),
            swap_in_bytes: counter("guest_swap_in_bytes"),
            swap_out_bytes: counter("guest_swap_out_bytes"),
            major_faults: counter("guest_major_faults"),
            minor_faults: counter("guest_minor_faults"),
        });
        // Guest RAM the process has mapped (mincore also counts pages paged out and still in
        // the swap cache), known from RssAnon only as far as the VMM's heap allows.
        let resident = host
            .anon_resident
            .map_or(stats.resident_bytes, |rss| rss.min(stats.resident_bytes));
        MemoryReport {
            configured_bytes: configured,
            reservation_bytes: spec.memory_alloc.reservation,
            shares: spec.memory_alloc.shares,
            target_bytes: configured.saturating_sub(counter("target_pages") * PAGE),
            balloon_bytes: counter("actual_pages") * PAGE,
            resident_bytes: resident,
            reported_bytes: counter("reported_bytes"),
            shared_bytes: host.merged,
            swapped_bytes: host.swapped,
            active_estimate_bytes: stats
                .working_set
                .map(|w| (w.active_share * resident as f64) as u64),
            working_set: stats.working_set,
            guest,
        }
    }
}

/// The host's memory and what the domains hold of it (`vessel mem`).
#[derive(Clone, Debug, Serialize)]
pub struct MemoryView {
    /// The host's memory (MemTotal), if it could be read.
    pub total_bytes: Option<u64>,
    /// What it could still give without swapping (MemAvailable), if it could be read.
    pub available_bytes: Option<u64>,
    /// Its free state, ESX's way (see [`crate::sharing::FreeState::of`]).
    pub free_state: Option<FreeState>,
    /// The memory all domains together may hold (`vessel daemon --memory-pool`).
    pub pool_bytes: u64,
    /// What the running and paused domains reserve of it.
    pub reserved_bytes: u64,
    /// The idle memory tax (`vessel daemon --idle-tax`).
    pub idle_tax: f64,
    /// Guest memory of the running and paused domains together, as configured.
    pub given_bytes: u64,
    /// Page sharing, if it is on.
    pub page_sharing: Option<SharingStatus>,
    /// The pool's free state, by the policy's last round: ESX's states with hysteresis, the
    /// means they pick.
    pub pool: crate::allocation::PoolStatus,
    /// Each running or paused domain's memory, in name order.
    pub domains: Vec<DomainMemory>,
}

/// One domain's line of the memory view.
#[derive(Clone, Debug, Serialize)]
pub struct DomainMemory {
    /// The domain.
    pub name: String,
    /// Its memory.
    #[serde(flatten)]
    pub memory: MemoryReport,
}

impl ControlPlane {
    /// The host's memory and the domains' (those that run and answered).
    pub fn memory_view(&self) -> MemoryView {
        let list = self.list();
        let given_bytes = list
            .iter()
            .filter(|d| d.state().is_active())
            .map(|d| d.def.spec().memory)
            .sum();
        let host = FreeState::now();
        MemoryView {
            total_bytes: host.map(|(_, _, total)| total),
            available_bytes: host.map(|(_, available, _)| available),
            free_state: host.map(|(state, _, _)| state),
            pool_bytes: self.memory_policy.pool(),
            reserved_bytes: crate::allocation::MemoryPolicy::reserved(&self.registry, None),
            idle_tax: self.memory_policy.tax().rate(),
            given_bytes,
            page_sharing: self.page_sharing_status(),
            pool: self.memory_policy.pool_status(),
            domains: list
                .into_iter()
                .filter_map(|d| {
                    Some(DomainMemory {
                        name: d.def.name().to_string(),
                        memory: d.memory?,
                    })
                })
                .collect(),
        }
    }
}

/// Checks a memory target for a domain given `configured` bytes: whole pages, at least
/// [`MIN_MEMORY`], at most `configured`.
pub fn check_target(target: u64, configured: u64) -> Result<(), ControlError> {
    let mib = |b: u64| b >> 20;
    if target > configured {
        return Err(ControlError::Invalid(format!(
            "a memory target of {} MiB is more than the domain's memory ({} MiB): a balloon \
             only takes memory back",
            mib(target),
            mib(configured)
        )));
    }
    if target < MIN_MEMORY {
        return Err(ControlError::Invalid(format!(
            "a memory target of {} MiB is too small: a domain keeps at least {} MiB",
            mib(target),
            mib(MIN_MEMORY)
        )));
    }
    if !target.is_multiple_of(PAGE) {
        return Err(ControlError::Invalid(format!(
            "a memory target of {target} bytes is not a whole number of 4 KiB pages"
        )));
    }
    Ok(())
}

impl ControlPlane {
    /// Asks running domain `name`'s guest to keep `target` bytes of its memory, or less if the
    /// memory policy gives it less now, and give the rest back through its balloon; returns the
    /// target set, at once (the guest inflates or deflates its balloon at its own pace: see
    /// [`MemoryReport::balloon_bytes`]). The target caps what the policy gives the domain until
    /// it stops.
    pub fn set_memory_target(&self, name: &str, target: u64) -> Result<u64, ControlError> {
        let view = self.registry.view(name)?;
        let spec = view.def.spec();
        check_target(target, spec.memory)?;
        let process = self.active_process(name)?;
        // Not above what the memory policy gives the domain now.
        let target = self.memory_policy.set_manual(name, spec.memory, target);
        let balloon = vmm::virtio::balloon_slot(spec.disks.len());
        let action = devices::virtio::Action::SetBalloonTarget {
            bytes: spec.memory - target,
        };
        process
            .device_control(balloon, action, &[])
            .map_err(|why| ControlError::Refused {
                name: name.to_string(),
                why: format!("balloon: {why}"),
            })?;
        tracing::info!(
            target: "control",
            "domain '{name}': memory target {} MiB of {} MiB",
            target >> 20,
            spec.memory >> 20
        );
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::wire::DeviceStats;

    #[test]
    fn targets_are_whole_pages_between_the_minimum_and_the_domains_memory() {
        let mem = 512 << 20;
        assert!(check_target(mem, mem).is_ok());
        assert!(check_target(MIN_MEMORY, mem).is_ok());
        for bad in [mem + PAGE, MIN_MEMORY - PAGE, (256 << 20) + 1, 0] {
            assert!(check_target(bad, mem).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_report_reads_the_balloons_counters() {
        let counters = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
        };
        let mut stats = MachineStats {
            resident_bytes: 100 << 20,
            devices: vec![
                DeviceStats {
                    kind: "rng".into(),
                    label: "rng".into(),
                    counters: counters(&[("target_pages", 7)]),
                },
                DeviceStats {
                    kind: "balloon".into(),
                    label: "balloon".into(),
                    counters: counters(&[
                        ("target_pages", 65536),
                        ("actual_pages", 1024),
                        ("reported_bytes", 4096),
                        ("stats_updates", 0),
                        ("guest_free_bytes", 5),
                    ]),
                },
            ],
            ..MachineStats::default()
        };
        let spec = DomainSpec {
            memory: 512 << 20,
            memory_alloc: vmm::MemoryAlloc {
                reservation: 64 << 20,
                shares: 3000,
            },
            ..DomainSpec::new("/k")
        };
        let r = MemoryReport::of(&spec, &stats, ProcessMemory::default());
        assert_eq!(r.configured_bytes, 512 << 20);
        assert_eq!((r.reservation_bytes, r.shares), (64 << 20, 3000));
        assert_eq!(r.target_bytes, 256 << 20);
        assert_eq!(r.balloon_bytes, 4 << 20);
        assert_eq!(r.resident_bytes, 100 << 20);
        assert_eq!(r.reported_bytes, 4096);
        assert_eq!(r.guest, None, "no statistics came yet");
        stats.devices[1].counters.push(("stats_updates".into(), 3));
        stats.devices[1]
            .counters
            .retain(|(n, v)| n != "stats_updates" || *v == 3);
        let r = MemoryReport::of(&spec, &stats, ProcessMemory::default());
        assert_eq!(r.guest.map(|g| g.free_bytes), Some(5));
        // Paged out and waiting in the swap cache: mapped no more, and not counted.
        let host = ProcessMemory {
            merged: 1 << 20,
            swapped: 60 << 20,
            anon_resident: Some(42 << 20),
        };
        let r = MemoryReport::of(&spec, &stats, host);
        assert_eq!(
            (r.resident_bytes, r.shared_bytes, r.swapped_bytes),
            (42 << 20, 1 << 20, 60 << 20)
        );
        // A machine without a balloon (an older domain process): nothing taken, no target.
        stats.devices.remove(1);
        let r = MemoryReport::of(&spec, &stats, ProcessMemory::default());
        assert_eq!((r.target_bytes, r.balloon_bytes), (512 << 20, 0));
    }
}
