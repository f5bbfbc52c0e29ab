//! What a launch costs in device time: a process-local table of learned estimates.
//!
//! Two kinds of key share the table:
//! - the **launch key** (device, kernel or graph handle, grid blocks, threads per block): the cost
//!   of exactly this launch, as measured;
//! - the **wave key** (device, kernel handle, threads per block): the kernel's cost per wave
//!   (`ceil(blocks / (sms * blocks_per_sm))`), learned from every measurement of that kernel, which
//!   prices a grid size never seen before. Waves are per SM, so the guess is right on a 16-SM and a
//!   188-SM device alike.
//!
//! Handles are process-local (a `CUfunction` means nothing in another process), hence one table per
//! process. Entries are atomics written without a lock: two threads updating one entry at once can
//! lose a sample or mix two; the numbers are estimates and the next sample repairs them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::tuning::{
    COST_TABLE_ENTRIES, COST_TABLE_PROBE, FLOOR_WINDOW_HALF, MEAN_SHIFT, NARROW_BAND_SHIFT,
    RATIO_SHIFT, SAMPLE_INTERVAL_NS, WIDE_BAND_SHIFT,
};

/// One learned cost. 64 bytes: one cache line, never shared with another process.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct CostEntry {
    /// Hash of the key; 0 = empty.
    key: AtomicU64,
    /// Device ns charged per launch; 0 = never measured.
    estimate_ns: AtomicU64,
    /// When this key may be sampled next (monotonic ns).
    next_sample_ns: AtomicU64,
    /// Windowed minimum of the samples, in two halves: the current one being filled and the last
    /// full one. 0 = empty.
    floor_current_ns: AtomicU64,
    floor_previous_ns: AtomicU64,
    /// Low 8 bits: samples in the current floor half. Bits 32..48: how often a sample inside the
    /// wide band was also inside the narrow one (Q16 moving average).
    window_and_ratio: AtomicU64,
    /// Means of the samples inside the narrow and the wide band above the floor. 0 = none yet.
    mean_narrow_ns: AtomicU64,
    mean_wide_ns: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<CostEntry>() == 64);

/// Above this share of narrow-band samples among wide-band ones, samples cluster at the floor:
/// what spreads them is other work queued ahead, and the narrow mean is right. Below it, the
/// kernel's own run time varies more than the narrow band: the wide mean is right. (Q16; 0.45.)
///
/// Where the numbers fall: queueing behind a kernel as long as ours, in a fraction `c` of the
/// samples, gives `(1 - c + c/16) / (1 - c + c/4)`: 0.85 at c = 0.5, 0.63 at c = 0.8. Uniform
/// run-time variation of +-10 % gives about 0.28, +-5 % about 0.6 (where the narrow mean
/// under-charges by only ~2 %).
const NARROW_RATIO_THRESHOLD_Q16: u64 = 29_491;

/// Moves `mean` towards `sample` by 1/2^MEAN_SHIFT, restarting it when it left `[floor, top]`
/// (the floor moved, so the old mean describes another regime).
fn update_mean(mean: u64, sample: u64, floor: u64, top: u64) -> u64 {
    if mean < floor || mean > top {
        return sample;
    }
    let delta = (sample as i128 - mean as i128) >> MEAN_SHIFT;
    u64::try_from(mean as i128 + delta).unwrap_or(sample)
}

impl CostEntry {
    /// Device ns to charge, 0 if never measured.
    #[inline]
    pub(crate) fn estimate_ns(&self) -> u64 {
        self.estimate_ns.load(Ordering::Relaxed)
    }

