//! Host swapping, ESX's last resort (Waldspurger, OSDI 2002): when a domain holds more than
//! its target and its balloon cannot give the difference back fast enough (a guest without
//! the driver, or one whose memory is pinned), the host pages guest pages out itself, chosen
//! at random so that no pattern of the guest's own paging is fought.
//!
//! The mechanism is the kernel's: `MADV_PAGEOUT` on guest RAM (a private anonymous mapping)
//! asks it to write those pages to the host's swap now and free them; KVM's MMU notifier drops
//! the guest's mappings of them, and the guest's next touch brings a page back from swap. A
//! host without swap keeps the pages: paging out does nothing there (the control plane says so).
//! Pages are chosen in runs of [`RUN_PAGES`], at random places, and only resident ones count.

use crate::sampling::Xorshift;
use crate::GuestMemory;

/// A page.
const PAGE: usize = 4096;
/// Pages advised at once: a random run of 64 KiB (one `madvise` and one `mincore` each).
pub const RUN_PAGES: usize = 16;

/// Asks the kernel to page out about `bytes` of `memory`'s resident pages (whole runs, so up
/// to a run more), chosen at random; returns the resident bytes it advised. Tries at most
/// twice as many runs as the memory has, so a memory with little resident ends early.
pub fn page_out(memory: &GuestMemory, bytes: u64) -> u64 {
    let regions: Vec<(usize, usize)> = memory
        .regions()
        .map(|(_, size, host)| (host as usize, size as usize / (PAGE * RUN_PAGES)))
        .collect();
    let runs: usize = regions.iter().map(|r| r.1).sum();
    if runs == 0 {
        return 0;
    }
    let mut rng = Xorshift::seeded();
    let mut advised = 0u64;
    for _ in 0..runs * 2 {
        if advised >= bytes {
            break;
        }
        let mut index = (rng.next() % runs as u64) as usize;
        let start = regions
            .iter()
            .find_map(|&(host, n)| {
                if index < n {
                    Some(host + index * PAGE * RUN_PAGES)
                } else {
                    index -= n;
                    None
                }
            })
            .expect("the index is below the runs' total");
        // One run at a time with the working-set sampler held off, so that it never takes a
        // page away while the kernel writes it out.
        advised += memory.sampled().held_off(|| {
            let mut resident = [0u8; RUN_PAGES];
            // SAFETY: the run lies inside a live guest mapping (whole runs of each region),
            // page aligned, and the vector has one byte per page of it.
            let rc =
                unsafe { libc::mincore(start as *mut _, PAGE * RUN_PAGES, resident.as_mut_ptr()) };
            let count = if rc == 0 {
                resident.iter().filter(|&&b| b & 1 == 1).count()
            } else {
                0
            };
            if count == 0 {
                return 0;
            }
            // SAFETY: the same run of a live private anonymous guest mapping. Paging out
            // changes where the kernel keeps the bytes, never what the guest or the VMM reads
            // (a touch brings them back from swap); KVM's MMU notifier drops the guest's
            // mappings of the pages written out.
            let rc =
                unsafe { libc::madvise(start as *mut _, PAGE * RUN_PAGES, libc::MADV_PAGEOUT) };
            if rc == 0 {
                (count * PAGE) as u64
            } else {
                0
            }
        });
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_out_keeps_every_byte_and_stops_at_what_was_asked() {
        const SIZE: u64 = 8 << 20;
        let memory = GuestMemory::new(&[(0, SIZE)]).unwrap();
        // Half of the memory written, each page with its own bytes.
        for page in 0..(SIZE / 2 / PAGE as u64) {
            memory
                .write(page * PAGE as u64, &[(page % 251) as u8 + 1; PAGE])
                .unwrap();
        }
        let advised = page_out(&memory, 1 << 20);
        // At least what was asked (the host may have swap or not: the advice is what counts),
        // and no more than a run over it.
        assert!(
            ((1 << 20)..=(1 << 20) + (PAGE * RUN_PAGES) as u64).contains(&advised),
            "{advised}"
        );
        // Every page reads as written, wherever the kernel keeps it now.
        for page in 0..(SIZE / PAGE as u64) {
            let mut b = [0u8; PAGE];
            memory.read(page * PAGE as u64, &mut b).unwrap();
            let want = if page < SIZE / 2 / PAGE as u64 {
                (page % 251) as u8 + 1
            } else {
                0
            };
            assert!(b.iter().all(|&x| x == want), "page {page}");
        }
        // Nothing resident, nothing advised.
        let empty = GuestMemory::new(&[(0, SIZE)]).unwrap();
        assert_eq!(page_out(&empty, 1 << 20), 0);
    }
}
