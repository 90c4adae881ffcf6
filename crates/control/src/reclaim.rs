//! How memory is taken back, by the memory pool's free state, as ESX does it (Waldspurger,
//! OSDI 2002): the pool is **high**, **soft**, **hard** or **low** by the share of it the
//! domains leave free, with thresholds of 6, 4, 2 and 1%, and the state picks the means.
//!
//! - Free memory below 4% makes the pool soft, below 2% hard, below 1% low. It goes back up
//!   only once free memory passes the next state's own threshold: from low to hard at 2%, from
//!   hard to soft at 4%, from soft to high at 6%, so that it does not flap at one edge.
//! - **The balloon** works in every state: the policy sets each domain's balloon to its target
//!   as soon as the targets move. (ESX waits for the soft state; Vessel starts at once because
//!   a guest's balloon is cheap for the guest and slow for the host: it gives back a few
//!   hundred MiB a second at best, and waiting for free memory to run low would leave the
//!   host to swap what the balloon could have given.)
//! - **Host swapping** in the hard and low states: a domain holding more than its target (its
//!   balloon is slow, refused, or its guest has no driver) has the difference paged out at
//!   random by the host ([`hv::paging`]), at most [`PAGE_OUT_PER_ROUND`] per domain and round.
//!   A host without free swap cannot: the policy says so each time the pool turns hard, and
//!   the balloons are all there is.
//! - **Holding** in the low state, as ESX blocks the VMs above their targets: a running
//!   domain more than [`SLACK`] over its target is paused while the host pages it out, so that
//!   it takes no more meanwhile, and runs again once it is back within the slack or the pool
//!   is no longer low. Only where the host's free swap can take what it holds beyond its
//!   target: a held guest cannot work its balloon, so a hold that paging out cannot end would
//!   never end. The hold is the domain process's own state
//!   (`vmm::Instance::hold_for_memory`), so a daemon that restarts finds it, and a held domain
//!   is told from one its user paused.
//!
//! "Free" is the pool less the guest memory the host holds for the running domains: their
//! resident bytes, with what page sharing saves added back. The policy's targets add up to the
//! pool less the high state's 6% ([`reserve`]), so that domains at their targets leave the
//! pool high.

use crate::sharing::FreeState;

/// The most a domain is paged out in one round of the policy (2 s): 64 MiB, about what the
/// balloon gives at its best.
pub const PAGE_OUT_PER_ROUND: u64 = 64 << 20;
/// How far above its target a domain may be before the host pages it out: the
/// balloon moves in steps, and a guest's driver stops a little short.
pub const SLACK: u64 = 4 << 20;

/// The part of a pool of `pool` bytes the targets leave free: the high state's 6%, in whole
/// MiB (rounded up), as ESX's targets leave its minimum free memory. So domains that hold
/// their targets leave the pool high, and a state below high means some hold more.
pub fn reserve(pool: u64) -> u64 {
    const MIB: u128 = 1 << 20;
    (u128::from(pool) * 6).div_ceil(100 * MIB) as u64 * (1 << 20)
}

/// The pool's free state after `state`, with `free` bytes of `pool` free (negative: the
/// domains hold more than the pool).
pub fn pool_state(state: FreeState, free: i64, pool: u64) -> FreeState {
    // Thresholds in percent of the pool, compared without rounding (in i128: a pool may be
    // any u64, as a daemon without one has).
    let at_least = |percent: i128| i128::from(free) * 100 >= percent * i128::from(pool);
    let down = if !at_least(1) {
        FreeState::Low
    } else if !at_least(2) {
        FreeState::Hard
    } else if !at_least(4) {
        FreeState::Soft
    } else {
        FreeState::High
    };
    let up = if at_least(6) {
        FreeState::High
    } else if at_least(4) {
        FreeState::Soft
    } else if at_least(2) {
        FreeState::Hard
    } else {
        FreeState::Low
    };
    if down.rank() < state.rank() {
        down
    } else if up.rank() > state.rank() {
        up
    } else {
        state
    }
}

/// One domain as the means see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    /// Guest memory the host holds for it alone now (resident and not merged with other
    /// pages: merged pages cost no more, and paging out leaves them).
    pub resident: u64,
    /// What the policy gives it.
    pub target: u64,
}

impl Holding {
    /// What it holds beyond its target, past the slack (0 if nothing).
    pub fn over(self) -> u64 {
        self.resident.saturating_sub(self.target + SLACK)
    }
}

/// What each domain is to page out this round in state `state` on a host that can swap or
/// not (`can_swap`): in hard and low, each domain more than [`SLACK`] over its target pages
/// out what it holds beyond the target (at most [`PAGE_OUT_PER_ROUND`]), so that domains
/// brought to their targets leave the pool its reserve; otherwise, and without swap, nothing.
pub fn page_outs(state: FreeState, domains: &[Holding], can_swap: bool) -> Vec<u64> {
    domains
        .iter()
        .map(|d| match state {
            FreeState::Hard | FreeState::Low if can_swap && d.over() > 0 => {
                d.resident.saturating_sub(d.target).min(PAGE_OUT_PER_ROUND)
            }
            _ => 0,
        })
        .collect()
}