    /// Claims the right to sample this key now (at most one sample per `SAMPLE_INTERVAL_NS`).
    /// One relaxed load when not due.
    #[inline]
    pub(crate) fn claim_sample(&self, now_ns: u64) -> bool {
        let next = self.next_sample_ns.load(Ordering::Relaxed);
        now_ns >= next
            && self
                .next_sample_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(SAMPLE_INTERVAL_NS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// When this key is next due for a sample (coarse-clock ns): until then a thread may charge
    /// the estimate it read without looking again (`Launcher`).
    #[inline]
    pub(crate) fn sample_due_ns(&self) -> u64 {
        self.next_sample_ns.load(Ordering::Relaxed)
    }

    /// Gives back a claim that was not used (no probe slot free, or the launch was not admitted),
    /// so the next launch can sample instead.
    pub(crate) fn unclaim_sample(&self) {
        self.next_sample_ns.store(0, Ordering::Relaxed);
    }

    /// Learns from one measured sample (device ns) and returns the new estimate.
    ///
    /// Work queued ahead of a probe (another tenant's, a sibling process's) can only make the
    /// measured span longer, never shorter. So:
    /// - the **floor**, the minimum of the last 8..16 samples, is a robust lower bound; a real rise
    ///   in cost is believed once the floor itself rises (at most 16 samples), a fall at once;
    /// - samples far above the floor are inflated and ignored;
    /// - among the others, two bands: narrow (floor + 1/16) and wide (floor + 1/4). If most wide
    ///   samples are also narrow, the samples cluster at the floor and what spreads them is
    ///   queueing: charge the narrow mean. Otherwise the kernel's own duration varies: charge the
    ///   wide mean (a narrow mean would under-charge by about half the variation).
    pub(crate) fn record(&self, sample_ns: u64) -> u64 {
        let sample = sample_ns.max(1);
        let mut current = self.floor_current_ns.load(Ordering::Relaxed);
        let mut previous = self.floor_previous_ns.load(Ordering::Relaxed);
        let packed = self.window_and_ratio.load(Ordering::Relaxed);
        let mut samples = packed & 0xff;
        // A fresh entry starts just above the threshold: the first samples decide quickly.
        let mut ratio = if packed == 0 {
            1 << 15
        } else {
            (packed >> 32) & 0x1_ffff
        };
        current = if current == 0 {
            sample
        } else {
            current.min(sample)
        };
        samples += 1;
        if samples >= FLOOR_WINDOW_HALF {
            previous = current;
            current = 0;
            samples = 0;
        }
        let floor = match (current, previous) {
            (0, p) => p,
            (c, 0) => c,
            (c, p) => c.min(p),
        };
        let narrow_top = floor.saturating_add(floor >> NARROW_BAND_SHIFT);
        let wide_top = floor.saturating_add(floor >> WIDE_BAND_SHIFT);
        let mut narrow = self.mean_narrow_ns.load(Ordering::Relaxed);
        let mut wide = self.mean_wide_ns.load(Ordering::Relaxed);
        if sample <= wide_top {
            let in_narrow = if sample <= narrow_top { 1u64 << 16 } else { 0 };
            ratio = ratio - (ratio >> RATIO_SHIFT) + (in_narrow >> RATIO_SHIFT);
            wide = update_mean(wide, sample, floor, wide_top);
        }
        if sample <= narrow_top {
            narrow = update_mean(narrow, sample, floor, narrow_top);
        }
        let estimate = if ratio >= NARROW_RATIO_THRESHOLD_Q16 && narrow != 0 {
            narrow.clamp(floor, narrow_top)
        } else if wide != 0 {
            wide.clamp(floor, wide_top)
        } else {
            floor
        };
        self.floor_current_ns.store(current, Ordering::Relaxed);
        self.floor_previous_ns.store(previous, Ordering::Relaxed);
        self.window_and_ratio
            .store(samples | ratio << 32, Ordering::Relaxed);
        self.mean_narrow_ns.store(narrow, Ordering::Relaxed);
        self.mean_wide_ns.store(wide, Ordering::Relaxed);
        self.estimate_ns.store(estimate, Ordering::Relaxed);
        estimate
    }

    /// Makes the entry "known" at `cost_ns` without a measurement (a probe that could not be made),
    /// unless something was learned meanwhile.
    pub(crate) fn assume(&self, cost_ns: u64) {
        let _ = self.estimate_ns.compare_exchange(
            0,
            cost_ns.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn reset(&self, key: u64) {
        self.estimate_ns.store(0, Ordering::Relaxed);
        self.next_sample_ns.store(0, Ordering::Relaxed);
        self.floor_current_ns.store(0, Ordering::Relaxed);
        self.floor_previous_ns.store(0, Ordering::Relaxed);
        self.window_and_ratio.store(0, Ordering::Relaxed);
        self.mean_narrow_ns.store(0, Ordering::Relaxed);
        self.mean_wide_ns.store(0, Ordering::Relaxed);
        self.key.store(key, Ordering::Relaxed);
    }
}

/// The per-process table. Allocated once when the gate is built; never grows.
#[derive(Debug)]
pub(crate) struct CostTable {
    entries: Box<[CostEntry]>,
}

impl CostTable {
    pub(crate) fn new() -> CostTable {
        let entries = (0..COST_TABLE_ENTRIES)
            .map(|_| CostEntry::default())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        CostTable { entries }
    }

    #[inline]
    pub(crate) fn entry(&self, index: usize) -> Option<&CostEntry> {
        self.entries.get(index)
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // The table length is a power of two; the key is already well mixed.
        (key as usize) & (self.entries.len() - 1)
    }

    /// The entry of `key`, if present. A few relaxed loads, all in this process's memory.
    #[inline]
    pub(crate) fn find(&self, key: u64) -> Option<usize> {
        let home = self.home(key);
        (0..COST_TABLE_PROBE)
            .map(|step| (home + step) & (self.entries.len() - 1))
            .find(|&i| self.entries[i].key.load(Ordering::Relaxed) == key)
    }

    /// The entry of `key`, inserting it if absent. A full neighbourhood evicts the home slot: a
    /// process with more than ~1000 hot launch keys re-learns some of them, which is correct, only
    /// slower.
    pub(crate) fn find_or_insert(&self, key: u64) -> usize {
        if let Some(i) = self.find(key) {
            return i;
        }
        let home = self.home(key);
        for step in 0..COST_TABLE_PROBE {
            let i = (home + step) & (self.entries.len() - 1);
            match self.entries[i]
                .key
                .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return i,
                Err(seen) if seen == key => return i,
                Err(_) => {}
            }
        }
        self.entries[home].reset(key);
        home
    }
}

const _: () = assert!(COST_TABLE_ENTRIES.is_power_of_two());

/// Mixes the parts of a key into 64 bits (never 0, which marks an empty entry).
///
/// Two folded 64x64->128 multiplies (wyhash's "mum") and one more to finish: every output bit,
/// the low ones that pick the home slot included, depends on every part. About a dozen
/// instructions, on every limited launch.
#[inline]
pub(crate) fn mix_key(parts: [u64; 4]) -> u64 {
    #[inline(always)]
    fn mum(a: u64, b: u64) -> u64 {
        let wide = u128::from(a) * u128::from(b);
        (wide as u64) ^ ((wide >> 64) as u64)
    }
    let left = mum(
        parts[0] ^ 0xA076_1D64_78BD_642F,
        parts[1] ^ 0xE703_7ED1_A0B4_28DB,
    );
    let right = mum(
        parts[2] ^ 0x8EBC_6AF0_9C88_C6E3,
        parts[3] ^ 0x5899_65CC_7537_4CC3,
    );
    mum(left ^ 0x1D8E_4E27_C47D_124F, right ^ 0x9E37_79B9_7F4A_7C15).max(1)
}
