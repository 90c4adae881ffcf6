//! Which pages of guest RAM were written since a log began: one bit per 4 KiB page of each
//! region, as KVM's dirty log keeps them for the guest's writes and [`crate::GuestMemory`]
//! keeps them for the VMM's own (a device filling a receive buffer, a disk read, a used ring).

/// Bytes of one page of the log.
pub const PAGE: u64 = 4096;

/// One region's log: its guest-physical base and a bit per page (bit `i % 64` of word
/// `i / 64` is page `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLog {
    /// Guest-physical address of the region's first page.
    pub base: u64,
    /// Pages in the region.
    pub pages: u64,
    /// The bits.
    pub bits: Vec<u64>,
}

/// Pages written, region by region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyPages {
    regions: Vec<RegionLog>,
}

impl DirtyPages {
    /// The logs of `regions`.
    pub fn new(regions: Vec<RegionLog>) -> Self {
        DirtyPages { regions }
    }

    /// Every page of `ram` (`(guest address, size)` regions) marked written.
    pub fn all(ram: &[(u64, u64)]) -> Self {
        DirtyPages {
            regions: ram
                .iter()
                .map(|&(base, size)| {
                    let pages = size / PAGE;
                    let mut bits = vec![u64::MAX; pages.div_ceil(64) as usize];
                    if !pages.is_multiple_of(64) {
                        if let Some(last) = bits.last_mut() {
                            *last = (1u64 << (pages % 64)) - 1;
                        }
                    }
                    RegionLog { base, pages, bits }
                })
                .collect(),
        }
    }

    /// Adds the pages `other` marks (a region of the same base; others are added whole).
    pub fn merge(&mut self, other: DirtyPages) {
        for log in other.regions {
            match self.regions.iter_mut().find(|r| r.base == log.base) {
                Some(mine) => {
                    for (a, b) in mine.bits.iter_mut().zip(&log.bits) {
                        *a |= b;
                    }
                }
                None => self.regions.push(log),
            }
        }
    }

    /// How many pages are marked.
    pub fn count(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| {
                r.bits
                    .iter()
                    .map(|w| u64::from(w.count_ones()))
                    .sum::<u64>()
            })
            .sum()
    }

    /// The marked pages as runs `(guest address, pages)`, up in address within each region,
    /// each at most `max_pages` long. Bits past a region's last page are ignored.
    pub fn runs(&self, max_pages: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        for r in &self.regions {
            let marked = |i: u64| {
                i < r.pages
                    && r.bits
                        .get((i / 64) as usize)
                        .is_some_and(|w| w >> (i % 64) & 1 == 1)
            };
            let mut i = 0;
            while i < r.pages {
                if r.bits.get((i / 64) as usize).is_none_or(|&w| w == 0) {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                if !marked(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < r.pages && marked(i) && i - start < max_pages {
                    i += 1;
                }
                runs.push((r.base + start * PAGE, i - start));
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_the_marked_pages_and_merge_adds_them() {
        let mut a = DirtyPages::new(vec![RegionLog {
            base: 0x10000,
            pages: 70,
            bits: vec![0b1110_0001, 1 << 5],
        }]);
        assert_eq!(a.count(), 5);
        assert_eq!(
            a.runs(512),
            vec![
                (0x10000, 1),
                (0x10000 + 5 * PAGE, 3),
                (0x10000 + 69 * PAGE, 1)
            ]
        );
        assert_eq!(
            a.runs(2)[1..3],
            [(0x10000 + 5 * PAGE, 2), (0x10000 + 7 * PAGE, 1)]
        );
        a.merge(DirtyPages::new(vec![RegionLog {
            base: 0x10000,
            pages: 70,
            bits: vec![0b10, 0],
        }]));
        assert_eq!(a.runs(512)[0], (0x10000, 2));
        // Bits past the region's end are not pages.
        let b = DirtyPages::new(vec![RegionLog {
            base: 0,
            pages: 3,
            bits: vec![u64::MAX],
        }]);
        assert_eq!(b.runs(512), vec![(0, 3)]);
    }

    #[test]
    fn all_marks_every_page_and_nothing_past_them() {
        let d = DirtyPages::all(&[(0, 70 * PAGE), (1 << 32, 64 * PAGE)]);
        assert_eq!(d.count(), 134);
        assert_eq!(d.runs(1000), vec![(0, 70), (1 << 32, 64)]);
    }
}
