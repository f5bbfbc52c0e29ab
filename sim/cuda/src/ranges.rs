//! A plain address-range allocator: best fit over coalesced free blocks, then a bump pointer.
//! Pure bookkeeping (no memory is touched), used for the device-pointer arena and for offsets in
//! the physical memory file behind `cuMemCreate`.

use std::collections::{BTreeMap, BTreeSet};

pub(crate) struct RangeAllocator {
    base: u64,
    len: u64,
    /// Everything at or above `base + top` is free and not in the free maps.
    top: u64,
    free_by_addr: BTreeMap<u64, u64>,
    free_by_size: BTreeSet<(u64, u64)>,
}

#[inline]
pub(crate) fn align_up(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

impl RangeAllocator {
    pub(crate) fn new(base: u64, len: u64) -> RangeAllocator {
        RangeAllocator {
            base,
            len,
            top: 0,
            free_by_addr: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
        }
    }

    pub(crate) fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }

    fn insert_free(&mut self, addr: u64, size: u64) {
        if size > 0 {
            self.free_by_addr.insert(addr, size);
            self.free_by_size.insert((size, addr));
        }
    }

    fn remove_free(&mut self, addr: u64, size: u64) {
        self.free_by_addr.remove(&addr);
        self.free_by_size.remove(&(size, addr));
    }

    /// `size` bytes aligned to `align` (a power of two), or `None` when the range is exhausted.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        // Best fit: the smallest free block that holds an aligned range of `size`. Looking at a few
        // candidates is enough; alignment rarely disqualifies more than the first.
        let found = self
            .free_by_size
            .range((size, 0)..)
            .take(16)
            .find(|&&(bsize, addr)| align_up(addr, align) + size <= addr + bsize)
            .copied();
        if let Some((bsize, addr)) = found {
            self.remove_free(addr, bsize);
            let start = align_up(addr, align);
            self.insert_free(addr, start - addr);
            self.insert_free(start + size, addr + bsize - (start + size));
            return Some(start);
        }
        let top_addr = self.base + self.top;
        let start = align_up(top_addr, align);
        if start + size > self.base + self.len {
            return None;
        }
        self.insert_free(top_addr, start - top_addr);
        self.top = start + size - self.base;
        Some(start)
    }

    /// Give back a range `alloc` returned, with the same size.
    pub(crate) fn free(&mut self, addr: u64, size: u64) {
        let (mut start, mut end) = (addr, addr + size);
        if let Some((&prev, &psize)) = self.free_by_addr.range(..addr).next_back() {
            if prev + psize == start {
                self.remove_free(prev, psize);
                start = prev;
            }
        }
        if let Some(&nsize) = self.free_by_addr.get(&end) {
            self.remove_free(end, nsize);
            end += nsize;
        }
        if end == self.base + self.top {
            self.top = start - self.base;
        } else {
            self.insert_free(start, end - start);
        }
    }

    /// Bytes handed out and not freed (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> u64 {
        self.top - self.free_by_addr.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_free_and_reuse() {
        let mut r = RangeAllocator::new(0x1000_0000, 1 << 30);
        let a = r.alloc(512, 512).unwrap();
        let b = r.alloc(1024, 512).unwrap();
        assert_eq!((a, b), (0x1000_0000, 0x1000_0200));
        r.free(a, 512);
        assert_eq!(r.alloc(512, 512), Some(a), "a freed block is reused");
        r.free(b, 1024);
        r.free(a, 512);
        assert_eq!(r.in_use(), 0);
        assert_eq!(r.top, 0, "freeing everything lowers the bump pointer");
    }

    #[test]
    fn alignment_and_coalescing() {
        let mut r = RangeAllocator::new(0, 64 << 20);
        let small = r.alloc(512, 512).unwrap();
        let big = r.alloc(2 << 20, 2 << 20).unwrap();
        assert_eq!(big % (2 << 20), 0);
        assert_eq!(small, 0);
        let c = r.alloc(512, 512).unwrap();
        assert_eq!(c, 512, "the alignment gap before `big` is used");
        r.free(small, 512);
        r.free(c, 512);
        // The two freed blocks and the gap coalesce into one block below `big`.
        assert_eq!(r.free_by_addr.len(), 1);
        assert_eq!(r.alloc((2 << 20) - 1024, 512), Some(0));
    }

    #[test]
    fn exhaustion() {
        let mut r = RangeAllocator::new(4096, 4096);
        assert!(r.alloc(4096, 512).is_some());
        assert!(r.alloc(512, 512).is_none());
    }
}
