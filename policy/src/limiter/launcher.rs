//! What one launching thread keeps between its launches, so that an in-budget launch of a kernel it
//! launched recently needs neither the shared bucket nor the cost table.
//!
//! Two things, both plain `Cell`s owned by the thread (the hooks keep a `Launcher` in their
//! initial-exec thread-local block; tests keep one on the stack):
//!
//! - **Credit.** Instead of one compare-and-swap on the container's bucket per launch, a thread
//!   buys device time in chunks of at least [`CREDIT_CHUNK_NS`] and spends it launch by launch. The
//!   bucket line is then touched once per chunk, not per launch, which also keeps the processes of a
//!   container from bouncing that cache line between cores. What a chunk costs the container is
//!   paid when it is bought, exactly like a launch of that cost, so the rate is unchanged; at most
//!   one chunk per launching thread is paid ahead. Credit left when the thread launches on another
//!   device goes back to its bucket.
//! - **Memo.** The last few launch shapes (kernel or graph handle, grid, block, device) with their
//!   learned cost and the instant until which that cost may be used without looking at the cost
//!   table: the moment the kernel is next due for a measurement. A changed estimate therefore
//!   reaches every thread within one sample interval (`tuning::SAMPLE_INTERVAL_NS`), and a due
//!   sample always goes through the gate's full path, which claims it.
//!
//! All-zero is the empty state (no credit, no memo), so the hooks' zero-filled TLS image is a valid
//! `Launcher` without a constructor.

use std::cell::Cell;

use super::gate::{Work, WorkKind};
use super::MAX_DEVICES;

/// Device time a thread buys at once when it runs out (device ns). No larger than the shortest
/// kernel the shares are tuned for (50 µs), so a launch of 50 µs or more buys exactly its cost and
/// the limiter behaves as with per-launch charging (the simulator tables are unchanged); a loop of
/// short kernels (1–10 µs, where the per-launch cost matters) touches the shared bucket once per
/// 5–50 launches. A 200 µs chunk measurably loosened 1-s windows of two containers in the tables.
pub const CREDIT_CHUNK_NS: u64 = 50_000;

/// Launches a thread makes on a cached clock reading once it has seen the coarse clock not move
/// between two reads (so it launches faster than the clock ticks: 1–4 ms).
pub const CLOCK_REUSE_LAUNCHES: u8 = 8;

/// Launch shapes remembered per thread. A loop usually cycles through a handful of kernels.
const MEMO_SLOTS: usize = 4;

#[derive(Debug, Default)]
#[repr(C)]
struct MemoSlot {
    handle: Cell<u64>,
    blocks: Cell<u64>,
    /// `threads | device << 32 | kind << 40 | 1 << 48`; 0 = empty.
    shape: Cell<u64>,
    /// Device ns to charge.
    cost_ns: Cell<u64>,
    /// Coarse-clock instant until which `cost_ns` may be charged without the cost table.
    fresh_until_ns: Cell<u64>,
}

impl MemoSlot {
    #[allow(clippy::declare_interior_mutable_const)] // copied into each slot, never shared
    const EMPTY: MemoSlot = MemoSlot {
        handle: Cell::new(0),
        blocks: Cell::new(0),
        shape: Cell::new(0),
        cost_ns: Cell::new(0),
        fresh_until_ns: Cell::new(0),
    };
}

/// One thread's credit and memo. `!Sync`: only its thread uses it. `repr(C)`: the credit first,
/// next to the hooks' re-entrancy flag in their thread-local block.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Launcher {
    /// Prepaid device ns, usable on `credit_device`.
    credit_ns: Cell<u64>,
    /// Region index + 1 of the device the credit was bought on; 0 = none.
    credit_device: Cell<u8>,
    /// Launches left that may use `clock_ns` instead of reading the clock.
    clock_reuses: Cell<u8>,
    /// The coarse clock at this thread's last read.
    clock_ns: Cell<u64>,
    slots: [MemoSlot; MEMO_SLOTS],
}

/// The memo's identity of a launch shape.
#[inline(always)]
fn shape(work: &Work, device: usize) -> u64 {
    let kind = match work.kind {
        WorkKind::Kernel => 1u64,
        WorkKind::Graph => 2,
    };
    u64::from(work.threads_per_block) | (device as u64) << 32 | kind << 40 | 1 << 48
}

#[inline(always)]
fn slot_index(work: &Work) -> usize {
    // Handles are pointers or small integers: mix before taking the top bits.
    let mixed = (work.handle ^ work.blocks.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 62) as usize % MEMO_SLOTS
}

impl Launcher {
    /// The empty state (what a zero-filled thread-local holds).
    pub const fn new() -> Launcher {
        Launcher {
            credit_ns: Cell::new(0),
            credit_device: Cell::new(0),
            clock_reuses: Cell::new(0),
            clock_ns: Cell::new(0),
            slots: [
                MemoSlot::EMPTY,
                MemoSlot::EMPTY,
                MemoSlot::EMPTY,
                MemoSlot::EMPTY,
            ],
        }
    }