/// Whether each domain is to be held this round (paused by the policy): in the low state,
/// each domain more than [`SLACK`] over its target whose excess fits in the host's free swap
/// (`free_swap` bytes), while the host pages it out; none otherwise, so that a domain back
/// within the slack, or any domain once the pool is no longer low, runs again, and none is
/// held that paging out cannot bring back to its target.
pub fn holds(state: FreeState, domains: &[Holding], free_swap: u64) -> Vec<bool> {
    domains
        .iter()
        .map(|d| state == FreeState::Low && d.over() > 0 && d.resident - d.target <= free_swap)
        .collect()
}

/// The host's free swap now (`SwapFree` in `/proc/meminfo`), in bytes; 0 if unknown.
pub fn host_free_swap() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| crate::sharing::kib_field(&m, "SwapFree:"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_targets_leave_six_percent_of_the_pool_in_whole_mib() {
        assert_eq!(reserve(1000 * MIB), 60 * MIB);
        assert_eq!(reserve(96 * MIB), 6 * MIB);
        assert_eq!(reserve(320 * MIB), 20 * MIB);
        assert_eq!(reserve(16 * MIB), MIB);
        // Enough for the pool to rise to high once the domains hold their targets.
        for pool in [16, 96, 320, 400, 512, 768, 1000, 12_800] {
            let free = reserve(pool * MIB) as i64;
            assert_eq!(
                pool_state(FreeState::Soft, free, pool * MIB),
                FreeState::High,
                "{pool}"
            );
        }
    }

    #[test]
    fn the_pool_falls_at_one_threshold_and_rises_at_the_next() {
        let pool = 1000 * MIB;
        let at = |state, free_mib: i64| pool_state(state, free_mib * MIB as i64, pool);
        use FreeState::*;
        assert_eq!(at(High, 100), High);
        assert_eq!(at(High, 50), High, "5% free: still high (soft below 4%)");
        assert_eq!(at(High, 39), Soft);
        assert_eq!(at(High, 19), Hard);
        assert_eq!(at(High, 9), Low);
        assert_eq!(at(High, -20), Low, "the domains hold more than the pool");
        // Back up only past the next state's threshold.
        assert_eq!(at(Soft, 50), Soft, "5%: not yet the 6% that makes it high");
        assert_eq!(at(Soft, 60), High);
        assert_eq!(at(Hard, 30), Hard, "3%: not yet the 4% that makes it soft");
        assert_eq!(at(Hard, 40), Soft);
        assert_eq!(at(Low, 15), Low, "1.5%: not yet the 2% that makes it hard");
        assert_eq!(at(Low, 20), Hard);
        assert_eq!(at(Low, 70), High);
        // Down again from where it rose to.
        assert_eq!(at(Soft, 19), Hard);
        assert_eq!(at(Hard, 9), Low);
    }

    #[test]
    fn hard_and_low_page_out_what_is_over_the_target() {
        let domains = [
            Holding {
                resident: 300 * MIB,
                target: 128 * MIB,
            },
            Holding {
                resident: 140 * MIB,
                target: 128 * MIB,
            },
            Holding {
                resident: 130 * MIB,
                target: 128 * MIB,
            },
        ];
        for state in [FreeState::High, FreeState::Soft] {
            assert_eq!(page_outs(state, &domains, true), [0, 0, 0]);
        }
        for state in [FreeState::Hard, FreeState::Low] {
            assert_eq!(
                page_outs(state, &domains, true),
                [64 * MIB, 12 * MIB, 0],
                "down to the target, at most 64 MiB a round; within the slack, nothing"
            );
            // A host without swap has the balloons only.
            assert_eq!(page_outs(state, &domains, false), [0, 0, 0]);
        }
    }

    #[test]
    fn only_low_holds_the_domains_over_their_targets_and_only_with_swap() {
        let domains = [
            Holding {
                resident: 300 * MIB,
                target: 128 * MIB,
            },
            Holding {
                resident: 132 * MIB,
                target: 128 * MIB,
            },
            Holding {
                resident: 133 * MIB,
                target: 128 * MIB,
            },
        ];
        let gib = 1024 * MIB;
        assert_eq!(
            holds(FreeState::Low, &domains, gib),
            [true, false, true],
            "over the target by more than the slack"
        );
        for state in [FreeState::High, FreeState::Soft, FreeState::Hard] {
            assert_eq!(holds(state, &domains, gib), [false; 3], "{state:?}");
        }
        assert_eq!(
            holds(FreeState::Low, &domains, 0),
            [false; 3],
            "a held guest cannot balloon: without swap, a hold takes nothing back"
        );
        assert_eq!(
            holds(FreeState::Low, &domains, 100 * MIB),
            [false, false, true],
            "172 MiB over does not fit in 100 MiB of swap; 5 MiB does"
        );
    }
}