    /// The coarse clock for a launch's due checks (a probe to poll, a `last_kernel_time` stamp, a
    /// memo going stale), read at most once per `CLOCK_REUSE_LAUNCHES + 1` launches of a thread
    /// that launches faster than the coarse clock ticks.
    ///
    /// Why this is safe: the coarse clock moves in steps of 1–4 ms, so for such a thread a cached
    /// reading is as good as a new one; a thread that launches slower reads the clock every
    /// time (its reads differ, so nothing is reused). After a burst, at most
    /// `CLOCK_REUSE_LAUNCHES` launches see the burst's last reading, which only delays a due
    /// check by that many launches. The budget never uses this value: buying credit reads the
    /// clock afresh.
    #[inline(always)]
    pub(crate) fn coarse_now<C: super::Clock>(&self, clock: &C) -> u64 {
        let reuses = self.clock_reuses.get();
        if reuses > 0 {
            self.clock_reuses.set(reuses - 1);
            return self.clock_ns.get();
        }
        self.read_clock(clock)
    }

    /// Reads the coarse clock and records it for [`coarse_now`](Self::coarse_now).
    #[inline]
    pub(crate) fn read_clock<C: super::Clock>(&self, clock: &C) -> u64 {
        let now = clock.coarse_monotonic_ns();
        let unchanged = now == self.clock_ns.get();
        self.clock_ns.set(now);
        self.clock_reuses
            .set(if unchanged { CLOCK_REUSE_LAUNCHES } else { 0 });
        now
    }

    /// The remembered cost of `work` on `device` if it is still fresh at `now_ns`.
    #[inline(always)]
    pub(crate) fn remembered_cost(&self, work: &Work, device: usize, now_ns: u64) -> Option<u64> {
        self.slot_of(work, device)
            .filter(|slot| now_ns < slot.fresh_until_ns.get())
            .map(|slot| slot.cost_ns.get())
    }

    /// The slot remembering `work` on `device`, if one does (fresh or not).
    #[inline(always)]
    fn slot_of(&self, work: &Work, device: usize) -> Option<&MemoSlot> {
        let slot = &self.slots[slot_index(work)];
        (slot.shape.get() == shape(work, device)
            && slot.handle.get() == work.handle
            && slot.blocks.get() == work.blocks)
            .then_some(slot)
    }

    /// Whether this thread launched `work` on `device` before (remembered, fresh or not): only a
    /// thread that repeats itself buys credit ahead, so a thread that launches once and exits (a
    /// worker per request) never strands a chunk.
    #[inline]
    pub(crate) fn repeats(&self, work: &Work, device: usize) -> bool {
        self.slot_of(work, device).is_some()
    }

    /// Remembers the cost the gate charged `work` on `device`, usable until `fresh_until_ns`.
    pub(crate) fn remember(&self, work: &Work, device: usize, cost_ns: u64, fresh_until_ns: u64) {
        let slot = &self.slots[slot_index(work)];
        slot.handle.set(work.handle);
        slot.blocks.set(work.blocks);
        slot.shape.set(shape(work, device));
        slot.cost_ns.set(cost_ns);
        slot.fresh_until_ns.set(fresh_until_ns);
    }

    /// Spends `cost_ns` of credit on `device` if there is that much.
    #[inline(always)]
    pub(crate) fn spend(&self, device: usize, cost_ns: u64) -> bool {
        let credit = self.credit_ns.get();
        if usize::from(self.credit_device.get()) != device + 1 || credit < cost_ns {
            return false;
        }
        self.credit_ns.set(credit - cost_ns);
        true
    }

    /// Credit on `device` after a chunk was bought there; the caller has given back credit held
    /// on another device first ([`take_credit_elsewhere`](Self::take_credit_elsewhere)).
    pub(crate) fn add_credit(&self, device: usize, device_ns: u64) {
        debug_assert!(device < MAX_DEVICES);
        let held = if usize::from(self.credit_device.get()) == device + 1 {
            self.credit_ns.get()
        } else {
            0
        };
        self.credit_device.set(device as u8 + 1);
        self.credit_ns.set(held.saturating_add(device_ns));
    }

    /// Credit this thread holds on a device other than `device`, removed from the thread so the
    /// caller can give it back to that device's bucket: `(device, device ns)`.
    pub(crate) fn take_credit_elsewhere(&self, device: usize) -> Option<(usize, u64)> {
        let held = usize::from(self.credit_device.get());
        if held == 0 || held == device + 1 {
            return None;
        }
        let credit = self.credit_ns.replace(0);
        self.credit_device.set(0);
        (credit > 0).then_some((held - 1, credit))
    }

    /// Credit held on `device` (for tests and diagnostics).
    pub fn credit_ns(&self, device: usize) -> u64 {
        if usize::from(self.credit_device.get()) == device + 1 {
            self.credit_ns.get()
        } else {
            0
        }
    }

    /// Forgets credit and memo: in a fork child (the credit was the parent's) and in tests.
    pub fn clear(&self) {
        for slot in &self.slots {
            slot.shape.set(0);
            slot.fresh_until_ns.set(0);
        }
        self.credit_ns.set(0);
        self.credit_device.set(0);
        self.clock_reuses.set(0);
        self.clock_ns.set(0);
    }
}
